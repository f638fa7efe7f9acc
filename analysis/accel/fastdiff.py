"""Faster Diffusion encoder propagation (Li et al., NeurIPS 2024, arXiv 2312.09608; hutaiHang/Faster-Diffusion).

At key steps the UNet's encoder (conv_in, down blocks, mid block) runs and its outputs (the skip features
and the mid output) are cached; at the other steps the encoder is skipped and only the decoder runs, on the
cached features with the current timestep's embedding (the current latent is not used at all). The UNet is
split with analysis/accel/unet_split.py, and the technique sits on the run's UNet seam (`ctx.seam()`),
so the pipeline's own loop and scheduler steps are untouched. Works on SDXL (`added_cond_kwargs`), which the
reference code does not support.

Key steps (`key_steps=()`, `stride=0`): the paper's non-uniform sets, in the code's 0-based step indices:
- 50 steps: {0, 1, 2, 3, 5, 10, 15, 25, 35} (DDIM-50, the paper's default, 9 encoder passes);
- 20 steps: {0, 1, 2, 3, 5, 10, 15} (the paper's DPM-Solver-20 set);
- any other count N: the 50-step set scaled to N, each index k -> floor(k * N / 50 + 0.5), duplicates merged
  (so the relative positions are kept: dense at the start, the last key step at 70% of the run). E.g.
  N=10 -> {0, 1, 2, 3, 5, 7}; N=30 -> {0, 1, 2, 3, 6, 9, 15, 21}.
`stride=k` uses every k-th step instead (the reference's uniform `mod=k`); explicit `key_steps` win over
both presets and must include step 0 (nothing is cached before it).

Parallel decoding (`parallel=True`, the paper's default): at a key step that is followed by non-key steps,
one batched decoder call covers the key step and all of them (their timesteps are known from
`pipe.scheduler.timesteps`); the predictions are handed out at the following steps, whose scheduler steps
stay sequential in the pipeline loop. Since a non-key step's prediction does not depend on its latent, this
equals sequential propagation up to floating-point batching effects. Rows are stacked half-major
([uncond of every step; cond of every step]) so that "the second half is the conditional branch" still holds
for hooks that read the batch layout from the clock. Hooks that run inside that batched call see the
key step's index.

Prior noise injection (`noise=True`): z_t += noise_alpha * z_T before every step whose timestep is below
half the training timesteps (the reference's `t/1000 < 0.5`, alpha 0.003), done through `ctx.on_step_end`
after the previous step. z_T and the increment live in the UNet-input scale (after
`scheduler.scale_model_input`): for DDIM and DPM-Solver++ that is the latent itself, i.e. exactly the
reference's `latents + 0.003 * init_latents`; for Euler the increment is converted back to its sigma-scaled
latents.

"Off" is every step a key step (`stride=1`) with `noise=False`: the UNet's own forward runs at every step,
bit for bit the baseline. Noise injection is a separate switch, not implied by propagation: with
`noise=True` it changes the image even when every step is a key step (the paper ablates it separately).

Combinations (`check_with`): `atedm` works (the decoder's attention blocks prune per row, also in the
batched call). `reuse` works with `parallel=false` only: encoder attention modules simply are not called at
non-key steps (a reuse step then takes the latest map that was computed), but one batched decoder call
covering several steps cannot follow a per-step C/R policy. `tgate` is refused: after its gate the UNet
batch is halved (the cached encoder features and precomputed predictions have the full CFG batch) and its
cached attention outputs are sized for one step's batch, not the batched decoder's.

Counters: encoder_passes / encoder_passes_skipped (steps with / without conv_in + down + mid), decoder_calls
and decoder_rows (decoder invocations and the batch rows they ran; a full UNet call counts once),
noise_injections, and the resolved key_steps.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

from analysis.accel import saving, unet_split
from analysis.accel.technique import Knob, Technique

PAPER_KEY_STEPS_50 = (0, 1, 2, 3, 5, 10, 15, 25, 35)
PAPER_KEY_STEPS_20 = (0, 1, 2, 3, 5, 10, 15)


@dataclass(frozen=True)
class FastDiffConfig:
    name: ClassVar[str] = "fastdiff"
    key_steps: tuple[int, ...] = ()  # () = the paper's non-uniform set scaled to the run (see module doc)
    stride: int = 0  # >0: a key step every `stride` steps instead; 1 = every step (off, with noise=False)
    parallel: bool = True  # one batched decoder call per key step and its following non-key steps
    noise: bool = True  # prior noise injection z_t += noise_alpha * z_T for t < T/2
    noise_alpha: float = 0.003

    def __post_init__(self):
        keys = tuple(self.key_steps)
        object.__setattr__(self, "key_steps", keys)
        if any(not isinstance(k, int) or isinstance(k, bool) or k < 0 for k in keys):
            raise ValueError(f"fastdiff: key_steps must be non-negative step indices, got {keys}")
        if keys and 0 not in keys:
            raise ValueError(f"fastdiff: key_steps must include step 0 (there is no encoder output to reuse before it), got {keys}")
        if len(set(keys)) != len(keys):
            raise ValueError(f"fastdiff: key_steps has duplicates: {keys}")
        if self.stride < 0:
            raise ValueError(f"fastdiff: stride must be >= 0 (0 = use key_steps), got {self.stride}")
        if keys and self.stride:
            raise ValueError("fastdiff: give key_steps or stride, not both")
        if not 0.0 <= self.noise_alpha <= 0.1:
            raise ValueError(f"fastdiff: noise_alpha must be between 0 and 0.1, got {self.noise_alpha}")

    def resolve_key_steps(self, num_steps: int) -> tuple[int, ...]:
        if self.stride:
            return tuple(range(0, num_steps, self.stride))
        if self.key_steps:
            late = [k for k in self.key_steps if k >= num_steps]
            if late:
                raise ValueError(f"fastdiff: key step(s) {late} are beyond the run's {num_steps} steps")
            return tuple(sorted(self.key_steps))
        if num_steps == 50:
            return PAPER_KEY_STEPS_50
        if num_steps == 20:
            return PAPER_KEY_STEPS_20
        return tuple(sorted({int(k * num_steps / 50 + 0.5) for k in PAPER_KEY_STEPS_50} & set(range(num_steps))))

    @classmethod
    def off(cls, steps: int) -> "FastDiffConfig":
        """Every step a key step, no noise injected: the baseline bit for bit."""
        return cls(stride=1, noise=False)

    def check_with(self, by_name: dict) -> None:
        if "tgate" in by_name:
            raise ValueError("fastdiff cannot be combined with tgate: T-GATE halves the UNet batch after its gate and "
                             "replays attention outputs cached for one step's batch, which the cached encoder features "
                             "and the batched decoder do not match")
        if "reuse" in by_name and self.parallel:
            raise ValueError("fastdiff with parallel=true cannot be combined with reuse: the batched decoder covers "
                             "several steps in one call, so one step's cached attention maps do not fit; use "
                             "fastdiff:parallel=false")

    def attach(self, ctx) -> "FastDiffHandle":
        return FastDiffHandle(self, ctx)


class RowLayout:
    """How k steps' batches of R rows are stacked into one batch: half-major, [uncond s0..sk; cond s0..sk]
    under classifier-free guidance, step-major otherwise."""

    def __init__(self, k: int, rows: int, halves: int):
        self.k, self.rows, self.halves = k, rows, halves

    def stack(self, xs: list[torch.Tensor]) -> torch.Tensor:
        x = torch.stack(xs)  # (k, R, ...)
        rest = x.shape[2:]
        x = x.view(self.k, self.halves, self.rows // self.halves, *rest).transpose(0, 1)
        return x.reshape(self.k * self.rows, *rest)

    def repeat(self, x: torch.Tensor) -> torch.Tensor:
        return self.stack([x] * self.k)

    def split(self, x: torch.Tensor) -> list[torch.Tensor]:
        rest = x.shape[1:]
        x = x.view(self.halves, self.k, self.rows // self.halves, *rest).transpose(0, 1)
        return list(x.reshape(self.k, self.rows, *rest).unbind(0))


@dataclass
class _Encoded:
    res: tuple[torch.Tensor, ...]
    mid: torch.Tensor
    rows: int


class FastDiffHandle:
    def __init__(self, config: FastDiffConfig, ctx):
        self.config, self.clock, self.pipe, self.unet = config, ctx.clock, ctx.pipe, ctx.unet
        self.key_steps = config.resolve_key_steps(ctx.clock.num_steps)
        self._keys = set(self.key_steps)
        self.encoded: _Encoded | None = None  # sequential: the last key step's encoder output
        self.ready: dict[int, tuple[float, torch.Tensor]] = {}  # parallel: step -> (timestep, prediction)
        self.z0: torch.Tensor | None = None  # the UNet input at the first step (z_T, model-input scale)
        self.n = dict(encoder_passes=0, encoder_passes_skipped=0, decoder_calls=0, decoder_rows=0, noise_injections=0)
        self.seam = ctx.seam()
        self.seam.interceptors.append(self)
        if config.noise and config.noise_alpha > 0:
            ctx.on_step_end(self.inject_noise)

    # --- the UNet call ----------------------------------------------------------------------------------

    def __call__(self, call_next, sample, timestep, encoder_hidden_states, *args, **kwargs):
        step = self.clock.step_index
        if self.z0 is None:
            self.z0 = sample
        if step in self._keys:
            return self._key_step(step, call_next, sample, timestep, encoder_hidden_states, *args, **kwargs)
        if step < self.key_steps[0] or (self.encoded is None and not self.ready):
            raise RuntimeError(f"fastdiff: step {step} is not a key step and no encoder output is cached")
        self.n["encoder_passes_skipped"] += 1
        args_ = unet_split.bind_forward_args(self.unet, sample, timestep, encoder_hidden_states, *args, **kwargs)
        if self.config.parallel:
            t, out = self.ready.pop(step, (None, None))
            if out is None or t != _scalar(timestep):
                raise RuntimeError(f"fastdiff: no batched prediction for step {step} at timestep {_scalar(timestep)}")
            return _wrap(out, args_["return_dict"])
        self._check_rows(sample)
        cond = unet_split.conditioning(self.unet, **args_)  # the current timestep's embedding
        out = unet_split.decode(self.unet, self.encoded.mid, self.encoded.res, cond)
        self._count_decoder(out.shape[0])
        return _wrap(out, args_["return_dict"])

    def _key_step(self, step, call_next, sample, timestep, encoder_hidden_states, *args, **kwargs):
        self.n["encoder_passes"] += 1
        self.encoded, self.ready = None, {}
        following = []
        for s in range(step + 1, self.clock.num_steps):
            if s in self._keys:
                break
            following.append(s)
        if not following:  # nothing to propagate to: the UNet's own forward, bit for bit
            self._count_decoder(sample.shape[0])
            return call_next(sample, timestep, encoder_hidden_states, *args, **kwargs)
        args_ = unet_split.bind_forward_args(self.unet, sample, timestep, encoder_hidden_states, *args, **kwargs)
        cond = unet_split.conditioning(self.unet, **args_)
        res, mid = unet_split.encode(self.unet, sample, cond)
        if not self.config.parallel:
            self.encoded = _Encoded(res, mid, sample.shape[0])
            out = unet_split.decode(self.unet, mid, res, cond)
            self._count_decoder(out.shape[0])
            return _wrap(out, args_["return_dict"])
        # parallel: one decoder call over this step and the following non-key steps
        timesteps = self.pipe.scheduler.timesteps
        if len(timesteps) != self.clock.num_steps:
            raise ValueError(f"fastdiff: parallel decoding needs one UNet call per scheduler timestep, but the scheduler "
                             f"has {len(timesteps)} timesteps for {self.clock.num_steps} steps; use parallel=false")
        rows = sample.shape[0]
        layout = RowLayout(1 + len(following), rows, 2 if self.clock.cfg_batch else 1)
        embs = [cond.emb]
        for s in following:
            t = timesteps[s].to(sample.device)
            embs.append(unet_split.conditioning(self.unet, **{**args_, "timestep": t}).emb)
        batched = cond.repeat_rows(layout.stack(embs), layout)
        out = unet_split.decode(self.unet, layout.repeat(mid), tuple(layout.repeat(r) for r in res), batched)
        self._count_decoder(out.shape[0])
        outs = layout.split(out)
        self.ready = {s: (_scalar(timesteps[s]), o) for s, o in zip(following, outs[1:])}
        return _wrap(outs[0], args_["return_dict"])

    def _check_rows(self, sample: torch.Tensor) -> None:
        if sample.shape[0] != self.encoded.rows:
            raise RuntimeError(f"fastdiff: the UNet batch changed from {self.encoded.rows} to {sample.shape[0]} rows "
                               "between a key step and a propagated step (another technique changed the batch)")

    def _count_decoder(self, rows: int) -> None:
        self.n["decoder_calls"] += 1
        self.n["decoder_rows"] += rows

    # --- prior noise injection ----------------------------------------------------------------------------

    def inject_noise(self, step_index: int, timestep: float, latents: torch.Tensor) -> torch.Tensor | None:
        """After step i: if step i+1's timestep is below T/2, z += alpha * z_T (model-input scale)."""
        scheduler = self.pipe.scheduler
        nxt = step_index + 1
        if self.z0 is None or nxt >= len(scheduler.timesteps):
            return None
        t_next = scheduler.timesteps[nxt]
        if float(t_next) >= 0.5 * scheduler.config.num_train_timesteps:
            return None
        z_t = self.z0[: latents.shape[0]].to(latents.dtype)
        scale = scheduler.scale_model_input(torch.ones((), dtype=latents.dtype, device=latents.device), t_next)
        self.n["noise_injections"] += 1
        if torch.equal(scale, torch.ones_like(scale)):
            return latents + self.config.noise_alpha * z_t
        return latents + self.config.noise_alpha * z_t / scale

    # --- protocol -------------------------------------------------------------------------------------

    def detach(self) -> None:
        if self in self.seam.interceptors:
            self.seam.interceptors.remove(self)
        self.encoded, self.ready, self.z0 = None, {}, None

    def counters(self) -> dict[str, Any]:
        return {"key_steps": list(self.key_steps), **self.n}

    def signals(self) -> dict[str, Any]:
        return {}


