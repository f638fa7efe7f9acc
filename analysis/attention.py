"""One dispatcher processor per `Attention` module; probes and techniques register on it as plug-ins.

Several plug-ins act on the same attention call (capture + map reuse + pruning at once), so none of them
calls `set_attn_processor` itself. `AttentionDispatcher.attach()` wraps every module's original processor
in a `DispatchProcessor`; `detach()` puts the originals back (fused SDPA, full speed).

Per call, the dispatcher asks the plug-ins, in order:
1. `replace_output(call)`: a cached attention output (T-GATE). Nothing is computed.
2. `reuse_probs(call)`: cached softmax(QK^T) probabilities (attention-map reuse). Q, K and the softmax are
   skipped; V and the output projection run on the current hidden states.
3. `wants_probs(call)`: someone needs this call's probabilities (capture, token rank, a map to cache).

If no plug-in needs the probabilities, the original processor runs untouched, so the output is bit-identical
to an uninstrumented run. If the probabilities are only observed, the output still comes from the original
processor and the probabilities are computed beside it (read-only probes never change the image).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.models.attention_processor import Attention

from analysis.clock import StepClock


@dataclass
class AttnCall:
    """What a plug-in sees of one attention call. It lives for that call only; plug-ins share what they learn
    about the call through the declared fields below (set by the dispatcher unless noted), never through
    attributes of their own hung on it."""

    name: str  # module path, e.g. "down_blocks.1.attentions.0.transformer_blocks.0.attn2"
    attn: Attention
    clock: StepClock
    hidden_states: torch.Tensor  # (B, N, C) or (B, C, H, W), the module's input
    encoder_hidden_states: torch.Tensor | None
    reused: bool = False  # the probabilities of this call came from a cache
    # A plug-in's replace_output returned this call's output (e.g. T-GATE's cache): nothing was computed, and
    # on_output sees that replacement, which no plug-in should cache or count as computed again.
    output_replaced: bool = False
    # softmax(QK^T) of the whole batch, (B * heads, N_q, N_k), when some plug-in wanted them (set before
    # on_probs); None when none did or the output was replaced.
    probs: torch.Tensor | None = field(default=None, repr=False)
    # The conditional rows of `probs`, (n_cond, heads, N_q, N_k): computed once per call by the probes'
    # `cond_probs` and shared by every probe.
    cond_probs: torch.Tensor | None = field(default=None, repr=False)

    @property
    def is_cross(self) -> bool:
        return self.encoder_hidden_states is not None

    @property
    def step(self) -> int:
        return self.clock.step_index

    @property
    def n_queries(self) -> int:
        h = self.hidden_states
        return h.shape[2] * h.shape[3] if h.ndim == 4 else h.shape[1]


class AttentionPlugin:
    """Base class: every hook is a no-op by default.

    `observer = True` marks a read-only plug-in (a probe): the probabilities it asks for are computed beside
    the original processor, so the image stays bit-identical. A technique that needs the probabilities
    (to cache or rank them) sets `observer = False`, and the call is then computed once, explicitly.
    """

    observer = True

    def replace_output(self, call: AttnCall) -> torch.Tensor | None:
        return None

    def reuse_probs(self, call: AttnCall) -> torch.Tensor | None:
        return None

    def wants_probs(self, call: AttnCall) -> bool:
        return False

    def on_probs(self, call: AttnCall, probs: torch.Tensor) -> None:
        """probs: (batch * heads, n_queries, n_keys), rows ordered batch-major as in `head_to_batch_dim`."""

    def on_output(self, call: AttnCall, output: torch.Tensor) -> None:
        """output: the module's return value for this call."""


def _project(attn: Attention, hidden_states, encoder_hidden_states, attention_mask, temb):
    """The shared prologue of diffusers' AttnProcessor: norms, reshape, mask. Returns what the rest needs."""
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    input_shape = hidden_states.shape
    if hidden_states.ndim == 4:
        b, c, h, w = input_shape
        hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
    batch_size, sequence_length, _ = hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
    attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    if encoder_hidden_states is None:
        context = hidden_states
    elif attn.norm_cross:
        context = attn.norm_encoder_hidden_states(encoder_hidden_states)
    else:
        context = encoder_hidden_states
    return residual, input_shape, hidden_states, context, attention_mask


