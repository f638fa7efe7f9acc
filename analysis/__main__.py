"""DiffScope command line: python -m analysis {generate,train-default,...}.

`generate` follows the contract in docs/cli.md (other tools rely on it): one request, run.json +
baseline.png + accelerated.png (+ signals.npz with --capture) in --out DIR. Any error is one line on
stderr starting with "error: ", exit code 2, and DIR is left as it was: everything is written to a
temporary folder beside DIR and renamed into place at the end.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

from analysis.catalog import SCHEDULERS


class UsageError(Exception):
    """A bad command line or request: reported as one 'error: ...' line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as one line (no usage block) and never exits by itself."""

    def error(self, message):  # noqa: D401 - argparse API
        raise UsageError(message)


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "unknown error"


def _add_train(sub):
    p = sub.add_parser("train-default", help="train the embedded shapes-world model from scratch")
    p.add_argument("--out-dir")
    p.add_argument("--work-dir")
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int)
    p.add_argument("--vae-steps", type=int)
    p.add_argument("--unet-steps", type=int)
    p.add_argument("--n-scenes", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--export-every", type=int)


def _add_generate(sub):
    p = sub.add_parser(
        "generate", help="run one request (baseline + accelerated) and write run.json and images",
        description="Run one text-to-image request at full compute and with the chosen techniques; write "
                    "DIR/run.json, DIR/baseline.png, DIR/accelerated.png (and DIR/signals.npz with --capture).")
    p.add_argument("--prompt", action="append", required=True, metavar="TEXT",
                   help="prompt text; repeat for several prompts (the images become a grid)")
    p.add_argument("--negative-prompt", default="", metavar="TEXT")
    p.add_argument("--seed", type=int, default=0, metavar="N")
    p.add_argument("--steps", type=int, default=None, metavar="N", help="denoising steps (default: RunConfig's, 30)")
    p.add_argument("--guidance", type=float, default=5.0, metavar="F")
    p.add_argument("--scheduler", choices=SCHEDULERS, default="ddim")
    p.add_argument("--size", type=int, default=None, metavar="PX", help="image side in pixels (default: native)")
    p.add_argument("--model", default="default", metavar="default|HUB_ID|DIR")
    p.add_argument("--accel", action="append", default=[], metavar="NAME:key=value,...",
                   help="a technique and its parameters, e.g. tgate:gate_step=10 or "
                        "fastdiff:key_steps=0+1+2+5 (list values joined by '+'); repeatable")
    p.add_argument("--capture", action="store_true",
                   help="attach the probes (attention maps, convergence, feature drift, token rank)")
    p.add_argument("--capture-budget-mb", type=float, default=None, metavar="F",
                   help="memory budget for captured attention maps (default: the probes' default)")
    p.add_argument("--repeats", type=int, default=1, metavar="N", help="timed repeats (median reported)")
    p.add_argument("--out", required=True, metavar="DIR")


def _quiet_libraries() -> None:
    """Library chatter on stderr would break the one-line error contract."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for mod in ("transformers", "diffusers"):
        if mod in sys.modules:
            try:
                sys.modules[mod].utils.logging.set_verbosity_error()
            except AttributeError:
                pass


def _no_loading_bars() -> None:
    """Loading-progress bars go to stderr too; the CLI prints its own one-line summary instead."""
    import diffusers.utils.logging
    import transformers.utils.logging

    for logging in (diffusers.utils.logging, transformers.utils.logging):
        logging.set_verbosity_error()
        logging.disable_progress_bar()


