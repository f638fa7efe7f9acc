"""T-GATE v2 (Liu et al., "Faster Diffusion via Temporal Attention Decomposition", TMLR 2025; PyPI tgate 1.0.0).

Follows the reference code (HaozheLiu-ST/T-GATE @ ab2a88f, identical to the tgate 1.0.0 wheel):
`tgate_scheduler` decides per step what each attention kind does, `tgate_processor` caches the attention
output after `to_out`, and the pipeline drops classifier-free guidance after the gate. Per step s (the
reference's `cur_step`, our `clock.step_index`), m = gate_step, k = sp_interval:

    s <  m-1  semantics planning: cross-attn computed; self-attn computed for s < warm_up,
              computed + cached for s == warm_up or s % k == 0, otherwise the cached output is returned
    s == m-1  the gate: both computed + cached; with CFG the cache is (uncond half + cond half) / 2
    s >= m    fidelity improving: cross-attn returns its cache (no Q/K/V, softmax or to_out at all);
              self-attn computed + cached if s % fi_interval == 0, else the cache is returned;
              the UNet runs on one half of the batch only (CFG dropped)

As in the reference, a "reuse" with no cache yet computes instead, and the cached tensor replaces the whole
module output (the transformer block's residual still adds it to the current hidden states). We skip
caching a tensor that no later step will read; that changes no number.

CFG drop (an interceptor on `ctx.seam()`): from step m on, when the pipeline sends a [uncond; cond] batch,
the UNet is called on the uncond half only (the reference passes `latents` with the negative prompt
embeddings, and for SDXL the negative pooled embeddings and time ids: the uncond half of every per-row
input; the text is irrelevant to cross-attention, which is cached) and the prediction is returned twice, so
the pipeline's uncond + g * (cond - uncond) is exactly that prediction (e - e = 0 in floating point).
`guidance_rescale > 0` would rescale by std(e)/std(e) = 1 (the reference skips it after the gate).
Without CFG (guidance <= 1) there is nothing to drop and the gate-step cache keeps the batch as it is.

Default gate. `gate_step=None` (the default) follows the step count as in the paper, whose settings are
(steps, gate) = (15, 6), (25, 10), (50, 20): the gate at GATE_FRACTION = 0.4 of the steps, i.e.
round(0.4 * steps) (at least 1), resolved when the technique is attached (or planned) for a run of a known
length; the resolved value is in the counters (`gate_step`) and so in run.json. An explicit integer is used
as given (the reference's own default is gate_step=10, right for 25 steps).

Off setting: gate_step >= the number of steps with sp_interval=1 and fi_interval=1 (warm_up is then
irrelevant). Nothing is reused, no batch is dropped, every call runs the original processor: the image is
the baseline bit for bit. `TGateConfig.off()` returns it.

Combinations (`check_with` on both sides): attention-map reuse must be scope=self and T-GATE must then not
cache self-attention (see analysis/accel/reuse.py); atedm and fastdiff refuse tgate in their own
`check_with` (pruned tokens and batched decoders do not fit a replayed output). Read-only probes combine
freely: they see the cached output as the call's output, and after the gate the clock's `rows` is the
halved batch (`clock.cfg_batch` is False), so they read every row as conditional.

Counters: cross_attn_computed / cross_attn_reused and self_attn_computed / self_attn_reused count attention
calls; unet_rows_saved sums the UNet batch rows not computed thanks to the CFG drop; cfg_dropped_steps.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from analysis.accel import mean_at, row_fractions, saving
from analysis.accel.technique import Knob, Technique
from analysis.attention import AttentionPlugin, AttnCall
from analysis.plugins import HandleBase

COMPUTE, CACHE, REUSE = "compute", "cache", "reuse"
GATE_FRACTION = 0.4  # the paper's gate: 6 of 15, 10 of 25, 20 of 50 steps


def default_gate_step(steps: int) -> int:
    """round(GATE_FRACTION * steps), at least 1: 15 -> 6, 20 -> 8, 25 -> 10, 30 -> 12, 50 -> 20."""
    return max(1, round(GATE_FRACTION * steps))


def tgate_schedule(step: int, gate_step: int, sp_interval: int, fi_interval: int, warm_up: int) -> tuple[str, str, bool]:
    """(cross action, self action, keep_shape) for one step: `tgate_scheduler` of the reference, verbatim."""
    if step < gate_step - 1:
        if step < warm_up:
            sa = COMPUTE
        elif step == warm_up:
            sa = CACHE
        else:
            sa = CACHE if step % sp_interval == 0 else REUSE
        return COMPUTE, sa, True
    if step == gate_step - 1:
        return CACHE, CACHE, False
    return REUSE, (CACHE if step % fi_interval == 0 else REUSE), True


def _prune(actions: list[str]) -> list[str]:
    """Reuse without any cache computes (as in the reference); a cache that no later step reads is not taken."""
    out = list(actions)
    have = False
    for i, a in enumerate(out):
        if a == REUSE and not have:
            out[i] = COMPUTE
        have = have or a == CACHE
    for i, a in enumerate(out):
        if a == CACHE:
            later = next((b for b in out[i + 1:] if b != COMPUTE), None)
            if later != REUSE:
                out[i] = COMPUTE
    return out


@dataclass(frozen=True)
class TGateConfig:
    """T-GATE v2; gate_step=None = round(0.4 * steps) (the paper's 6/15, 10/25, 20/50); the other defaults
    are the reference's (sp_interval=5, fi_interval=1, warm_up=2)."""

    name: ClassVar[str] = "tgate"
    gate_step: int | None = None  # the step from which cross-attention is cached and CFG dropped (cache taken at
    # gate_step-1); None = round(GATE_FRACTION * steps), at least 1
    sp_interval: int = 5  # self-attention cache interval before the gate (semantics-planning phase)
    fi_interval: int = 1  # self-attention cache interval after the gate (fidelity-improving phase); 1 = compute
    warm_up: int = 2  # steps at the start with full self-attention

    def __post_init__(self):
        for field, low in (("gate_step", 1), ("sp_interval", 1), ("fi_interval", 1), ("warm_up", 0)):
            value = getattr(self, field)
            if field == "gate_step" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"tgate: {field} must be an integer >= {low}, got {value!r}")

    @classmethod
    def off(cls, steps: int) -> "TGateConfig":
        """The setting that reproduces the baseline bit for bit on a run of `steps` steps."""
        return cls(gate_step=steps, sp_interval=1, fi_interval=1, warm_up=0)

    def resolved_gate_step(self, steps: int) -> int:
        """The gate step of a run of `steps` steps: gate_step, or round(GATE_FRACTION * steps) (>= 1) if None."""
        return self.gate_step if self.gate_step is not None else default_gate_step(steps)

    def plan(self, steps: int) -> tuple[list[str], list[str], list[bool]]:
        """Per-step cross actions, self actions and keep_shape flags for a run of `steps` steps."""
        gate = self.resolved_gate_step(steps)
        rows = [tgate_schedule(s, gate, self.sp_interval, self.fi_interval, self.warm_up) for s in range(steps)]
        return _prune([r[0] for r in rows]), _prune([r[1] for r in rows]), [r[2] for r in rows]

    def caches_self_attention(self, steps: int | None = None) -> bool:
        """Whether some step returns a cached self-attention output (for a run length, or any run length)."""
        if steps is None:
            if self.gate_step is None:  # the gate moves with the run length: some run caches if sp_interval > 1
                return self.fi_interval > 1 or self.sp_interval > 1
            return self.fi_interval > 1 or REUSE in self.plan(self.gate_step)[1]
        return REUSE in self.plan(steps)[1]

    def check_with(self, by_name: dict) -> None:
        # The rules live with the technique that would share a module with T-GATE (reuse.check_with).
        reuse = by_name.get("reuse")
        if reuse is not None:
            reuse.check_with(by_name)

    def attach(self, ctx) -> "TGateHandle":
        handle = TGateHandle(self, ctx.clock)
        # Always on the dispatcher (it counts the calls); at the off setting it never replaces an output nor
        # asks for probabilities, so every call runs the original processor.
        handle.dispatcher = ctx.attention()
        handle.dispatcher.add(handle)
        handle.seam = ctx.seam()  # also what advances the clock's step index
        if ctx.clock.num_steps > handle.gate_step:
            handle.seam.interceptors.append(handle.intercept)
        return handle


