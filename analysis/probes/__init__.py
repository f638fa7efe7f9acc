"""Read-only probes: what happens inside one generation (plug-ins, see analysis/plugins.py).

`PROBES` maps each probe's signal name to its Config class; `default_probes()` is what `--capture` and
the app attach. Every probe keeps only the conditional branch, reduces on the device and keeps plain
numpy data; the schema of each signal is docs/signals.md. Probes never change the image: attention probes
are observers on the shared dispatcher (probabilities computed beside the original processor), the drift
probe only reads block outputs through forward hooks.
"""
from __future__ import annotations

from analysis.probes.attention_maps import AttentionMapsConfig
from analysis.probes.convergence import ConvergenceConfig
from analysis.probes.drift import DriftConfig
from analysis.probes.token_rank import TokenRankConfig

PROBES: dict[str, type] = {
    cls.name: cls for cls in (AttentionMapsConfig, ConvergenceConfig, DriftConfig, TokenRankConfig)
}


def default_probes(budget_mb: float = 1024) -> tuple:
    """All four probes with their defaults; `budget_mb` bounds the kept attention maps."""
    return (AttentionMapsConfig(budget_mb=budget_mb), ConvergenceConfig(), DriftConfig(), TokenRankConfig())


__all__ = ["PROBES", "default_probes", "AttentionMapsConfig", "ConvergenceConfig", "DriftConfig", "TokenRankConfig"]
