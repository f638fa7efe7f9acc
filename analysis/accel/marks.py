"""What each technique does at each denoising step, resolved for one run, as plain data for the figures
("inside the accelerated run": viz.plotly_figs marks gate steps, key steps, reused steps).

`technique_marks(accel_configs, steps, model)` reads only the configs (no pipeline, no run), so the app can
draw the marks before the instrumented run finishes; the tokens AT-EDM actually pruned are data of a run,
not of a config, and come from the run's signal "atedm_pruning" (docs/signals.md).

Schema:
    {"steps": int,                       # the accelerated run's step count
     "techniques": {name: {...}},        # each technique's own marks (its `Technique.marks`), e.g.
                                         #   tgate: gate_step, gated, cross/self actions per step;
                                         #   reuse: policy, reused_steps, scope; fastdiff: key_steps, ...;
                                         #   atedm: ratio, dsap, early_steps; steps: {"steps": n}
     "strip": [(label, [state] * steps, [letter] * steps)],  # the step strip's rows (states: viz STRIP_CODES)
     "lines": {"convergence" | "drift": {"label": str, "steps": [int]}},  # marked on a probe's figure
     "reused": {"cross": [int], "self": [int]}}              # steps whose maps a probe shows were not computed
"""
from __future__ import annotations

from typing import Any, Sequence

from analysis.accel import registry, technique_of


def technique_marks(accel_configs: Sequence[Any], steps: int, model: str = "default") -> dict[str, Any]:
    """Per-technique, per-step marks for a run of `steps` denoising steps (the accelerated run's own count:
    a step reduction in `accel_configs` overrides it). Raises ValueError as the techniques do (e.g. a custom
    reuse policy of the wrong length, a missing PHAST policy)."""
    order = {name: i for i, name in enumerate(registry())}  # panel order, so the strip's rows read alike
    pairs = sorted(((technique_of(c), c) for c in accel_configs), key=lambda pair: order[pair[0].name])
    for technique, config in pairs:
        steps = technique.run_steps(config, steps)
    out: dict[str, Any] = {"steps": int(steps), "techniques": {}, "strip": [], "lines": {},
                           "reused": {"cross": [], "self": []}}
    for technique, config in pairs:
        marks = technique.marks(config, steps, model)
        out["techniques"][technique.name] = marks
        out["strip"] += technique.strip(marks, steps)
        for kind, (label, steps_marked) in technique.lines(marks).items():
            line = out["lines"].setdefault(kind, {"label": "", "steps": []})
            line["label"] = "; ".join(filter(None, (line["label"], label)))
            line["steps"] = sorted(set(line["steps"]) | set(steps_marked))
        for kind in ("cross", "self"):
            out["reused"][kind] = sorted(set(out["reused"][kind]) | set(technique.reused(marks, kind)))
    return out


def reused_attention_steps(marks: dict[str, Any], kind: str = "cross") -> list[int]:
    """Steps at which the `kind` ("cross" | "self") attention maps or outputs shown by a probe were not computed
    at that step: reused maps (reuse, in scope) and T-GATE's cached outputs."""
    return list((marks.get("reused") or {}).get(kind, []))
