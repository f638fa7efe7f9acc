"""The evidence behind the trade-off plot: timing and profiling, per-technique cost functions, the job runner,
quality scorers (a registry keyed by model), sweeps and Pareto frontiers, the sensitivity (Lyapunov) analysis.
One concern per module; the CLI subcommands (`bench`, `sweep`, `sensitivity`) are wired in analysis/__main__.py.
"""