def attention_probs(attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None) -> torch.Tensor:
    """softmax(QK^T * scale) for one call, shape (batch * heads, n_queries, n_keys)."""
    _, _, hidden_states, context, attention_mask = _project(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
    query = attn.head_to_batch_dim(attn.to_q(hidden_states))
    key = attn.head_to_batch_dim(attn.to_k(context))
    return attn.get_attention_scores(query, key, attention_mask)


ATTENTION_PARTS = ("prologue", "v_proj", "qk_proj", "scores_softmax", "probs_v", "out_proj", "epilogue")


def attention_with_probs(
    attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, probs=None,
    mark=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention with explicit probabilities (diffusers' classic AttnProcessor). With `probs` given, Q, K and
    the softmax are skipped and the given map weights the current values. Returns (output, probs).

    `mark(part)`, when given, is called as each part of ATTENTION_PARTS ends (in that order; "qk_proj" and
    "scores_softmax" are skipped with `probs` given): the profiler (analysis/eval/timing.py) times this very
    path with it, so the timed attention and the one techniques run are the same code."""
    residual, input_shape, hidden_states, context, attention_mask = _project(
        attn, hidden_states, encoder_hidden_states, attention_mask, temb
    )
    mark = mark or _no_mark
    mark("prologue")
    value = attn.head_to_batch_dim(attn.to_v(context))
    mark("v_proj")
    if probs is None:
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(context))
        mark("qk_proj")
        probs = attn.get_attention_scores(query, key, attention_mask)
        mark("scores_softmax")
    out = attn.batch_to_head_dim(torch.bmm(probs.to(value.dtype), value))
    mark("probs_v")
    out = attn.to_out[1](attn.to_out[0](out))
    mark("out_proj")
    if len(input_shape) == 4:
        out = out.transpose(-1, -2).reshape(input_shape)
    if attn.residual_connection:
        out = out + residual
    out = out / attn.rescale_output_factor
    mark("epilogue")
    return out, probs


def _no_mark(part: str) -> None:
    pass


class DispatchProcessor:
    def __init__(self, name: str, original: Any, dispatcher: "AttentionDispatcher"):
        self.name, self.original, self.dispatcher = name, original, dispatcher

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        plugins = self.dispatcher.plugins
        if not plugins:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        call = AttnCall(self.name, attn, self.dispatcher.clock, hidden_states, encoder_hidden_states)
        for plugin in plugins:
            out = plugin.replace_output(call)
            if out is not None:
                call.output_replaced = True
                for p in plugins:
                    p.on_output(call, out)
                return out
        probs = None
        for plugin in plugins:
            probs = plugin.reuse_probs(call)
            if probs is not None:
                call.reused = True
                break
        wanting = [p for p in plugins if p.wants_probs(call)]
        wanted = bool(wanting)
        if call.reused or any(not p.observer for p in wanting):
            out, probs = attention_with_probs(attn, hidden_states, encoder_hidden_states, attention_mask, temb, probs)
        else:
            out = self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
            if wanted:
                probs = attention_probs(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if wanted:
            call.probs = probs
            for plugin in plugins:
                plugin.on_probs(call, probs)
        for plugin in plugins:
            plugin.on_output(call, out)
        return out


class AttentionDispatcher:
    """Installs a DispatchProcessor on every attention module of a UNet for one run."""

    def __init__(self, unet: torch.nn.Module, clock: StepClock):
        self.unet, self.clock = unet, clock
        self.plugins: list[AttentionPlugin] = []
        self._originals: dict[str, Any] | None = None

    def attach(self) -> "AttentionDispatcher":
        self._originals = dict(self.unet.attn_processors)
        wrapped = {key: DispatchProcessor(key[: -len(".processor")], proc, self) for key, proc in self._originals.items()}
        self.unet.set_attn_processor(wrapped)
        return self

    def detach(self) -> None:
        if self._originals is not None:
            self.unet.set_attn_processor(dict(self._originals))
            self._originals = None
        self.plugins.clear()

    def add(self, plugin: AttentionPlugin) -> AttentionPlugin:
        self.plugins.append(plugin)
        return plugin
