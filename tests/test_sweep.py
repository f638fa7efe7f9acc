"""Sweeps (analysis/eval/sweep.py, grid.py), Pareto frontiers and their figures."""
import json
import math

import numpy as np
import pytest

from analysis.jsonsafe import from_json_value, jsonable

from analysis import metrics
from analysis.accel import registry
from analysis.accel.reuse_policy import strided_policy
from analysis.eval import grid, judge_sweep, pareto, sweep, sweep_results
from analysis.toy import scenes

CAPTIONS = [scenes.caption(s) for s in scenes.evaluation_scenes(24, 7, False)]

# ---- metrics on known pairs -----------------------------------------------------------------------------------

def test_identical_images_psnr_inf_shown_as_such_and_ssim_one():
    img = scenes.render(scenes.evaluation_scenes(1, 0, False)[0])
    assert metrics.psnr(img, img.copy()) == math.inf
    assert metrics.ssim(img, img.copy()) == pytest.approx(1.0)
    assert json.loads(json.dumps(jsonable({"psnr_db": math.inf, "x": float("nan")}))) == {"psnr_db": "inf", "x": None}
    assert from_json_value("inf") == math.inf


# ---- grid and Pareto ----------------------------------------------------------------------------------------------

def test_default_grid_covers_the_issue_and_validates():
    settings = grid.parse_grid("default", 20)
    names = [s.name for s in settings]
    assert len(set(names)) == len(names)
    fam = {s.technique for s in settings}
    assert fam == set(registry()) | {"combo"}  # every technique's own family (Technique.grid), and combinations
    reuse = [s for s in settings if s.technique == "reuse"]
    r_counts = {s.configs()[0].resolve(20).count("R") for s in reuse if s.configs()[0].policy != "phast"}
    assert 0 in r_counts and 10 in r_counts  # 0 .. half the steps
    assert any("noise=false" in s.specs[0] for s in settings if s.technique == "fastdiff")
    assert any("dsap=false" in s.specs[0] for s in settings if s.technique == "atedm")


def test_strided_policy():
    assert strided_policy(8, 4) == "CRCRCRCR"
    p = strided_policy(20, 5)
    assert len(p) == 20 and p.count("R") == 5 and "RR" not in p and p[0] == "C"
    with pytest.raises(ValueError):
        strided_policy(8, 5)


def test_grid_inline_file_and_errors(tmp_path):
    f = tmp_path / "g.txt"
    f.write_text("# comment\nmine = tgate:gate_step=3\nboth = steps:steps=3 & tgate:gate_step=2\n")
    settings = grid.parse_grid(f"{f},x=atedm:ratio=0.5", 4)
    assert [(s.name, s.technique) for s in settings] == [("mine", "tgate"), ("both", "combo"), ("x", "atedm")]
    with pytest.raises(ValueError, match="neither"):
        grid.parse_grid("nonsense", 4)
    with pytest.raises(ValueError, match="bad"):
        grid.parse_grid("bad=atedm:ratio=0.5&reuse:policy=hurry", 4)  # atedm refuses reuse


def test_pareto_on_a_hand_made_table():
    rows = [{"setting": "a", "latency_s": 1.0, "psnr_db": 30.0, "kid_renders": 5.0},
            {"setting": "b", "latency_s": 2.0, "psnr_db": 40.0, "kid_renders": 4.0},
            {"setting": "c", "latency_s": 2.5, "psnr_db": 35.0, "kid_renders": 1.0},  # dominated on PSNR by b
            {"setting": "d", "latency_s": 3.0, "psnr_db": math.inf, "kid_renders": 1.0},  # dominated on KID by c
            {"setting": "e", "latency_s": 0.5, "psnr_db": None, "kid_renders": 9.0}]
    assert [r["setting"] for r in pareto.pareto_front(rows, "psnr_db")] == ["a", "b", "d"]
    assert [r["setting"] for r in pareto.pareto_front(rows, "kid_renders")] == ["e", "a", "b", "c"]


