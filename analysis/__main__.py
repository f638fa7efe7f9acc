"""DiffScope command line: python -m analysis {generate,train-default,...}.

`generate` follows the contract in docs/cli.md (other tools rely on it): one request, run.json +
baseline.png + accelerated.png (+ signals.npz with --capture) in --out DIR. Any error is one line on
stderr starting with "error: ", exit code 2, and DIR is left as it was: DIR is resolved and checked
before any work, everything is written to a temporary folder beside it and swapped into place at the end
(`analysis.run_folder`). SIGINT and SIGTERM end the run with one line, "interrupted; nothing written",
exit code 128 + the signal's number (130, 143), the temporary folder removed.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import warnings

from analysis.catalog import ATTENTION_BACKENDS, SCHEDULERS


class UsageError(Exception):
    """A bad command line or request: reported as one 'error: ...' line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as one line (no usage block) and never exits by itself."""

    def error(self, message):  # noqa: D401 - argparse API
        raise UsageError(message)


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "unknown error"


def _add_training_flags(p) -> None:
    """Flags both training commands share (each maps onto its recipe dataclass's field of that name)."""
    p.add_argument("--out-dir")
    p.add_argument("--work-dir")
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--checkpoint-every", type=int)


def _add_train(sub):
    p = sub.add_parser("train-default", help="train the embedded shapes-world model from scratch")
    _add_training_flags(p)
    p.add_argument("--vae-steps", type=int)
    p.add_argument("--unet-steps", type=int)
    p.add_argument("--n-scenes", type=int)
    p.add_argument("--export-every", type=int)
    p.add_argument("--text-encoder", choices=["joint", "frozen", "embeddings", "judge"],
                   help="text side of the recipe (default joint; see analysis/toy/train.py TEXT_ENCODERS)")
    p.add_argument("--text-encoder-from", metavar="CLIP_DIR",
                   help="with --text-encoder judge: whose CLIP text tower, frozen (default assets/shapes-clip)")
    p.add_argument("--vae-from", metavar="MODEL_DIR",
                   help="reuse this model's autoencoder instead of training one (text-side variants)")
    p.add_argument("--world", choices=["flat", "detail", "tiles"],
                   help="the scenes trained on (default flat; detail: grain, shading, up to three objects; "
                        "tiles: shading, up to three objects, a 4 px tiled texture; analysis.toy.scenes.WORLDS)")


def _add_train_judge(sub):
    p = sub.add_parser("train-judge", help="train shapes-CLIP, the shapes world's judge (CLIP score, FD, KID)")
    _add_training_flags(p)
    p.add_argument("--steps", type=int)
    p.add_argument("--negatives", type=int, help="hard-negative captions per image (default 2)")
    p.add_argument("--vae-share", type=float, help="share of each batch passed through the autoencoder (0.5)")
    p.add_argument("--vae-pool", type=int, help="autoencoder round-trip renders built once (8192)")
    p.add_argument("--vae-from", metavar="MODEL_DIR", help="whose autoencoder (default assets/shapes-v1)")
    p.add_argument("--tokenizer-from", metavar="MODEL_DIR", help="whose tokenizer (default assets/shapes-v1)")
    p.add_argument("--stop-after", type=int, metavar="N",
                   help="checkpoint after N steps and stop (the next run resumes exactly); not part of the recipe")


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
    p.add_argument("--attention", choices=ATTENTION_BACKENDS, default="fused",
                   help="attention backend of every run: fused (the pipeline's SDPA, default) or explicit "
                        "(softmax(QK^T)V materialised, as before fused kernels: the papers' baselines)")
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


def _long_prompt_warning(pipe, prompts: list[str]) -> str | None:
    """One line naming the prompts the text encoder will cut to its token limit, or None."""
    tokenizer = getattr(pipe, "tokenizer", None)
    if tokenizer is None:
        return None
    limit = tokenizer.model_max_length
    counts = [len(tokenizer(p, truncation=False).input_ids) for p in prompts]
    long = [i for i, n in enumerate(counts, 1) if n > limit]
    if not long:
        return None
    which = (f"the prompt has {counts[0]} tokens" if len(prompts) == 1
             else f"prompt{'s' if len(long) > 1 else ''} {', '.join(map(str, long))} "
                  f"{'have' if len(long) > 1 else 'has'} {', '.join(str(counts[i - 1]) for i in long)} tokens")
    return f"{which}; the model reads only the first {limit} (start and end marks included), the rest is ignored"


def _require_text(flag: str, texts: list[str]) -> None:
    """Bytes that are not UTF-8 reach Python as lone surrogates (PEP 383); no tokenizer can read them."""
    for text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            byte = ord(text[err.start]) - 0xDC00 if 0xDC80 <= ord(text[err.start]) <= 0xDCFF else None
            where = f" (byte 0x{byte:02x} at character {err.start})" if byte is not None else ""
            raise UsageError(f"{flag} is not valid UTF-8 text{where}") from None


def _generate(args) -> int:
    _quiet_libraries()
    if args.capture_budget_mb is not None and not args.capture:
        raise UsageError("--capture-budget-mb needs --capture")
    if args.capture_budget_mb is not None and not 0 < args.capture_budget_mb < 1e9:
        raise UsageError(f"--capture-budget-mb must be a positive number of MB below 1e9, got {args.capture_budget_mb}")
    for flag, texts in (("--prompt", args.prompt), ("--negative-prompt", [args.negative_prompt])):
        _require_text(flag, texts)
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
                           repeats=args.repeats, attention=args.attention, **optional)
    except (ValueError, TypeError) as err:
        raise UsageError(err) from None

    from analysis.run_folder import OutDirError, RunFolder

    try:
        folder = RunFolder(args.out)  # resolved and checked before any work
        with folder:
            summary = _run_into(folder, args, config)
            # Still inside: signals stay held after the commit, so a late Ctrl-C cannot contradict it.
            print(json.dumps({"out": str(folder.target), **summary}))
    except OutDirError as err:
        raise UsageError(err) from None
    return 0


