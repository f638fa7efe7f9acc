"""`python -m analysis generate` under SIGINT / SIGTERM / SIGKILL (issue 11): one line, exit 128 + signal,
no temporary folder left, the previous run untouched; a later run removes temporary folders of dead runs.

The CLI runs with stderr on a pseudo-terminal, so it draws its progress bar; the signal goes out once the
bar shows the first finished denoising step (benchmarks/cli_cases.py `_run_interrupted`)."""
from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.cli_cases import _env, _run_interrupted, _snapshot

PROMPT = "a red circle on the left"


def _cli(out: Path, steps: int = 500) -> list[str]:
    return [sys.executable, "-m", "analysis", "generate", "--prompt", PROMPT, "--steps", str(steps), "--out", str(out)]


def _temp_folders(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_after_first_step_one_line_exit_code_previous_run_kept(tmp_path, signum):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text('{"previous": true}\n')
    before = _snapshot(out)
    code, stderr, sent = _run_interrupted(_cli(out), tmp_path, signum, timeout=300)
    assert sent, "the progress bar never showed a finished step"
    assert code == 128 + signum
    assert stderr.splitlines() == ["interrupted; nothing written"], stderr
    assert "Traceback" not in stderr
    assert _snapshot(out) == before
    assert _temp_folders(tmp_path) == []


def test_later_run_removes_temp_folders_of_dead_runs_only(tmp_path):
    """A SIGKILLed run cannot clean up; the next run into the same target removes its temporary folder,
    but not one whose writer is alive (it holds a lock on it), nor another target's."""
    out = tmp_path / "run"
    proc = subprocess.Popen(_cli(out, steps=500), cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300  # its temporary folder appears before the model loads
        while not _temp_folders(tmp_path) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        dead = _temp_folders(tmp_path)
        assert len(dead) == 1 and dead[0].startswith(".run.tmp-")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    assert _temp_folders(tmp_path) == dead  # SIGKILL: nothing could clean up
    alive = tmp_path / ".run.tmp-alive"
    alive.mkdir()
    fd = os.open(alive, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a running writer holds it
    other = tmp_path / ".other.tmp-dead"
    other.mkdir()
    try:
        proc = subprocess.run(_cli(out, steps=2), cwd=tmp_path, env=_env(), capture_output=True, text=True,
                              timeout=600)
    finally:
        os.close(fd)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert json.loads(proc.stdout.splitlines()[-1])["out"] == str(out)
    assert (out / "run.json").is_file()
    assert _temp_folders(tmp_path) == [".other.tmp-dead", ".run.tmp-alive"]