def test_versus_ladder_interpolates_at_equal_latency():
    summary = [{"setting": "steps-5", "technique": "steps", "latency_s": 1.0, "psnr_db": 20.0, "fidelity": 0.8},
               {"setting": "steps-10", "technique": "steps", "latency_s": 2.0, "psnr_db": 30.0, "fidelity": 0.9},
               {"setting": "tg", "technique": "tgate", "latency_s": 1.5, "psnr_db": 22.0, "fidelity": 0.9},
               {"setting": "slow", "technique": "reuse", "latency_s": 3.0, "psnr_db": 40.0, "fidelity": 1.0}]
    out = {r["setting"]: r for r in pareto.versus_ladder(summary, ("psnr_db", "fidelity"), "latency_s")}
    assert out["tg"]["psnr_db_vs_steps"] == pytest.approx(-3.0)
    assert out["tg"]["fidelity_vs_steps"] == pytest.approx(0.05)
    assert out["slow"]["psnr_db_vs_steps"] is None  # outside the ladder's latency range


# ---- the sweep itself (default model, 3 steps) --------------------------------------------------------------------

GRID = "st2=steps:steps=2,tg=tgate:gate_step=2,ru=reuse:policy=CCR"


def _sweep(out, *extra):
    return sweep.main(["--prompts", str(PROMPTS), "--seeds", "0", "--steps", "3", "--grid", GRID,
                       "--out", str(out), "--no-figures", "--baseline-every", "2", *extra])


PROMPTS = None


@pytest.fixture(scope="module", autouse=True)
def _prompt_file(tmp_path_factory):
    global PROMPTS
    PROMPTS = tmp_path_factory.mktemp("prompts") / "p.txt"
    PROMPTS.write_text("# two prompts\n" + "\n".join(CAPTIONS[:2]) + "\n")


def _quality(table):
    return sorted((r["prompt_id"], r["seed"], r["setting"], r["psnr_db"], r["ssim"], r["fidelity"], r["clip_score"])
                  for r in table)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "full"
    assert _sweep(out) == 0
    return out


def test_sweep_writes_tidy_table_summary_and_report(full_run):
    table = json.loads((full_run / "table.json").read_text())
    assert len(table) == 2 * 1 * 4  # prompts x seeds x (baseline + 3 settings)
    for r in table:
        assert set(sweep_results.TABLE_COLUMNS) <= set(r)
        assert r["latency_s"] > 0 and r["speedup"] > 0 and r["clip_score"] is not None
    base = [r for r in table if r["setting"] == "baseline"]
    assert all(r["psnr_db"] == "inf" and r["ssim"] == 1.0 and r["speedup"] == 1.0 for r in base)
    ru = [r for r in table if r["setting"] == "ru"]
    assert all(r["counters"]["reuse"]["maps_reused"] > 0 for r in ru)
    summary = json.loads((full_run / "summary.json").read_text())
    assert {r["setting"] for r in summary} == {"baseline", "st2", "tg", "ru"}
    assert (full_run / "table.csv").read_text().splitlines()[0].startswith("prompt_id,prompt,held_out,seed")
    front = json.loads((full_run / "frontier.json").read_text())
    assert set(front["pareto"]) == set(pareto.AXES)
    assert "Against step reduction" in (full_run / "report.md").read_text()
    assert len(list((full_run / "images" / "tg").glob("*.png"))) == 2


def test_a_sweep_does_not_resume_rows_of_other_weights_under_the_same_name(full_run, tmp_path, capsys):
    """The default model is a name: when its weights change (a new embedded model), an old sweep folder's rows
    must not be mixed into the new sweep. Its meta carries the weights' fingerprint; a mismatch is refused."""
    import shutil

    from analysis.models import model_fingerprint

    out = tmp_path / "other-weights"
    shutil.copytree(full_run, out)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["model_fingerprint"] == model_fingerprint("default") != model_fingerprint("sd15-random")
    rows_before = (out / "rows" / "shard-0-of-1.jsonl").read_text()
    meta["model_fingerprint"] = "0123456789abcdef"  # the same name, other weights
    (out / "meta.json").write_text(json.dumps(meta))
    assert _sweep(out) == 2
    assert "other weights under that name" in capsys.readouterr().err
    assert (out / "rows" / "shard-0-of-1.jsonl").read_text() == rows_before  # nothing run, nothing appended
    del meta["model_fingerprint"]  # a sweep from before the fingerprint: refused too
    (out / "meta.json").write_text(json.dumps(meta))
    assert _sweep(out) == 2


