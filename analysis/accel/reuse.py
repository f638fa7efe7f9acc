"""Attention-map reuse (Hunter et al., arXiv 2401.01008): HURRY and PHAST reuse policies.

What is reused. On a reuse step ("R") every in-scope attention module takes the softmax(QK^T) probabilities
of the most recent compute step ("C") from a per-module cache: the Q and K projections and the softmax are
skipped, V and the output projection run on the current hidden states (`AttentionPlugin.reuse_probs`; the
dispatcher does `P_cached @ V`, then `to_out`). The paper's full text was not reachable, so whether V is
recomputed is our reading of "attention maps".

The policy is a string of C/R, one letter per denoising step, resolved per run from `clock.num_steps`:

- an explicit string, e.g. "CCCCCCRCRRCRR" (its length must equal the run's step count);
- "hurry": our reading of HURRY ("late reuse"). The paper motivates it with ODE theory: a distortion
  injected at step t grows roughly like exp(lambda * remaining time) along the probability-flow ODE, so the
  later a map is reused, the smaller the damage to the final image. We therefore put the R steps as late as
  possible, filling from the last step backwards, under one constraint: no computed map is reused more than
  `max_run` steps in a row (the distortion of a reused map grows with its age). Each run of at most
  `max_run` R steps follows a C step, and the shorter run (if `reuse_steps` is not a multiple of `max_run`)
  comes first. Examples: 20 steps, 7 R, max_run 2 -> CCCCCCCCCCRCRRCRRCRR; 8 steps, 3 R, max_run 1 ->
  CCCRCRCR (see `hurry_policy`). The paper's exact HURRY schedule is UNVERIFIED.
- "phast": a searched policy (greedy perturbation of HURRY, `analysis/policy_search.py`), loaded from
  `assets/policies/<model>-<steps>.json` for the pipeline's model name and the run's step count; a missing
  file or entry is a ValueError that says how to make one.

Defaults. `reuse_steps=None` resolves to round(steps / 3) = (steps + 1) // 3 R steps (7 of 20): the brief's
"about a third"; the paper's Figure 1 shows 10 of 20, which `reuse_steps=10` reproduces (max_run must then
allow it: 10 R need 10 + ceil(10 / max_run) steps). `scope="both"` reuses self- and cross-attention maps
(the paper's scope is UNVERIFIED). Step 0 is always C.

Cost. A C step whose map is needed by the next step (an R) materialises the probabilities (no fused SDPA on
that call) and keeps one map per in-scope module: that is the memory price. C steps whose
map is not needed run the original processor untouched, so an all-C policy is bit-identical to the baseline.

Combination rules (`check_with`): with `tgate`, reuse must be scope=self (T-GATE replaces every
cross-attention output after its gate, so reused cross maps would never be used) and T-GATE must not cache
self-attention (sp_interval=1, fi_interval=1), so each attention module has one owner. When T-GATE drops the
CFG half of the batch, a map cached from a [uncond; cond] step is averaged over the halves, like T-GATE's
own gate-step cache. atedm and fastdiff (parallel=true) refuse reuse in their own `check_with`. A cached
map whose token counts no longer match the call is not used (the call computes).

Counters: maps_computed / maps_reused count in-scope attention calls (exactly r * L reused for r R steps on
L in-scope modules), maps_cached the calls whose probabilities were materialised for a later R step.
"""
from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from analysis.accel import mean_at, register, register_cost, row_fractions, saving
from analysis.attention import AttentionPlugin, AttnCall
from analysis.plugins import HandleBase

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
    """The uniform counterpoint to HURRY: the R steps spread evenly over steps 1..N-1 (CRCR... when
    reuse_steps is about half the steps), the comparison Hunter et al. make against late reuse."""
    if not 0 <= reuse_steps < steps:
        raise ValueError(f"reuse: strided needs 0 <= reuse_steps < steps ({steps}), got {reuse_steps}")
    out = ["C"] * steps
    gap = (steps - 1) / reuse_steps if reuse_steps else 0.0
    for j in range(reuse_steps):
        out[min(steps - 1, max(1, int(1 + (j + 0.5) * gap)))] = "R"
    if out.count("R") != reuse_steps:  # rounding collided two R steps: fill the latest free slots
        for i in range(steps - 1, 0, -1):
            if out.count("R") == reuse_steps:
                break
            out[i] = "R"
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


def _guidance_check(pipe, recorded: dict):
    """A step-end callback that, after the first step (the pipeline has set its guidance scale by then), warns
    once if the run's guidance differs from the policy file's."""
    done = []

    def check(step_index, timestep, latents):
        if not done:
            done.append(True)
            message = searched_elsewhere(recorded, guidance=getattr(pipe, "_guidance_scale", None))
            if message:
                warnings.warn(message, stacklevel=2)
        return None

    return check


