"""Every bad CLI input reaches one 'error:' line and exit code 2 (issue 19 item 3), and a sweep's rows files
with bad lines are read with a warning per line instead of a traceback."""
from __future__ import annotations

import json

import pytest

from analysis.__main__ import main
from analysis.accel import parse_accel
from analysis.eval.sweep_results import read_rows
from analysis.size_guard import ceiling, check_size, estimate, step_seconds


def _error_line(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), (code, err)
    return err[0]


@pytest.mark.parametrize("argv, needle", [
    (["generate", "--prompt", "a red \udcff circle"], "--prompt is not valid UTF-8 text (byte 0xff"),
    (["generate", "--prompt", "a red circle", "--negative-prompt", "\udce9"], "--negative-prompt is not valid UTF-8"),
    (["generate", "--prompt", "a red circle", "--capture", "--capture-budget-mb", "inf"], "--capture-budget-mb"),
    (["generate", "--prompt", "a red circle", "--capture", "--capture-budget-mb", "nan"], "--capture-budget-mb"),
    (["generate", "--prompt", "a red circle", "--model", ""], "no model named"),
    (["generate", "--prompt", "a red circle", "--model", "   "], "no model named"),
    (["generate", "--prompt", "a red circle", "--model", "tiny", "--size", "1024"], "above this machine's limit of 512"),
])
def test_bad_generate_inputs_are_one_line(argv, needle, capsys, tmp_path):
    line = _error_line(capsys, argv + ["--out", str(tmp_path / "run")])
    assert needle in line, line
    assert not (tmp_path / "run").exists()


def test_technique_specs_may_have_spaces_as_typed_in_a_shell():
    assert parse_accel("tgate: gate_step = 1").gate_step == 1
    assert parse_accel(" atedm : ratio = 0.5 , dsap = false ").dsap is False


def test_help_lists_every_subcommand(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("generate", "train-default", "search-policy", "bench", "sweep", "sensitivity"):
        assert command in out


def test_the_size_ceiling_is_the_operators():
    assert ceiling(64, {}) == 512 and ceiling(512, {}) == 4096
    check_size(512, 64, {})
    with pytest.raises(ValueError, match="DIFFSCOPE_MAX_SIZE"):
        check_size(1024, 64, {})
    check_size(1024, 64, {"DIFFSCOPE_MAX_SIZE": "1024"})
    with pytest.raises(ValueError, match="whole number"):
        check_size(1024, 64, {"DIFFSCOPE_MAX_SIZE": "big"})


def test_the_step_time_fit_passes_through_both_measured_steps():
    assert step_seconds(0.01, 0.5, 16, 1) == pytest.approx(0.01)
    assert step_seconds(0.01, 0.5, 16, 16) == pytest.approx(0.5)
    assert step_seconds(0.01, 0.5, 16, 64) > 3 * 0.5 * 4  # well above linear growth: the square dominates
    assert step_seconds(0.01, 0.1, 16, 64) == pytest.approx(0.01 * 64)  # sub-linear timings: never below linear


def test_a_large_size_is_estimated_from_two_measured_steps(monkeypatch):
    import analysis.size_guard as guard

    class Pipe:
        class unet:  # noqa: N801 - the attribute path diffusers pipelines have
            config = type("C", (), {"sample_size": 8})
        vae_scale_factor = 8

    sides = []
    monkeypatch.setattr(guard, "time_one_step", lambda pipe, side, guidance, repeats=1: sides.append(side) or
                        (0.01 if side == 64 else 0.5))
    assert estimate(Pipe(), 128, 30, 4, 5.0) is None and sides == []  # at most twice the native side
    guess = estimate(Pipe(), 512, 30, 4, 5.0)
    assert sides == [64, 256] and (guess.native, guess.half, guess.step_s, guess.half_s) == (64, 256, 0.01, 0.5)
    assert guess.seconds == pytest.approx(step_seconds(0.01, 0.5, 16, 64) * 30 * 4)
    assert "64x the pixels" in guess.note() and "500 ms at 256 px" in guess.note()


def _row(pid, seed, setting="baseline", **extra):
    return {"prompt_id": pid, "prompt": "a red circle", "seed": seed, "setting": setting, "technique": setting,
            "latency_s": 0.1, "baseline_latency_s": 0.1, "psnr_db": "inf", **extra}


def test_rows_files_with_bad_lines_are_read_with_one_warning_per_line(tmp_path):
    rows = tmp_path / "rows"
    rows.mkdir()
    good = [json.dumps(_row(0, 0)).encode(), json.dumps(_row(1, 0)).encode()]
    lines = [good[0], b"\xff\xfe not utf-8", bytes(range(0, 256, 7)), json.dumps({"prompt_id": 3}).encode(),
             b"[1, 2, 3]", json.dumps(_row(2, 0, latency_s="fast")).encode(), b"", good[1]]
    (rows / "shard-0-of-1.jsonl").write_bytes(b"\n".join(lines) + b"\n" + b'{"prompt_id": 9, "se')  # torn end
    warnings = []
    got = read_rows(tmp_path, warn=warnings.append)
    assert [(r["prompt_id"], r["seed"]) for r in got] == [(0, 0), (1, 0)]
    assert got[0]["psnr_db"] == float("inf")
    assert [w.split(": skipped")[0].rsplit(":", 1)[1] for w in warnings] == ["2", "3", "4", "5", "6"]
    assert all("shard-0-of-1.jsonl" in w for w in warnings)
    assert "not UTF-8" in warnings[0] and "field 'seed'" in warnings[2] and "list" in warnings[3]
    assert "latency_s" in warnings[4]


def test_sweep_merge_over_bad_rows_warns_instead_of_a_traceback(tmp_path, capsys):
    (tmp_path / "rows").mkdir(parents=True)
    (tmp_path / "meta.json").write_text(json.dumps({"model": "tiny", "steps": 2, "prompts": ["a"]}))
    (tmp_path / "rows" / "shard-0-of-1.jsonl").write_bytes(b"\xff\xff\n{\"x\": 1}\n")
    code = main(["sweep", "--out", str(tmp_path), "--merge", "--no-figures"])
    err = capsys.readouterr().err
    assert "Traceback" not in err and "shard-0-of-1.jsonl:1" in err and "shard-0-of-1.jsonl:2" in err
    assert code in (0, 2)
