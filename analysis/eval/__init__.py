"""The evidence behind the trade-off plot: timing and profiling, per-technique cost functions, the job runner,
quality scorers (a registry keyed by model), sweeps and Pareto frontiers, the sensitivity (Lyapunov) analysis.
One concern per module; the CLI subcommands (`bench`, `sweep`, `sensitivity`) are wired in analysis/__main__.py.

- `timing`: clocks (thread CPU time on a 1-thread CPU run, synchronised wall clock on GPU), per-module
  forward timers, and `TimedAttnProcessor`, which times the techniques' own explicit attention path
  (`analysis.attention.attention_with_probs`) part by part;
- `profile`: `breakdown(pipe, config, steps, calls)`, where one generation and one UNet call spend their time
  (shares per component, per attention module, per transformer layer; bounds per technique);
- `cost`: counted work -> fraction of the pipeline -> ideal speed-up (`cost_model`, and `ideal_speedup(pipe,
  config, counters)` for the app, with a cached cheap profile). The cost functions themselves are registered
  by each technique beside its code (`Technique.cost`, analysis/accel/technique.py);
- `jobs`: `Job`, `make_jobs`, `run_jobs` (interleaved timed runs), `paired_speedup`, `speed` (noise floor);
- `equal_latency`: quality of each technique against step reduction at the same measured latency;
- `quality`: scorers by model (`scorers_for(model_name)`, `score_all`): PSNR/SSIM, LPIPS, prompt fidelity
  (default model), CLIP score (other models); unavailable learned metrics are reported, never faked;
- `capture`: the probes' overhead (`python -m analysis bench --capture`);
- `bench_cli`: `python -m analysis bench` (one JSON object on the last line; keys other tools read).
"""
