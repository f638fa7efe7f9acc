"""The project's one JSON sanitiser: every JSON file DiffScope writes (run.json, bench, sweep tables) goes
through `jsonable` (or `dumps`).

Convention. JSON has no infinity and no NaN, so:
- +infinity is written as the string "inf" and -infinity as "-inf". An infinite number is a real result,
  not a missing one: the PSNR of two identical images is +inf, and "inf" keeps that meaning readable by
  people and by `read_number` (Python's `float("inf")` parses it too);
- NaN is written as null: NaN means "not measured" (a step a technique skipped, a metric that could not be
  computed), which is what null says.
Numpy scalars and arrays become numbers and lists, tuples become lists, dict keys become strings; any
other object becomes its `str`.
"""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

INF, NEG_INF = "inf", "-inf"


def json_number(x: Any) -> float | int | str | None:
    """One number in the convention above: finite -> float (int stays int), +-inf -> "inf" / "-inf",
    NaN or None -> None."""
    if x is None:
        return None
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    x = float(x)
    if math.isnan(x):
        return None
    if math.isinf(x):
        return INF if x > 0 else NEG_INF
    return x


def read_number(x: Any) -> float | None:
    """The inverse of `json_number` for a value read back from JSON: "inf" / "-inf" -> +-inf, null -> NaN."""
    if x is None:
        return math.nan
    if isinstance(x, str):
        return float(x)  # "inf", "-inf" (and plain numeric strings)
    return float(x)


def from_json_value(x: Any) -> Any:
    """A value read back from JSON with "inf" / "-inf" restored to floats; anything else unchanged."""
    if x == INF:
        return math.inf
    if x == NEG_INF:
        return -math.inf
    return x


def jsonable(obj: Any) -> Any:
    """Plain JSON types only, numbers in the convention of this module."""
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, (bool, np.bool_, int, np.integer, float, np.floating)):
        return json_number(obj)
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_number(obj.item()) if obj.ndim == 0 else [jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):
        return jsonable(obj.tolist())
    return str(obj)


def dumps(obj: Any, **kwargs) -> str:
    """json.dumps of `jsonable(obj)`; allow_nan=False, so a stray non-finite number is an error, not bad JSON."""
    return json.dumps(jsonable(obj), allow_nan=False, **kwargs)


def emit(report: Any, path: str | None = None) -> str:
    """A benchmark's report: one JSON line on stdout (its last line) and, with `path`, the same JSON there."""
    text = dumps(report)
    if path:
        from pathlib import Path

        Path(path).write_text(text + "\n")
    print(text)
    return text
