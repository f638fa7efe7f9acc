"""Attention-map capture (probe "attention_maps"): cross-attention maps per prompt token and self-attention
maps, per layer and step, conditional branch only, within a memory budget.

What is kept (schema: docs/signals.md):
- cross: p(token | pixel) averaged over heads, (steps, n_prompts, n_tokens, h, w); every token column is
  kept, padding included (the UI marks them with RunResult.tokens);
- cross_heads: the same per head, where the budget allows;
- self: head-averaged self-attention, (steps, n_prompts, hq, wq, hk, wk). When downsampled, a kept key
  cell holds the probability mass of the key pixels it covers and a kept query cell the mean distribution
  of its query pixels, so every query row still sums to 1 over the kept keys;
- self_heads: the same per head (steps, n_prompts, heads, hq, wq, hk, wk), where the budget allows.

Every map is reduced on the device (head mean, adaptive average pooling) and converted to float16 before it
is kept; on an accelerator a step's maps move to the CPU together when the step is over (one
synchronisation per step). The budget plan is made once, from the layer shapes seen at the first step (that step's maps are reduced
to the plan when it is made; meanwhile only reductions the plan is certain to make are applied), in this
order until all kept steps fit:
1. drop the per-head self-attention maps, then the per-head cross maps;
2. halve the self-attention query/key resolution, largest layer first, down to `min_res` per side;
3. keep evenly spaced steps (first and last included) instead of all of them;
4. if not even one step fits: halve the cross maps too (down to `min_res`), then drop layers (self-attention
   first, largest first) and keep the first step only.
The signal records the plan: kept steps, per-layer native and kept resolutions, budget and kept bytes.
After the first step, probabilities are computed only for kept steps and layers (and only for the
conditional rows, see analysis.probes._common.cond_probs), so steps the budget skips cost nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from analysis.attention import AttnCall
from analysis.probes._common import AttentionProbe, halve, pool, stack_steps, token_grid

BYTES = 2  # float16


@dataclass(frozen=True)
class AttentionMapsConfig:
    name: ClassVar[str] = "attention_maps"
    budget_mb: float = 1024.0  # memory for all kept maps (MiB)
    cross: bool = True  # keep cross-attention maps
    self_maps: bool = True  # keep self-attention maps
    cross_heads: bool = True  # keep per-head cross maps too, where the budget allows
    self_heads: bool = True  # keep per-head self-attention maps too, where the budget allows (dropped first)
    min_res: int = 8  # the budget never downsamples below this many cells per side

    def __post_init__(self):
        if isinstance(self.budget_mb, bool) or not isinstance(self.budget_mb, (int, float)) or not self.budget_mb > 0:
            raise ValueError(f"attention_maps: budget_mb must be a positive number of MiB, got {self.budget_mb!r}")
        if isinstance(self.min_res, bool) or not isinstance(self.min_res, int) or self.min_res < 1:
            raise ValueError(f"attention_maps: min_res must be a positive integer, got {self.min_res!r}")
        if not (self.cross or self.self_maps):
            raise ValueError("attention_maps: nothing to keep; enable cross and/or self_maps")

    def attach(self, ctx) -> "AttentionMapsProbe":
        return AttentionMapsProbe(self, ctx)


@dataclass
class _Layer:
    name: str
    cross: bool
    native: tuple[int, int]
    heads: int
    prompts: int
    n_tokens: int = 0  # cross only
    kept: tuple[int, int] = (0, 0)
    keys_kept: tuple[int, int] = (0, 0)  # self only
    dropped: bool = False
    maps: dict[int, torch.Tensor] = field(default_factory=dict)  # step -> CPU float16
    head_maps: dict[int, torch.Tensor] = field(default_factory=dict)

    def bytes_per_step(self, heads_on: bool, self_heads_on: bool = False) -> int:
        if self.dropped:
            return 0
        if self.cross:
            cells = self.prompts * self.n_tokens * self.kept[0] * self.kept[1]
            return BYTES * cells * (1 + (self.heads if heads_on else 0))
        cells = self.prompts * self.kept[0] * self.kept[1] * self.keys_kept[0] * self.keys_kept[1]
        return BYTES * cells * (1 + (self.heads if self_heads_on else 0))


def _self_reduce(m: torch.Tensor, native, kept, keys_kept) -> torch.Tensor:
    """m: (P, Nq, Nk) head-averaged self-attention, queries and keys both on the grid `native`
    -> (P, hq', wq', hk', wk') at `kept` (queries) and `keys_kept` (keys)."""
    p = m.shape[0]
    hq, wq = native
    x = m.reshape(p * hq * wq, hq, wq)  # keys on their grid (self-attention: same grid as the queries)
    if tuple(keys_kept) != tuple(native):
        x = pool(x, keys_kept)
        x = x / x.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-12)  # mass per kept key cell
    nk = keys_kept[0] * keys_kept[1]
    if tuple(kept) != tuple(native):
        x = x.reshape(p, hq, wq, nk).permute(0, 3, 1, 2)
        x = pool(x, kept).permute(0, 2, 3, 1)
    return x.reshape(p, kept[0], kept[1], keys_kept[0], keys_kept[1])


class AttentionMapsProbe(AttentionProbe):
    def __init__(self, config: AttentionMapsConfig, ctx):
        self.config = config
        self.budget = int(config.budget_mb * 2**20)
        self.layers: dict[str, _Layer] = {}
        self.first_step: int | None = None
        self.kept_steps: list[int] | None = None  # None until the plan is made
        self._kept_set: set[int] = set()
        self.heads_on = config.cross and config.cross_heads
        self.self_heads_on = config.self_maps and config.self_heads
        self.reductions: list[str] = []
        self._staged: list[tuple[dict, int]] = []  # (maps dict, step) still on the device
        self._staged_step: int | None = None
        self._register(ctx)

    # --- probe hooks ----------------------------------------------------------------------------------
    def needs(self, call: AttnCall) -> bool:
        if not (self.config.cross if call.is_cross else self.config.self_maps):
            return False
        step = call.step
        if self.first_step is None:
            self.first_step = step
        if self.kept_steps is None:
            if step == self.first_step:
                return True
            self._plan()
        layer = self.layers.get(call.name)
        return layer is not None and not layer.dropped and step in self._kept_set

    def observe(self, call: AttnCall, p: torch.Tensor) -> None:
        """p: (n_cond, heads, n_queries, n_keys)."""
        prompts, heads, nq, nk = p.shape
        layer = self.layers.get(call.name)
        if layer is None:
            grid = token_grid(nq, self.latent.hw)
            layer = _Layer(call.name, call.is_cross, grid, heads, prompts, nk if call.is_cross else 0, grid, grid)
            self.layers[call.name] = layer
            self._first_step_bounds(layer)
        if prompts != layer.prompts:
            return
        step = call.step
        h, w = layer.native
        if layer.cross:
            mean = p.mean(dim=1).transpose(1, 2).reshape(prompts, nk, h, w)
            self._stage(layer.maps, step, pool(mean, layer.kept))
            if self.heads_on:
                per_head = p.transpose(2, 3).reshape(prompts, heads, nk, h, w)
                self._stage(layer.head_maps, step, pool(per_head, layer.kept))
        else:
            self._stage(layer.maps, step, _self_reduce(p.mean(dim=1), layer.native, layer.kept, layer.keys_kept))
            if self.self_heads_on:
                per_head = _self_reduce(p.reshape(prompts * heads, nq, nk), layer.native, layer.kept, layer.keys_kept)
                self._stage(layer.head_maps, step, per_head.reshape(prompts, heads, *per_head.shape[1:]))

    def _first_step_bounds(self, layer: _Layer) -> None:
        """Bound what the first step holds before the plan exists, with reductions the plan is sure to make:
        a self-attention layer that alone would not fit the budget over all steps is halved now (the plan
        halves the largest layer first, so it would get there anyway), and once the layers seen so far
        exceed the budget the per-head cross maps go (the plan drops them first)."""
        n = max(self.clock.num_steps - (self.first_step or 0), 1)
        if not layer.cross:
            while layer.bytes_per_step(False) * n > self.budget:
                smaller = halve(layer.kept, self.config.min_res)
                if smaller == layer.kept:
                    break
                layer.kept = layer.keys_kept = smaller
        if self.self_heads_on and self._per_step() * n > self.budget:
            self._drop_heads(cross=False)
        if self.heads_on and self._per_step() * n > self.budget:
            self._drop_heads(cross=True)

    def _drop_heads(self, cross: bool) -> None:
        if cross:
            self.heads_on = False
            self.reductions.append("dropped per-head cross maps")
        else:
            self.self_heads_on = False
            self.reductions.append("dropped per-head self-attention maps")
        for layer in self.layers.values():
            if layer.cross == cross:
                layer.head_maps.clear()

    def _stage(self, maps: dict, step: int, x: torch.Tensor) -> None:
        """Keep a reduced map as float16. On an accelerator it waits on the device until its step is over and
        then moves to the CPU with the rest of the step (one synchronisation per step, not one per call)."""
        if step != self._staged_step:
            self._flush()
            self._staged_step = step
        x = x.detach().to(dtype=torch.float16)
        maps[step] = x
        if x.device.type != "cpu":
            self._staged.append((maps, step))

    def _flush(self) -> None:
        for maps, step in self._staged:
            if step in maps:
                maps[step] = maps[step].to("cpu")
        self._staged.clear()

    # --- the budget plan -------------------------------------------------------------------------------
    def _per_step(self) -> int:
        return sum(layer.bytes_per_step(self.heads_on, self.self_heads_on) for layer in self.layers.values())

    def _plan(self) -> None:
        self._flush()
        layers = list(self.layers.values())
        n = max(self.clock.num_steps, 1)
        first = self.first_step or 0
        total_steps = list(range(first, n)) or [first]
        n = len(total_steps)
        if self._per_step() * n > self.budget and self.self_heads_on:
            self._drop_heads(cross=False)
        if self._per_step() * n > self.budget and self.heads_on:
            self._drop_heads(cross=True)
        self._downsample_self(layers, n)
        per_step = self._per_step()
        n_keep = n if per_step == 0 else min(n, self.budget // per_step)
        if n_keep < 1:
            n_keep = self._fit_one_step(layers)
        if n_keep >= n:
            kept = total_steps
        elif n_keep <= 1:
            kept = [first] if n_keep == 1 else []
        else:
            kept = sorted({total_steps[round(i * (n - 1) / (n_keep - 1))] for i in range(n_keep)})
        if len(kept) < n:
            self.reductions.append(f"kept {len(kept)} of {n} steps")
        self.kept_steps = kept
        self._kept_set = set(kept)
        for layer in layers:  # bring what the first step stored down to the plan
            self._reduce_to_plan(layer)

    def _downsample_self(self, layers: list[_Layer], n: int) -> None:
        """Halve the largest self-attention layer's kept grid until `n` steps of every layer fit the budget (or no
        layer can be halved); noted once, also when the first-step bounds already downsampled."""
        min_res = self.config.min_res
        downsampled = any(not l.cross and l.kept != l.native for l in layers)  # first-step bounds
        while self._per_step() * n > self.budget:
            cands = [l for l in layers if not l.cross and not l.dropped and halve(l.kept, min_res) != l.kept]
            if not cands:
                break
            layer = max(cands, key=lambda l: l.bytes_per_step(False))
            layer.kept = layer.keys_kept = halve(layer.kept, min_res)
            downsampled = True
        if downsampled:
            self.reductions.append(f"self-attention downsampled (min {min_res}x{min_res})")

    def _fit_one_step(self, layers: list[_Layer]) -> int:
        """Not even one step fits: halve the cross-attention layers, then drop layers (self-attention first) until
        one step fits. Returns how many steps to keep (1, or 0 when every layer was dropped)."""
        min_res = self.config.min_res
        while self._per_step() > self.budget:
            cands = [l for l in layers if l.cross and not l.dropped and halve(l.kept, min_res) != l.kept]
            if not cands:
                break
            layer = max(cands, key=lambda l: l.bytes_per_step(False))
            layer.kept = halve(layer.kept, min_res)
            if "cross-attention downsampled" not in self.reductions:
                self.reductions.append("cross-attention downsampled")
        dropped = 0
        while self._per_step() > self.budget:  # self-attention layers go first: the token maps matter most
            layer = max((l for l in layers if not l.dropped),
                        key=lambda l: (not l.cross, l.bytes_per_step(self.heads_on, self.self_heads_on)))
            layer.dropped = True
            dropped += 1
        if dropped:
            self.reductions.append(f"dropped {dropped} of {len(layers)} layers")
        return 1 if self._per_step() > 0 else 0

    def _reduce_to_plan(self, layer: _Layer) -> None:
        """Bring the maps `layer` stored at the first step down to the plan: drop unkept steps (or the whole
        dropped layer), pool to the kept resolution, and reduce or drop the per-head maps likewise."""
        if layer.dropped:
            layer.maps.clear()
            layer.head_maps.clear()
            return
        for step in list(layer.maps):
            if step not in self._kept_set:
                del layer.maps[step]
                layer.head_maps.pop(step, None)
                continue
            m = layer.maps[step].float()
            if layer.cross:
                layer.maps[step] = pool(m, layer.kept).half()
            else:  # stored at the first-step resolution (queries and keys on the same grid)
                grid = (m.shape[1], m.shape[2])
                flat = m.reshape(layer.prompts, grid[0] * grid[1], -1)
                layer.maps[step] = _self_reduce(flat, grid, layer.kept, layer.keys_kept).half()
        if not (self.heads_on if layer.cross else self.self_heads_on):
            layer.head_maps.clear()
        elif layer.cross:
            for step, m in list(layer.head_maps.items()):
                layer.head_maps[step] = pool(m.float(), layer.kept).half()
        else:
            for step, m in list(layer.head_maps.items()):
                m = m.float()  # (P, heads, hq, wq, hk, wk) at the first-step resolution
                grid = (m.shape[2], m.shape[3])
                flat = m.reshape(layer.prompts * layer.heads, grid[0] * grid[1], -1)
                red = _self_reduce(flat, grid, layer.kept, layer.keys_kept)
                layer.head_maps[step] = red.reshape(layer.prompts, layer.heads, *red.shape[1:]).half()

    # --- results -------------------------------------------------------------------------------------------
    def signals(self) -> dict[str, Any]:
        self._flush()
        if self.kept_steps is None:
            self._plan()
        steps = list(self.kept_steps or [])
        cross: dict[str, Any] = {}
        cross_heads: dict[str, Any] = {}
        self_maps: dict[str, Any] = {}
        self_heads: dict[str, Any] = {}
        resolution: dict[str, Any] = {}
        kept_bytes = 0
        for layer in self.layers.values():
            if layer.dropped or not layer.maps or not steps:
                continue
            like = next(iter(layer.maps.values()))
            arr = stack_steps(layer.maps, steps, like).numpy()
            kept_bytes += arr.nbytes
            res: dict[str, Any] = {"native": list(layer.native), "kept": list(layer.kept)}
            if layer.cross:
                cross[layer.name] = arr
                if self.heads_on and layer.head_maps:
                    heads_arr = stack_steps(layer.head_maps, steps, next(iter(layer.head_maps.values()))).numpy()
                    cross_heads[layer.name] = heads_arr
                    kept_bytes += heads_arr.nbytes
            else:
                self_maps[layer.name] = arr
                res["keys_kept"] = list(layer.keys_kept)
                if self.self_heads_on and layer.head_maps:
                    heads_arr = stack_steps(layer.head_maps, steps, next(iter(layer.head_maps.values()))).numpy()
                    self_heads[layer.name] = heads_arr
                    kept_bytes += heads_arr.nbytes
            resolution[layer.name] = res
        return {
            "attention_maps": {
                "steps": steps,
                "cross": cross,
                "cross_heads": cross_heads,
                "self": self_maps,
                "self_heads": self_heads,
                "resolution": resolution,
                "budget_bytes": self.budget,
                "kept_bytes": int(kept_bytes),
                "reductions": list(self.reductions),
                "dropped_layers": [l.name for l in self.layers.values() if l.dropped],
            }
        }

