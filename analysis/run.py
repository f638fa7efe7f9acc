"""generate(): one request -> RunResult (plain, picklable data; nothing downstream touches torch).

A request runs up to three kinds of generation with the same prompt, seed, scheduler and step count:
- the full-compute baseline (no hooks at all; cached per request key),
- the accelerated run (techniques attached, no probes): its latency is the honest one,
- with probes: an instrumented run (probes + techniques) that yields the signals; its latency is reported
  separately as instrumented and never feeds a trade-off plot.
Baseline and accelerated timings are interleaved in the same process after one warm-up run of each.
"""
from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from analysis import metrics
from analysis.accel.layer_profile import for_run as profile_for_run, wants_profile
from analysis.catalog import ATTENTION_BACKENDS, SCHEDULERS
from analysis.clock import StepClock
from analysis.plugins import RunContext


def use_attention_backend(pipe, backend: str, stack: contextlib.ExitStack) -> None:
    """For one run: "explicit" replaces every attention processor with diffusers' `AttnProcessor` (the
    probabilities materialised, as attention ran before fused kernels), the originals put back by `stack`;
    "fused" leaves the pipeline's own. Plug-ins attach after this, so the dispatcher wraps the chosen path."""
    if backend == "fused":
        return
    from diffusers.models.attention_processor import AttnProcessor

    originals = dict(pipe.unet.attn_processors)
    pipe.unet.set_attn_processor(AttnProcessor())
    stack.callback(pipe.unet.set_attn_processor, originals)


@dataclass(frozen=True)
class RunConfig:
    prompt: str | tuple[str, ...]
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 30
    guidance: float = 5.0
    scheduler: str = "ddim"
    size: int | None = None  # pixels; None = the model's native size
    accel: tuple = ()  # technique configs (analysis.accel)
    probes: tuple = ()  # probe configs (analysis.probes)
    repeats: int = 1  # timed repeats of baseline and accelerated, after one warm-up each
    warmup: bool = True
    # "fused": the pipeline's own attention processors (SDPA, today's baseline); "explicit": softmax(QK^T) V
    # materialised in every attention call (diffusers' AttnProcessor), the baseline of the papers' time
    attention: str = "fused"

    def __post_init__(self):
        prompts = (self.prompt,) if isinstance(self.prompt, str) else tuple(self.prompt)
        if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise ValueError("prompt must be a non-empty string (or a list of non-empty strings)")
        object.__setattr__(self, "prompt", prompts[0] if len(prompts) == 1 else prompts)
        if not 1 <= self.steps <= 1000:
            raise ValueError(f"steps must be between 1 and 1000, got {self.steps}")
        if not 0 <= self.guidance <= 50:
            raise ValueError(f"guidance must be between 0 and 50, got {self.guidance}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        if self.size is not None and (self.size < 32 or self.size > 2048 or self.size % 8):
            raise ValueError(f"size must be a multiple of 8 between 32 and 2048, got {self.size}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be at least 1, got {self.repeats}")
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION_BACKENDS)}, got {self.attention!r}")
        if not 0 <= self.seed <= 2**63 - 1:  # torch's manual_seed overflows past a signed 64-bit int
            raise ValueError(f"seed must be between 0 and 2^63-1, got {self.seed}")
        names = [type(c).name for c in self.accel]
        if len(set(names)) != len(names):
            raise ValueError(f"each technique may appear once, got {', '.join(names)}")
        if self.accel:
            from analysis.accel import check_combination

            check_combination(self.accel)

    @property
    def prompts(self) -> tuple[str, ...]:
        return (self.prompt,) if isinstance(self.prompt, str) else self.prompt

    @property
    def accel_steps(self) -> int:
        """The step count the accelerated run uses (step reduction changes it)."""
        from analysis.accel import technique_of

        steps = self.steps
        for c in self.accel:
            steps = technique_of(c).run_steps(c, steps)
        return steps

    def hooked_accel(self) -> tuple:
        """The techniques that attach to the pipeline (step reduction only shortens the run)."""
        from analysis.accel import technique_of

        return tuple(c for c in self.accel if not technique_of(c).is_step_reduction)


@dataclass
class RunResult:
    """Everything one request produced, as plain data (pickles across processes)."""

    config: dict[str, Any]
    model: str
    baseline_image: np.ndarray  # (B, H, W, 3) uint8, full compute
    image: np.ndarray  # (B, H, W, 3) uint8, accelerated (== baseline when no technique)
    baseline_latency_s: float | None
    latency_s: float | None
    instrumented_latency_s: float | None
    psnr_db: float | None
    ssim: float | None
    fidelity: dict[str, Any] | None
    counters: dict[str, dict[str, Any]]
    signals: dict[str, Any]
    timesteps: list[float]
    tokens: list[list[str]]  # per prompt: the text encoder's tokens, padding marked as "<pad>"
    latencies: dict[str, list[float]] = field(default_factory=dict)

    @property
    def speedup(self) -> float | None:
        if not self.baseline_latency_s or not self.latency_s:
            return None
        return self.baseline_latency_s / self.latency_s