def _scalar(t) -> float:
    return float(t.flatten()[0]) if torch.is_tensor(t) else float(t)


def _wrap(sample: torch.Tensor, return_dict: bool):
    return UNet2DConditionOutput(sample=sample) if return_dict else (sample,)


def fastdiff_cost(config: FastDiffConfig, counters: dict, profile: dict, steps: int, accel_steps: int) -> dict[str, Any]:
    """encoder_passes_skipped x the encoder's time (conv_in + down blocks + mid block). Parallel decoding batches
    the decoder calls of several steps but saves no FLOPs, so it counts nothing."""
    skipped = counters.get("fastdiff", {}).get("encoder_passes_skipped", 0)
    encoder_s = profile["encoder_decoder"]["encoder_s"]
    return saving(unet_s=skipped * encoder_s,
                  detail={"encoder_passes_skipped": skipped, "encoder_s": encoder_s, "parallel": config.parallel})


PRESETS = (("paper key steps (non-uniform)", "paper"), ("uniform stride", "stride"))


def _summary(c: dict) -> str:
    return (f"fastdiff: encoder skipped on {c.get('encoder_passes_skipped', 0)} of "
            f"{c.get('encoder_passes', 0) + c.get('encoder_passes_skipped', 0)} steps (key steps "
            f"{', '.join(map(str, c.get('key_steps', [])))}); {c.get('decoder_calls', 0)} decoder calls")