def _halve(x: Any, rows: int) -> Any:
    """The first half (uncond rows) of every per-row tensor in x (tensors, tuples, lists, dicts)."""
    if torch.is_tensor(x):
        return x[: rows // 2] if x.ndim > 0 and x.shape[0] == rows else x
    if isinstance(x, dict):
        return {k: _halve(v, rows) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_halve(v, rows) for v in x)
    return x


def _twice(out: Any) -> Any:
    """The UNet output with its prediction duplicated ([e; e]), for return_dict=True and False alike."""
    if isinstance(out, tuple):
        return (torch.cat([out[0], out[0]]),) + tuple(out[1:])
    if hasattr(out, "sample"):
        out.sample = torch.cat([out.sample, out.sample])
        return out
    return torch.cat([out, out])


class TGateHandle(AttentionPlugin, HandleBase):
    """The run state of T-GATE: per-module caches, the step plan, counters."""

    observer = True  # never asks for probabilities

    def __init__(self, config: TGateConfig, clock):
        self.config, self.clock = config, clock
        self.gate_step = config.resolved_gate_step(clock.num_steps)
        self.ca_plan, self.sa_plan, self.keep_shape = config.plan(clock.num_steps)
        self.cache: dict[str, torch.Tensor] = {}
        self.dispatcher = None
        self.seam = None
        self.ca_computed = self.ca_reused = self.sa_computed = self.sa_reused = 0
        self.rows_saved = self.dropped_steps = 0

    def _action(self, call: AttnCall) -> str:
        plan = self.ca_plan if call.is_cross else self.sa_plan
        return plan[call.step] if 0 <= call.step < len(plan) else COMPUTE

    # --- attention side -----------------------------------------------------------------------------------
    def replace_output(self, call: AttnCall) -> torch.Tensor | None:
        if self._action(call) != REUSE:
            return None
        cached = self.cache.get(call.name)
        if cached is None:
            return None
        batch = call.hidden_states.shape[0]
        if cached.shape[0] != batch or cached.shape[1:] != call.hidden_states.shape[1:]:
            if cached.shape[0] * 2 == batch and cached.shape[1:] == call.hidden_states.shape[1:]:
                cached = torch.cat([cached, cached])  # CFG batch again (another seam hook restored it)
            else:
                return None  # token count changed (e.g. pruning) or an unknown layout: compute
        if call.is_cross:
            self.ca_reused += 1
        else:
            self.sa_reused += 1
        return cached  # the dispatcher marks the call output_replaced

    def on_output(self, call: AttnCall, output: torch.Tensor) -> None:
        if call.output_replaced:  # our cache (or another plug-in's replacement): neither computed nor cached
            return
        if call.is_cross:
            self.ca_computed += 1
        else:
            self.sa_computed += 1
        if self._action(call) != CACHE:
            return
        keep = self.keep_shape[call.step] if 0 <= call.step < len(self.keep_shape) else True
        if not keep and self.clock.cfg_batch:
            uncond, cond = output.chunk(2)
            self.cache[call.name] = (uncond + cond) / 2  # the reference's formula, to the bit
        else:
            self.cache[call.name] = output

    # --- UNet side: drop the CFG half after the gate ---------------------------------------------------------
    def intercept(self, call_next, sample, timestep, encoder_hidden_states, *args, **kwargs):
        clock = self.clock
        if clock.step_index < self.gate_step or not clock.cfg_batch:
            return call_next(sample, timestep, encoder_hidden_states, *args, **kwargs)
        rows = sample.shape[0]
        half = rows // 2
        clock.rows = half  # the attention calls of this step see batch `half`; probes read it here
        if clock.row_log:
            clock.row_log[-1] = half
        self.rows_saved += rows - half
        self.dropped_steps += 1
        out = call_next(
            sample[:half], _halve(timestep, rows), _halve(encoder_hidden_states, rows),
            *_halve(args, rows), **_halve(kwargs, rows),
        )
        return _twice(out)

    # --- handle -------------------------------------------------------------------------------------------
    def detach(self) -> None:
        if self.dispatcher is not None and self in self.dispatcher.plugins:
            self.dispatcher.plugins.remove(self)
        if self.seam is not None and self.intercept in self.seam.interceptors:
            self.seam.interceptors.remove(self.intercept)
        self.dispatcher = self.seam = None
        self.cache.clear()

    def counters(self) -> dict[str, Any]:
        return {
            "gate_step": self.gate_step,
            "cross_attn_computed": self.ca_computed,
            "cross_attn_reused": self.ca_reused,
            "self_attn_computed": self.sa_computed,
            "self_attn_reused": self.sa_reused,
            "unet_rows_saved": self.rows_saved,
            "cfg_dropped_steps": self.dropped_steps,
        }


def tgate_cost(config: TGateConfig, counters: dict, profile: dict, steps: int, accel_steps: int) -> dict[str, Any]:
    """Per step with CFG dropped, (rows dropped / rows) of a whole UNet call (UNet cost is linear in batch rows),
    plus each reused cross-/self-attention call's full module time at the batch rows of its step. The counts
    come from counters(); which steps reuse, from the plan (`counts_match` says the two agree)."""
    c = counters.get("tgate", {})
    mods = profile["attention_modules"].values()
    ca, sa, _ = config.plan(accel_steps)
    frac = row_fractions(counters, accel_steps)
    cross = [m["fused_s"] for m in mods if m["kind"] == "cross"]
    self_ = [m["fused_s"] for m in mods if m["kind"] == "self"]
    cross_steps = [s for s in range(accel_steps) if ca[s] == REUSE]
    self_steps = [s for s in range(accel_steps) if sa[s] == REUSE]
    cfg_units = sum(1.0 - f for f in frac)
    ca_n, sa_n = c.get("cross_attn_reused", 0), c.get("self_attn_reused", 0)
    saved_cross = ca_n * (sum(cross) / max(1, len(cross))) * mean_at(frac, cross_steps)
    saved_self = sa_n * (sum(self_) / max(1, len(self_))) * mean_at(frac, self_steps)
    u = profile["unet_call_s"]
    gate = config.resolved_gate_step(accel_steps)
    note = None
    if gate >= accel_steps:
        note = (f"gate_step={gate} >= {accel_steps} steps: no CFG drop and no cross-attention reuse in this run; "
                f"only the pre-gate self-attention caching acts")
    return saving(
        unet_s=cfg_units * u + saved_cross + saved_self,
        detail={"gate_step": gate, "cfg_rows_saved_units": cfg_units, "cross_reused": ca_n, "self_reused": sa_n,
                "cross_saved_s": saved_cross, "self_saved_s": saved_self, "cfg_saved_s": cfg_units * u,
                "counts_match": ca_n == len(cross_steps) * len(cross) and sa_n == len(self_steps) * len(self_)},
        note=note)


def _summary(c: dict) -> str:
    return (f"tgate: gate at step {c.get('gate_step')}; cross-attention reused {c.get('cross_attn_reused', 0)}x, "
            f"self-attention reused {c.get('self_attn_reused', 0)}x; CFG dropped on {c.get('cfg_dropped_steps', 0)} "
            f"steps ({c.get('unet_rows_saved', 0)} UNet batch rows saved)")


def _marks(config: TGateConfig, steps: int, model: str) -> dict:
    gate = config.resolved_gate_step(steps)
    cross, self_, _ = config.plan(steps)
    return {"gate_step": gate, "gated": gate < steps, "cross": list(cross), "self": list(self_)}


def _strip(marks: dict, steps: int) -> list:
    letter = {COMPUTE: "C", CACHE: "S", REUSE: "R"}
    return [(f"T-GATE {kind}-attn", list(marks[kind]), [letter[a] for a in marks[kind]]) for kind in ("cross", "self")]


def _bound(profile: dict, steps: int) -> float:
    cross_all = profile["attention_by_kind"]["cross"]["attention_share"]
    return profile["pipeline"]["shares"]["unet"] * (0.5 + 0.5 * cross_all)


def _grid(steps: int) -> list:
    gates = sorted({max(2, round(f * steps)) for f in (0.2, 0.3, 0.4, 0.5, 0.6, 0.8)} - {steps})
    return [(f"tgate-g{g}", (f"tgate:gate_step={g}",)) for g in gates]


TECHNIQUE = Technique(
    name="tgate", title="T-GATE (Liu et al.)",
    reference="Liu et al., Faster Diffusion via Temporal Attention Decomposition, TMLR 2025",
    config=TGateConfig,
    knobs=(Knob("gate_step", "gate step", "int", default=default_gate_step, low=1, high=100, step=1,
                info="paper: about 0.4 of the steps (10 of 25)", limit=lambda steps, values: max(1, steps - 1), accept=(1, 1000)),
           Knob("sp_interval", "self-attention interval before the gate", "int", default=TGateConfig.sp_interval,
                low=1, high=10, step=1, accept=(1, 1000)),
           Knob("fi_interval", "self-attention interval after the gate", "int", default=TGateConfig.fi_interval,
                low=1, high=10, step=1, accept=(1, 1000))),
    build=lambda values, steps: TGateConfig(**values),
    cost=tgate_cost, summary=_summary, marks=_marks, strip=_strip,
    bound_text="bounded by the CFG half of the UNet on post-gate steps plus the cross-attention share (all of it "
               "after the gate) plus the self-attention share of the self-attn steps it caches; convolutions and FF "
               "of the remaining half always run",
    bound=_bound, grid=_grid, colour="#0072B2", marker="s", order=20,
    reused=lambda marks, kind: [i for i, a in enumerate(marks[kind]) if a == REUSE],
    validate=lambda config, steps, model: config.plan(steps),
    lines=lambda marks: {"convergence": ("T-GATE gate", [marks["gate_step"]])},
)