def _generator(pipe, seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


def _pipe_kwargs(pipe, config: RunConfig, steps: int) -> dict[str, Any]:
    prompts = list(config.prompts)
    kwargs: dict[str, Any] = dict(
        prompt=prompts,
        negative_prompt=[config.negative_prompt] * len(prompts),
        num_inference_steps=steps,
        guidance_scale=config.guidance,
        generator=_generator(pipe, config.seed),
        output_type="np",
    )
    if config.size is not None:
        kwargs.update(height=config.size, width=config.size)
    return kwargs


def _to_uint8(images: np.ndarray) -> np.ndarray:
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


@dataclass(frozen=True, eq=False)
class RunOnceResult:
    """What one `run_once` generation produced (not to be confused with `RunResult`, a whole request's
    baseline + accelerated + instrumented outcome). Plain data; nothing in it holds a hook or a module.

    images: (B, H, W, 3) uint8, one per prompt.
    seconds: wall clock of the pipeline call (CUDA synchronised on both sides when a GPU is present).
    counters: per plug-in name, the work it counted (e.g. {"tgate": {...}}); "unet" holds the batch rows per
        UNet call when the clock logged them. Empty for plug-ins that counted nothing.
    signals: every probe's signals merged by signal name (e.g. "cross_attn_convergence").
    timesteps: the scheduler's timesteps of this run, as floats.
    """

    images: np.ndarray
    seconds: float
    counters: dict[str, dict[str, Any]]
    signals: dict[str, Any]
    timesteps: list[float]


class RunStopped(Exception):
    """A run ended early at a denoising step because its `stop` callable returned true (Stop pressed, the
    browser tab closed, or a newer request superseded it). Its hooks are already off when this propagates."""


def run_once(pipe, config: RunConfig, plugins: tuple, steps: int,
             stop: Callable[[], bool] | None = None) -> RunOnceResult:
    """One generation with `plugins` attached; every hook is removed on the way out, whatever happens.
    `stop` is polled before the run and after every denoising step; when it returns true the run raises
    RunStopped. Returns a RunOnceResult (images uint8, seconds, counters and signals per plug-in, timesteps)."""
    if stop is not None and stop():
        raise RunStopped(getattr(stop, "reason", "stopped"))
    clock = StepClock()
    clock.reset(steps, len(config.prompts), config.guidance > 1.0)
    counters: dict[str, Any] = {}
    signals: dict[str, Any] = {}
    layer_profile = None
    if any(wants_profile(plugin, pipe, config.size) for plugin in plugins):  # measured once per model and size, then cached
        layer_profile = profile_for_run(pipe, config)
    with contextlib.ExitStack() as stack:
        use_attention_backend(pipe, config.attention, stack)
        ctx = RunContext(pipe, clock, stack, layer_profile)
        handles = []
        for plugin in plugins:
            handle = plugin.attach(ctx)
            stack.callback(handle.detach)
            handles.append((plugin, handle))
        if stop is not None:
            ctx.on_step_end(_stop_check(stop))
        kwargs = _pipe_kwargs(pipe, config, steps)
        if ctx.step_end_fns:
            kwargs.update(callback_on_step_end=ctx.step_end_callback, callback_on_step_end_tensor_inputs=["latents"])
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            images = pipe(**kwargs).images
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        for plugin, handle in handles:
            c, s = handle.counters(), handle.signals()
            if c:
                counters[type(plugin).name] = c
            if s:
                signals.update(s)
    timesteps = [float(t) for t in pipe.scheduler.timesteps]
    if clock.row_log:
        counters.setdefault("unet", {})["batch_rows"] = list(clock.row_log)
    return RunOnceResult(images=_to_uint8(images), seconds=seconds, counters=counters, signals=signals,
                         timesteps=timesteps)


def _stop_check(stop: Callable[[], bool]):
    def check(step_index: int, timestep: float, latents):
        if stop():
            raise RunStopped(f"{getattr(stop, 'reason', 'stopped')} at step {step_index + 1}")
        return None

    return check


def prompt_tokens(pipe, prompts: tuple[str, ...]) -> list[list[str]]:
    tok = pipe.tokenizer
    out = []
    for prompt in prompts:
        ids = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
        words = []
        ended = False
        for i, tid in enumerate(ids):
            text = tok.convert_ids_to_tokens(tid)
            if ended:
                words.append("<pad>")
                continue
            if i > 0 and tid == tok.eos_token_id:
                ended = True
            words.append(text.replace("</w>", ""))
        out.append(words)
    return out


_BASELINE_CACHE: dict[tuple, tuple[np.ndarray, list[float]]] = {}
_BASELINE_CACHE_SIZE = 16  # full-compute images kept for repeated requests (the app's Compare reruns)


def _cache_baseline(key: tuple, value: tuple[np.ndarray, list[float]]) -> None:
    _BASELINE_CACHE.pop(key, None)
    _BASELINE_CACHE[key] = value
    while len(_BASELINE_CACHE) > _BASELINE_CACHE_SIZE:
        _BASELINE_CACHE.pop(next(iter(_BASELINE_CACHE)))


def _baseline_key(pipe, config: RunConfig, steps: int) -> tuple:
    from analysis.models import model_name

    return (id(pipe), model_name(pipe), type(pipe.scheduler).__name__, config.prompts,
            config.negative_prompt, config.seed, steps, config.guidance, config.size, config.attention)


def config_dict(config: RunConfig, model: str) -> dict[str, Any]:
    return {
        "prompt": config.prompt if isinstance(config.prompt, str) else list(config.prompt),
        "negative_prompt": config.negative_prompt,
        "seed": config.seed,
        "steps": config.steps,
        "guidance": config.guidance,
        "scheduler": config.scheduler,
        "size": config.size,
        "model": model,
        "accel": {type(c).name: dataclasses.asdict(c) for c in config.accel},
        "probes": [type(p).name for p in config.probes],
        "repeats": config.repeats,
        "attention": config.attention,
    }


def generate(pipe, config: RunConfig, measure_latency: bool = True) -> RunResult:
    """Baseline, accelerated and (with probes) instrumented runs of one request; see the module docstring.

    measure_latency=False skips the timed repeats (the app's capture-only mode): latencies are then None.
    """
    from analysis.models import model_name, set_scheduler

    set_scheduler(pipe, config.scheduler)
    model = model_name(pipe)
    techniques = config.hooked_accel()
    accelerated = bool(config.accel)
    accel_steps = config.accel_steps

    key = _baseline_key(pipe, config, config.steps)
    base_lat: list[float] = []
    acc_lat: list[float] = []
    image = counters = acc_timesteps = None
    if measure_latency and config.warmup:
        run_once(pipe, config, (), config.steps)
        if accelerated:
            run_once(pipe, config, techniques, accel_steps)
    for _ in range(config.repeats if measure_latency else 0):
        base = run_once(pipe, config, (), config.steps)
        base_lat.append(base.seconds)
        _cache_baseline(key, (base.images, base.timesteps))
        if accelerated:
            acc = run_once(pipe, config, techniques, accel_steps)
            image, counters, acc_timesteps = acc.images, acc.counters, acc.timesteps
            acc_lat.append(acc.seconds)
    if key not in _BASELINE_CACHE:
        base = run_once(pipe, config, (), config.steps)
        _cache_baseline(key, (base.images, base.timesteps))
    baseline_image, timesteps = _BASELINE_CACHE[key]
    if accelerated and image is None and not config.probes:
        acc = run_once(pipe, config, techniques, accel_steps)
        image, counters, acc_timesteps = acc.images, acc.counters, acc.timesteps

    signals: dict = {}
    instrumented = None
    if config.probes:
        # Probes are read-only, so this run's image equals the uninstrumented one (tests check it).
        probed = run_once(pipe, config, techniques + tuple(config.probes), accel_steps)
        signals, instrumented = probed.signals, probed.seconds
        if image is None:
            image, counters, acc_timesteps = probed.images, probed.counters, probed.timesteps
    if image is None:
        image, counters, acc_timesteps = baseline_image, {}, timesteps

    baseline_latency = statistics.median(base_lat) if base_lat else None
    latency = statistics.median(acc_lat) if accelerated and acc_lat else baseline_latency
    fidelity = None  # the model's prompt-fidelity scorer, if the quality registry has one for it
    from analysis.eval.quality import scorers_for

    for scorer in scorers_for(model):
        if scorer.name == "fidelity":
            fidelity = scorer.score(image, list(config.prompts), baseline_image)
    return RunResult(
        config=config_dict(config, model),
        model=model,
        baseline_image=baseline_image,
        image=image,
        baseline_latency_s=baseline_latency,
        latency_s=latency,
        instrumented_latency_s=instrumented,
        psnr_db=metrics.psnr(baseline_image, image),
        ssim=metrics.ssim(baseline_image, image),
        fidelity=fidelity,
        counters=counters,
        signals=signals,
        timesteps=acc_timesteps,
        tokens=prompt_tokens(pipe, config.prompts),
        latencies={"baseline": base_lat, "accelerated": acc_lat},
    )
