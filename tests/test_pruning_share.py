"""Which tokens AT-EDM prunes: the object/background shares (analysis/eval/pruning_share.py) and the grid."""
import numpy as np

from analysis.accel import parse_accel
from analysis.eval.grid import PRUNING_RATIOS, named_grid
from analysis.eval.pruning_share import share_from_log, token_mask, variants


def test_token_mask_marks_tokens_at_least_half_object():
    mask = np.zeros((8, 8), dtype=bool)
    mask[:4, :4] = True  # the top-left token of a 2x2 grid, exactly
    assert token_mask(mask, (2, 2)).tolist() == [[True, False], [False, False]]
    mask = np.zeros((8, 8), dtype=bool)
    mask[4:6, 4:8] = True  # exactly half of the bottom-right cell
    mask[0, 4:8], mask[1, 4:7] = True, True  # 7 of the top-right cell's 16 pixels
    assert token_mask(mask, (2, 2)).tolist() == [[False, False], [False, True]]


def test_shares_count_only_steps_that_pruned():
    mask = np.zeros((4, 4), dtype=bool)
    mask[:2, :2] = True  # 1 object token of 4 on a 2x2 grid
    pruned = np.zeros((3, 1, 2, 2), dtype=bool)
    pruned[0, 0] = [[True, True], [False, False]]  # the object token and one background token
    pruned[2, 0] = [[False, True], [True, False]]  # two background tokens; step 1 pruned nothing
    log = {"layers": ["l"], "pruned": {"l": pruned}, "grid": {"l": [2, 2]}}
    share = share_from_log(log, mask)
    assert share["object_tokens"] == 2 and share["background_tokens"] == 6
    assert share["object_pruned_share"] == 0.5 and share["background_pruned_share"] == 0.5
    assert share["object_enrichment"] == 1.0
    assert share_from_log(log, np.zeros((4, 4), dtype=bool))["object_enrichment"] is None  # no object drawn


def test_pruning_grid_has_every_variant_at_every_ratio():
    grid = named_grid("pruning", 20)
    assert len(grid) == len(PRUNING_RATIOS) * len(variants(0.5))
    for setting in grid:
        (config,) = setting.configs()
        assert config.ratio in PRUNING_RATIOS
    assert parse_accel(variants(0.63)["random-layer-shared"]).random_draw == "layer"