def _run_into(folder, args, config) -> dict:
    """Load, generate, write into folder.tmp and swap it into place; returns the stdout summary."""
    from analysis.models import ModelLoadError, load_pipeline
    from analysis.report import run_json, write_run
    from analysis.run import generate

    _no_loading_bars()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            pipe = load_pipeline(args.model, scheduler=args.scheduler)
        except (ModelLoadError, ValueError, OSError) as err:
            raise UsageError(err) from None
        _check_size(pipe, config)
        # A bar per generation where someone watches (it shows where Ctrl-C lands); none in logs and pipes.
        pipe.set_progress_bar_config(disable=not sys.stderr.isatty(), leave=False)
        notes = [_long_prompt_warning(pipe, list(config.prompts))]
        try:
            result = generate(pipe, config, measure_latency=True)
        except ValueError as err:
            raise UsageError(err) from None
        try:
            write_run(result, folder.tmp)
        except OSError as err:
            raise UsageError(f"cannot write to {folder.shown}: {err.strerror or err}") from None
        folder.commit()
    # Success: the warnings are worth seeing; on failure only the error line is.
    for line in [n for n in notes if n] + [_one_line(w.message) for w in caught]:
        print(f"warning: {line}", file=sys.stderr)
    data = run_json(result)
    return {k: data[k] for k in ("baseline_latency_s", "latency_s", "speedup", "psnr_db", "ssim")}


def _check_train_folders(cfg) -> None:
    """train-default writes a model into --out-dir and resumable state into --work-dir: the output policy of
    every writing command (analysis.run_folder), each folder either new, empty or a previous one."""
    from analysis.run_folder import check_out_dir

    check_out_dir(cfg.out_dir, "model_index.json", flag="--out-dir", kind="model", in_place=True, error=UsageError)
    check_out_dir(cfg.work_dir, "tokenizer", flag="--work-dir", kind="training work folder", in_place=True,
                  error=UsageError)


