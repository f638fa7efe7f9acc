"""The house style of the app's plotly figures and the helpers every plotly figure module shares: the layout
(font, margins, white template), a blank figure carrying a message, whole-number step ticks, step titles with
their timestep, and an image as an inline PNG. No torch.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go

FONT = dict(family="Inter, IBM Plex Sans, Helvetica, Arial, sans-serif", size=12)
LAYOUT = dict(template="plotly_white", font=FONT, margin=dict(l=60, r=30, t=70, b=50))


def empty_figure(message: str, height: int = 300) -> go.Figure:
    """A blank figure carrying a message (no run yet, nothing captured)."""
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font=dict(size=14, color="#666"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(**LAYOUT, height=height)
    return fig


def int_ticks(n: int) -> dict:
    """Whole-number ticks for a step axis (plotly would otherwise show 1.5, 2.5 on short runs)."""
    return dict(tick0=0, dtick=1) if n <= 25 else dict(tickformat="d")


def step_title(step: int, timesteps: Sequence[float] | None) -> str:
    """'step 3 (t=801)', or 'step 3' when the timesteps are not known."""
    if timesteps is not None and 0 <= step < len(timesteps):
        return f"step {step} (t={timesteps[step]:g})"
    return f"step {step}"


def png_data_uri(img: np.ndarray) -> str:
    """The image as an inline PNG (a fraction of the size of a JSON pixel array)."""
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(img, dtype=np.uint8)[..., :3]).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
