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

Layers (issue 20): `layers="auto"` (default) reuses only in the attention modules where, from the cached layer
profile of this model and size (analysis/accel/layer_profile.py), the R steps' saving exceeds the caching
steps' explicit-attention cost (`module_saving_s`); in runs too small to profile (PROFILE_MIN_POSITIONS there:
the embedded model at 64 px) it is every module, as "all" (the paper's method) always is. Module names joined
by '+' choose by hand.

Counters: maps_computed / maps_reused count in-scope attention calls (exactly r * L reused for r R steps on
L in-scope modules), maps_cached the calls whose probabilities were materialised for a later R step.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from diffusers.models.attention_processor import Attention

from analysis.accel import mean_at, row_fractions, saving
from analysis.accel.layer_profile import LAYER_CHOICES, LAYERS_INFO, check_layers, chosen
from analysis.accel.reuse_policy import (SCOPES, default_reuse_steps, hurry_policy, load_phast, phast_file,
                                         phast_policy, searched_elsewhere, strided_policy)
from analysis.accel.technique import Knob, Technique
from analysis.attention import AttentionPlugin, AttnCall
from analysis.plugins import HandleBase

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


MAP_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class ReuseConfig:
    """Attention-map reuse. policy: "hurry" | "phast" | a C/R string (one letter per step, step 0 = C)."""

    name: ClassVar[str] = "reuse"
    policy: str = "hurry"
    reuse_steps: int | None = None  # number of R steps; None = (steps + 1) // 3
    scope: str = "both"  # "self" | "cross" | "both"
    max_run: int = 2  # HURRY: no map reused more than max_run steps in a row
    map_dtype: str = "float32"  # how a cached map is kept: "float16" / "bfloat16" halve its memory (issue 20)
    layers: str = "auto"  # "auto" (only modules where reuse saves time, from the layer profile) | "all" | names

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
        check_layers(self.layers, "reuse")
        if self.map_dtype not in MAP_DTYPES:
            raise ValueError(f"reuse: map_dtype must be one of {', '.join(MAP_DTYPES)}, got {self.map_dtype!r}")

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

    @classmethod
    def off(cls, steps: int) -> "ReuseConfig":
        """All C: every map computed, none materialised; the baseline bit for bit."""
        return cls(policy="C" * steps, layers="all")

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
        from analysis.models import model_name, scheduler_name

        # The guidance value is not known before the pipeline call starts; the scheduler is.
        policy = self.resolve(ctx.clock.num_steps, model_name(ctx.pipe), scheduler=scheduler_name(ctx.pipe.scheduler))
        if self.policy == "phast":
            recorded = phast_file(model_name(ctx.pipe), ctx.clock.num_steps)
            ctx.on_step_end(_guidance_check(ctx.pipe, recorded))
        names = [n for n, m in ctx.unet.named_modules() if isinstance(m, Attention)]
        auto = auto_modules(ctx.layer_profile, policy, self.scope) if ctx.layer_profile is not None else None
        handle = ReuseHandle(self, policy, chosen(self.layers, names, "reuse", auto))
        ctx.seam()  # the UNet seam advances the clock's step index, which the policy is indexed by
        handle.dispatcher = ctx.attention()
        handle.dispatcher.add(handle)
        return handle


class ReuseHandle(AttentionPlugin, HandleBase):
    """The run state of attention-map reuse: one cached map per in-scope module, the latest C step's."""

    observer = False  # the cached map must come from the call that produces the image

    def __init__(self, config: ReuseConfig, policy: str, selected: set[str] | None = None):
        self.config, self.policy = config, policy
        self.selected = selected  # None: every in-scope module
        self.maps: dict[str, torch.Tensor] = {}
        self.dispatcher = None
        self.modules: set[str] = set()
        self.computed = self.reused = self.cached = 0

    # --- policy -------------------------------------------------------------------------------------------
    def _kind(self, step: int) -> str:
        return self.policy[step] if 0 <= step < len(self.policy) else "C"

    def _in_scope(self, call: AttnCall) -> bool:
        scope = self.config.scope
        if self.selected is not None and call.name not in self.selected:
            return False
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
            # kept in map_dtype; the R step's P @ V runs in the values' dtype (analysis.attention)
            self.maps[call.name] = probs.to(MAP_DTYPES[self.config.map_dtype])
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
            # only where auto or names chose a subset, so counters of every-layer runs stay as they were
            **({"selected": sorted(self.selected)} if self.selected is not None else {}),
        }


def cache_steps(policy: str) -> int:
    """C steps whose maps an R step reuses next: each materialises its maps explicitly."""
    return sum(1 for s in range(len(policy) - 1) if policy[s] == "C" and policy[s + 1] == "R")


def module_saving_s(module: dict, policy: str) -> float:
    """Seconds one attention module saves over a run of `policy`, its own overhead included: every R step
    saves (fused - explicit without Q/K/softmax), every caching C step pays (explicit - fused)."""
    return (policy.count("R") * (module["fused_s"] - module["reuse_step_explicit_s"])
            - cache_steps(policy) * (module["explicit_s"] - module["fused_s"]))


def auto_modules(profile: dict, policy: str, scope: str) -> set[str]:
    """layers=auto: the in-scope attention modules whose `module_saving_s` is positive in the layer profile."""
    kinds = ("self", "cross") if scope == "both" else (scope,)
    return {name for name, m in profile["attention_modules"].items()
            if m["kind"] in kinds and module_saving_s(m, policy) > 0}