def _prepare_out(out: Path) -> Path:
    """A fresh temporary folder beside `out` (same filesystem, so the final rename is atomic)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes it private; the run folder gets ordinary permissions
        return tmp
    except OSError as err:
        raise UsageError(f"cannot write to {out}: {err.strerror or err}") from None


def _move_into_place(tmp: Path, out: Path) -> None:
    """Replace `out` by `tmp`: rename the old run aside first, so DIR is always either the old run or the
    new one, never a mixture."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rmdir(old)
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        if old is not None:
            os.rename(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _generate(args) -> int:
    import json

    _quiet_libraries()
    if args.capture_budget_mb is not None and not args.capture:
        raise UsageError("--capture-budget-mb needs --capture")
    if args.capture_budget_mb is not None and args.capture_budget_mb <= 0:
        raise UsageError(f"--capture-budget-mb must be positive, got {args.capture_budget_mb}")
    from analysis.accel import parse_accel

    try:
        accel = tuple(parse_accel(spec) for spec in args.accel)
    except (ValueError, TypeError) as err:
        raise UsageError(err) from None
    probes = ()
    if args.capture:
        from analysis.probes import default_probes

        try:
            probes = tuple(default_probes(args.capture_budget_mb) if args.capture_budget_mb is not None
                           else default_probes())
        except ValueError as err:
            raise UsageError(err) from None
    from analysis.run import RunConfig

    prompts = args.prompt
    try:
        optional = {"steps": args.steps} if args.steps is not None else {}
        config = RunConfig(prompt=prompts[0] if len(prompts) == 1 else tuple(prompts),
                           negative_prompt=args.negative_prompt, seed=args.seed, guidance=args.guidance,
                           scheduler=args.scheduler, size=args.size, accel=accel, probes=probes,
                           repeats=args.repeats, **optional)
    except (ValueError, TypeError) as err:
        raise UsageError(err) from None

    out = Path(args.out)
    tmp = _prepare_out(out)
    try:
        from analysis.models import ModelLoadError, load_pipeline
        from analysis.report import write_run
        from analysis.run import generate

        _no_loading_bars()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            try:
                pipe = load_pipeline(args.model, scheduler=args.scheduler)
            except (ModelLoadError, ValueError, OSError) as err:
                raise UsageError(err) from None
            pipe.set_progress_bar_config(disable=True)
            try:
                result = generate(pipe, config, measure_latency=True)
            except ValueError as err:
                raise UsageError(err) from None
            try:
                write_run(result, tmp)
                _move_into_place(tmp, out)
            except OSError as err:
                raise UsageError(f"cannot write to {out}: {err.strerror or err}") from None
        for w in caught:  # success: the warnings are worth seeing; on failure only the error line is
            print(f"warning: {_one_line(w.message)}", file=sys.stderr)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    summary = json.loads((out / "run.json").read_text())
    print(json.dumps({"out": str(out), **{k: summary[k] for k in (
        "baseline_latency_s", "latency_s", "speedup", "psnr_db", "ssim")}}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m analysis", description="DiffScope: look inside a diffusion pipeline.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_generate(sub)
    _add_train(sub)
    sub.add_parser("search-policy", help="PHAST: greedy search for an attention-map reuse policy "
                   "(options: python -m analysis search-policy --help)", add_help=False)
    sub.add_parser("bench", help="technique speed-ups, compute breakdown, quality at equal latency; "
                   "with --capture: probe overhead (options: python -m analysis bench [--capture] --help)",
                   add_help=False)
    return parser


# Subcommands with their own parser and error handling: name -> "module:function(argv) -> exit code".
PASSTHROUGH = {
    "search-policy": "analysis.policy_search:main",
    "bench": "analysis.eval.bench_cli:main",  # handles --capture itself (analysis/eval/capture.py)
    "sweep": "analysis.eval.sweep:main",
    "sensitivity": "analysis.eval.sensitivity:main",
}


def _passthrough(argv: list[str]):
    """Run argv if it names a PASSTHROUGH subcommand; None otherwise."""
    import importlib

    target = PASSTHROUGH.get(argv[0]) if argv else None
    if target is None:
        return None
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)(argv[1:])


def main(argv=None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 error: one 'error: ...' line on stderr)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    code = _passthrough(argv)
    if code is not None:
        return code
    parser = build_parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as done:  # --help / --version
            return int(done.code or 0) if not isinstance(done.code, str) else 2
        if args.command == "generate":
            return _generate(args)
        if args.command == "train-default":
            from analysis.toy.train import config_from_args, train

            try:
                cfg = config_from_args(args)
            except ValueError as err:
                raise UsageError(err) from None
            print(train(cfg))
            return 0
        raise UsageError(f"unknown command {args.command!r}")
    except UsageError as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