def test_killed_sweep_resumes_without_recomputing(full_run, tmp_path):
    import shutil

    out = tmp_path / "resumed"
    shutil.copytree(full_run, out)
    rows_file = out / "rows" / "shard-0-of-1.jsonl"
    lines = rows_file.read_text().splitlines()
    kept = lines[:5]  # the first unit and the second unit's baseline
    rows_file.write_text("\n".join(kept) + "\n" + lines[5][: len(lines[5]) // 2])  # killed mid-write
    (out / "rows" / "stats-0-of-1.jsonl").unlink()
    assert _sweep(out) == 0
    rows = sweep_results.read_rows(out)
    assert len(rows) == len(lines)
    before = {sweep_results.row_key(json.loads(line)): json.loads(line)["latency_s"] for line in kept}
    for r in rows:  # the finished rows were not recomputed: their timings are the first run's, bit for bit
        if sweep_results.row_key(r) in before:
            assert r["latency_s"] == before[sweep_results.row_key(r)]
    stats = [json.loads(x) for x in (out / "rows" / "stats-0-of-1.jsonl").read_text().splitlines()]
    assert sum(s["rows_run"] for s in stats) == len(lines) - len(kept) - sum(
        1 for line in lines[len(kept):] if json.loads(line)["setting"] == "baseline")
    assert _quality(json.loads((out / "table.json").read_text())) == _quality(json.loads((full_run / "table.json").read_text()))
    # a second rerun has nothing left to do
    assert _sweep(out) == 0
    assert len(sweep_results.read_rows(out)) == len(lines)


def test_shards_merged_equal_one_run(full_run, tmp_path):
    out = tmp_path / "sharded"
    assert _sweep(out, "--shard", "0/2") == 0
    assert _sweep(out, "--shard", "1/2") == 0
    assert not (out / "table.json").exists()
    assert sweep.main(["--out", str(out), "--merge", "--no-figures"]) == 0
    sharded = json.loads((out / "table.json").read_text())
    assert _quality(sharded) == _quality(json.loads((full_run / "table.json").read_text()))
    for r in sharded:
        a = (out / "images" / r["setting"] / f"p{r['prompt_id']:03d}-s{r['seed']}.png").read_bytes()
        b = (full_run / "images" / r["setting"] / f"p{r['prompt_id']:03d}-s{r['seed']}.png").read_bytes()
        assert a == b


def test_sweep_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    for argv in (["--grid", "nope"], ["--shard", "2/2"], ["--seeds", "a"], ["--prompts", str(tmp_path / "none.txt")]):
        assert sweep.main(["--out", str(tmp_path / "o"), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ")
    assert sweep.main(["--out", str(tmp_path / "empty"), "--merge"]) == 2


def test_unavailable_measures_are_reported_as_unavailable(tmp_path):
    assert sweep.reference_free_scorers("some/hub-model") == {"fidelity": False}
    rows = [{"prompt_id": 0, "seed": 0, "setting": "a", "prompt": "a photo of a cat"}]
    judged = judge_sweep.score_sweep(tmp_path, rows, "default")  # not shapes-world captions: no true renders
    assert judged.columns == {} and judged.row_clip == {} and judged.meta["judge"].startswith("unavailable")
    from analysis.eval import quality

    hub = judge_sweep.score_sweep(tmp_path, rows, "owner/some-model")  # offline: the Hub CLIP does not load
    assert hub.columns == {} and hub.meta["judge"].startswith("unavailable") and quality.CLIP_MODEL in hub.meta["judge"]


def test_fast_and_faithful():
    summary = [{"setting": "baseline", "technique": "baseline", "speedup": 1.0, "fidelity": 0.95},
               {"setting": "a", "technique": "tgate", "speedup": 1.6, "fidelity": 0.945},
               {"setting": "b", "technique": "steps", "speedup": 2.0, "fidelity": 0.90}]
    out = sweep_results.fast_and_faithful(summary)
    assert out["settings"] == ["a"] and out["best_fast"]["setting"] == "a"


def test_load_shipped_has_the_app_contract():
    rows = sweep_results.load_shipped(steps=20)
    assert rows, "assets/results/default-20/summary.json is shipped"
    for r in rows:
        assert {"setting", "technique", "latency_s", "speedup", "psnr_db", "fidelity", "clip_score",
                "clip_score_low", "clip_score_high", "kid_renders", "kid_full"} <= set(r)
    assert {r["technique"] for r in rows} >= {"baseline", "steps", "tgate", "reuse"}
    assert sweep_results.load_shipped(steps=999) == []


# ---- figures ----------------------------------------------------------------------------------------------------

SUMMARY = [{"setting": "baseline", "technique": "baseline", "latency_s": 1.0, "psnr_db": math.inf, "fidelity": 0.9,
            "fidelity_se": 0.01, "kid_renders": 2.0},
           {"setting": "steps-5", "technique": "steps", "latency_s": 0.5, "latency_s_q25": 0.45, "latency_s_q75": 0.55,
            "psnr_db": 30.0, "psnr_db_q25": 28.0, "psnr_db_q75": 31.0, "fidelity": 0.85, "kid_renders": 3.0},
           {"setting": "steps-8", "technique": "steps", "latency_s": 0.8, "psnr_db": 35.0, "fidelity": 0.88, "kid_renders": 2.5, "kid_renders_low": 2.0, "kid_renders_high": 3.25},
           {"setting": "tg", "technique": "tgate", "latency_s": 0.6, "psnr_db": 25.0, "fidelity": 0.9, "kid_renders": 2.2}]


def test_tradeoff_figures_have_the_traces_and_labels():
    from viz import sweep_figs

    fig = sweep_figs.tradeoff_figure(SUMMARY, "psnr_db", shipped=SUMMARY, latency="latency_s")
    names = [t.name for t in fig.data]
    assert names == ["shipped sweep", "baseline", "step reduction", "tgate"]
    steps = fig.data[2]
    assert steps.mode == "lines+markers" and list(steps.x) == [0.5, 0.8]
    assert list(steps.error_y.arrayminus) == [2.0, 0.0]
    assert fig.data[1].y[0] == 40.0  # +inf PSNR drawn 5 dB above the best finite value
    assert fig.layout.xaxis.title.text == sweep_figs.LATENCY_LABELS["latency_s"]
    assert fig.layout.yaxis.title.text == sweep_figs.AXIS_LABELS["psnr_db"]
    kid = sweep_figs.tradeoff_figure(SUMMARY, "kid_renders", latency="latency_s")
    assert [t.name for t in kid.data] == ["baseline", "step reduction", "tgate"]
    assert list(kid.data[1].error_y.arrayminus) == [0.0, 0.5] and list(kid.data[1].error_y.array) == [0.0, 0.75]
    mfig = sweep_figs.tradeoff_figure_mpl(SUMMARY, "kid_renders", latency="latency_s")
    ax = mfig.axes[0]
    assert ax.get_xlabel() == sweep_figs.LATENCY_LABELS["latency_s"] and ax.get_ylabel() == sweep_figs.AXIS_LABELS["kid_renders"]
    labels = ax.get_legend_handles_labels()[1]
    assert "step reduction (baseline frontier)" in labels and "full compute" in labels and "tgate" in labels


def test_write_all_writes_html_and_slide_formats(tmp_path):
    from viz import sweep_figs

    summary = [{**r, "relative_latency": r["latency_s"]} for r in SUMMARY]
    paths = sweep_figs.write_all(summary, [], tmp_path, axes=("fidelity",))
    assert sorted(p.suffix for p in paths) == [".html", ".pdf", ".png", ".svg"]
    assert all(p.stat().st_size > 0 for p in paths)


def test_peers_leave_the_pipeline_as_they_found_it(toy_pipe):
    """DeepCache and tomesd are optional: skipped when not installed; when installed, a peer run leaves no
    hook behind (our own plug-ins can attach afterwards) and the image changes."""
    pytest.importorskip("DeepCache")
    pytest.importorskip("tomesd")
    from analysis.accel import parse_accel
    from analysis.eval import peers
    from analysis.run import RunConfig, run_once

    config = RunConfig(prompt="a red circle", steps=4, warmup=False)
    base = run_once(toy_pipe, config, (), 4).images
    for spec in ("peer:deepcache:cache_interval=2,cache_branch_id=0", "peer:tomesd:ratio=0.5"):
        image, seconds, counters = peers.run_peer(toy_pipe, config, (spec,))
        assert image.shape == base.shape and seconds > 0 and counters
        assert not any("forward" in m.__dict__ for m in toy_pipe.unet.modules())
    tg = RunConfig(prompt="a red circle", steps=4, warmup=False, accel=(parse_accel("tgate:gate_step=2"),))
    run_once(toy_pipe, tg, tg.hooked_accel(), 4)  # our seam attaches again
    assert np.array_equal(run_once(toy_pipe, config, (), 4).images, base)
    with pytest.raises(ValueError, match="peer spec"):
        peers.parse_peer("peer:nope")


@pytest.mark.parametrize("pipe_name", ["toy_pipe", "sdxl_pipe"])
def test_atedm_ranking_ablation_prunes_the_same_amount(pipe_name, request):
    """random and cross-attention ranking (the G-WPR ablation) prune exactly as many tokens as G-WPR, but
    other ones; cross works on one-layer blocks (toy) and multi-layer blocks (SDXL-like)."""
    from analysis.accel import parse_accel
    from analysis.run import RunConfig, run_once

    pipe = request.getfixturevalue(pipe_name)
    out = {}
    for ranking in ("gwpr", "random", "cross"):
        config = RunConfig(prompt="a red circle", steps=3, warmup=False, guidance=5.0,
                           accel=(parse_accel(f"atedm:ratio=0.5,dsap=false,ranking={ranking}"),))
        result = run_once(pipe, config, config.hooked_accel(), 3)
        image, counters = result.images, result.counters
        out[ranking] = (image, counters["atedm"]["tokens_pruned"], counters["atedm"]["tokens_total"])
    assert out["gwpr"][1] > 0 and out["gwpr"][1:] == out["random"][1:] == out["cross"][1:]
    assert not np.array_equal(out["gwpr"][0], out["random"][0])
    assert not np.array_equal(out["gwpr"][0], out["cross"][0])
    with pytest.raises(ValueError, match="ranking"):
        parse_accel("atedm:ranking=magic")


def test_best_at_matched_latency():
    summary = [{"setting": "dc", "technique": "peer", "relative_latency": 0.5, "psnr_db": 30.0},
               {"setting": "a", "technique": "tgate", "relative_latency": 0.52, "psnr_db": 28.0, "kid_renders": 3.0},
               {"setting": "b", "technique": "steps", "relative_latency": 0.48, "psnr_db": 33.0, "kid_renders": 4.0},
               {"setting": "c", "technique": "steps", "relative_latency": 0.8, "psnr_db": 45.0, "kid_renders": 1.0}]
    out = pareto.best_at_matched_latency(summary, summary[0])
    assert out["psnr_db"] == ("b", 33.0) and out["kid_renders"] == ("a", 3.0) and out["fidelity"] is None


def test_one_prompt_one_seed_merges_and_binary_prompts_are_refused(tmp_path, capsys):
    one = tmp_path / "one.txt"
    one.write_text(CAPTIONS[0] + "\n")
    out = tmp_path / "one-run"
    assert sweep.main(["--prompts", str(one), "--seeds", "0", "--steps", "2", "--grid", "st2=steps:steps=1",
                       "--out", str(out), "--no-figures"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert all(r["clip_score"] is not None and r["kid_renders"] is None for r in summary)  # no set measure from 1 image
    binary = tmp_path / "bin.txt"
    binary.write_bytes(bytes(range(256)))
    assert sweep.main(["--prompts", str(binary), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "UTF-8" in err[-1]


def test_ship_as_a_named_folder(tmp_path):
    from analysis.eval.sweep_results import ship

    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text("[]")
    (out / "meta.json").write_text(json.dumps({"steps": 20, "settings": ["a"]}))
    dest = ship(out, 20, directory=tmp_path / "results", name="ablations-20")
    assert dest == tmp_path / "results" / "ablations-20"
    assert (dest / "summary.json").read_text() == "[]"
    assert json.loads((dest / "meta.json").read_text()) == {"steps": 20}  # no per-setting list
    assert ship(out, 20, directory=tmp_path / "results").name == "default-20"
