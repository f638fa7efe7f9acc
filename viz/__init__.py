"""Pure figure functions: schema-shaped data (docs/signals.md) in, figures out. No torch.

Interactive plotly figures for the app: `viz.attention_figs` (cross- and self-attention maps), `viz.signal_figs`
(convergence, feature drift, token rank), `viz.plotly_figs` (counters, the per-step strip), with the shared style
in `viz.plotly_base`. `viz.export`: the same figures in matplotlib, for slides and papers (PNG/PDF). The data
shaping behind both: `viz._attention_data`, `viz._signal_data`, `viz._data`.
"""
