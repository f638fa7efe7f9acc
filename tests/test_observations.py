"""`python -m analysis observations` on the embedded model at a few steps (analysis/eval/observations.py)."""
import json

import numpy as np
import pytest

from analysis.eval import observations


def test_band_is_median_and_quartiles_over_units():
    b = observations.band([[1.0, np.nan], [2.0, np.nan], [3.0, 5.0], [4.0, np.nan], [5.0, np.nan]])
    assert b["median"][0] == 3.0 and b["q25"][0] == 2.0 and b["q75"][0] == 4.0 and b["n"] == 5
    assert b["median"][1] == 5.0


def test_map_similarity_is_one_on_the_diagonal_and_symmetric():
    rng = np.random.default_rng(0)
    cross = {"a": rng.random((5, 1, 7, 4, 4)), "b": rng.random((5, 1, 7, 2, 2))}
    sim = observations.map_similarity(cross)
    assert sim.shape == (5, 5)
    np.testing.assert_allclose(np.diag(sim), 1.0)
    np.testing.assert_allclose(sim, sim.T)


def test_cli_writes_every_observation(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a large red circle on the left\na small blue square at the top\n")
    out = tmp_path / "obs"
    code = observations.main(["--prompts", str(prompts), "--seeds", "0", "--steps", "4", "--sensitivity-prompts", "1",
                              "--pruning-prompts", "1", "--sweep", "none", "--out", str(out)])
    assert code == 0
    data = json.loads((out / "observations.json").read_text())
    assert data["units"] == 2 and data["tgate_gate_step"] == 2  # round(0.4 x 4)
    assert len(data["map_change"]["mean_of_layers"]["median"]) == 3
    assert set(data["relative_drift"]["per_role"]) == {"encoder", "bottleneck", "decoder"}
    assert set(data["pruning"]["quality"]) == {"gwpr", "cross", "random"}
    assert set(data["pruning"]["masks"]) == {"gwpr", "cross", "random"}
    assert data["sensitivity"]["curve"] and data["versus_steps"] is None
    for name in ("map_change", "relative_drift", "sensitivity", "map_similarity", "pruning"):
        assert (out / "figures" / f"{name}.png").exists(), name


def test_cli_bad_input(tmp_path, capsys):
    assert observations.main(["--out", str(tmp_path / "o"), "--steps", "1"]) == 2
    assert capsys.readouterr().err.startswith("error: --steps")
    assert observations.main(["--out", str(tmp_path / "o"), "--sweep", str(tmp_path)]) == 2
    assert "no summary.json" in capsys.readouterr().err


def test_versus_steps_reads_a_sweep_and_counts_each_setting_once():
    from pathlib import Path

    from analysis.eval.sweep_results import SHIPPED_DIR
    from analysis.models import load_pipeline

    pipe = load_pipeline("default")
    pipe.set_progress_bar_config(disable=True)
    rows = observations.versus_steps(pipe, Path(SHIPPED_DIR) / "default-20", "a large red circle on the left", 5.0)
    by = {r["setting"]: r for r in rows}
    assert "baseline" not in by and not any(r["technique"] == "steps" for r in rows)
    assert by["tgate-g8"]["counted_speedup"] > 1.0
    # AT-EDM's counted work charges its measured ranking overheads (issue 20), which on the 64 px default model
    # make it about break-even (0.85-1.0 on this VM): it must be counted, its side of 1 depends on the machine
    assert 0.5 < by["atedm-63"]["counted_speedup"] < 2.0
    # the step ladder's PSNR falls as the speed-up rises, so a faster point is compared with a lower PSNR
    assert by["tgate-g4"]["steps_psnr_at_counted"] <= by["tgate-g16"]["steps_psnr_at_counted"]


def test_app_tab_reads_shipped_observations(tmp_path):
    import gradio as gr

    from ui import observations as tab

    with gr.Blocks():
        tab.render(steps=7, directory=tmp_path)  # nothing shipped for 7 steps: says so, no crash
    data = {"model": "default", "units": 4, "prompts": 2, "seeds": [0, 1], "steps": 20, "scheduler": "ddim",
            "guidance": 5.0, "band": "median and interquartile range over units",
            "sensitivity": {"verdict": {"reuse": {"positive_exponent_without_last_at": [], "smallest_final_deviation_at": 13,
                                                  "amplifying_steps": [2, 3]}}}}
    text = tab.summary_markdown(data)
    assert "appears at no step" in text and "t = 13" in text and "2, 3" in text


def test_each_observation_figure_gets_a_16_9_slide_and_goes_into_the_export_pack(tmp_path):
    from PIL import Image

    from ui.observations import pack_files
    from viz.observation_figs import FIGURES, write_slides

    figures = tmp_path / "observations-20" / "figures"
    figures.mkdir(parents=True)
    Image.new("RGB", (300, 200), "white").save(figures / f"{FIGURES[0][0]}.png")
    (figures / f"{FIGURES[0][0]}.svg").write_text("<svg/>")
    (slide,) = write_slides(tmp_path / "observations-20")
    w, h = Image.open(slide).size
    assert w / h == pytest.approx(16 / 9, rel=0.01)
    assert {p.name for p in pack_files(20, tmp_path)} == {f"{FIGURES[0][0]}{end}" for end in (".png", ".svg", "-slide.png")}
    assert pack_files(7, tmp_path) == []
