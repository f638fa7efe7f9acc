"""What each technique does at each denoising step, resolved for one run, as plain data for the figures
("inside the accelerated run": viz.plotly_figs marks gate steps, key steps, reused steps).

`technique_marks(accel_configs, steps, model)` reads only the configs (no pipeline, no run), so the app can
draw the marks before the instrumented run finishes; the tokens AT-EDM actually pruned are data of a run,
not of a config, and come from the run's signal "atedm_pruning" (docs/signals.md).

Schema (every key present only for techniques in `accel_configs`):
    {"steps": int,                                   # the accelerated run's step count
     "tgate": {"gate_step": int,                     # from this step on cross-attention is cached, CFG dropped
               "gated": bool,                        # gate_step < steps (otherwise T-GATE changes nothing there)
               "cross": [str] * steps, "self": [str] * steps},   # per step: "compute" | "cache" | "reuse"
     "reuse": {"policy": str,                        # C/R per step, e.g. "CCCCRCRR"
               "reused_steps": [int], "scope": "self" | "cross" | "both"},
     "fastdiff": {"key_steps": [int],                # steps whose encoder runs
                  "skipped_steps": [int], "parallel": bool, "noise": bool},
     "atedm": {"ratio": float, "dsap": bool,
               "early_steps": [int]},                # DSAP's early steps (protected blocks unpruned, the rest scaled)
     "steps_reduction": {"steps": int}}              # plain step reduction: the run's own step count
"""
from __future__ import annotations

from typing import Any, Sequence


def tgate_gate_step(config, steps: int) -> int:
    """T-GATE's gate step for a run of `steps` steps, resolved by the config itself where it can (a default of
    None means a fraction of the run); otherwise the configured gate_step, or round(0.4 * steps) for None."""
    for method in ("resolve_gate_step", "resolved_gate_step", "gate_step_for"):
        fn = getattr(config, method, None)
        if callable(fn):
            return int(fn(steps))
    gate = getattr(config, "gate_step", None)
    return int(round(0.4 * steps)) if gate is None else int(gate)


def technique_marks(accel_configs: Sequence[Any], steps: int, model: str = "default") -> dict[str, Any]:
    """Per-technique, per-step marks for a run of `steps` denoising steps (the accelerated run's own count:
    a `steps` technique in `accel_configs` overrides it). Raises ValueError as the techniques do (e.g. a
    custom reuse policy of the wrong length, a missing PHAST policy)."""
    by_name = {type(c).name: c for c in accel_configs}
    if "steps" in by_name:
        steps = int(by_name["steps"].steps)
    out: dict[str, Any] = {"steps": int(steps)}
    if "steps" in by_name:
        out["steps_reduction"] = {"steps": int(steps)}
    if "tgate" in by_name:
        cfg = by_name["tgate"]
        gate = tgate_gate_step(cfg, steps)
        cross, self_, _ = cfg.plan(steps)
        out["tgate"] = {"gate_step": gate, "gated": gate < steps, "cross": list(cross), "self": list(self_)}
    if "reuse" in by_name:
        cfg = by_name["reuse"]
        policy = cfg.resolve(steps, model)
        out["reuse"] = {"policy": policy, "reused_steps": [i for i, c in enumerate(policy) if c == "R"],
                        "scope": cfg.scope}
    if "fastdiff" in by_name:
        cfg = by_name["fastdiff"]
        keys = [int(k) for k in cfg.resolve_key_steps(steps)]
        out["fastdiff"] = {"key_steps": keys, "skipped_steps": [s for s in range(steps) if s not in set(keys)],
                           "parallel": bool(cfg.parallel), "noise": bool(cfg.noise)}
    if "atedm" in by_name:
        cfg = by_name["atedm"]
        early = int(cfg.dsap_fraction * steps + 0.5) if cfg.dsap else 0  # ATEDMHandle.n_prune's split
        out["atedm"] = {"ratio": float(cfg.ratio), "dsap": bool(cfg.dsap), "early_steps": list(range(early))}
    return out


def reused_attention_steps(marks: dict[str, Any], kind: str = "cross") -> list[int]:
    """Steps at which the `kind` ("cross" | "self") attention maps or outputs shown by a probe were not computed
    at that step: reused maps (reuse, in scope) and T-GATE's cached outputs."""
    out: set[int] = set()
    reuse = marks.get("reuse")
    if reuse and reuse["scope"] in (kind, "both"):
        out.update(reuse["reused_steps"])
    tgate = marks.get("tgate")
    if tgate:
        out.update(i for i, a in enumerate(tgate[kind]) if a == "reuse")
    return sorted(out)
