"""Plain step reduction: the baseline every technique is judged against at equal latency.

The run itself uses fewer denoising steps (`RunConfig.accel_steps`); there is nothing to hook."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from analysis.accel import saving
from analysis.accel.technique import Knob, Technique
from analysis.plugins import HandleBase


@dataclass(frozen=True)
class StepsConfig:
    name: ClassVar[str] = "steps"
    steps: int = 20

    def __post_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 1 <= self.steps <= 1000:
            raise ValueError(f"steps: steps must be between 1 and 1000, got {self.steps}")

    @classmethod
    def off(cls, steps: int) -> "StepsConfig":
        return cls(steps=steps)

    def attach(self, ctx) -> HandleBase:
        return HandleBase()


def steps_cost(config, counters, profile, steps, accel_steps) -> dict[str, Any]:
    """(N - n) whole steps of the denoising loop (UNet call + scheduler step) are not run; the text encoder
    and the VAE decode stay."""
    return saving(loop_steps_saved=steps - accel_steps, detail={"steps": accel_steps})


def _ladder(steps: int) -> list[tuple[str, tuple[str, ...]]]:
    ks = sorted({k for k in range(max(2, steps // 5), steps, max(1, steps // 10))})
    return [(f"steps-{k}", (f"steps:steps={k}",)) for k in ks]


def _bound(profile: dict, steps: int) -> float:
    return profile["pipeline"]["loop_share"] * (steps - 1) / steps


TECHNIQUE = Technique(
    name="steps", title="Step reduction (the baseline to beat)", reference="DDIM (Song et al., ICLR 2021)",
    config=StepsConfig,
    knobs=(Knob("steps", "steps", "int", default=lambda steps: max(1, steps // 2), low=1, high=100, step=1,
                limit=lambda steps, values: max(1, steps - 1), accept=(1, 1000)),),
    build=lambda values, steps: StepsConfig(steps=values["steps"]),
    cost=steps_cost,
    summary=lambda c: "",
    marks=lambda config, steps, model: {"steps": int(config.steps)},
    strip=lambda marks, steps: [],
    bound_text="bounded by the denoising loop share (UNet + scheduler): text encoder and VAE decode stay",
    bound=_bound,
    grid=_ladder,
    colour="#666666", marker="o", order=90,
    run_steps=lambda config, steps: int(config.steps),
    is_step_reduction=True,
)
