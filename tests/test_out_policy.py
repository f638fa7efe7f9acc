"""One output-folder policy for every CLI command that writes (analysis.run_folder.check_out_dir): each command
refuses the same targets with one 'error:' line and exit code 2, before any work and without writing."""
from __future__ import annotations

import json
import os

import pytest

from analysis.__main__ import main
from analysis.run_folder import OutDirError, check_out_dir, check_out_file

# command -> (argv before the target, flag naming the target); every command fails fast on its target.
COMMANDS = {
    "sweep": (["sweep", "--model", "tiny", "--steps", "2", "--grid", "smoke"], "--out"),
    "sensitivity": (["sensitivity", "--model", "tiny", "--steps", "2"], "--out"),
    "train-default": (["train-default", "--work-dir", "work"], "--out-dir"),
    "train-default work": (["train-default", "--out-dir", "model"], "--work-dir"),
    "train-judge": (["train-judge", "--work-dir", "work"], "--out-dir"),
    "train-judge work": (["train-judge", "--out-dir", "judge"], "--work-dir"),
    "generate": (["generate", "--prompt", "a red circle", "--model", "tiny"], "--out"),
}


def _refused(capsys, argv, *needles) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), (code, err)
    for needle in needles:
        assert needle in err[0], err[0]
    return err[0]


def _tree(path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.fixture()
def here(tmp_path, monkeypatch):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    return tmp_path / "cwd"


@pytest.mark.parametrize("command", list(COMMANDS))
def test_the_root_and_the_current_folder_are_refused(command, here, capsys):
    argv, flag = COMMANDS[command]
    _refused(capsys, argv + [flag, "/"], "filesystem root")
    _refused(capsys, argv + [flag, "."], "current folder")
    _refused(capsys, argv + [flag, ".."], "current folder")
    assert _tree(here) == []


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_folder_that_is_not_a_previous_output_is_left_alone(command, here, capsys):
    argv, flag = COMMANDS[command]
    target = here / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("my notes")
    # a stray marker (e.g. meta.json written by something else) does not make it a previous output either
    for marker in ("meta.json", "sensitivity.json", "run.json", "training.json"):
        (target / marker).write_text("not json {")
    before = _tree(here)
    _refused(capsys, argv + [flag, "mine"], "non-empty folder", "refusing")
    assert _tree(here) == before and (target / "notes.txt").read_text() == "my notes"


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_file_and_a_path_under_a_file_are_refused(command, here, capsys):
    argv, flag = COMMANDS[command]
    (here / "f").write_text("x")
    _refused(capsys, argv + [flag, "f"], "not a directory")
    _refused(capsys, argv + [flag, "f/sub"], "is a file, not a folder")
    assert (here / "f").read_text() == "x" and _tree(here) == ["f"]


def test_search_policy_writes_only_a_new_file_or_a_previous_policy(here, capsys):
    argv = ["search-policy", "--model", "tiny", "--steps", "4", "--prompts", "1", "--out"]
    _refused(capsys, argv + ["/"], "filesystem root")
    (here / "README.md").write_text("# mine")
    _refused(capsys, argv + ["README.md"], "not a previous output", "refusing to overwrite")
    assert (here / "README.md").read_text() == "# mine"
    (here / "d").mkdir()
    _refused(capsys, argv + ["d"], "is a folder")


def test_empty_new_and_previous_folders_pass(tmp_path):
    assert check_out_dir(str(tmp_path / "new"), in_place=True) == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    check_out_dir(str(tmp_path / "empty"), "meta.json", ("model",), in_place=True)
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "meta.json").write_text(json.dumps({"model": "tiny", "steps": 2, "prompts": []}))
    (tmp_path / "sweep" / "rows").mkdir()
    check_out_dir(str(tmp_path / "sweep"), "meta.json", ("model", "steps", "prompts"), in_place=True)
    with pytest.raises(OutDirError, match="without a valid meta.json"):
        check_out_dir(str(tmp_path / "sweep"), "meta.json", ("model", "grid"), in_place=True)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "vae-pool-8192.npz").write_bytes(b"")  # a judge run stopped before its checkpoint
    check_out_dir(str(tmp_path / "work"), ("judge.pt", "vae-pool-*.npz"), in_place=True)
    (tmp_path / "policy.json").write_text(json.dumps({"format": 1, "policies": []}))
    assert check_out_file(str(tmp_path / "policy.json"), ("format", "policies")).name == "policy.json"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permissions")
def test_a_read_only_folder_is_refused_before_work(here, capsys):
    ro = here / "ro"
    ro.mkdir(mode=0o555)
    try:
        for argv, flag in COMMANDS.values():
            _refused(capsys, argv + [flag, "ro/out"], "no write permission")
    finally:
        ro.chmod(0o755)
