"""Training-free acceleration techniques, each a plug-in (see analysis/plugins.py).

`TECHNIQUES` maps the CLI/run.json name to its Config class; `parse_accel("tgate:gate_step=10")` builds a
config from the CLI syntax (list values joined by '+'); `check_combination` refuses combinations that
cannot work, saying why.

Cost functions. Every technique registers, beside its Config, one function with `@register_cost(name)`:
    cost(config, counters, profile, steps, accel_steps) -> {"unet_s", "expected_unet_s", "loop_steps_saved",
                                                             "detail", "note"}
that turns the run's counted work (`counters`, as `run_once` returns them) into seconds of baseline UNet work
not done, timed in `profile` (analysis/eval/profile.py `breakdown`), or into whole denoising-loop steps not
run (step reduction). `steps` is the baseline's step count, `accel_steps` the accelerated run's.
analysis/eval/cost.py converts that to a fraction of the pipeline and an ideal speed-up.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from analysis.plugins import HandleBase

CostFunction = Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class StepsConfig:
    """Plain step reduction: the baseline every technique is judged against at equal latency."""

    name: ClassVar[str] = "steps"
    steps: int = 20

    def __post_init__(self):
        if not 1 <= self.steps <= 1000:
            raise ValueError(f"steps: steps must be between 1 and 1000, got {self.steps}")

    def attach(self, ctx) -> HandleBase:  # the run itself uses fewer steps; nothing to hook
        return HandleBase()


TECHNIQUES: dict[str, type] = {"steps": StepsConfig}
COSTS: dict[str, CostFunction] = {}


def register(config_cls: type) -> type:
    TECHNIQUES[config_cls.name] = config_cls
    return config_cls


def register_cost(name: str) -> Callable[[CostFunction], CostFunction]:
    """Register `fn` as the cost function of technique `name` (see the module docstring)."""
    def decorate(fn: CostFunction) -> CostFunction:
        COSTS[name] = fn
        return fn

    return decorate


def cost_function(name: str) -> CostFunction:
    _load_all()
    if name not in COSTS:
        raise ValueError(f"technique {name!r} registers no cost function")
    return COSTS[name]


def saving(unet_s: float = 0.0, expected_unet_s: float | None = None, loop_steps_saved: int = 0,
           detail: dict | None = None, note: str | None = None) -> dict[str, Any]:
    """The record a cost function returns (expected defaults to ideal: no known overhead)."""
    return {"unet_s": unet_s, "expected_unet_s": unet_s if expected_unet_s is None else expected_unet_s,
            "loop_steps_saved": loop_steps_saved, "detail": detail or {}, "note": note}


def row_fractions(counters: dict, steps: int) -> list[float]:
    """Per step, the UNet batch rows run over the first step's rows (1.0 where not logged): T-GATE's CFG drop
    halves them, and a per-call saving at that step is then half a full call's."""
    rows = (counters.get("unet") or {}).get("batch_rows") or []
    base = rows[0] if rows else 1
    return [rows[s] / base if s < len(rows) and base else 1.0 for s in range(steps)]


def mean_at(values: list[float], steps: list[int]) -> float:
    return sum(values[s] for s in steps) / len(steps) if steps else 1.0


@register_cost("steps")
def steps_cost(config, counters, profile, steps, accel_steps) -> dict[str, Any]:
    """(N - n) whole steps of the denoising loop (UNet call + scheduler step) are not run; the text encoder
    and the VAE decode stay."""
    return saving(loop_steps_saved=steps - accel_steps, detail={"steps": accel_steps})


def _load_all() -> None:
    # Import for their @register side effect; a technique module that fails to import is a bug, not optional.
    from analysis.accel import atedm, fastdiff, reuse, tgate  # noqa: F401


def list_techniques() -> dict[str, type]:
    """Every registered technique: name -> Config class."""
    _load_all()
    return dict(TECHNIQUES)


def _convert(value: str, annotation, field_name: str, technique: str):
    text = str(annotation)
    try:
        if "tuple" in text:
            inner = int if "int" in text else float if "float" in text else str
            return tuple(inner(v) for v in value.split("+") if v != "")
        if "bool" in text:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if "int" in text and "float" not in text:
            return int(value)
        if "float" in text:
            return float(value)
    except ValueError:
        raise ValueError(f"{technique}: {field_name}={value!r} is not a valid {text}") from None
    return value


def parse_accel(spec: str):
    """'tgate:gate_step=10,sp_interval=5' -> TGateConfig(gate_step=10, sp_interval=5)."""
    _load_all()
    name, _, rest = spec.partition(":")
    name = name.strip()
    if name not in TECHNIQUES:
        raise ValueError(f"unknown technique {name!r}; choose from {', '.join(sorted(TECHNIQUES))}")
    cls = TECHNIQUES[name]
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()  # "gate_step = 1" as typed in a shell
        if not eq:
            raise ValueError(f"{name}: expected key=value, got {item!r}")
        if key not in fields:
            raise ValueError(f"{name}: unknown parameter {key!r}; known: {', '.join(fields)}")
        kwargs[key] = _convert(value, hints[key], key, name)
    return cls(**kwargs)


def check_combination(configs) -> None:
    """Raise ValueError for combinations that cannot work together, saying why."""
    _load_all()
    by_name = {type(c).name: c for c in configs}
    for config in configs:
        check = getattr(config, "check_with", None)
        if check is not None:
            check(by_name)


from analysis.accel.marks import reused_attention_steps, technique_marks  # noqa: E402  (inside-the-run marks)
