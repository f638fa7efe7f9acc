"""What one acceleration technique tells the rest of DiffScope, declared in its own module.

Each technique module in analysis/accel defines `TECHNIQUE = Technique(...)`; analysis.accel.registry finds
them (pkgutil over the package, no hand-kept list). The engine, the app (ui/), the live runs, the marks of the
"inside the run" figures, the profile bounds, the sweep grid and the figures' colours read only this object:
no technique's name appears in a condition outside its own file.

A technique is:
- `config`: its frozen Config dataclass (paper defaults, validated in __post_init__) with `name`, `attach(ctx)`,
  `off(steps)` (a setting that reproduces the baseline bit for bit) and, where a combination cannot work,
  `check_with(by_name)` (ValueError saying why; symmetric: both sides refuse);
- `knobs`: the UI block's controls (Knob), whose defaults may follow the run's step count, and `build`, which
  turns the checked knob values into a config;
- `cost`: the cost function (analysis/accel/__init__.py docstring) that turns counted skipped work into seconds;
- `marks` / `strip`: what the technique does at each step of a run (plain data for viz/), and `reused`, the
  steps at which a probe's attention maps were not computed at that step;
- `summary`: one line saying what the run really skipped, from its counters;
- `bound` / `bound_text`: the largest share of the pipeline it could remove (analysis/eval/profile.py);
- `grid`: its family of the default sweep grid, as (setting name, --accel specs) pairs;
- `colour`, `marker`, `title`, `reference`: how figures and the panel show it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

Marks = dict[str, Any]
StripRow = tuple[str, list[str], list[str]]  # (row label, per-step state, per-step letter)


@dataclass(frozen=True)
class Knob:
    """One control of a technique's block in the app.

    kind: "int" | "float" (a slider from low to high), "bool" (a checkbox), "choice" (a dropdown, or radio
    buttons when `radio`), "text" (a one-line box). `default` is a value or a function of the run's step count;
    a knob whose default follows the steps is re-defaulted when the step count changes (if the user left it at
    its default) or clamped to `limit(steps, values)` with a note (if the user set it)."""

    key: str
    label: str
    kind: str
    default: Any
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: tuple[tuple[str, Any], ...] = ()
    radio: bool = False
    info: str = ""
    placeholder: str = ""
    limit: Callable[[int, dict], int] | None = None
    accept: tuple[float, float] | None = None  # what a handler accepts (default low..high); the config checks the rest

    def __post_init__(self):
        if self.kind not in ("int", "float", "bool", "choice", "text"):
            raise ValueError(f"knob {self.key}: unknown kind {self.kind!r}")

    @property
    def follows_steps(self) -> bool:
        return callable(self.default)

    @property
    def accepted(self) -> tuple[float, float]:
        return self.accept if self.accept is not None else (self.low, self.high)

    def default_for(self, steps: int) -> Any:
        return self.default(steps) if callable(self.default) else self.default


def no_reuse(marks: Marks, kind: str) -> list[int]:
    return []


def same_steps(config: Any, steps: int) -> int:
    return steps


def nothing_to_validate(config: Any, steps: int, model: str) -> None:
    pass


@dataclass(frozen=True)
class Technique:
    name: str
    title: str
    reference: str
    config: type
    knobs: tuple[Knob, ...]
    build: Callable[[dict, int], Any]            # checked knob values by key, the run's steps -> config
    cost: Callable[..., dict]                    # (config, counters, profile, steps, accel_steps) -> saving(...)
    summary: Callable[[dict], str]               # the technique's counters -> one line
    marks: Callable[[Any, int, str], Marks]      # (config, steps, model) -> per-step marks
    strip: Callable[[Marks, int], list[StripRow]]  # (its marks, steps) -> rows of the step strip
    bound_text: str
    bound: Callable[[dict, int], float]          # (profile breakdown, steps) -> share of the pipeline, at most
    grid: Callable[[int], list[tuple[str, tuple[str, ...]]]]  # steps -> [(setting name, --accel specs)]
    colour: str
    marker: str = "o"
    order: int = 50                              # position in the panel and in the default grid
    reused: Callable[[Marks, str], list[int]] = no_reuse  # (its marks, "cross" | "self") -> steps not computed
    validate: Callable[[Any, int, str], None] = nothing_to_validate  # run-time resolution that would fail late
    run_steps: Callable[[Any, int], int] = same_steps  # the accelerated run's step count (step reduction)
    is_step_reduction: bool = False              # the baseline every technique is judged against
    lines: Callable[[Marks], dict[str, tuple[str, list[int]]]] = field(default=lambda marks: {})
    # steps a probe's figure marks with lines, and what they are: {"convergence": ("T-GATE gate", [8]), ...}

    def default_values(self, steps: int) -> dict[str, Any]:
        return {k.key: k.default_for(steps) for k in self.knobs}
