"""`python -m analysis generate`: the docs/cli.md contract (run.json keys, images, one-line errors, exit 2,
nothing half-written in DIR)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from analysis import report
from analysis.__main__ import main
from fakes import fake_result

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {"prompt", "seed", "steps", "model", "accel", "baseline_latency_s", "latency_s", "speedup", "psnr_db",
            "ssim", "fidelity", "counters"}
PROMPT = "a red circle on the left"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False")
    return subprocess.run([sys.executable, "-m", "analysis", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


@pytest.fixture(scope="module")
def capture_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    code = main(["generate", "--prompt", PROMPT, "--steps", "3", "--seed", "7", "--capture",
                 "--capture-budget-mb", "8", "--accel", "tgate:gate_step=2,warm_up=0", "--out", str(out)])
    assert code == 0
    return out


def test_capture_writes_run_json_images_and_signals(capture_run):
    out = capture_run
    assert {p.name for p in out.iterdir()} == {"run.json", "baseline.png", "accelerated.png", "signals.npz"}
    assert leftovers(out.parent) == []
    data = json.loads((out / "run.json").read_text())
    assert REQUIRED <= set(data)
    assert data["prompt"] == PROMPT and data["seed"] == 7 and data["steps"] == 3 and data["model"] == "default"
    assert data["accel"]["tgate"] == {"gate_step": 2, "sp_interval": 5, "fi_interval": 1, "warm_up": 0}
    for key in ("baseline_latency_s", "latency_s", "speedup", "instrumented_latency_s"):
        assert isinstance(data[key], float) and data[key] > 0, key
    assert data["psnr_db"] == "inf" or isinstance(data["psnr_db"], float)
    assert 0 <= data["ssim"] <= 1
    assert isinstance(data["fidelity"], dict) and "overall" in data["fidelity"]
    assert isinstance(data["counters"], dict)
    sig = data["signals"]
    assert {"cross_attn_convergence", "feature_drift", "token_rank", "attention_maps"} <= set(sig)
    conv = sig["cross_attn_convergence"]
    assert len(conv["output_l2"]) == len(conv["layers"]) > 0
    assert all(isinstance(row, list) for row in conv["output_l2"])
    assert isinstance(sig["feature_drift"]["mse"], list)
    maps = sig["attention_maps"]
    assert maps["cross"] and maps["resolution"]
    layer = next(iter(maps["cross"]))
    assert "kept" in maps["resolution"][layer]
    with np.load(out / "signals.npz") as npz:
        assert maps["cross"][layer]["npz_key"] in npz.files
        assert list(npz[maps["cross"][layer]["npz_key"]].shape) == maps["cross"][layer]["shape"]
    for name in ("baseline.png", "accelerated.png"):
        img = np.asarray(Image.open(out / name))
        assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8


def test_saved_run_redraws_with_viz(capture_run, tmp_path):
    from viz import attention_figs, export, plotly_figs, signal_figs

    data, signals = report.load_run(capture_run)
    tokens = data["tokens"][0]
    img = np.asarray(Image.open(capture_run / "accelerated.png"))
    for fig in (attention_figs.cross_attention_figure(signals["attention_maps"], tokens, step=1, image=img),
                signal_figs.convergence_figure(signals["cross_attn_convergence"]),
                signal_figs.drift_figure(signals["feature_drift"]),
                signal_figs.token_rank_figure(signals["token_rank"], step=2),
                signal_figs.token_rank_summary_figure(signals["token_rank"]),
                plotly_figs.counters_figure(data["counters"])):
        assert fig.layout.height
        fig.to_json()
    export.save(export.cross_attention_figure(signals["attention_maps"], tokens, step=1, image=img),
                tmp_path / "attn.png", dpi=60)
    assert (tmp_path / "attn.png").stat().st_size > 0


def test_tiny_pipeline_dir_and_several_prompts(tmp_path):
    from analysis.models import random_pipeline

    model_dir = tmp_path / "tiny"
    random_pipeline("toy").save_pretrained(model_dir)
    out = tmp_path / "out" / "run"
    code = main(["generate", "--prompt", PROMPT, "--prompt", "a blue square at the top", "--steps", "2",
                 "--model", str(model_dir), "--out", str(out)])
    assert code == 0
    data = json.loads((out / "run.json").read_text())
    assert data["prompt"] == [PROMPT, "a blue square at the top"]
    assert data["model"] == str(model_dir) and data["fidelity"] is None and data["signals"] is None
    assert data["psnr_db"] == "inf" and data["speedup"] is not None  # no technique: identical images
    assert not (out / "signals.npz").exists()
    assert np.asarray(Image.open(out / "baseline.png")).shape == (64, 128, 3)  # 2 prompts side by side


# --- errors -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["--steps", "abc"],  # argparse type error
    ["--bogus"],  # unknown flag
    ["--accel", "warp"],  # unknown technique
    ["--model", "no/such/model"],  # ModelLoadError (checked after the request is validated)
])
def test_errors_subprocess_one_line_exit_2_nothing_written(tmp_path, args):
    out = tmp_path / "run"
    proc = run_cli("generate", "--prompt", PROMPT, "--steps", "2", *args, "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("args, message", [
    (["generate", "--prompt", PROMPT], "--out"),
    (["generate", "--prompt", PROMPT, "--accel", "tgate:gate_step=x"], "gate_step"),
    (["generate", "--prompt", PROMPT, "--accel", "tgate:nope=1"], "unknown parameter"),
    (["generate", "--prompt", PROMPT, "--accel", "tgate:gate_step=0"], "gate_step"),
    (["generate", "--prompt", "   "], "prompt"),
    (["generate", "--prompt", PROMPT, "--steps", "0"], "steps"),
    (["generate", "--prompt", PROMPT, "--size", "33"], "size"),
    (["generate", "--prompt", PROMPT, "--scheduler", "pndm"], "scheduler"),
    (["generate", "--prompt", PROMPT, "--capture-budget-mb", "5"], "--capture"),
    (["frobnicate"], "invalid choice"),
])
def test_errors_in_process(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    if "--out" not in message:
        args = [*args, "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists() and leftovers(tmp_path) == []


def test_out_dir_not_writable(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["generate", "--prompt", PROMPT, "--steps", "2", "--out", str(blocker / "run")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot write to"), err
    assert main(["generate", "--prompt", PROMPT, "--steps", "2", "--out", str(blocker)]) == 2
    assert "not a directory" in capsys.readouterr().err


class _Pipe:
    def __init__(self):
        from analysis.models import set_model_name

        set_model_name(self, "default")

    def set_progress_bar_config(self, **kwargs):
        pass


def test_rerun_replaces_dir_and_failure_keeps_old_run(tmp_path, capsys, monkeypatch):
    import analysis.models
    import analysis.run

    monkeypatch.setattr(analysis.models, "load_pipeline", lambda *a, **k: _Pipe())
    monkeypatch.setattr(analysis.run, "generate", lambda pipe, config, measure_latency=True: fake_result())
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text("{}")  # a previous run: may be replaced
    (out / "stale.txt").write_text("old")
    assert main(["generate", "--prompt", PROMPT, "--steps", "2", "--out", str(out)]) == 0
    assert not (out / "stale.txt").exists() and (out / "run.json").exists()
    before = (out / "run.json").read_text()
    last = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert last["speedup"] == 2.0 and last["out"] == str(out)

    def boom(pipe, config, measure_latency=True):
        raise ValueError("tgate: gate_step must be below steps")

    monkeypatch.setattr(analysis.run, "generate", boom)
    assert main(["generate", "--prompt", PROMPT, "--steps", "2", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == "error: tgate: gate_step must be below steps"
    assert (out / "run.json").read_text() == before
    assert leftovers(tmp_path) == []


def test_help_and_train_default_parser(capsys):
    assert main(["generate", "--help"]) == 0
    assert "--capture-budget-mb" in capsys.readouterr().out
    assert main(["train-default", "--help"]) == 0
    assert "--unet-steps" in capsys.readouterr().out


# --- issue 11: odd targets, sizes, seeds, warnings ------------------------------------------------------

def _never_load(monkeypatch, capsys):
    """Fail the test if the CLI gets as far as loading a model (refusals must come before any work)."""
    import analysis.models

    capsys.readouterr()  # what the libraries print when this process first imports them is not the CLI's

    def load(*a, **k):
        raise AssertionError("the model was loaded before the target was refused")

    monkeypatch.setattr(analysis.models, "load_pipeline", load)


def _fake_run(monkeypatch, capsys):
    import analysis.models
    import analysis.run

    capsys.readouterr()

    monkeypatch.setattr(analysis.models, "load_pipeline", lambda *a, **k: _Pipe())
    monkeypatch.setattr(analysis.run, "generate", lambda pipe, config, measure_latency=True: fake_result())


def _one_error(capsys) -> str:
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("seed, ok", [(0, True), (2**63 - 1, True), (2**63, False), (2**64, False), (-1, False)])
def test_seed_bounds_checked_before_any_work(tmp_path, capsys, monkeypatch, seed, ok):
    from analysis.run import RunConfig

    if ok:
        assert RunConfig(prompt=PROMPT, seed=seed).seed == seed
        return
    with pytest.raises(ValueError, match=r"seed must be between 0 and 2\^63-1"):
        RunConfig(prompt=PROMPT, seed=seed)
    _never_load(monkeypatch, capsys)
    out = tmp_path / "run"
    assert main(["generate", "--prompt", PROMPT, "--seed", str(seed), "--out", str(out)]) == 2
    assert _one_error(capsys) == f"error: seed must be between 0 and 2^63-1, got {seed}"
    assert not out.exists() and leftovers(tmp_path) == []


def test_out_under_a_file_says_the_parent_is_a_file(tmp_path, capsys, monkeypatch):
    _never_load(monkeypatch, capsys)
    (tmp_path / "f").write_text("a file")
    assert main(["generate", "--prompt", PROMPT, "--out", str(tmp_path / "f" / "sub" / "run")]) == 2
    assert _one_error(capsys) == f"error: cannot write to {tmp_path}/f/sub/run: {tmp_path}/f is a file, not a folder"
    assert (tmp_path / "f").read_text() == "a file" and leftovers(tmp_path) == []


def test_dotdot_target_resolved_and_refused_before_any_work(tmp_path, capsys, monkeypatch):
    _never_load(monkeypatch, capsys)
    (tmp_path / "d" / "sub").mkdir(parents=True)  # d holds a folder, not a previous run
    assert main(["generate", "--prompt", PROMPT, "--out", str(tmp_path / "d" / "sub" / "..")]) == 2
    line = _one_error(capsys)
    assert f"--out {tmp_path}/d/sub/.. is a non-empty folder without run.json" in line, line
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["sub"] and leftovers(tmp_path) == []


def test_dotdot_target_resolved_and_written(tmp_path, capsys, monkeypatch):
    _fake_run(monkeypatch, capsys)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "run.json").write_text("{}")  # a previous run: replaceable
    assert main(["generate", "--prompt", PROMPT, "--out", str(tmp_path / "d" / "new" / "..")]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["out"] == str(tmp_path / "d")
    assert json.loads((tmp_path / "d" / "run.json").read_text())["format"] == report.RUN_FORMAT
    assert not (tmp_path / "d" / "new").exists() and leftovers(tmp_path) == []


def test_symlinked_target_written_through_the_link(tmp_path, capsys, monkeypatch):
    _fake_run(monkeypatch, capsys)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    assert main(["generate", "--prompt", PROMPT, "--out", str(tmp_path / "link")]) == 0
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real" / "run.json").is_file()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("target, message", [
    (".", "which is or contains the current folder"),
    ("..", "which is or contains the current folder"),
    ("", "which is or contains the current folder"),
    ("/", "is the filesystem root"),
    ("notes", "is a non-empty folder without run.json"),
    ("n" * 300, "File name too long"),
])
def test_targets_that_cannot_be_replaced_refused_before_any_work(tmp_path, capsys, monkeypatch, target, message):
    _never_load(monkeypatch, capsys)
    work = tmp_path / "work"
    (work / "notes").mkdir(parents=True)
    (work / "notes" / "todo.txt").write_text("keep me")
    monkeypatch.chdir(work)
    assert main(["generate", "--prompt", PROMPT, "--out", target]) == 2
    assert message in _one_error(capsys)
    assert sorted(p.name for p in work.iterdir()) == ["notes"]
    assert (work / "notes" / "todo.txt").read_text() == "keep me"


def _unprivileged() -> list[str]:
    """A command prefix under which permission bits bind (as root: drop the capabilities that override them)."""
    if os.geteuid() != 0:
        return []
    import shutil

    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: read-only folders cannot be made to bind")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]


@pytest.mark.parametrize("layout", ["read-only run", "read-only parent", "read-only sub-folder"])
def test_read_only_target_refused_and_untouched(tmp_path, layout):
    from benchmarks.cli_cases import _snapshot

    parent = tmp_path / "parent"
    out = parent / "run"
    out.mkdir(parents=True)
    (out / "run.json").write_text("{}")
    (out / "keep").mkdir()
    locked = {"read-only run": out, "read-only parent": parent, "read-only sub-folder": out / "keep"}[layout]
    locked.chmod(0o555)
    before = _snapshot(out), sorted(os.listdir(parent))
    try:
        env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False")
        proc = subprocess.run([*_unprivileged(), sys.executable, "-m", "analysis", "generate", "--prompt", PROMPT,
                               "--steps", "2", "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=900)
    finally:
        locked.chmod(0o755)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "no write permission in" in lines[0], proc.stderr
    assert (_snapshot(out), sorted(os.listdir(parent))) == before


def test_size_32_through_the_cli(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["generate", "--prompt", "a large red circle on the left", "--steps", "2", "--size", "32",
                 "--out", str(out)]) == 0
    assert capsys.readouterr().err == ""
    data = json.loads((out / "run.json").read_text())
    assert data["size"] == 32 and data["images"]["height"] == data["images"]["width"] == 32
    assert 0 <= data["fidelity"]["overall"] <= 1


# Boundaries of what RunConfig accepts (32 and the multiples of 8 up to 2048) and sizes around the model's
# native 64 px; 512 and up need minutes per step on a CPU (self-attention over (size/4)^2 latent tokens).
@pytest.mark.parametrize("size", [32, 40, 56, 64, 72, 96, 128, 256])
def test_accepted_sizes_run_on_the_default_model_with_a_fidelity_score(default_pipe_1step, size):
    from analysis.run import RunConfig, generate

    result = generate(default_pipe_1step, RunConfig(prompt="a large red circle on the left", steps=1, size=size),
                      measure_latency=False)
    assert result.image.shape == (1, size, size, 3)
    assert 0 <= result.fidelity["overall"] <= 1 and 0 <= result.fidelity["baseline"] <= 1


@pytest.fixture(scope="module")
def default_pipe_1step():
    from analysis.models import load_pipeline

    pipe = load_pipeline("default")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_size_validation_boundaries():
    from analysis.run import RunConfig

    accepted = [s for s in range(0, 2100) if _accepts(RunConfig, s)]
    assert accepted == list(range(32, 2049, 8))


def _accepts(cls, size) -> bool:
    try:
        cls(prompt=PROMPT, size=size)
        return True
    except ValueError:
        return False


@pytest.mark.parametrize("scheduler", ["dpm", "euler"])
def test_capture_with_each_scheduler_prints_no_warning(tmp_path, capsys, scheduler):
    out = tmp_path / "run"
    assert main(["generate", "--prompt", PROMPT, "--steps", "2", "--scheduler", scheduler, "--capture",
                 "--capture-budget-mb", "4", "--out", str(out)]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("name", ["dpm", "euler"])
def test_schedules_bit_identical_to_stock_without_warning_and_saved_under_stock_name(tmp_path, name):
    import warnings

    import torch
    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler

    from analysis.models import _DPMSolver, _Euler
    from analysis.toy.architecture import make_scheduler

    config = make_scheduler().config
    kwargs = {"algorithm_type": "dpmsolver++", "solver_order": 2} if name == "dpm" else {}
    ours_cls, stock_cls = (_DPMSolver, DPMSolverMultistepScheduler) if name == "dpm" else (_Euler, EulerDiscreteScheduler)
    for steps in (1, 2, 7, 30):
        ours, stock = ours_cls.from_config(config, **kwargs), stock_cls.from_config(config, **kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ours.set_timesteps(steps)
            warnings.simplefilter("ignore")
            stock.set_timesteps(steps)
        tensors = {k for k, v in vars(stock).items() if isinstance(v, torch.Tensor)}
        assert {"timesteps", "sigmas", "alphas_cumprod"} <= tensors
        for key in tensors:  # every tensor the scheduler keeps: plain, and equal to the stock one
            assert type(getattr(ours, key)) is torch.Tensor, key
            assert torch.equal(getattr(ours, key), getattr(stock, key)), key
    ours.save_config(tmp_path)
    assert json.loads((tmp_path / "scheduler_config.json").read_text())["_class_name"] == stock_cls.__name__


def test_long_prompt_one_warning_line(tmp_path, capsys):
    out = tmp_path / "run"
    long = ("a large red circle on the left " * 170)[:5000]
    assert main(["generate", "--prompt", long, "--steps", "1", "--out", str(out)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    assert re.fullmatch(r"warning: the prompt has \d+ tokens; the model reads only the first 32 \(start and end "
                        r"marks included\), the rest is ignored", err[0]), err
    data = json.loads((out / "run.json").read_text())
    assert len(data["tokens"][0]) == 32
    assert main(["generate", "--prompt", PROMPT, "--prompt", long, "--steps", "1", "--out", str(out)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: prompt 2 has ") and "first 32" in err[0], err


@pytest.mark.parametrize("exchange", [True, False])  # False: a filesystem without RENAME_EXCHANGE
def test_previous_run_swapped_out_with_and_without_atomic_exchange(tmp_path, capsys, monkeypatch, exchange):
    import analysis.run_folder

    _fake_run(monkeypatch, capsys)
    if not exchange:
        monkeypatch.setattr(analysis.run_folder, "_exchange", lambda a, b: False)
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text('{"previous": true}')
    (out / "old.png").write_bytes(b"old")
    assert main(["generate", "--prompt", PROMPT, "--out", str(out)]) == 0
    assert not (out / "old.png").exists() and {"accelerated.png", "baseline.png", "run.json"} <= set(os.listdir(out))
    assert json.loads((out / "run.json").read_text())["format"] == report.RUN_FORMAT
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
