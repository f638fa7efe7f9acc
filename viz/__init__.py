"""Pure figure functions: schema-shaped data (docs/signals.md) in, figures out. No torch.

`viz.plotly_figs`: interactive plotly figures for the app. `viz.export`: the same figures in matplotlib,
for slides and papers (PNG/PDF).
"""
