"""DiffScope command line: python -m analysis {generate,train-default,...}."""
from __future__ import annotations

import argparse
import sys


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    args = parser.parse_args(argv)
    if args.command == "train-default":
        from analysis.toy.train import config_from_args, train

        try:
            cfg = config_from_args(args)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(train(cfg))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
