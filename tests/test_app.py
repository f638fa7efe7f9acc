"""The Gradio app, driven through gradio_client against a launched server (Gradio's own test pattern)."""
from __future__ import annotations

import json
import os
import zipfile

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from PIL import Image  # noqa: E402

PROMPT = "a large red circle on the left"
# prompt, negative, seed, steps, guidance, scheduler, normalisation, overlay, alpha, special, conv log, drift log
GEN_ARGS = [PROMPT, "", 3, 3, 5.0, "ddim", "per-token", True, 0.55, False, True, False]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    os.environ["GRADIO_TEMP_DIR"] = str(tmp_path_factory.mktemp("gradio"))
    import app
    from analysis.models import random_pipeline

    pipe = random_pipeline("toy")
    pipe.diffscope_name = "default"  # the toy architecture and tokenizer: unknown-word warnings and fidelity apply
    demo = app.build_demo(pipe)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    c = Client(url, verbose=False)
    yield c
    c.close()
    demo.close()


def _plot(value) -> dict:
    assert value["type"] == "plotly", value
    fig = json.loads(value["plot"])
    assert fig["layout"]["height"] > 0
    return fig


def test_endpoints_are_named(client):
    api = client.view_api(print_info=False, return_format="dict")
    assert {"/generate", "/compare", "/tokens", "/export", "/render_step"} <= set(api["named_endpoints"])


def test_generate_returns_image_and_figures_then_rerenders_from_state(client):
    image, attn, conv, drift, rank, rank_summary, step, layer, status = client.predict(*GEN_ARGS,
                                                                                       api_name="/generate")
    img = np.asarray(Image.open(image))
    assert img.shape[:2] == (64, 64)
    attn_fig = _plot(attn)
    titles = [a["text"] for a in attn_fig["layout"]["annotations"]]
    assert titles[:4] == ["a", "large", "red", "circle"] and "<pad>" not in titles
    assert "normalisation" in attn_fig["layout"]["title"]["text"]
    assert len(_plot(conv)["data"]) > 0
    assert len(_plot(drift)["data"]) > 0
    assert len(_plot(rank)["data"]) > 0
    assert len(_plot(rank_summary)["data"]) > 0
    # component updates arrive as dicts: the step slider now spans the run, the layer list holds its layers
    assert step["value"] == 2 and step["maximum"] == 2
    assert layer["value"] == "mean of all layers" and len(layer["choices"]) > 1
    assert "instrumented" in status
    # step slider / layer dropdown re-render from the stored run, without running the model
    attn0, rank0 = client.predict(0, "mean of all layers", "shared", False, 0.5, True, api_name="/render_step")
    fig0 = _plot(attn0)
    assert "step 0" in fig0["layout"]["title"]["text"] and "shared scale" in fig0["layout"]["title"]["text"]
    assert "<|startoftext|>" in [a["text"] for a in fig0["layout"]["annotations"]]
    assert "step 0" in _plot(rank0)["layout"]["title"]["text"]
    # export of the same run: the CLI's files
    archive = client.predict(api_name="/export")
    with zipfile.ZipFile(archive) as z:
        names = set(z.namelist())
        assert {"run.json", "baseline.png", "accelerated.png", "signals.npz"} <= names
        data = json.loads(z.read("run.json"))
    assert data["prompt"] == PROMPT and data["steps"] == 3 and data["signals"]["attention_maps"]


def test_bad_input_raises_app_error_with_message(client):
    with pytest.raises(AppError, match="Please enter a prompt"):
        client.predict("   ", *GEN_ARGS[1:], api_name="/generate")
    with pytest.raises(AppError, match="Tick at least one technique"):
        client.predict(PROMPT, "", 0, 3, 5.0, "ddim", [], 1, api_name="/compare")


def test_tokens_warn_about_unknown_words(client):
    spans, warning = client.predict("a red zebra on the left", api_name="/tokens")
    assert "zebra" in warning
    labelled = [s for s in spans if s["class_or_confidence"] == "unknown word"] if isinstance(spans[0], dict) else \
        [s for s in spans if s[1] == "unknown word"]
    assert labelled
    _, clean = client.predict(PROMPT, api_name="/tokens")
    assert clean == ""


def test_compare_times_baseline_and_technique(client):
    pair, metrics, counters = client.predict(PROMPT, "", 0, 3, 5.0, "ddim", ["tgate"], 1, api_name="/compare")
    assert len(pair) == 2 and all(Image.open(p).size == (64, 64) for p in pair)
    assert "Speed-up" in metrics and "PSNR" in metrics and "`tgate`" in metrics
    _plot(counters)
