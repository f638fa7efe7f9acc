"""The one number formatter of DiffScope's tables, hovers and reports: the same value reads the same in the
app, the export pack, the sweep reports and the CLI."""
from __future__ import annotations

import math

MISSING = "n/a"


def number(x, spec: str = ".2f", unit: str = "", infinite: str = "inf") -> str:
    """`x` formatted with `spec` (and a unit after a space); None or NaN -> "n/a"; +-inf -> `infinite`."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return MISSING
    if isinstance(x, float) and math.isinf(x):
        return infinite if x > 0 else "-" + infinite
    return format(x, spec) + (f" {unit}" if unit else "")


def psnr(x, identical: str = "∞ (identical)") -> str:
    """PSNR to full compute: infinite means the images are identical."""
    return number(x, ".1f", "dB", infinite=identical)


def percent(x) -> str:
    return number(x, ".0%")


def count(x) -> str:
    """Whole numbers with thousands separators, anything else to 4 significant digits."""
    if isinstance(x, (int, float)) and math.isfinite(x) and x == int(x):
        return f"{int(x):,}"
    return number(x, ".4g")
