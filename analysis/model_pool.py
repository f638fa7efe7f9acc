"""Which models a server offers, and the few pipelines it keeps loaded.

The operator decides the models (a visitor only picks one of them): `DIFFSCOPE_MODELS` or the app's
`--models` flag is a comma-separated allowlist of `LABEL=SOURCE` or bare `SOURCE` entries, where SOURCE is
anything `analysis.models.load_pipeline` takes ("default", an alias, a Hub id, a folder). Visitors see and
send labels only, so no server path reaches a browser and no visitor text is ever downloaded or opened.
Without an allowlist the server offers `DIFFSCOPE_MODEL` (or "default") alone.

Each request names its model; `ModelPool.get(label)` returns that model's pipeline, loading it on first
use and keeping at most `capacity` pipelines (least recently used evicted). An evicted pipeline is dropped
from the pool at once and its memory returned to the system when the last run still holding it ends
(`gc.collect` + glibc `malloc_trim`, without which freed tensors stay in the process's heap). On a Space
(`SPACE_ID` set) the default capacity is 1: a free CPU Space has 16 GB and one SD-scale model needs ~4.
"""
from __future__ import annotations

import collections
import ctypes
import gc
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from analysis.catalog import DEFAULT_MODEL, MODEL_ALIASES, is_hub_id

LOG = logging.getLogger("diffscope.models")
ENV_ALLOWLIST = "DIFFSCOPE_MODELS"
ENV_CAPACITY = "DIFFSCOPE_MAX_PIPELINES"
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,63}$")
_SHOWN_MAX = 40  # characters of a visitor's unknown model name repeated back in an error


class UnknownModel(ValueError):
    """A model name this server does not offer, or one it could not load; the message names no path."""


@dataclass(frozen=True)
class ModelChoice:
    label: str  # what visitors see and send
    source: str  # what load_pipeline receives (may be a server path: never shown)


def _label_for(source: str) -> str:
    if source in MODEL_ALIASES or is_hub_id(source):
        return source
    return Path(source.rstrip("/")).name or source  # a folder: its name, not its path


def parse_allowlist(text: str) -> tuple[ModelChoice, ...]:
    """'default, emb=/data/emb, sd15=stable-diffusion-v1-5/stable-diffusion-v1-5' -> choices, in order.
    ValueError (one line) for an empty list, a bad label or a label given twice."""
    choices: list[ModelChoice] = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        label, eq, source = entry.partition("=")
        label, source = (label.strip(), source.strip()) if eq else (_label_for(entry), entry)
        if not source:
            raise ValueError(f"model allowlist entry {entry!r} has no source after '='")
        if not _LABEL.match(label):
            raise ValueError(f"model label {label!r} must be 1-64 letters, digits or . _ / - "
                             "(name a folder with LABEL=FOLDER)")
        if label in {c.label for c in choices}:
            raise ValueError(f"model label {label!r} is listed twice")
        choices.append(ModelChoice(label, source))
    if not choices:
        raise ValueError("the model allowlist is empty")
    return tuple(choices)


def on_space(environ=os.environ) -> bool:
    return bool(environ.get("SPACE_ID"))


def allowlist_from(flag: str | None = None, environ=os.environ) -> tuple[ModelChoice, ...]:
    """The launch flag, else $DIFFSCOPE_MODELS, else $DIFFSCOPE_MODEL alone, else "default"."""
    text = flag or environ.get(ENV_ALLOWLIST) or environ.get("DIFFSCOPE_MODEL") or DEFAULT_MODEL
    return parse_allowlist(text)


def capacity_from(flag: int | None = None, environ=os.environ) -> int:
    """Pipelines kept loaded: the flag, else $DIFFSCOPE_MAX_PIPELINES, else 1 on a Space and 2 elsewhere."""
    raw = flag if flag is not None else environ.get(ENV_CAPACITY)
    if raw is None or raw == "":
        return 1 if on_space(environ) else 2
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(f"{ENV_CAPACITY} must be a whole number of pipelines, got {raw!r}") from None
    if n < 1:
        raise ValueError(f"{ENV_CAPACITY} must be at least 1, got {n}")
    return n