def _check_size(pipe, config) -> None:
    """Refuse a size above the machine's ceiling; announce a long run (with its estimate) before it starts."""
    from analysis.size_guard import SLOW_S, check_size, estimate, native_size

    if config.size is None:  # the model's native size
        return
    try:
        check_size(config.size, native_size(pipe))
    except ValueError as err:
        raise UsageError(err) from None
    pipe.set_progress_bar_config(disable=True)
    guess = estimate(pipe, config.size, config.steps, 2 * (config.repeats + 1), config.guidance)
    if guess is not None and guess.seconds > SLOW_S:
        print(f"warning: {guess.note()}", file=sys.stderr, flush=True)


def _check_judge_folders(cfg) -> None:
    """train-judge: the same policy for its model folder and its resumable work folder (which holds the
    autoencoder pool first, then the checkpoint and the loss log)."""
    from analysis.run_folder import check_out_dir

    check_out_dir(cfg.out_dir, "training.json", ("recipe",), flag="--out-dir", kind="judge model", in_place=True,
                  error=UsageError)
    check_out_dir(cfg.work_dir, ("judge.pt", "judge_log.csv", "vae-pool-*.npz"), flag="--work-dir",
                  kind="judge work folder", in_place=True, error=UsageError)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m analysis", description="DiffScope: look inside a diffusion pipeline.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_generate(sub)
    _add_train(sub)
    _add_train_judge(sub)
    sub.add_parser("search-policy", help="PHAST: greedy search for an attention-map reuse policy "
                   "(options: python -m analysis search-policy --help)", add_help=False)
    sub.add_parser("sweep", help="every setting of a grid on every prompt and seed against full compute; --merge "
                   "for tables, frontiers, report and figures (options: python -m analysis sweep --help)",
                   add_help=False)
    sub.add_parser("sensitivity", help="per-step attention perturbation: which steps can reuse maps "
                   "(options: python -m analysis sensitivity --help)", add_help=False)
    sub.add_parser("observations", help="each paper's key observation on the loaded model, over many prompts "
                   "and seeds, with bands (options: python -m analysis observations --help)", add_help=False)
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
    "observations": "analysis.eval.observations:main",
}


def _passthrough(argv: list[str]):
    """Run argv if it names a PASSTHROUGH subcommand; None otherwise."""
    import importlib

    target = PASSTHROUGH.get(argv[0]) if argv else None
    if target is None:
        return None
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)(argv[1:])


def _generate_interruptible(args) -> int:
    """`_generate`, with SIGINT and SIGTERM ending it as one line and exit code 128 + the signal number."""
    from analysis.run_folder import Interrupted, interrupts_raise

    try:
        with interrupts_raise():
            return _generate(args)
    except KeyboardInterrupt as stop:  # Interrupted, or a SIGINT before the handler was in place
        clear = "\r\x1b[K" if sys.stderr.isatty() else ""  # over a progress bar, not after it
        print(f"{clear}interrupted; nothing written", file=sys.stderr)
        return 128 + (stop.signum if isinstance(stop, Interrupted) else signal.SIGINT)


def main(argv=None) -> int:
    """Run the CLI; returns the exit code: 0 ok, 2 error (one 'error: ...' line on stderr); generate
    returns 130 after SIGINT and 143 after SIGTERM, with one 'interrupted; nothing written' line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _quiet_libraries()  # every subcommand: library notices on stderr would break the one-line error contract
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
            return _generate_interruptible(args)
        if args.command == "train-default":
            from analysis.toy.train import config_from_args, train

            try:
                cfg = config_from_args(args)
            except ValueError as err:
                raise UsageError(err) from None
            _check_train_folders(cfg)
            print(train(cfg))
            return 0
        if args.command == "train-judge":
            from analysis.toy.judge import config_from_args as judge_config, train_judge

            try:
                cfg = judge_config(args)
            except ValueError as err:
                raise UsageError(err) from None
            _check_judge_folders(cfg)
            done = train_judge(cfg, stop_after=args.stop_after)
            print(done if done is not None else f"stopped after {args.stop_after} steps; run again to resume")
            return 0
        raise UsageError(f"unknown command {args.command!r}")
    except UsageError as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
