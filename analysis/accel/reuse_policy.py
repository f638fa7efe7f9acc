"""Reuse policies for attention-map reuse (analysis/accel/reuse.py): which steps compute their maps (C) and
which reuse the latest computed ones (R), as a C/R string per run.

- `hurry_policy`: our reading of HURRY, late reuse (see reuse.py's docstring);
- `strided_policy`: the uniform counterpoint, R steps spread evenly over the odd steps;
- `load_phast`: a searched PHAST policy from `assets/policies/<model>-<steps>.json` (analysis/policy_search.py).
"""
from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path

import numpy as np

POLICY_DIR = Path(__file__).resolve().parent.parent.parent / "assets" / "policies"
POLICY_FORMAT = "diffscope-reuse-policy/1"
SCOPES = ("self", "cross", "both")


def default_reuse_steps(steps: int) -> int:
    """About a third of the steps, rounded: (steps + 1) // 3 (7 of 20, 10 of 30)."""
    return (steps + 1) // 3


def hurry_policy(steps: int, reuse_steps: int, max_run: int = 2) -> str:
    """R steps as late as possible, no computed map reused more than `max_run` steps in a row.

    Filled from the last step backwards: R while the current run is shorter than max_run, then one C.
    """
    if reuse_steps < 0 or max_run < 1:
        raise ValueError(f"reuse: need reuse_steps >= 0 and max_run >= 1, got {reuse_steps} and {max_run}")
    need = reuse_steps + math.ceil(reuse_steps / max_run) if reuse_steps else 1
    if need > steps:
        raise ValueError(
            f"reuse: {reuse_steps} reuse steps with max_run={max_run} need at least {need} steps (each run of at "
            f"most {max_run} R steps follows a C step, and step 0 computes); the run has {steps}"
        )
    out = ["C"] * steps
    remaining, run = reuse_steps, 0
    for i in range(steps - 1, 0, -1):
        if remaining == 0:
            break
        if run < max_run:
            out[i], remaining, run = "R", remaining - 1, run + 1
        else:
            run = 0
    return "".join(out)


def strided_policy(steps: int, reuse_steps: int) -> str:
    """The uniform counterpoint to HURRY (the comparison Hunter et al. make against late reuse): `reuse_steps`
    R steps spread evenly over the odd steps (CRCR... when reuse_steps = steps // 2)."""
    slots = list(range(1, steps, 2))
    if not 0 <= reuse_steps <= len(slots):
        raise ValueError(f"strided reuse: {reuse_steps} R steps do not fit {steps} steps (at most {len(slots)})")
    out = ["C"] * steps
    if reuse_steps:
        for i in np.unique(np.round(np.linspace(len(slots) - 1, 0, reuse_steps)).astype(int)):
            out[slots[i]] = "R"
    return "".join(out)


def longest_run(policy: str) -> int:
    return max((len(m) for m in re.findall("R+", policy)), default=0)


def model_slug(model: str) -> str:
    """File-name form of a model name: 'default' -> 'default', 'owner/name' -> 'owner--name'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "--", model.strip("/")) or "custom"


def policy_path(model: str, steps: int, directory: Path | None = None) -> Path:
    return (directory or POLICY_DIR) / f"{model_slug(model)}-{steps}.json"


def searched_elsewhere(recorded: dict, scheduler: str | None = None, guidance: float | None = None) -> str | None:
    """One line saying how the run differs from the scheduler / guidance a policy file was searched with, or
    None (a value not given, or not recorded, is not compared)."""
    diffs = []
    if scheduler is not None and recorded.get("scheduler") not in (None, scheduler):
        diffs.append(f"scheduler {recorded['scheduler']} (this run: {scheduler})")
    if guidance is not None and recorded.get("guidance") is not None and float(recorded["guidance"]) != float(guidance):
        diffs.append(f"guidance {recorded['guidance']} (this run: {guidance})")
    if not diffs:
        return None
    return ("reuse: the PHAST policy for model {model!r} at {steps} steps was searched with " + " and ".join(diffs)
            + "; a searched policy is tuned to its sampler, so it may not be the best one for this run "
              "(run `python -m analysis search-policy` with these settings to make a matching one)").format(
        model=recorded.get("model"), steps=recorded.get("steps"))


def load_phast(model: str, steps: int, reuse_steps: int, scope: str, directory: Path | None = None,
               scheduler: str | None = None, guidance: float | None = None) -> str:
    """The searched policy for (model, steps, reuse_steps, scope).

    With `scheduler` and/or `guidance` given, a file searched with other values still loads, but a warning
    (UserWarning, `searched_elsewhere`) says so: the policy is valid, only perhaps not the best for this run.

    File format (`assets/policies/<model>-<steps>.json`, written by `python -m analysis search-policy`):
        {"format": "diffscope-reuse-policy/1", "model": "default", "steps": 20, "scheduler": "ddim",
         "guidance": 5.0, "size": null,
         "policies": [{"reuse_steps": 7, "scope": "both", "max_run": 2, "policy": "CCCC...R",
                       "hurry_policy": "CCCC...R", "calibration": {...}, "held_out": {...}}, ...]}
    One file per model and step count; one entry per (reuse_steps, scope).
    """
    path = policy_path(model, steps, directory)
    hint = (f"run `python -m analysis search-policy --model {model} --steps {steps} --reuse-steps {reuse_steps} "
            f"--scope {scope}` to make one, or use policy=hurry")
    if not path.exists():
        raise ValueError(f"reuse: no PHAST policy for model {model!r} at {steps} steps ({path} is missing); {hint}")
    try:
        data = json.loads(path.read_text())
        entries = data["policies"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"reuse: {path} is not a policy file ({err})") from None
    for entry in entries:
        if entry.get("reuse_steps") == reuse_steps and entry.get("scope") == scope:
            policy = str(entry["policy"])
            if len(policy) != steps or set(policy) - {"C", "R"} or policy[0] != "C" or policy.count("R") != reuse_steps:
                raise ValueError(f"reuse: the policy in {path} for reuse_steps={reuse_steps} is malformed: {policy!r}")
            message = searched_elsewhere(data, scheduler, guidance)
            if message:
                warnings.warn(message, stacklevel=2)
            return policy
    have = ", ".join(f"reuse_steps={e.get('reuse_steps')} scope={e.get('scope')}" for e in entries) or "none"
    raise ValueError(f"reuse: {path} has no PHAST policy for reuse_steps={reuse_steps} scope={scope} (it has: {have}); {hint}")


def phast_file(model: str, steps: int, directory: Path | None = None) -> dict:
    """The policy file's header (model, steps, scheduler, guidance, size), {} if unreadable."""
    try:
        data = json.loads(policy_path(model, steps, directory).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return {k: data.get(k) for k in ("model", "steps", "scheduler", "guidance", "size")} if isinstance(data, dict) else {}


def phast_policy(steps: int, reuse_steps: int, scope: str = "both", model: str = "default") -> str | None:
    """The searched PHAST policy string if assets/policies has it, else None (a sweep leaves the setting out)."""
    path = policy_path(model, steps)
    if not path.exists():
        return None
    for entry in json.loads(path.read_text()).get("policies", []):
        if entry.get("reuse_steps") == reuse_steps and entry.get("scope") == scope:
            return str(entry["policy"])
    return None
