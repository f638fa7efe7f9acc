"""Training-free acceleration techniques, each a plug-in (see analysis/plugins.py) declared as one
`Technique` (analysis/accel/technique.py) in its own module of this package.

`registry()` finds them (name -> Technique, panel order); `list_techniques()` maps the CLI/run.json name to
its Config class; `parse_accel("tgate:gate_step=10")` builds a config from the CLI syntax (list values joined
by '+'); `check_combination` refuses combinations that cannot work, saying why.

Cost functions. Every technique declares, beside its Config, one cost function (`Technique.cost`):
    cost(config, counters, profile, steps, accel_steps) -> {"unet_s", "expected_unet_s", "loop_steps_saved",
                                                             "detail", "note"}
that turns the run's counted work (`counters`, as `run_once` returns them) into seconds of baseline UNet work
not done, timed in `profile` (analysis/eval/profile.py `breakdown`), or into whole denoising-loop steps not
run (step reduction). `steps` is the baseline's step count, `accel_steps` the accelerated run's.
analysis/eval/cost.py converts that to a fraction of the pipeline and an ideal speed-up.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import typing
from typing import Any, Callable

from analysis.accel.technique import Technique

CostFunction = Callable[..., dict[str, Any]]


def cost_function(name: str) -> CostFunction:
    return technique(name).cost


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


def registry() -> dict[str, "Technique"]:
    """Every technique, name -> Technique, in panel order: each module of this package that defines
    `TECHNIQUE` (found with pkgutil, so a new technique needs no list kept by hand). A module that fails to
    import is a bug, not an optional technique: the error propagates."""
    global _REGISTRY
    if _REGISTRY is None:
        found = {}
        for info in pkgutil.iter_modules(__path__):
            module = importlib.import_module(f"{__name__}.{info.name}")
            technique = getattr(module, "TECHNIQUE", None)
            if technique is not None:
                if technique.name in found:
                    raise RuntimeError(f"two techniques are named {technique.name!r}")
                found[technique.name] = technique
        _REGISTRY = dict(sorted(found.items(), key=lambda kv: (kv[1].order, kv[0])))
    return _REGISTRY


_REGISTRY: dict | None = None


def technique(name: str) -> "Technique":
    techniques = registry()
    if name not in techniques:
        raise ValueError(f"unknown technique {name!r}; choose from {', '.join(sorted(techniques))}")
    return techniques[name]


def technique_of(config) -> "Technique":
    return technique(type(config).name)


def step_reduction_name() -> str:
    """The name of plain step reduction, the baseline every technique is compared with (a sweep's ladder)."""
    return next(name for name, t in registry().items() if t.is_step_reduction)


def ladder_families() -> tuple[str, str]:
    """A sweep's step-reduction ladder: its settings' family and full compute's ("baseline")."""
    return (step_reduction_name(), "baseline")


def list_techniques() -> dict[str, type]:
    """Every registered technique: name -> Config class."""
    return {name: t.config for name, t in registry().items()}


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
    name, _, rest = spec.partition(":")
    name = name.strip()
    cls = technique(name).config
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
    by_name = {type(c).name: c for c in configs}
    for config in configs:
        check = getattr(config, "check_with", None)
        if check is not None:
            check(by_name)


from analysis.accel.marks import reused_attention_steps, technique_marks  # noqa: E402  (inside-the-run marks)
