"""Image sizes this machine can run in reasonable time: refused above a ceiling the operator can raise, and
warned about, with an estimate from a measured step, when a run would take long.

The ceiling is 8x the model's native side (64x its pixels: 512 px on the 64 px default model, whose
1024 px runs took many minutes here; RunConfig's own 2048 px on SD 1.5), or `$DIFFSCOPE_MAX_SIZE` pixels
where the operator set it. Below it, a size above twice the native side is estimated from two measured steps (the pipeline itself,
one step, latents out): at the native side and at half the requested side. A step costs A*r + B*r^2 at r
times the native pixels (convolutions and projections grow with the pixels, attention with their square);
the two timings fix A and B. Measuring near the requested size matters: on the default model the quadratic
part is invisible at 128 px (the fixed per-step overhead dominates), and a fit from 64 and 128 px said
12.7 s for a 10-step 512 px run that took 93.4 s.
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
    half: int  # the second measured side, half the requested one
    step_s: float  # one denoising step at the native side, measured here
    half_s: float  # one at `half` px
    seconds: float  # the estimated run (all its denoising steps)

    def note(self) -> str:
        minutes = self.seconds / 60
        span = f"about {minutes:.0f} min" if minutes >= 1.5 else f"about {self.seconds:.0f} s"
        return (f"--size {self.size} is {(self.size / self.native) ** 2:.0f}x the pixels of this model's native "
                f"{self.native} px: {span} on this machine (one step took {self.step_s * 1000:.0f} ms at "
                f"{self.native} px and {self.half_s * 1000:.0f} ms at {self.half} px here)")


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


def time_one_step(pipe, side: int, guidance: float, repeats: int = 2) -> float:
    """Seconds of one denoising step at `side` px: the fastest of `repeats` calls (the first of a new size
    also pays one-off set-up, so one call alone errs long)."""
    import torch

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.inference_mode():
            pipe("a", num_inference_steps=1, height=side, width=side, guidance_scale=guidance, output_type="latent")
        times.append(time.perf_counter() - start)
    return min(times)


def step_seconds(t_native: float, t_half: float, r_half: float, ratio: float) -> float:
    """One step at `ratio` x the native pixels from steps timed at 1x and `r_half` x: t(r) = A r + B r^2
    through both points (B >= 0 and A >= 0: never below linear growth)."""
    quadratic = max(0.0, (t_half - r_half * t_native) / (r_half ** 2 - r_half))
    linear = max(0.0, t_native - quadratic)
    return linear * ratio + quadratic * ratio ** 2


def estimate(pipe, size: int | None, steps: int, runs: int, guidance: float) -> SizeEstimate | None:
    """The estimated denoising time of `runs` runs of `steps` steps at `size`, or None when the size is at
    most twice the native side (nothing worth measuring)."""
    native = native_size(pipe)
    if size is None or size <= 2 * native:
        return None
    half = max(8, size // 2 // 8 * 8)
    t_native = time_one_step(pipe, native, guidance, repeats=3)
    t_half = time_one_step(pipe, half, guidance, repeats=1)  # a quarter of a step at `size`, or less
    step = step_seconds(t_native, t_half, (half / native) ** 2, (size / native) ** 2)
    return SizeEstimate(size, native, half, t_native, t_half, step * steps * runs)
