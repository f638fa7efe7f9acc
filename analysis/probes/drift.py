"""Feature drift (probe "feature_drift"), Faster Diffusion's measurement (Li et al., NeurIPS 2024, Fig. 3).

Forward hooks on every UNet block (`down_blocks.i` = encoder, `mid_block` = bottleneck, `up_blocks.i` =
decoder; a down block returns (hidden, res_samples), its hidden state is used), conditional rows only:
- mse[t-1] = (1/(d*s^2)) ||F_t - F_{t-1}||^2 (Fig. 3a), averaged over prompts;
- relative[t-1] = ||F_t - F_{t-1}|| / ||F_{t-1}||, averaged over prompts: the change as a fraction of the
  block's own feature norm, so blocks of different width and scale compare (the raw MSE mixes a block's
  scale with its change; issue 17);
- frobenius[t] = Frobenius norm of the channel-averaged map (Fig. 3b), averaged over prompts;
- pca: the first prompt's features at the chosen steps (default first, middle, last), pooled to at most
  `pca_res` per side on the device and kept as float16; after the run, the top-3 PCA components over
  pixels (sklearn) become an RGB image (each component stretched between its 1st and 99th percentile).
Only the previous step's feature per block is kept on the device; scalars stay there until the run ends.
A block a technique skipped at some step (encoder propagation) leaves NaN there. Faster-Diffusion's batched
decoder (one call for a key step and the non-key steps after it) is split back onto those steps.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from analysis.probes._common import attach_clock, cond_slice, pool


def _cond_per_step(clock, h: torch.Tensor) -> list[torch.Tensor]:
    """The conditional rows of a block output, one tensor per step it covers: one step for a plain UNet call;
    k steps for Faster-Diffusion's batched decoder, whose rows are stacked half-major ([uncond s..s+k-1;
    cond s..s+k-1], fastdiff.RowLayout) and whose steps are consecutive from the key step."""
    n, batch = clock.n_prompts, h.shape[0]
    if clock.guidance and batch > 2 * n and batch % (2 * n) == 0:
        return list(h[batch // 2:].detach().split(n))
    if not clock.guidance and batch > n and batch % n == 0:
        return list(h.detach().split(n))
    return [h[cond_slice(clock, batch)].detach()]


@dataclass(frozen=True)
class DriftConfig:
    name: ClassVar[str] = "feature_drift"
    pca_steps: tuple[int, ...] | None = None  # None = first, middle and last step
    pca_res: int = 64  # max side of the PCA image (features are pooled down to it)

    def __post_init__(self):
        if self.pca_steps is not None:
            steps = tuple(self.pca_steps)
            if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in steps):
                raise ValueError(f"feature_drift: pca_steps must be non-negative step indices, got {self.pca_steps!r}")
            object.__setattr__(self, "pca_steps", tuple(sorted(set(steps))))
        if isinstance(self.pca_res, bool) or not isinstance(self.pca_res, int) or not 1 <= self.pca_res <= 1024:
            raise ValueError(f"feature_drift: pca_res must be an integer between 1 and 1024, got {self.pca_res!r}")

    def attach(self, ctx) -> "DriftProbe":
        return DriftProbe(self, ctx)


def relative_change(features: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    """||F_t - F_t-1|| / ||F_t-1|| per batch row, averaged: independent of the block's scale."""
    change, norm = (features - before).flatten(1).norm(dim=1), before.flatten(1).norm(dim=1)
    return (change / norm.clamp_min(torch.finfo(torch.float32).tiny)).mean()


def unet_blocks(unet) -> list[tuple[str, torch.nn.Module, str]]:
    blocks = [(f"down_blocks.{i}", b, "encoder") for i, b in enumerate(unet.down_blocks)]
    if getattr(unet, "mid_block", None) is not None:
        blocks.append(("mid_block", unet.mid_block, "bottleneck"))
    blocks += [(f"up_blocks.{i}", b, "decoder") for i, b in enumerate(unet.up_blocks)]
    return blocks


