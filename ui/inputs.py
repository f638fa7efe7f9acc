"""Strict parsing of the app's inputs, in the handlers themselves: an API client can send any JSON value for
any input (the widgets' own limits never run), so every value is checked here and a bad one is refused with
a `gr.Error` that names the setting. Nothing is rounded or coerced: 2.5 is not a gate step, "no" is not a
yes/no answer.
"""
from __future__ import annotations

import math

import gradio as gr

SEED_MAX = 2**63 - 1
_SHOWN = 40  # characters of a bad value repeated back


def _shown(value) -> str:
    text = "nothing" if value is None or (isinstance(value, str) and not value.strip()) else repr(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "…"


class InvalidInput(gr.Error, ValueError):
    """A refused input: shown by Gradio as an error toast, and a ValueError for code that collects reasons."""

    def __str__(self) -> str:
        return self.message


def refuse(what: str, message: str):
    raise InvalidInput(f"{what} {message}", title="Invalid setting")


def whole_number(value, what: str, low: int, high: int) -> int:
    """An int in [low, high]: an int, an integral float (a slider's 20.0) or text of one; never rounded."""
    if isinstance(value, bool):
        refuse(what, f"must be a whole number, got {_shown(value)}.")
    if isinstance(value, (int, float)):
        number = value
    else:
        text = str(value).strip() if value is not None else ""
        try:
            number = int(text) if text.lstrip("+-").isdigit() else float(text)
        except ValueError:
            refuse(what, f"must be a whole number, got {_shown(value)}.")
    if isinstance(number, float):
        if not math.isfinite(number) or not number.is_integer():
            refuse(what, f"must be a whole number, got {_shown(value)}.")
        number = int(number)
    if not low <= number <= high:
        bound = "2^63-1" if high == SEED_MAX else str(high)
        refuse(what, f"must be between {low} and {bound}, got {_shown(value)}.")
    return number


def real_number(value, what: str, low: float, high: float) -> float:
    """A finite float in [low, high] (numbers or numeric text)."""
    if isinstance(value, bool) or value is None:
        refuse(what, f"must be a number, got {_shown(value)}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        refuse(what, f"must be a number, got {_shown(value)}.")
    if not math.isfinite(number) or not low <= number <= high:
        refuse(what, f"must be between {low:g} and {high:g}, got {_shown(value)}.")
    return number


def yes_no(value, what: str) -> bool:
    """A checkbox's value: True or False only (never a string's truthiness)."""
    if not isinstance(value, bool):
        refuse(what, f"must be true or false, got {_shown(value)}.")
    return value


def one_of(value, what: str, options) -> str:
    options = list(options)
    if not isinstance(value, str) or value not in options:
        refuse(what, f"must be one of {', '.join(options)}, got {_shown(value)}.")
    return value


def text(value, what: str, max_chars: int = 2000) -> str:
    """Free text (a prompt): a string, at most max_chars characters (the text encoder reads ~77 tokens)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        refuse(what, f"must be text, got {_shown(value)}.")
    if len(value) > max_chars:
        refuse(what, f"is {len(value)} characters long; at most {max_chars} are accepted.")
    return value


def Slider(*args, **kwargs) -> gr.Slider:  # noqa: N802 - used as the component it returns
    """A gr.Slider whose value reaches the handler exactly as sent. Gradio's own preprocessing compares the
    value with the bounds before any handler runs, so "abc" or None from an API client ended as Gradio's
    generic "upstream app has raised an exception"; the handlers check the value themselves (whole_number,
    real_number above) and say what is wrong. (An instance attribute, not a subclass: Gradio writes a .pyi
    file beside the source of every component subclass.)"""
    slider = gr.Slider(*args, **kwargs)
    slider.preprocess = _as_sent
    return slider


def _as_sent(payload):
    return payload
