"""The one colour table of DiffScope's figures (app, sweep figures, observations): Okabe & Ito (2008) for the
technique families, distinguishable with every common colour-vision deficiency."""
from __future__ import annotations

FAMILY_COLOURS = {"tgate": "#0072B2", "reuse": "#E69F00", "atedm": "#009E73", "fastdiff": "#D55E00",
                  "combo": "#CC79A7", "peer": "#56B4E9", "ablation": "#F0E442", "steps": "#666666",
                  "baseline": "#000000"}
# UNet parts (the drift figures shade each block of a part around these)
ROLE_COLOURS = {"encoder": "#1f77b4", "bottleneck": "#2ca02c", "decoder": "#d62728"}
SENSITIVITY_COLOURS = {"reuse": "#0072B2", "noise": "#D55E00"}
RANKING_COLOURS = {"gwpr": FAMILY_COLOURS["atedm"], "cross": "#CC79A7", "random": "#999999"}
UNKNOWN = "#999999"


def family_colour(family: str) -> str:
    return FAMILY_COLOURS.get(family, UNKNOWN)
