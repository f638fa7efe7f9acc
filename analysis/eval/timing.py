"""Timing primitives for the profiler: the clock, per-module forward timers, and the timed attention path.

On a shared CPU with more runnable processes than cores, multi-threaded kernels stall on preempted threads,
so profiling runs with 1 torch thread and times with the calling thread's CPU time (`time.thread_time`):
every kernel then runs on that thread, and CPU time does not count the time the OS gives other processes.
On GPU the clock is `perf_counter` after `torch.cuda.synchronize()`.
"""
from __future__ import annotations

import time
from functools import partial

import torch

from analysis.attention import ATTENTION_PARTS, attention_with_probs


class Clock:
    """perf_counter (with torch.cuda.synchronize on GPU), or this thread's CPU time when `cpu_time` is set
    on a CPU device."""

    def __init__(self, device: torch.device, cpu_time: bool = False):
        self.sync = device.type == "cuda"
        self.cpu_time = cpu_time and not self.sync

    def __call__(self) -> float:
        if self.sync:
            torch.cuda.synchronize()
        return time.thread_time() if self.cpu_time else time.perf_counter()

    @property
    def label(self) -> str:
        return "thread CPU time" if self.cpu_time else "wall (perf_counter)"


def thread_clock_is_exact(device: torch.device) -> bool:
    """True where thread CPU time measures all the work: a CPU run with one torch thread."""
    return device.type == "cpu" and torch.get_num_threads() == 1


def profile_clock(device: torch.device) -> Clock:
    return Clock(device, thread_clock_is_exact(device))


class ModuleTimer:
    """Forward pre/post hooks that add each module's time (per name) to `times`; `close()` removes them.
    Also records, for every Attention module, whether it is self- or cross-attention and its query count."""

    def __init__(self, modules: dict[str, torch.nn.Module], now: Clock):
        self.now, self.times, self.kinds, self.queries = now, {}, {}, {}
        self._start: dict[str, float] = {}
        self._handles = []
        for name, module in modules.items():
            self._handles.append(module.register_forward_pre_hook(partial(self._pre, name), with_kwargs=True))
            self._handles.append(module.register_forward_hook(partial(self._post, name)))

    def _pre(self, name, module, args, kwargs):
        if name not in self.kinds and hasattr(module, "to_q"):  # an Attention module: self or cross?
            ehs = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
            self.kinds[name] = "cross" if ehs is not None else "self"
            h = args[0] if args else kwargs.get("hidden_states")
            self.queries[name] = int(h.shape[2] * h.shape[3] if h.ndim == 4 else h.shape[1])
        self._start[name] = self.now()

    def _post(self, name, module, args, output):
        self.times[name] = self.times.get(name, 0.0) + self.now() - self._start.pop(name)

    def reset(self) -> None:
        self.times = {}

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


class _PartMarks:
    """`mark(part)` for attention_with_probs: adds the time since the previous mark to that part."""

    def __init__(self, now: Clock, parts: dict[str, float]):
        self.now, self.parts, self.last = now, parts, now()

    def __call__(self, part: str) -> None:
        t = self.now()
        self.parts[part] += t - self.last
        self.last = t


class TimedAttnProcessor:
    """An attention processor that runs `analysis.attention.attention_with_probs` (the explicit path the
    techniques run) and adds the time of each of its parts (ATTENTION_PARTS) to `parts[name]`."""

    def __init__(self, name: str, now: Clock, parts: dict[str, dict[str, float]]):
        self.name, self.now, self.parts = name, now, parts

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        d = self.parts.setdefault(self.name, dict.fromkeys(ATTENTION_PARTS, 0.0))
        out, _ = attention_with_probs(attn, hidden_states, encoder_hidden_states, attention_mask, temb,
                                      mark=_PartMarks(self.now, d))
        return out


def clone(x):
    """A detached copy of tensors inside nested tuples, lists and dicts (captured UNet inputs)."""
    if torch.is_tensor(x):
        return x.detach().clone()
    if isinstance(x, dict):
        return {k: clone(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(clone(v) for v in x)
    return x
