"""StepClock and the UNet seam: where the denoising loop is, and the one place techniques change a UNet call.

The pipeline's own `__call__` runs the loop (SD 1.x, 2.x and SDXL alike). `UNetSeam` wraps
`unet.forward` for the duration of a run: every call advances the clock (one UNet call per denoising step
for DDIM, DPM-Solver++ and Euler) and then passes through the interceptors that techniques register
(T-GATE drops the CFG half of the batch, encoder propagation skips the encoder). Hooks read the clock
instead of counting calls themselves, so they agree on the step index.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch


@dataclass
class StepClock:
    """The state of the denoising loop, as seen by every hook during one generation."""

    num_steps: int = 0
    n_prompts: int = 1
    guidance: bool = True  # the pipeline runs classifier-free guidance (batch = [uncond; cond])
    timesteps: tuple[float, ...] = ()
    step_index: int = -1
    timestep: float | None = None
    rows: int = 0  # rows in the current UNet batch
    row_log: list[int] = field(default_factory=list)  # rows per step, for "UNet batch rows saved"

    def reset(self, num_steps: int, n_prompts: int, guidance: bool) -> None:
        self.num_steps, self.n_prompts, self.guidance = num_steps, n_prompts, guidance
        self.timesteps, self.step_index, self.timestep, self.rows = (), -1, None, 0
        self.row_log = []

    @property
    def cfg_batch(self) -> bool:
        """True when the current UNet batch holds [uncond; cond] halves."""
        return self.guidance and self.rows == 2 * self.n_prompts

    def advance(self, timestep: Any, rows: int) -> None:
        self.step_index += 1
        self.timestep = float(timestep.flatten()[0]) if torch.is_tensor(timestep) else float(timestep)
        self.rows = rows
        self.row_log.append(rows)


class Interceptor(Protocol):
    """A technique's hook on the UNet call: call `call_next(sample, timestep, encoder_hidden_states, **kw)`
    (possibly with a smaller batch) or return a cached result without calling it."""

    def __call__(self, call_next: Callable[..., Any], sample: torch.Tensor, timestep, encoder_hidden_states, **kwargs): ...


class UNetSeam:
    """Wraps `unet.forward` for one run; `detach()` removes the wrapper (restores the class method)."""

    def __init__(self, unet: torch.nn.Module, clock: StepClock):
        self.unet, self.clock = unet, clock
        self.interceptors: list[Interceptor] = []
        self._attached = False

    def attach(self) -> "UNetSeam":
        if "forward" in self.unet.__dict__:
            raise RuntimeError("the UNet's forward is already wrapped (a hook from another tool is still attached)")
        original = self.unet.forward

        def forward(sample, timestep, encoder_hidden_states, *args, **kwargs):
            self.clock.advance(timestep, sample.shape[0])
            call = original
            for interceptor in reversed(self.interceptors):
                call = _bind(interceptor, call)
            return call(sample, timestep, encoder_hidden_states, *args, **kwargs)

        self.unet.forward = forward
        self._attached = True
        return self

    def detach(self) -> None:
        if self._attached and "forward" in self.unet.__dict__:
            del self.unet.forward
        self._attached = False
        self.interceptors.clear()


def _bind(interceptor: Interceptor, call_next: Callable[..., Any]) -> Callable[..., Any]:
    def call(sample, timestep, encoder_hidden_states, *args, **kwargs):
        return interceptor(call_next, sample, timestep, encoder_hidden_states, *args, **kwargs)

    return call
