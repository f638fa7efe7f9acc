"""Gradio building blocks of app.py: the techniques panel, the Inside tabs, the export."""
