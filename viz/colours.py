"""The one colour table of DiffScope's figures (app, sweep figures, observations): Okabe & Ito (2008) for the
technique families, distinguishable with every common colour-vision deficiency. Each technique declares its own
colour and marker (`Technique.colour`, `.marker`, analysis/accel); the families that are not one technique
(combinations, peers, ablations, full compute) are here."""
from __future__ import annotations

from analysis.accel import registry, step_reduction_name

STEP_REDUCTION = step_reduction_name()  # the family of the step-reduction ladder, drawn as the frontier

FAMILY_COLOURS = {**{name: t.colour for name, t in registry().items()},
                  "combo": "#CC79A7", "peer": "#56B4E9", "ablation": "#F0E442", "baseline": "#000000"}
FAMILY_MARKERS = {**{name: t.marker for name, t in registry().items()}, "combo": "P", "peer": "X", "ablation": "v"}
# UNet parts (the drift figures shade each block of a part around these)
ROLE_COLOURS = {"encoder": "#1f77b4", "bottleneck": "#2ca02c", "decoder": "#d62728"}
SENSITIVITY_COLOURS = {"reuse": "#0072B2", "noise": "#D55E00"}
RANKING_COLOURS = {"gwpr": "#009E73", "cross": "#CC79A7", "random": "#999999"}  # AT-EDM's own ranking in its colour
UNKNOWN = "#999999"


def family_colour(family: str) -> str:
    return FAMILY_COLOURS.get(family, UNKNOWN)


def family_marker(family: str) -> str:
    return FAMILY_MARKERS.get(family, "o")