def reuse_cost(config: ReuseConfig, counters: dict, profile: dict, steps: int, accel_steps: int) -> dict[str, Any]:
    """Ideal: maps_reused x the mean attention-map time (Q/K projections + QK^T + softmax) of an in-scope module;
    V, probs @ V and to_out still run. Expected also charges the explicit (non-SDPA) path this implementation
    runs: a reused call saves (fused time - explicit time without Q/K/softmax), a call that caches a map for
    the next step pays (explicit - fused). Per-call savings are scaled by the batch rows of the R steps (T-GATE
    may have halved them)."""
    c = counters.get("reuse", {})
    kinds = {"self": ("self",), "cross": ("cross",), "both": ("self", "cross")}[c.get("scope", config.scope)]
    selected = c.get("selected")
    scope = [m for name, m in profile["attention_modules"].items()
             if m["kind"] in kinds and (selected is None or name in selected)]
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


POLICIES = (("HURRY: late reuse", "hurry"), ("PHAST: searched", "phast"), ("strided: evenly spread", "strided"),
            ("custom C/R string", "custom"))


def max_reuse_steps(steps: int, policy: str) -> int:
    """The most R steps `policy` fits into `steps` (HURRY / PHAST: runs of at most 2 R after a C; strided: the
    odd steps)."""
    if policy == "strided":
        return steps // 2
    return max(r for r in range(steps) if r + -(-r // 2) <= steps)


def _build(values: dict, steps: int) -> ReuseConfig:
    policy, scope = values["policy"], values["scope"]
    if policy == "custom":
        text = values["custom"].strip().upper()
        if not text:
            raise ValueError("reuse: type a custom policy, one C (compute) or R (reuse) per step")
        return ReuseConfig(policy=text, scope=scope, layers=values["layers"])
    if policy == "strided":
        return ReuseConfig(policy=strided_policy(steps, values["reuse_steps"]), scope=scope, layers=values["layers"])
    return ReuseConfig(policy=policy, reuse_steps=values["reuse_steps"], scope=scope, layers=values["layers"])


def _summary(c: dict) -> str:
    total = c.get("maps_computed", 0) + c.get("maps_reused", 0)
    return (f"reuse: {c.get('maps_reused', 0)} of {total} attention maps reused ({c.get('r_steps', 0)} R steps, "
            f"scope {c.get('scope')}, policy {c.get('policy')})")


def _marks(config: ReuseConfig, steps: int, model: str) -> dict:
    policy = config.resolve(steps, model)
    return {"policy": policy, "reused_steps": [i for i, c in enumerate(policy) if c == "R"], "scope": config.scope}


def _grid(steps: int) -> list:
    half = steps // 2
    out = [("reuse-r0", ("reuse:policy=" + "C" * steps,))]  # all-C: the noise floor
    for r in sorted({max(1, half // 5), 2 * half // 5, 3 * half // 5, 4 * half // 5, half} - {0}):
        if r + -(-r // 2) <= steps:
            out.append((f"reuse-hurry-r{r}", (f"reuse:policy=hurry,reuse_steps={r}",)))
    for r in sorted({half // 2, half} - {0}):
        out.append((f"reuse-strided-r{r}", ("reuse:policy=" + strided_policy(steps, r),)))
    r = (steps + 1) // 3
    if 2 * r <= steps:  # HURRY with no map reused twice in a row (issue 17): R C R C ... from the end
        out.append((f"reuse-hurry-r{r}-run1", (f"reuse:policy=hurry,reuse_steps={r},max_run=1",)))
    if phast_policy(steps, r) is not None:
        out.append((f"reuse-phast-r{r}", (f"reuse:policy=phast,reuse_steps={r}",)))
    return out


TECHNIQUE = Technique(
    name="reuse", title="Attention-map reuse (HURRY / PHAST, Hunter et al.)",
    reference="Hunter et al., Fast Inference Through The Reuse Of Attention Maps In Diffusion Models, arXiv 2401.01008",
    config=ReuseConfig,
    knobs=(Knob("policy", "policy", "choice", default="hurry", choices=POLICIES),
           Knob("reuse_steps", "reuse steps (R)", "int", default=default_reuse_steps, low=0, high=50, step=1,
                info="a reading, not the paper's: HURRY gives no R count; default a third of the steps",
                limit=lambda steps, values: max_reuse_steps(steps, values.get("policy", "hurry")), accept=(0, 1000)),
           Knob("scope", "scope", "choice", default="both", choices=tuple((s, s) for s in SCOPES), radio=True),
           Knob("layers", "layers", "choice", default="auto", choices=LAYER_CHOICES, info=LAYERS_INFO),
           Knob("custom", "custom policy", "text", default="", placeholder="CCCCRCRR... one letter per step")),
    build=_build, cost=reuse_cost, summary=_summary, marks=_marks,
    strip=lambda marks, steps: [(f"reuse ({marks['scope']})", ["reuse" if c == "R" else "compute" for c in marks["policy"]],
                                 list(marks["policy"]))],
    bound_text="bounded by the attention-map share (Q/K projections + QK^T + softmax) of the in-scope kind "
               "(self/cross/both) times R/N of the UNet share; V, probs@V, to_out, convolutions and FF always run",
    bound=lambda profile, steps: profile["pipeline"]["shares"]["unet"] * profile["shares"]["attention_maps"],
    grid=_grid, colour="#E69F00", marker="o", order=10,
    reused=lambda marks, kind: list(marks["reused_steps"]) if marks["scope"] in (kind, "both") else [],
    validate=lambda config, steps, model: config.resolve(steps, model),
)
