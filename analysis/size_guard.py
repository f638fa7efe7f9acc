"""Image sizes this machine can run in reasonable time: refused above a ceiling the operator can raise, and
warned about, with an estimate from a measured step, when a run would take long.

The ceiling is 8x the model's native side (64x its pixels: 512 px on the 64 px default model, whose
1024 px runs took many minutes here; RunConfig's own 2048 px on SD 1.5), or `$DIFFSCOPE_MAX_SIZE` pixels
where the operator set it. Below it, a size above twice the native side
is estimated by timing one denoising step at the native size (the pipeline itself, one step, latents out)
and scaling by the pixel count: convolutions grow with the pixels, self-attention faster, so the estimate
is a lower bound and says so.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

ENV_MAX_SIZE = "DIFFSCOPE_MAX_SIZE"
CEILING_FACTOR = 8
SLOW_S = 60.0  # a run estimated longer than this is announced before it starts


@dataclass(frozen=True)
class SizeEstimate:
    size: int
    native: int
    step_s: float  # one denoising step at the native size, measured here
    seconds: float  # the estimated run (all its denoising steps), a lower bound

    def note(self) -> str:
        minutes = self.seconds / 60
        span = f"about {minutes:.0f} min" if minutes >= 1.5 else f"about {self.seconds:.0f} s"
        return (f"--size {self.size} is {(self.size / self.native) ** 2:.0f}x the pixels of this model's native "
                f"{self.native} px: {span} or more on this machine (one step at {self.native} px took "
                f"{self.step_s * 1000:.0f} ms here, scaled by the pixel count)")


def native_size(pipe) -> int:
    return int(pipe.unet.config.sample_size) * int(getattr(pipe, "vae_scale_factor", 8))


def ceiling(native: int, environ=os.environ) -> int:
    raw = environ.get(ENV_MAX_SIZE)
    if raw:
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{ENV_MAX_SIZE} must be a whole number of pixels, got {raw!r}") from None
    return CEILING_FACTOR * native


def check_size(size: int | None, native: int, environ=os.environ) -> None:
    """ValueError (one line) when `size` is above the ceiling."""
    if size is None:
        return
    top = ceiling(native, environ)
    if size > top:
        raise ValueError(f"--size {size} is above this machine's limit of {top} px for a {native} px model "
                         f"(a run would take very long); the operator can raise it with {ENV_MAX_SIZE}=PIXELS")


def time_one_step(pipe, native: int, guidance: float) -> float:
    """Seconds of one denoising step at the native size (median of 2 after one warm-up)."""
    import torch

    times = []
    for _ in range(3):
        start = time.perf_counter()
        with torch.inference_mode():
            pipe("a", num_inference_steps=1, height=native, width=native, guidance_scale=guidance,
                 output_type="latent")
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[0]


def estimate(pipe, size: int | None, steps: int, runs: int, guidance: float) -> SizeEstimate | None:
    """The estimated denoising time of `runs` runs of `steps` steps at `size`, or None when the size is at
    most twice the native side (nothing worth measuring)."""
    native = native_size(pipe)
    if size is None or size <= 2 * native:
        return None
    step = time_one_step(pipe, native, guidance)
    return SizeEstimate(size, native, step, step * (size / native) ** 2 * steps * runs)
