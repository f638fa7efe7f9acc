"""Bad and unusual inputs through `python -m analysis generate`, as a new user would try them (issue 11).

Each case runs the CLI in a fresh scratch folder (relative --out paths land there) and records the exit
code, the number of stderr lines, whether a traceback was printed, and stray folders left behind
(`.NAME.tmp-*` / `.NAME.old-*`, or a target created or changed by a failed run). Expected:
- bad input: exit 2, exactly one stderr line starting with "error: ", the target as it was;
- a run that is written: exit 0, run.json in place, nothing on stderr (one "warning: " line for the
  prompt longer than the model's token limit);
- an interrupt (SIGINT / SIGTERM after the first denoising step): exit 130 / 143, one stderr line
  "interrupted; nothing written", the target as it was;
- never a traceback, never a stray folder.

    python -m benchmarks.cli_cases [--only SUBSTRING] [--json FILE]

prints one row per case and the counts; exit code 0 when every case met its expectation. Cases that need a
read-only folder drop the file-permission capabilities when run as root (`setpriv`), as issue 11 did.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a large red circle on the left"
STEPS = "2"
# As root, permission bits do not bind; this drops the capabilities that override them (issue 11, item 2).
UNPRIVILEGED = (["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]
                if os.geteuid() == 0 and shutil.which("setpriv") else [])


@dataclass
class Case:
    name: str
    args: list[str]  # after "generate"; "--prompt P --steps 2" is added unless the case says full=True
    expect: str  # "bad" | "ok" | "SIGINT" | "SIGTERM"
    setup: Callable[[Path], None] | None = None
    full: bool = False
    unprivileged: bool = False
    out: str = "out/run"  # the target to check (relative to the scratch folder); "" = none
    warns: bool = False  # a written run that should say one "warning: " line


def _mkfile(rel: str, text: str = "x"):
    def setup(d: Path):
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(text)
    return setup


def _mkdirs(*rels: str, mode: int | None = None, run: bool = False):
    def setup(d: Path):
        for rel in rels:
            (d / rel).mkdir(parents=True, exist_ok=True)
            if run:
                (d / rel / "run.json").write_text("{}")
        if mode is not None:
            os.chmod(d / rels[-1], mode)
    return setup


def _chain(*setups):
    def setup(d: Path):
        for s in setups:
            s(d)
    return setup


def _symlink(link: str, to: str):
    def setup(d: Path):
        (d / link).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(to, d / link)
    return setup


def _stale_tmp(d: Path):
    (d / "out").mkdir()
    (d / "out" / ".run.tmp-dead1234").mkdir()
    (d / "out" / ".run.tmp-dead1234" / "baseline.png").write_bytes(b"half")


def cases() -> list[Case]:
    G = ["--prompt", PROMPT, "--steps", STEPS]
    c = [
        # --- the command line itself
        Case("no arguments", [], "bad", full=True, out=""),
        Case("unknown subcommand", ["frobnicate"], "bad", full=True, out=""),
        Case("generate, no --prompt", ["generate", "--out", "out/run"], "bad", full=True),
        Case("generate, no --out", ["generate", "--prompt", PROMPT], "bad", full=True),
        Case("unknown flag", ["--bogus"], "bad"),
        Case("--negative-prompt without value", ["--negative-prompt"], "bad"),
        Case("empty prompt", ["generate", "--prompt", "", "--out", "out/run"], "bad", full=True),
        Case("blank prompt", ["generate", "--prompt", "   ", "--out", "out/run"], "bad", full=True),
        Case("--steps abc", ["--steps", "abc"], "bad"),
        Case("--steps 0", ["--steps", "0"], "bad"),
        Case("--steps 1001", ["--steps", "1001"], "bad"),
        Case("--seed -1", ["--seed", "-1"], "bad"),
        Case("--seed 2^63", ["--seed", str(2**63)], "bad"),
        Case("--seed 2^64", ["--seed", str(2**64)], "bad"),
        Case("--seed 1.5", ["--seed", "1.5"], "bad"),
        Case("--guidance -1", ["--guidance", "-1"], "bad"),
        Case("--guidance 51", ["--guidance", "51"], "bad"),
        Case("--guidance nan", ["--guidance", "nan"], "bad"),
        Case("--guidance inf", ["--guidance", "inf"], "bad"),
        Case("--scheduler pndm", ["--scheduler", "pndm"], "bad"),
        Case("--size 33", ["--size", "33"], "bad"),
        Case("--size 24", ["--size", "24"], "bad"),
        Case("--size 2056", ["--size", "2056"], "bad"),
        Case("--size 0", ["--size", "0"], "bad"),
        Case("--size -64", ["--size", "-64"], "bad"),
        Case("--repeats 0", ["--repeats", "0"], "bad"),
        Case("--repeats x", ["--repeats", "x"], "bad"),
        Case("--model owner/missing", ["--model", "no/such/model"], "bad"),
        Case("--model bare name", ["--model", "nonsense"], "bad"),
        Case("--model folder that is no pipeline", ["--model", "notamodel"], "bad", setup=_mkdirs("notamodel")),
        Case("--accel unknown technique", ["--accel", "warp"], "bad"),
        Case("--accel bad value", ["--accel", "tgate:gate_step=x"], "bad"),
        Case("--accel unknown parameter", ["--accel", "tgate:nope=1"], "bad"),
        Case("--accel out-of-range value", ["--accel", "tgate:gate_step=0"], "bad"),
        Case("--accel tgate, default gate past the last step", ["--accel", "tgate"], "ok"),
        Case("--accel twice the same", ["--accel", "tgate:gate_step=1", "--accel", "tgate:gate_step=1"], "bad"),
        Case("--accel empty value", ["--accel", "tgate:gate_step="], "bad"),
        Case("--accel ':'", ["--accel", ":"], "bad"),
        Case("--capture-budget-mb without --capture", ["--capture-budget-mb", "5"], "bad"),
        Case("--capture-budget-mb 0", ["--capture", "--capture-budget-mb", "0"], "bad"),
        Case("--capture-budget-mb -1", ["--capture", "--capture-budget-mb", "-1"], "bad"),
        # --- the output folder
        Case("--out is a file", [], "bad", setup=_mkfile("out/run")),
        Case("--out under a file", ["--out", "out/f/sub"], "bad", setup=_mkfile("out/f"), out="out/f"),
        Case("--out read-only existing run", [], "bad", setup=_mkdirs("out/run", mode=0o555, run=True),
             unprivileged=True),
        Case("--out in a read-only parent", [], "bad", setup=_mkdirs("out", mode=0o555), unprivileged=True),
        Case("--out run with a read-only sub-folder", [],
             "bad", setup=_chain(_mkdirs("out/run", run=True), _mkdirs("out/run/keep", mode=0o555)),
             unprivileged=True),
        Case("--out .", ["--out", "."], "bad", out=""),
        Case("--out /", ["--out", "/"], "bad", out=""),
        Case("--out ''", ["--out", ""], "bad", out=""),
        Case("--out folder that is not a run", [], "bad", setup=_mkfile("out/run/notes.txt")),
        Case("--out out/d/sub/..", ["--out", "out/d/sub/.."], "bad", setup=_mkdirs("out/d/sub"), out="out/d"),
        Case("--out name of 300 characters", ["--out", "out/" + "n" * 300], "bad", out=""),
        Case("--out out/new/.. (resolves to out)", ["--out", "out/new/.."], "ok", out="out"),
        Case("--out symlink to an empty folder", ["--out", "link"], "ok",
             setup=_chain(_mkdirs("real"), _symlink("link", "real")), out="real"),
        Case("--out previous run", [], "ok", setup=_mkdirs("out/run", run=True)),
        Case("--out with a stale temp folder beside", [], "ok", setup=_stale_tmp),
        # --- unusual but valid requests
        Case("--size 32", ["--size", "32"], "ok"),
        Case("--size 40", ["--size", "40"], "ok"),
        Case("--size 256", ["--size", "256", "--steps", "1"], "ok"),
        Case("5000-character prompt", ["generate", "--prompt", ("a large red circle on the left " * 170)[:5000],
                                       "--steps", STEPS, "--out", "out/run"], "ok", full=True, warns=True),
        Case("unicode prompt", ["generate", "--prompt", "un cercle rouge \u2603 \u00e0 gauche", "--steps", STEPS,
                                "--out", "out/run"], "ok", full=True),
        Case("three prompts", ["--prompt", "a blue square at the top", "--prompt", "a small green triangle"], "ok"),
        Case("--scheduler dpm --capture", ["--scheduler", "dpm", "--capture"], "ok"),
        Case("--scheduler euler --capture", ["--scheduler", "euler", "--capture"], "ok"),
        Case("--seed 2^63-1, --guidance 0", ["--seed", str(2**63 - 1), "--guidance", "0"], "ok"),
        # --- interrupts after the first denoising step
        # 500 steps: the run is still going when the signal lands, however fast the machine.
        Case("SIGINT after the first step", ["--steps", "500"], "SIGINT", setup=_mkdirs("out/run", run=True)),
        Case("SIGTERM after the first step", ["--steps", "500"], "SIGTERM"),
    ]
    for case in c:
        if not case.full:
            case.args = ["generate", *G, *case.args]
            if "--out" not in case.args:
                case.args += ["--out", "out/run"]
    return c


def _snapshot(path: Path):
    """What the target holds: None if absent, else {relative path: (size, mtime_ns)}."""
    if not os.path.lexists(path):
        return None
    if not path.is_dir():
        return {"": path.stat().st_size}
    return {str(p.relative_to(path)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in path.rglob("*")}


def _strays(d: Path) -> list[str]:
    found = []
    for root, dirs, files in os.walk(d):
        for n in dirs + files:
            if ".tmp-" in n or ".old-" in n:
                found.append(os.path.relpath(os.path.join(root, n), d))
    return sorted(found)


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), GRADIO_ANALYTICS_ENABLED="False")


# tqdm's "  3%|##   | 1/30 [" (it redraws at most every 0.1 s, so the first count shown may be above 1).
FINISHED_STEP = re.compile(rb"\b[1-9]\d*/\d+ \[")


def _run_interrupted(cmd: list[str], cwd: Path, signum: int, timeout: float = 600):
    """Run cmd with stderr on a pseudo-terminal (so the CLI shows its progress bar), send `signum` once
    the bar shows a first completed step, and return (exit code, stderr text without the bar)."""
    master, slave = pty.openpty()
    # A new pseudo-terminal is 0 columns wide, and tqdm draws nothing in 0 columns.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))
    proc = subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    seen, deadline, sent = b"", time.monotonic() + timeout, False
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
            if not sent and FINISHED_STEP.search(seen):
                proc.send_signal(signum)
                sent = True
        elif proc.poll() is not None:
            break
    if not sent:
        proc.kill()
    code = proc.wait(timeout=60)
    proc.stdout.close()
    os.close(master)
    # The bar redraws with "\r"; what is left on each line after the last "\r" (and erase-line) is the text.
    text = seen.decode(errors="replace").replace("\x1b[K", "").replace("\x1b[A", "").replace("\r\n", "\n")
    lines = [line.split("\r")[-1].strip() for line in text.split("\n")]
    return code, "\n".join(line for line in lines if line), sent


def run_case(case: Case) -> dict:
    with tempfile.TemporaryDirectory(prefix="cli-case-") as tmp:
        d = Path(tmp)
        if case.setup:
            case.setup(d)
        target = d / case.out if case.out else None
        before = _snapshot(target) if target else None
        cmd = [*(UNPRIVILEGED if case.unprivileged else []), sys.executable, "-m", "analysis", *case.args]
        start = time.monotonic()
        sent = None
        if case.expect in ("SIGINT", "SIGTERM"):
            code, stderr, sent = _run_interrupted(cmd, d, getattr(signal, case.expect))
        else:
            proc = subprocess.run(cmd, cwd=d, env=_env(), capture_output=True, text=True, timeout=1800)
            code, stderr = proc.returncode, proc.stderr
        seconds = time.monotonic() - start
        lines = stderr.splitlines()
        after = _snapshot(target) if target else None
        written = target is not None and target.is_dir() and (target / "run.json").is_file()
        strays = _strays(d)
        if case.expect == "bad":
            met = code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and after == before
        elif case.expect == "ok":
            met = code == 0 and written and len(lines) == int(case.warns) and all(ln.startswith("warning: ")
                                                                                for ln in lines)
        else:
            want = 128 + getattr(signal, case.expect)
            met = (code == want and lines == ["interrupted; nothing written"] and after == before and bool(sent))
        traceback = "Traceback" in stderr
        met = met and not traceback and not strays
        for root, dirs, _ in os.walk(d):  # let TemporaryDirectory remove read-only folders
            for n in dirs:
                os.chmod(os.path.join(root, n), 0o755)
        return {"case": case.name, "expect": case.expect, "exit": code, "stderr_lines": len(lines),
                "traceback": traceback, "strays": strays, "target_unchanged": after == before,
                "written": written, "met": met, "seconds": round(seconds, 1),
                "stderr": lines[:3]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run the cases whose name contains this")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args(argv)
    rows = []
    selected = [c for c in cases() if args.only in c.name]
    for i, case in enumerate(selected, 1):
        row = run_case(case)
        rows.append(row)
        mark = "ok  " if row["met"] else "FAIL"
        print(f"{mark} {i:2d}/{len(selected)} {case.name:45s} exit={row['exit']:<4} stderr_lines={row['stderr_lines']} "
              f"traceback={int(row['traceback'])} strays={len(row['strays'])} {row['seconds']:.0f}s "
              f"| {row['stderr'][0][:110] if row['stderr'] else ''}", flush=True)
    counts = {
        "cases": len(rows),
        "met": sum(r["met"] for r in rows),
        "bad_input_exit_2": sum(r["expect"] == "bad" and r["exit"] == 2 for r in rows),
        "bad_input": sum(r["expect"] == "bad" for r in rows),
        "written_exit_0": sum(r["expect"] == "ok" and r["exit"] == 0 and r["written"] for r in rows),
        "written": sum(r["expect"] == "ok" for r in rows),
        "interrupt_exit_128+sig": sum(r["expect"] in ("SIGINT", "SIGTERM") and r["met"] for r in rows),
        "interrupts": sum(r["expect"] in ("SIGINT", "SIGTERM") for r in rows),
        "failures_one_stderr_line": sum(r["expect"] != "ok" and r["stderr_lines"] == 1 for r in rows),
        "exit_0_without_run": sum(r["exit"] == 0 and not r["written"] for r in rows),
        "tracebacks": sum(r["traceback"] for r in rows),
        "stray_folders": sum(len(r["strays"]) for r in rows),
    }
    print(json.dumps(counts))
    if args.json:
        Path(args.json).write_text(json.dumps({"counts": counts, "rows": rows}, indent=1) + "\n")
    return 0 if counts["met"] == counts["cases"] else 1


if __name__ == "__main__":
    sys.exit(main())