@register
@dataclass(frozen=True)
class ReuseConfig:
    """Attention-map reuse. policy: "hurry" | "phast" | a C/R string (one letter per step, step 0 = C)."""

    name: ClassVar[str] = "reuse"
    policy: str = "hurry"
    reuse_steps: int | None = None  # number of R steps; None = (steps + 1) // 3
    scope: str = "both"  # "self" | "cross" | "both"
    max_run: int = 2  # HURRY: no map reused more than max_run steps in a row

    def __post_init__(self):
        if not isinstance(self.policy, str) or not self.policy.strip():
            raise ValueError(f"reuse: policy must be 'hurry', 'phast' or a string of C/R per step, got {self.policy!r}")
        policy = self.policy.strip()
        if policy.lower() in ("hurry", "phast"):
            object.__setattr__(self, "policy", policy.lower())
        else:
            policy = policy.upper()
            if set(policy) - {"C", "R"}:
                raise ValueError(
                    f"reuse: policy must be 'hurry', 'phast' or a string of C/R per step (C = compute, R = reuse), "
                    f"got {self.policy!r}"
                )
            if policy[0] != "C":
                raise ValueError(f"reuse: step 0 must compute its maps (policy must start with C), got {policy!r}")
            n_r = policy.count("R")
            if self.reuse_steps is not None and self.reuse_steps != n_r:
                raise ValueError(f"reuse: reuse_steps={self.reuse_steps} but policy {policy!r} has {n_r} R steps")
            object.__setattr__(self, "policy", policy)
            object.__setattr__(self, "reuse_steps", n_r)
        if self.reuse_steps is not None and (isinstance(self.reuse_steps, bool) or not isinstance(self.reuse_steps, int)
                                             or self.reuse_steps < 0):
            raise ValueError(f"reuse: reuse_steps must be a non-negative integer, got {self.reuse_steps!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"reuse: scope must be one of {', '.join(SCOPES)}, got {self.scope!r}")
        if isinstance(self.max_run, bool) or not isinstance(self.max_run, int) or self.max_run < 1:
            raise ValueError(f"reuse: max_run must be an integer >= 1, got {self.max_run!r}")

    def resolve(self, steps: int, model: str = "default", policy_dir: Path | None = None,
                scheduler: str | None = None, guidance: float | None = None) -> str:
        """The C/R string for a run of `steps` steps on `model` (scheduler / guidance: checked against what a
        PHAST policy was searched with, see `load_phast`)."""
        if self.policy not in ("hurry", "phast"):
            if len(self.policy) != steps:
                raise ValueError(f"reuse: policy {self.policy!r} has {len(self.policy)} entries but the run has {steps} steps")
            return self.policy
        r = default_reuse_steps(steps) if self.reuse_steps is None else self.reuse_steps
        if r >= steps and steps > 0:
            raise ValueError(f"reuse: reuse_steps={r} must be less than the number of steps ({steps}); step 0 computes")
        if self.policy == "hurry":
            return hurry_policy(steps, r, self.max_run)
        return load_phast(model, steps, r, self.scope, policy_dir, scheduler, guidance)

    def check_with(self, by_name: dict) -> None:
        steps_cfg = by_name.get("steps")
        if steps_cfg is not None and self.policy != "phast":
            self.resolve(steps_cfg.steps)
        tgate = by_name.get("tgate")
        if tgate is not None:
            if self.scope != "self":
                raise ValueError(
                    f"reuse: scope={self.scope} reuses cross-attention maps, but tgate owns cross-attention (it "
                    f"returns a cached output after its gate step, so a reused cross map is never used); "
                    f"use reuse:scope=self with tgate"
                )
            if tgate.caches_self_attention():
                raise ValueError(
                    f"reuse: tgate with sp_interval={tgate.sp_interval}, fi_interval={tgate.fi_interval} caches "
                    f"self-attention outputs while reuse:scope=self reuses self-attention maps; one module can have "
                    f"one owner: use tgate:sp_interval=1,fi_interval=1 (cross-attention gate and CFG drop only)"
                )

    def attach(self, ctx) -> "ReuseHandle":
        from analysis.models import scheduler_name

        # The guidance value is not known before the pipeline call starts; the scheduler is.
        policy = self.resolve(ctx.clock.num_steps, getattr(ctx.pipe, "diffscope_name", "custom"),
                              scheduler=scheduler_name(ctx.pipe.scheduler))
        if self.policy == "phast":
            recorded = phast_file(getattr(ctx.pipe, "diffscope_name", "custom"), ctx.clock.num_steps)
            ctx.on_step_end(_guidance_check(ctx.pipe, recorded))
        handle = ReuseHandle(self, policy)
        ctx.seam()  # the UNet seam advances the clock's step index, which the policy is indexed by
        handle.dispatcher = ctx.attention()
        handle.dispatcher.add(handle)
        return handle


class ReuseHandle(AttentionPlugin, HandleBase):
    """The run state of attention-map reuse: one cached map per in-scope module, the latest C step's."""

    observer = False  # the cached map must come from the call that produces the image

    def __init__(self, config: ReuseConfig, policy: str):
        self.config, self.policy = config, policy
        self.maps: dict[str, torch.Tensor] = {}
        self.dispatcher = None
        self.modules: set[str] = set()
        self.computed = self.reused = self.cached = 0

    # --- policy -------------------------------------------------------------------------------------------
    def _kind(self, step: int) -> str:
        return self.policy[step] if 0 <= step < len(self.policy) else "C"

    def _in_scope(self, call: AttnCall) -> bool:
        scope = self.config.scope
        return scope == "both" or (scope == "cross") == call.is_cross

    def _needed_later(self, call: AttnCall) -> bool:
        return self._kind(call.step) == "C" and self._kind(call.step + 1) == "R"

    # --- dispatcher hooks ---------------------------------------------------------------------------------
    def reuse_probs(self, call: AttnCall) -> torch.Tensor | None:
        if not self._in_scope(call) or self._kind(call.step) != "R":
            return None
        probs = self.maps.get(call.name)
        if probs is None:
            return None  # no map (e.g. the C step was served by another plug-in): compute
        keys = call.encoder_hidden_states.shape[1] if call.is_cross else call.n_queries
        if probs.shape[1:] != (call.n_queries, keys):
            return None  # the token count changed since the map was computed: compute
        rows = call.hidden_states.shape[0] * call.attn.heads
        if probs.shape[0] != rows:
            if probs.shape[0] != 2 * rows:
                return None
            # T-GATE dropped the CFG half after its gate: average the [uncond; cond] maps (rows stay stochastic)
            uncond, cond = probs.chunk(2)
            probs = (uncond + cond) / 2
            self.maps[call.name] = probs
        self.reused += 1
        self.modules.add(call.name)
        return probs

    def wants_probs(self, call: AttnCall) -> bool:
        # Asked exactly once per attention call that was not replaced outright, after reuse_probs: the place to
        # count calls whose map was computed.
        if not self._in_scope(call):
            return False
        self.modules.add(call.name)
        if call.reused:
            return False
        self.computed += 1
        if self._needed_later(call):
            return True
        self.maps.pop(call.name, None)  # the run of R steps that used it is over
        return False

    def on_probs(self, call: AttnCall, probs: torch.Tensor) -> None:
        if self._in_scope(call) and not call.reused and self._needed_later(call):
            self.maps[call.name] = probs
            self.cached += 1

    # --- handle -------------------------------------------------------------------------------------------
    def detach(self) -> None:
        if self.dispatcher is not None and self in self.dispatcher.plugins:
            self.dispatcher.plugins.remove(self)
        self.dispatcher = None
        self.maps.clear()

    def counters(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "r_steps": self.policy.count("R"),
            "scope": self.config.scope,
            "modules": len(self.modules),
            "maps_computed": self.computed,
            "maps_reused": self.reused,
            "maps_cached": self.cached,
        }


@register_cost("reuse")
def reuse_cost(config: ReuseConfig, counters: dict, profile: dict, steps: int, accel_steps: int) -> dict[str, Any]:
    """Ideal: maps_reused x the mean attention-map time (Q/K projections + QK^T + softmax) of an in-scope module;
    V, probs @ V and to_out still run. Expected also charges the explicit (non-SDPA) path this implementation
    runs: a reused call saves (fused time - explicit time without Q/K/softmax), a call that caches a map for
    the next step pays (explicit - fused). Per-call savings are scaled by the batch rows of the R steps (T-GATE
    may have halved them)."""
    c = counters.get("reuse", {})
    kinds = {"self": ("self",), "cross": ("cross",), "both": ("self", "cross")}[c.get("scope", config.scope)]
    scope = [m for m in profile["attention_modules"].values() if m["kind"] in kinds]
    n = max(1, len(scope))
    map_call = sum(m["map_s"] for m in scope) / n
    saved_r = sum(m["fused_s"] - m["reuse_step_explicit_s"] for m in scope) / n
    extra_c = sum(m["explicit_s"] - m["fused_s"] for m in scope) / n
    reused, cached = c.get("maps_reused", 0), c.get("maps_cached", 0)
    policy = c.get("policy") or ""
    frac = row_fractions(counters, accel_steps)
    r_rows = mean_at(frac, [s for s, k in enumerate(policy[:accel_steps]) if k == "R"])
    c_rows = mean_at(frac, [s for s in range(min(len(policy), accel_steps) - 1) if policy[s] == "C" and policy[s + 1] == "R"])
    return saving(
        unet_s=reused * map_call * r_rows,
        expected_unet_s=reused * saved_r * r_rows - cached * extra_c * c_rows,
        detail={"maps_reused": reused, "maps_cached": cached, "in_scope_modules": len(scope),
                "map_per_call_s": map_call, "reused_call_saving_s": saved_r, "cache_call_extra_s": extra_c,
                "rows_at_reuse_steps": r_rows})