def pca_rgb(features: np.ndarray) -> np.ndarray:
    """(C, h, w) features -> (h, w, 3) uint8: top-3 principal components over pixels as RGB."""
    from sklearn.decomposition import PCA

    c, h, w = features.shape
    x = features.reshape(c, h * w).T.astype(np.float64)
    x = np.nan_to_num(x)
    k = min(3, c, h * w)
    comps = np.zeros((h * w, 3))
    if k >= 1 and np.ptp(x, axis=0).max() > 0:
        # covariance_eigh: one C x C eigendecomposition (pixels >> channels).
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            solver = "covariance_eigh" if h * w >= c else "full"
            comps[:, :k] = PCA(n_components=k, svd_solver=solver).fit_transform(x)
    lo, hi = np.percentile(comps, 1, axis=0), np.percentile(comps, 99, axis=0)
    scale = np.where(hi > lo, hi - lo, 1.0)
    rgb = np.clip((comps - lo) / scale, 0.0, 1.0) * 255.0
    return rgb.round().astype(np.uint8).reshape(h, w, 3)


class DriftProbe:
    def __init__(self, config: DriftConfig, ctx):
        self.config = config
        self.clock = ctx.clock
        n = ctx.clock.num_steps
        self.pca_steps = set(config.pca_steps) if config.pca_steps is not None else {0, n // 2, max(n - 1, 0)}
        self.blocks = unet_blocks(ctx.unet)
        self._prev: dict[str, tuple[int, torch.Tensor]] = {}
        self._mse: dict[tuple[str, int], torch.Tensor] = {}
        self._relative: dict[tuple[str, int], torch.Tensor] = {}
        self._fro: dict[tuple[str, int], torch.Tensor] = {}
        self._pca: dict[tuple[str, int], torch.Tensor] = {}
        self._latent = attach_clock(ctx)
        self._seam = ctx.seam()
        self._hooks = [block.register_forward_hook(partial(self._hook, name)) for name, block, _ in self.blocks]

    def _hook(self, name: str, module, args, output) -> None:
        step = self.clock.step_index
        if step < 0:
            return
        h = output[0] if isinstance(output, tuple) else output
        if not torch.is_tensor(h) or h.ndim != 4:
            return
        for i, f in enumerate(_cond_per_step(self.clock, h)):
            self._observe(name, step + i, f)

    def _observe(self, name: str, step: int, f: torch.Tensor) -> None:
        ff = f.float()
        self._fro[(name, step)] = ff.mean(dim=1).flatten(1).norm(dim=1).mean()
        prev = self._prev.get(name)
        if prev is not None and prev[0] == step - 1 and prev[1].shape == f.shape:
            before = prev[1].float()
            self._mse[(name, step)] = (ff - before).pow(2).mean()
            self._relative[(name, step)] = relative_change(ff, before)
        self._prev[name] = (step, f.clone())
        if step in self.pca_steps:
            hh, ww = f.shape[-2:]
            scale = min(1.0, self.config.pca_res / max(hh, ww))
            size = (max(1, round(hh * scale)), max(1, round(ww * scale)))
            # kept on the device (float16, at most pca_res per side) until the run ends: no sync in the loop
            self._pca[(name, step)] = pool(f[0], size).to(dtype=torch.float16, copy=True)

    def detach(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if self._seam is not None and self._latent in self._seam.interceptors:
            self._seam.interceptors.remove(self._latent)
        self._seam = None
        self._prev.clear()

    def counters(self) -> dict[str, Any]:
        return {}

    def _matrix(self, values: dict, steps: list[int]) -> np.ndarray:
        names = [name for name, _, _ in self.blocks]
        out = np.full((len(names), len(steps)), np.nan, dtype=np.float32)
        keys = list(values)
        if keys:
            flat = torch.stack([values[k] for k in keys]).cpu().numpy()
            row = {n: i for i, n in enumerate(names)}
            col = {s: j for j, s in enumerate(steps)}
            for (name, step), v in zip(keys, flat):
                if step in col:
                    out[row[name], col[step]] = v
        return out

    def signals(self) -> dict[str, Any]:
        n = self.clock.num_steps
        pca: dict[str, dict[int, np.ndarray]] = {}
        # One BLAS thread: OpenBLAS's spinning threads cost ~10x CPU on a busy machine for matrices this small.
        with threadpool_limits(1):
            for (name, step), feat in self._pca.items():
                pca.setdefault(name, {})[step] = pca_rgb(feat.float().cpu().numpy())
        return {
            "feature_drift": {
                "blocks": [name for name, _, _ in self.blocks],
                "role": {name: role for name, _, role in self.blocks},
                "mse": self._matrix(self._mse, list(range(1, n))),
                "relative": self._matrix(self._relative, list(range(1, n))),
                "frobenius": self._matrix(self._fro, list(range(n))),
                "pca": {name: dict(sorted(v.items())) for name, v in pca.items()},
            }
        }
