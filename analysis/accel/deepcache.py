"""DeepCache (Ma et al., "DeepCache: Accelerating Diffusion Models for Free", CVPR 2024; PyPI DeepCache 0.1.1).

A full step runs the whole UNet and keeps one feature, the up path's hidden state where the chosen skip branch
joins it; the steps between run only the shallow branch (conv_in, the down layers above the branch, the up path
from there on, the head), not the deeper layers nor the mid block. The UNet is split on the run's UNet seam.
Branch ids are the package's (`DeepCacheSDHelper.set_params`): level = id // 3 (0 = full resolution), layer =
id % 3; a cached step runs that level's down block up to unit `layer` (resnet + attention pairs, then the
downsampler) and its up block from the resnet `layer` places before the end (SD 1.5, id 0: conv_in, the last
resnet + transformer, the head). The package's rule is kept where a level has fewer layers (the default model):
its images at every id, bit for bit (tests/test_deepcache.py, benchmarks/crosscheck_deepcache.py).

Full steps (step 0 always): "uniform" every `cache_interval`-th step (the helper's only mode); "nonuniform" the
reference pipeline's `sample_from_quad_center`: ceil(steps / N) steps crowded around `center` (None = round(0.3
x steps), the reference script's 15 of 50), power 1.4 lowered by 0.02 until distinct. cache_interval=1 is
`off()`. Defaults 3 / 0 / uniform: the package README's (set_params' own 1 / 0 is "off").

It runs innermost on the seam. `fastdiff` is refused; `tgate` works as tgate's TgateSDDeepCacheLoader: the step
before the gate (T-GATE caches every module's attention output) and the gate step (the first halved batch) are
full steps, uniform restarts at the gate (read from T-GATE's interceptor at the first call: the marks show the
config's own schedule, the counters the steps run). Any other batch change forces a full step. `reuse` and
`atedm` work. Block forward hooks (the drift probe) miss the branch level's two blocks, run unit by unit.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from diffusers.utils.torch_utils import apply_freeu

from analysis.accel import row_fractions, saving, unet_split
from analysis.accel.technique import Knob, Technique
from analysis.plugins import HandleBase

SCHEDULES = ("uniform", "nonuniform")
CENTER_FRACTION = 0.3  # the reference script's center: 15 of 50 steps
PER_LEVEL = 3  # branch ids per level (the package's numbering)
_SPLITTABLE = ("CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")  # run in part


def quad_center_steps(steps: int, n_full: int, center: int, power: float) -> list[int]:
    """The reference's non-uniform full steps: 0, then |x|^p + center for x evenly spaced from (-center)^(1/p)
    (a complex root: the real part of its power counts, truncated, as there) to (steps - center)^(1/p)."""
    p = power
    while p > 1:
        x = np.linspace((-center) ** (1 / p), (steps - center) ** (1 / p), n_full + 1)
        chosen = [0] + [int(k) + center for k in np.unique(np.real(x**p).astype(np.int32))[1:-1]]
        if len(chosen) == n_full:
            return sorted(chosen)
        p -= 0.02
    raise ValueError(f"deepcache: no non-uniform schedule of {n_full} full steps in {steps} steps around center "
                     f"{center} (power {power} lowered to 1 without {n_full} distinct steps); use schedule=uniform, "
                     "another center or another cache_interval")


@dataclass(frozen=True)
class DeepCacheConfig:
    name: ClassVar[str] = "deepcache"
    cache_interval: int = 3  # N: full UNet every N steps (uniform) / ceil(steps / N) full steps (nonuniform)
    cache_branch_id: int = 0  # the skip branch kept live: level = id // 3, layer = id % 3
    schedule: str = "uniform"  # "uniform" | "nonuniform"
    center: int | None = None  # nonuniform: where the full steps crowd; None = round(0.3 x steps)
    power: float = 1.4  # nonuniform: the spacing's starting power

    def __post_init__(self):
        for key, low in (("cache_interval", 1), ("cache_branch_id", 0), ("center", 0)):
            v = getattr(self, key)
            if (key != "center" or v is not None) and (not isinstance(v, int) or isinstance(v, bool) or v < low):
                raise ValueError(f"deepcache: {key} must be an integer >= {low}, got {v!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"deepcache: schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if isinstance(self.power, bool) or not isinstance(self.power, (int, float)) or not 1.0 < self.power <= 4.0:
            raise ValueError(f"deepcache: power must be a number in (1, 4], got {self.power!r}")

    @classmethod
    def off(cls, steps: int) -> "DeepCacheConfig":
        return cls(cache_interval=1)  # every step full: the UNet's own forward, the baseline bit for bit

    def full_steps(self, steps: int) -> list[int]:
        """The steps that run the whole UNet in a run of `steps` steps (ValueError if no schedule fits)."""
        if self.cache_interval == 1 or steps < 1:
            return list(range(steps))
        if self.schedule == "uniform":
            return list(range(0, steps, self.cache_interval))
        center = self.center if self.center is not None else round(CENTER_FRACTION * steps)
        if center >= steps:
            raise ValueError(f"deepcache: center={center} must be below the run's {steps} steps")
        return quad_center_steps(steps, math.ceil(steps / self.cache_interval), center, self.power)

    def full_steps_with_gate(self, steps: int, gate: int | None) -> list[int]:
        """The full steps when T-GATE gates at `gate`: gate - 1 and gate too; uniform restarts at the gate."""
        planned = self.full_steps(steps)
        if gate is None or not 0 < gate < steps or self.cache_interval == 1:
            return planned
        if self.schedule == "uniform":
            return [s for s in planned if s < gate - 1] + [gate - 1] + list(range(gate, steps, self.cache_interval))
        return sorted(set(planned) | {gate - 1, gate})

    def check_with(self, by_name: dict) -> None:
        if "fastdiff" in by_name:
            raise ValueError("deepcache cannot be combined with fastdiff: both replace the UNet forward and cache its "
                             "features, and the encoder fastdiff skips feeds DeepCache's shallow branch at every step")

    def attach(self, ctx) -> "DeepCacheHandle":
        return DeepCacheHandle(self, ctx)


def _units(block) -> int:
    return len(block.resnets) + (1 if block.downsamplers is not None else 0)


def _within(name: str, units: list[str]) -> bool:
    return any(name == u or name.startswith(u + ".") for u in units)


@dataclass(frozen=True)
class Branch:
    """What a cached step runs: `down_units` units of down block `level` (pairs, then the downsampler), up block
    `up_block` from resnet `up_start` (the feature is that resnet's input), on `res_keep` skip features."""

    level: int
    layer: int
    down_units: int
    up_block: int
    up_start: int
    res_keep: int

    def skipped_units(self, unet) -> list[str]:
        """Module names a cached step does not run."""
        down, up = unet.down_blocks[self.level], unet.up_blocks[self.up_block]

        def layers(prefix, block, js):
            kinds = ("resnets", "attentions") if getattr(block, "attentions", None) is not None else ("resnets",)
            return [f"{prefix}.{kind}.{j}" for j in js for kind in kinds]

        out = layers(f"down_blocks.{self.level}", down, range(self.down_units, len(down.resnets)))
        if down.downsamplers is not None and self.down_units <= len(down.resnets):
            out += [f"down_blocks.{self.level}.downsamplers.{k}" for k in range(len(down.downsamplers))]
        out = [f"down_blocks.{self.level}"] if self.down_units == 0 else out
        out += [f"down_blocks.{i}" for i in range(self.level + 1, len(unet.down_blocks))]
        out += ["mid_block"] if unet.mid_block is not None else []
        out += [f"up_blocks.{i}" for i in range(self.up_block)]
        return out + layers(f"up_blocks.{self.up_block}", up, range(self.up_start))


def resolve_branch(unet, branch_id: int) -> Branch:
    """The package's rule for `branch_id` on this UNet (ValueError: no such level, or a layout it cannot split)."""
    n = len(unet.down_blocks)
    level, layer = divmod(branch_id, PER_LEVEL)
    if level >= n or len(unet.up_blocks) != n:
        raise ValueError(f"deepcache: cache_branch_id={branch_id} is level {level}, but this UNet has {n} levels "
                         f"(ids 0..{PER_LEVEL * n - 1})")
    down, up_block = unet.down_blocks[level], n - 1 - level
    up = unet.up_blocks[up_block]
    down_units, up_start = min(layer, _units(down)), max(0, len(up.resnets) - 1 - layer)
    for block, partial in ((down, 0 < down_units < _units(down)), (up, up_start > 0)):
        if partial and type(block).__name__ not in _SPLITTABLE:
            raise ValueError(f"deepcache: branch {branch_id} would run part of a {type(block).__name__}, not split")
    total = 1 + sum(_units(b) for b in unet.down_blocks)  # conv_in, then one per resnet and downsampler
    res_live = 1 + sum(_units(b) for b in unet.down_blocks[:level]) + down_units
    res_keep = total - sum(len(b.resnets) for b in unet.up_blocks[:up_block]) - up_start
    if total != sum(len(b.resnets) for b in unet.up_blocks) or res_keep > res_live:
        raise ValueError("deepcache: the up blocks do not consume the down blocks' skip features one for one")
    return Branch(level, layer, down_units, up_block, up_start, res_keep)


def conv_macs(unet) -> dict[str, float]:
    """Relative multiply-accumulates of each module the profile times as "convolutions" (ResNets, samplers,
    conv_in/out; it times only their sum): conv weights x output area (a quarter per level down)."""
    n = len(unet.down_blocks)

    def level(name):  # of the module's output
        kind, i, sub = (name.split(".") + ["0", ""])[:3]
        if kind == "down_blocks":
            return int(i) + (sub == "downsamplers")
        return n - 1 - int(i) - (sub == "upsamplers") if kind == "up_blocks" else (n - 1) * (kind == "mid_block")

    return {name: sum(k.weight.numel() for k in m.modules() if isinstance(k, torch.nn.Conv2d)) / 4 ** level(name)
            for name, m in unet.named_modules()
            if type(m).__name__ in ("ResnetBlock2D", "Downsample2D", "Upsample2D") or name in ("conv_in", "conv_out")}


def _cross(c, block=None) -> dict:
    """The text-conditioning arguments of a cross-attention block or transformer (none for a plain block)."""
    if block is not None and not getattr(block, "has_cross_attention", False):
        return {}
    return dict(encoder_hidden_states=c.encoder_hidden_states, attention_mask=c.attention_mask,
                cross_attention_kwargs=c.cross_attention_kwargs, encoder_attention_mask=c.encoder_attention_mask)


def _down(block, hidden, c, units: int):
    """A down block's first `units` units -> (hidden, skip features); all of them: the block's own forward."""
    if units == _units(block):
        return block(hidden_states=hidden, temb=c.emb, **_cross(c, block))
    outputs = ()
    for j in range(units):  # < _units: resnets (+ attentions) only
        hidden = block.resnets[j](hidden, c.emb)
        if getattr(block, "attentions", None):
            hidden = block.attentions[j](hidden, return_dict=False, **_cross(c))[0]
        outputs += (hidden,)
    return hidden, outputs


def _up(block, hidden, res, c, size, start: int = 0, stop: int | None = None):
    """An up block's resnets start..stop-1 (popping `res` from the end), then its upsampler unless stopped early;
    the whole block: its own forward."""
    if start == 0 and stop is None:
        return block(hidden_states=hidden, temb=c.emb, res_hidden_states_tuple=res, upsample_size=size,
                     **_cross(c, block))
    freeu = all(getattr(block, k, None) for k in ("s1", "s2", "b1", "b2"))
    for j in range(start, len(block.resnets) if stop is None else stop):
        res_hidden, res = res[-1], res[:-1]
        if freeu:
            hidden, res_hidden = apply_freeu(block.resolution_idx, hidden, res_hidden, s1=block.s1, s2=block.s2,
                                             b1=block.b1, b2=block.b2)
        hidden = block.resnets[j](torch.cat([hidden, res_hidden], dim=1), c.emb)
        if getattr(block, "attentions", None):
            hidden = block.attentions[j](hidden, return_dict=False, **_cross(c))[0]
    for upsampler in (block.upsamplers or []) if stop is None else []:
        hidden = upsampler(hidden, size)
    return hidden


def _decode(unet, hidden, res: tuple, c, branch: Branch, cached: bool):
    """Up path and head (unet_split.decode's order) -> (prediction, feature). Full step: from the mid output,
    keeping the branch's feature. Cached step: from the branch's up block on, `hidden` being the feature."""
    feature = size = None
    for i in range(branch.up_block if cached else 0, len(unet.up_blocks)):
        block, n = unet.up_blocks[i], len(unet.up_blocks[i].resnets)
        start = branch.up_start if cached and i == branch.up_block else 0
        res_samples, res = res[start - n:], res[: start - n]
        if i < len(unet.up_blocks) - 1 and c.forward_upsample_size:
            size = res[-1].shape[2:]
        if i == branch.up_block and not cached:
            if branch.up_start:  # the deep resnets, the feature, then the rest
                keep = n - branch.up_start
                hidden = _up(block, hidden, res_samples[keep:], c, size, 0, branch.up_start)
                res_samples, start = res_samples[:keep], branch.up_start
            feature = hidden
        hidden = _up(block, hidden, res_samples, c, size, start)
    if unet.conv_norm_out:
        hidden = unet.conv_act(unet.conv_norm_out(hidden))
    return unet.conv_out(hidden), feature


def full_forward(unet, sample, c, branch: Branch):
    """The whole UNet (bit for bit its forward) -> (noise prediction, the branch's feature)."""
    res, mid = unet_split.encode(unet, sample, c)
    return _decode(unet, mid, res, c, branch, cached=False)


def cached_forward(unet, sample, c, branch: Branch, feature: torch.Tensor) -> torch.Tensor:
    """The shallow branch only: conv_in, the down layers above the branch, the up path from the branch on."""
    hidden = unet.conv_in(2 * sample - 1.0 if unet.config.center_input_sample else sample)
    res = (hidden,)
    for i, block in enumerate(unet.down_blocks[: branch.level + 1]):
        units = branch.down_units if i == branch.level else _units(block)
        if units:
            hidden, outputs = _down(block, hidden, c, units)
            res += outputs
    return _decode(unet, feature, res[: branch.res_keep], c, branch, cached=True)[0]


class DeepCacheHandle(HandleBase):
    def __init__(self, config: DeepCacheConfig, ctx):
        self.config, self.clock, self.unet = config, ctx.clock, ctx.unet
        self.full = set(config.full_steps(ctx.clock.num_steps))
        self.active = len(self.full) < ctx.clock.num_steps  # some step runs only the shallow branch
        self.branch = resolve_branch(self.unet, config.cache_branch_id) if self.active else None
        self.units = self.branch.skipped_units(self.unet) if self.active else []
        macs = conv_macs(self.unet) if self.active else {}
        self.macs_fraction = sum(v for k, v in macs.items() if _within(k, self.units)) / (sum(macs.values()) or 1)
        self.gate, self.started, self.feature = None, False, None
        self.full_run, self.cached_run, self.forced = [], [], []
        self.seam = ctx.seam()
        self.seam.interceptors.append(self)

    def __call__(self, call_next, sample, timestep, encoder_hidden_states, *args, **kwargs):
        if not self.started and self.active:  # every plug-in is attached now: T-GATE's gate adds full steps
            from analysis.accel.tgate import TGateHandle

            owners = [getattr(i, "__self__", None) for i in self.seam.interceptors]
            self.gate = next((o.gate_step for o in owners if isinstance(o, TGateHandle)), None)
            self.full = set(self.config.full_steps_with_gate(self.clock.num_steps, self.gate))
        self.started = True
        if not self.active:
            self.full_run.append(self.clock.step_index)
            return call_next(sample, timestep, encoder_hidden_states, *args, **kwargs)
        call, chain = self._forward, self.seam.interceptors  # innermost: later interceptors run around it
        for interceptor in reversed(chain[chain.index(self) + 1:]):
            call = (lambda i, nxt: lambda *a, **k: i(nxt, *a, **k))(interceptor, call)
        return call(sample, timestep, encoder_hidden_states, *args, **kwargs)

    def _forward(self, sample, timestep, encoder_hidden_states, *args, **kwargs):
        step = self.clock.step_index
        try:
            arguments = unet_split.bind_forward_args(self.unet, sample, timestep, encoder_hidden_states, *args,
                                                     **kwargs)
        except ValueError as err:
            raise ValueError(f"deepcache: this UNet call cannot be split ({err})") from None
        c = unet_split.conditioning(self.unet, **arguments)
        if step in self.full or self.feature is None or self.feature.shape[0] != sample.shape[0]:
            if step not in self.full:
                self.forced.append(step)
            out, self.feature = full_forward(self.unet, sample, c, self.branch)
            self.full_run.append(step)
        else:
            out = cached_forward(self.unet, sample, c, self.branch, self.feature)
            self.cached_run.append(step)
        return UNet2DConditionOutput(sample=out) if arguments["return_dict"] else (out,)

    def detach(self) -> None:
        if self in self.seam.interceptors:
            self.seam.interceptors.remove(self)
        self.feature = None

    def counters(self) -> dict[str, Any]:
        from diffusers.models.transformers.transformer_2d import Transformer2DModel

        b = self.branch
        return {"full_steps": list(self.full_run), "cached_steps": list(self.cached_run),
                "forced_full_steps": list(self.forced), "gate_step": self.gate,
                "branch": None if b is None else {"id": self.config.cache_branch_id, **dataclasses.asdict(b)},
                "skipped_units": list(self.units), "skipped_unit_calls": len(self.units) * len(self.cached_run),
                "skipped_transformers": [name for name, m in self.unet.named_modules()
                                         if isinstance(m, Transformer2DModel) and _within(name, self.units)],
                "skipped_conv_macs_fraction": self.macs_fraction}


def deepcache_cost(config: DeepCacheConfig, counters: dict, profile: dict, steps: int,
                   accel_steps: int) -> dict[str, Any]:
    """Per cached step, at its batch rows: the skipped transformers' measured times (profile
    `transformer_layers`) plus the profile's convolution time (ResNets, samplers, conv_in/out: only their sum is
    timed) times the skipped ones' share of its multiply-accumulates. Concatenations and the like: not counted."""
    c = counters.get("deepcache", {})
    layers, names = profile.get("transformer_layers", {}), c.get("skipped_transformers", [])
    attn_s = sum(layers[n]["s"] for n in names if n in layers)
    conv_s = profile["shares"]["convolutions"] * profile["unet_call_s"] * c.get("skipped_conv_macs_fraction", 0.0)
    frac = row_fractions(counters, accel_steps)
    units = sum(frac[s] if s < len(frac) else 1.0 for s in c.get("cached_steps", []))
    missing = ", ".join(n for n in names if n not in layers)
    return saving(unet_s=units * (attn_s + conv_s), note=f"not in the profile (0 s): {missing}" if missing else None,
                  detail={"cached_row_units": units, "transformers_s": attn_s, "convolutions_s": conv_s})


def _summary(c: dict) -> str:
    full, cached, b = c.get("full_steps", []), c.get("cached_steps", []), c.get("branch")
    if not cached:
        return f"deepcache: full UNet on all {len(full)} steps (nothing cached)"
    forced = f", forced at {', '.join(map(str, c['forced_full_steps']))}" if c.get("forced_full_steps") else ""
    return (f"deepcache: deep UNet below branch {b['id']} (level {b['level']}, layer {b['layer']}) cached on "
            f"{len(cached)} of {len(full) + len(cached)} steps (full at {', '.join(map(str, full))}{forced}); "
            f"{c.get('skipped_unit_calls', 0)} block/layer calls skipped")


def _marks(config: DeepCacheConfig, steps: int, model: str) -> dict:
    full = config.full_steps(steps)
    return {"full_steps": full, "cached_steps": [s for s in range(steps) if s not in set(full)],
            **{k: getattr(config, k) for k in ("schedule", "cache_interval", "cache_branch_id")}}


def _strip(marks: dict, steps: int) -> list:
    full = set(marks["full_steps"])
    return [("DeepCache deep UNet", [("reuse", "compute")[s in full] for s in range(steps)],
             [("c", "F")[s in full] for s in range(steps)])]


def _bound(profile: dict, steps: int) -> float:
    """Every step but the first cached at branch 0, which keeps at least the shallowest up transformer."""
    ups = [n for n in profile.get("transformer_layers", {}) if n.startswith("up_blocks.")]
    last = max(ups, key=lambda n: (int(n.split(".")[1]), int(n.split(".")[3])), default=None)
    kept = profile["transformer_layers"][last]["s"] / profile["unet_call_s"] if last and profile["unet_call_s"] else 0.0
    return profile["pipeline"]["shares"]["unet"] * (1.0 - kept) * max(0, steps - 1) / max(1, steps)


TECHNIQUE = Technique(
    name="deepcache", title="DeepCache (Ma et al.)",
    reference="Ma et al., DeepCache: Accelerating Diffusion Models for Free, CVPR 2024",
    config=DeepCacheConfig,
    knobs=(Knob("cache_interval", "cache interval N (full UNet every N steps)", "int", default=3, low=1, high=10,
                step=1, accept=(1, 1000), info="package README: 3; 1 = off"),
           Knob("cache_branch_id", "branch id (the skip branch kept live)", "int", default=0, low=0, high=8, step=1,
                accept=(0, 11), info="0 = the shallowest (fastest); level = id // 3"),
           Knob("schedule", "full steps", "choice", default="uniform", radio=True,
                choices=(("uniform (every N steps)", "uniform"), ("non-uniform (near the center)", "nonuniform")))),
    build=lambda values, steps: DeepCacheConfig(**values),
    cost=deepcache_cost, summary=_summary, marks=_marks, strip=_strip,
    bound_text="bounded by the UNet share minus its shallowest branch (conv_in, the last up block's last layer, "
               "the head) on every step but the first; full steps run the whole UNet",
    bound=_bound, colour="#882255", marker="h", order=45,
    grid=lambda steps: [(f"deepcache-i{k}", (f"deepcache:cache_interval={k}",)) for k in (2, 3, 5)]
    + [("deepcache-nonuniform-i5", ("deepcache:cache_interval=5,schedule=nonuniform",))],
    validate=lambda config, steps, model: config.full_steps(steps),
    lines=lambda marks: {"drift": ("full steps (the deep UNet runs)", list(marks["full_steps"]))},
)
