"""Code shape check: files over 400 lines and functions over 80 lines (issue 18's target).

    python -m benchmarks.code_shape [--paths analysis ui viz app.py] [--max-file 400] [--max-function 80]

Walks the given folders (and files) for `*.py`, prints every file longer than `--max-file` lines and every
function or method (nested ones included) whose `def` line to the last line of its body spans more than
`--max-function` lines (decorators not counted). Exits 1 when anything is over, 0 otherwise. Pure stdlib
(ast); reads the files, imports nothing.
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

DEFAULT_PATHS = ("analysis", "ui", "viz", "app.py")


def python_files(paths: list[str]) -> list[Path]:
    """Every .py file named or under a named folder, sorted; names that do not exist are skipped."""
    files: set[Path] = set()
    for p in map(Path, paths):
        if p.is_dir():
            files.update(f for f in p.rglob("*.py") if "__pycache__" not in f.parts)
        elif p.suffix == ".py" and p.is_file():
            files.add(p)
    return sorted(files)


def long_functions(source: str, limit: int) -> list[tuple[str, int, int]]:
    """(qualified name, def line, length in lines) of every function longer than `limit` lines."""
    out: list[tuple[str, int, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    length = child.end_lineno - child.lineno + 1
                    if length > limit:
                        out.append((name, child.lineno, length))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--paths", nargs="+", default=list(DEFAULT_PATHS), help="folders and .py files to check")
    ap.add_argument("--max-file", type=int, default=400, help="most lines a file may have")
    ap.add_argument("--max-function", type=int, default=80, help="most lines a function may have")
    args = ap.parse_args(argv)
    over = 0
    for f in python_files(args.paths):
        text = f.read_text(encoding="utf-8")
        n_lines = len(text.splitlines())
        if n_lines > args.max_file:
            print(f"file {f}: {n_lines} lines")
            over += 1
        for name, line, length in long_functions(text, args.max_function):
            print(f"function {f}:{line} {name}: {length} lines")
            over += 1
    print(f"{over} over the limits (files > {args.max_file} lines, functions > {args.max_function} lines)")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