def release_memory() -> None:
    """Hand freed memory back to the system: collect cycles, then trim glibc's heap (no-op elsewhere)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _default_loader(source: str):
    from analysis.models import load_pipeline

    return load_pipeline(source)


class ModelPool:
    """The allowlisted models and an LRU of at most `capacity` loaded pipelines (thread-safe)."""

    def __init__(self, choices: tuple[ModelChoice, ...], capacity: int = 2,
                 loader: Callable[[str], object] = _default_loader, preloaded: dict | None = None):
        if capacity < 1:
            raise ValueError("a model pool keeps at least one pipeline")
        self.choices = {c.label: c for c in choices}
        self.capacity = capacity
        self._loader = loader
        self._loaded: collections.OrderedDict[str, object] = collections.OrderedDict()
        self._lock = threading.Lock()  # the LRU itself (held briefly)
        self._loading = threading.Lock()  # one load at a time: loads are memory peaks
        self.loads = 0
        for label, pipe in (preloaded or {}).items():
            self._label_known(label)
            self._keep(label, pipe)

    @classmethod
    def of(cls, pipe, capacity: int = 1) -> "ModelPool":
        """A pool offering only the given, already-loaded pipeline (tests, embedding)."""
        from analysis.models import model_name

        label = model_name(pipe)
        return cls((ModelChoice(label, label),), capacity, preloaded={label: pipe})

    @property
    def labels(self) -> list[str]:
        return list(self.choices)

    @property
    def default(self) -> str:
        return next(iter(self.choices))

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._loaded)

    def _label_known(self, label) -> ModelChoice:
        choice = self.choices.get(label) if isinstance(label, str) else None
        if choice is None:
            shown = str(label)
            shown = shown if len(shown) <= _SHOWN_MAX else shown[:_SHOWN_MAX] + "…"
            raise UnknownModel(f"model {shown!r} is not offered here; choose one of {', '.join(self.choices)}")
        return choice

    def check(self, label) -> str:
        """The label if this server offers it, else UnknownModel."""
        return self._label_known(label).label

    def _cached(self, label: str):
        with self._lock:
            pipe = self._loaded.get(label)
            if pipe is not None:
                self._loaded.move_to_end(label)
            return pipe

    def _keep(self, label: str, pipe) -> None:
        with self._lock:
            self._loaded[label] = pipe
            self._loaded.move_to_end(label)
            evicted = []
            while len(self._loaded) > self.capacity:
                evicted.append(self._loaded.popitem(last=False))
        if evicted:
            LOG.info("model pool: evicted %s", ", ".join(name for name, _ in evicted))
            del evicted
            release_memory()

    def get(self, label):
        """The pipeline of an offered model, loaded if needed (UnknownModel otherwise)."""
        choice = self._label_known(label)
        pipe = self._cached(choice.label)
        if pipe is not None:
            return pipe
        with self._loading:
            pipe = self._cached(choice.label)  # loaded by the request we waited for
            if pipe is not None:
                return pipe
            # Make room first, so the old and the new pipeline are never both held by the pool.
            with self._lock:
                evicted = []
                while len(self._loaded) >= self.capacity:
                    evicted.append(self._loaded.popitem(last=False))
            if evicted:
                del evicted
                release_memory()
            try:
                pipe = self._loader(choice.source)
            except Exception as err:  # noqa: BLE001 - the detail (paths, Hub errors) goes to the server log only
                LOG.warning("model %s (%s) failed to load: %s", choice.label, choice.source, err)
                raise UnknownModel(f"model {choice.label!r} could not be loaded on this server "
                                   "(the reason is in the server's log)") from None
            from analysis.models import set_model_name

            pipe.set_progress_bar_config(disable=True)
            set_model_name(pipe, choice.label)  # what runs, exports and plots are labelled with
            self.loads += 1
            self._keep(choice.label, pipe)
            return pipe