def _marks(config: FastDiffConfig, steps: int, model: str) -> dict:
    keys = [int(k) for k in config.resolve_key_steps(steps)]
    return {"key_steps": keys, "skipped_steps": [s for s in range(steps) if s not in set(keys)],
            "parallel": bool(config.parallel), "noise": bool(config.noise)}


def _strip(marks: dict, steps: int) -> list:
    keys = set(marks["key_steps"])
    return [("Faster-Diffusion encoder", ["compute" if s in keys else "skip" for s in range(steps)],
             ["K" if s in keys else "\u2013" for s in range(steps)])]


def _grid(steps: int) -> list:
    out = []
    for noise in (True, False):
        tag, flag = ("" if noise else "-nonoise"), str(noise).lower()
        out.append((f"fastdiff-paper{tag}", (f"fastdiff:noise={flag}",)))
        out.append((f"fastdiff-s2{tag}", (f"fastdiff:stride=2,noise={flag}",)))
    return out + [(f"fastdiff-s{k}", (f"fastdiff:stride={k}",)) for k in (3, 4)]


TECHNIQUE = Technique(
    name="fastdiff", title="Faster-Diffusion encoder propagation (Li et al.)",
    reference="Li et al., Faster Diffusion: Rethinking the Role of the Encoder for Diffusion Model Inference, NeurIPS 2024",
    config=FastDiffConfig,
    knobs=(Knob("preset", "key steps", "choice", default="paper", choices=PRESETS, radio=True),
           Knob("stride", "stride (uniform)", "int", default=2, low=2, high=10, step=1, accept=(1, 1000)),
           Knob("parallel", "parallel decoding", "bool", default=FastDiffConfig.parallel),
           Knob("noise", "prior noise injection", "bool", default=FastDiffConfig.noise)),
    build=lambda values, steps: FastDiffConfig(stride=values["stride"] if values["preset"] == "stride" else 0,
                                               parallel=values["parallel"], noise=values["noise"]),
    cost=fastdiff_cost, summary=_summary, marks=_marks, strip=_strip,
    bound_text="bounded by the encoder share (conv_in + down blocks + mid block) times the fraction of skipped "
               "encoder passes; the decoder runs at every step, and parallel decoding saves no FLOPs",
    bound=lambda profile, steps: profile["pipeline"]["shares"]["unet"] * profile["encoder_decoder"]["encoder"],
    grid=_grid, colour="#D55E00", marker="^", order=40,
    validate=lambda config, steps, model: config.resolve_key_steps(steps),
    lines=lambda marks: {"drift": ("key steps (encoder runs)", list(marks["key_steps"]))},
)
