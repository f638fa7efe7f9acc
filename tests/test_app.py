"""The live app, driven through gradio_client against a launched server (Gradio's own test pattern)."""
from __future__ import annotations

import json
import os
import time
import zipfile

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from PIL import Image  # noqa: E402

from analysis.accel import registry  # noqa: E402
from ui.techniques import client_inputs, order  # noqa: E402

PROMPT = "a large red circle on the left"


def run_args(prompt=PROMPT, seed="0", steps=4, y="psnr", model="default", **on) -> list:
    """The /run inputs (ui.techniques.client_inputs); T-GATE's gate at step 2 of the tests' 4 unless set."""
    if "tgate" in on:
        on["tgate"] = {1: 2, **(on["tgate"] or {})}
    return client_inputs(prompt, seed=seed, steps=steps, y=y, on=on, model=model)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    os.environ["GRADIO_TEMP_DIR"] = str(tmp_path_factory.mktemp("gradio"))
    import app
    from analysis.models import random_pipeline, set_model_name

    pipe = random_pipeline("toy")
    pipe.set_progress_bar_config(disable=True)
    set_model_name(pipe, "default")  # the toy architecture and tokenizer: unknown-word warnings and fidelity apply
    demo = app.build_demo(pipe)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    yield url, app
    demo.close()


@pytest.fixture()
def client(server):
    c = Client(server[0], verbose=False)
    yield c
    c.close()


def _img(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _plot(value) -> dict:
    assert value["type"] == "plotly", value
    return json.loads(value["plot"])


def test_endpoints_are_named(client):
    api = client.view_api(print_info=False, return_format="dict")
    assert {"/run", "/frontier", "/inside", "/equal_latency", "/measure", "/stop", "/export", "/tokens",
            "/availability", "/load_model"} <= set(api["named_endpoints"])


def test_generate_then_toggle_then_knob_reuses_the_cached_baseline(client, server):
    full, acc, diff, numbers, plot, runs, status = client.predict(*run_args(), api_name="/run")
    assert acc is None and "timed 1x" in status and "full compute" in numbers  # the image after one run
    assert "full compute" in [t["name"] for t in _plot(plot)["data"]]  # its point is on the plot at once
    base = _img(full)
    full2, acc, diff, numbers, plot, runs, status = client.predict(*run_args(tgate={}), api_name="/run")
    assert "cached" in status and np.array_equal(_img(full2), base)
    assert _img(acc).shape == base.shape == _img(diff).shape
    assert "measured" in numbers and "PSNR" in numbers and "Skipped:** tgate" in numbers
    fig = _plot(plot)
    assert {t["name"] for t in fig["data"]} >= {"tgate"}
    # a knob: the gate step moves, a second point appears, the baseline stays cached
    _, acc3, _, numbers3, plot3, runs3, status3 = client.predict(*run_args(tgate={1: 3}), api_name="/run")
    assert "cached" in status3 and "gate at step 3" in numbers3
    assert [row[1] for row in runs3["data"]][:2] == ["tgate(gate_step=3)", "tgate(gate_step=2)"]
    tgate_points = [t for t in _plot(plot3)["data"] if t["name"] == "tgate"][0]
    assert len(tgate_points["x"]) == 2
    # the chained follow-ups: the step-reduction frontier joins the plot; the probe views fill in
    frontier_plot, numbers_later, _ = client.predict("psnr", api_name="/frontier")
    assert "median of 3" in numbers_later  # the other timed runs followed in the background
    frontier = _plot(frontier_plot)
    names = [t["name"] for t in frontier["data"]]
    assert "step reduction (this prompt, seed)" in names and "full compute" in names
    fid = _plot(client.predict("fidelity", api_name="/frontier")[0])
    assert "fidelity" in fid["layout"]["yaxis"]["title"]["text"]
    inside = client.predict("both", 3, "mean of all layers", "mean of heads", "per-token", True, 0.55, False, True, False,
                            api_name="/inside")
    assert "full compute" in _plot(inside[0])["layout"]["title"]["text"]
    assert "accelerated" in _plot(inside[1])["layout"]["title"]["text"]


def test_equal_latency_and_measure_carefully(client):
    client.predict(*run_args(tgate={}), api_name="/run")
    updates = client.predict(api_name="/equal_latency")
    *toggles, count = updates
    assert [t["value"] for t in toggles] == [registry()[name].is_step_reduction for name in order()]
    assert 1 <= count["value"] <= 4
    numbers, _ = client.predict("psnr", api_name="/measure")
    assert "careful" in numbers and "interleaved pairs" in numbers


def test_availability_shows_the_engine_reason_before_anyone_clicks(client):
    # T-GATE on: Faster-Diffusion and AT-EDM cannot join it, reuse can only with scope=self
    values = run_args(tgate={})[9:]
    out = client.predict("default", 4, *values, api_name="/availability")
    by_name = dict(zip(order(), zip(out[0::2], out[1::2])))
    assert by_name["fastdiff"][0]["interactive"] is False and "fastdiff cannot be combined with tgate" in by_name["fastdiff"][1]
    assert by_name["atedm"][0]["interactive"] is False
    assert "scope=self" in by_name["reuse"][1]
    assert by_name["steps"][1] == ""
    values = run_args(tgate={}, reuse={3: "self"})[9:]
    values[0] = False  # reuse toggle off, scope self: now reuse is available next to T-GATE
    out = client.predict("default", 4, *values, api_name="/availability")
    assert out[1] == ""


def test_bad_input_is_refused_with_a_message(client):
    with pytest.raises(AppError, match="Please enter a prompt"):
        client.predict(*run_args(prompt="  "), api_name="/run")
    with pytest.raises(AppError, match="seed must be a whole number"):
        client.predict(*run_args(seed="1.5"), api_name="/run")
    with pytest.raises(AppError, match=r"seed must be between 0 and 2\^63-1"):
        client.predict(*run_args(seed=str(2**63)), api_name="/run")
    with pytest.raises(AppError, match="Steps must be a whole number"):
        client.predict(*run_args(steps=2.7), api_name="/run")
    with pytest.raises(AppError, match="fastdiff cannot be combined with tgate"):
        client.predict(*run_args(tgate={}, fastdiff={}), api_name="/run")
    with pytest.raises(AppError, match="custom policy"):
        client.predict(*run_args(reuse={1: "custom"}), api_name="/run")
    _, acc, *_ = client.predict(*run_args(seed=str(2**63 - 1), tgate={}), api_name="/run")
    assert acc is not None


@pytest.mark.parametrize("request_values, on, message", [
    ({"steps": "abc"}, {}, "Steps must be a whole number"),
    ({"steps": None}, {}, "Steps must be a whole number"),
    ({"guidance": None}, {}, "Guidance must be a number"),
    ({"guidance": "x"}, {}, "Guidance must be a number"),
    ({"guidance": 1e9}, {}, "Guidance must be between 0 and 20"),
    ({"steps": 5000}, {}, "Steps must be between 1 and 100"),
    ({"scheduler": "heun"}, {}, "scheduler|heun"),
    ({}, {"reuse": {2: "abc"}}, r"reuse steps \(R\) must be a whole number"),
    ({}, {"tgate": {1: 2.5}}, "gate step must be a whole number, got 2.5"),
    ({}, {"atedm": {2: "no"}}, "DSAP must be true or false"),
    ({}, {"atedm": {1: "lots"}}, "pruning ratio must be a number"),
    ({}, {"fastdiff": {3: "yes"}}, "parallel decoding must be true or false"),
])
def test_api_inputs_are_checked_by_the_handler(client, request_values, on, message):
    """Values the widgets could never send, sent through the API: each refused with a message, none rounded."""
    values = {"prompt": PROMPT, "seed": "0", "steps": 4, **request_values}
    args = client_inputs(values.pop("prompt"), on=on, **{**values, "steps": 4})
    args[3] = values["steps"]
    with pytest.raises(AppError, match=message):
        client.predict(*args, api_name="/run")


def test_export_figure_pack_and_slide(client):
    client.predict(*run_args(tgate={}), api_name="/run")
    client.predict("both", 3, "mean of all layers", "mean of heads", "per-token", True, 0.55, False, True, False, api_name="/inside")
    archive, slide = client.predict("psnr", api_name="/export")
    with zipfile.ZipFile(archive) as z:
        names = set(z.namelist())
        data = json.loads(z.read("run/run.json"))
    assert {"run/run.json", "run/baseline.png", "run/accelerated.png", "tradeoff.png", "tradeoff.svg",
            "slide.png", "convergence.svg", "counters.png"} <= names
    assert data["prompt"] == PROMPT and "tgate" in data["accel"] and data["speedup"] > 0
    w, h = Image.open(slide).size
    assert w / h == pytest.approx(16 / 9, rel=0.01) and w >= 1900


def test_tokens_warn_about_unknown_words_and_cut_prompts(client):
    spans, warning = client.predict("a red zebra on the left", "default", api_name="/tokens")
    assert "zebra" in warning
    _, clean = client.predict(PROMPT, "default", api_name="/tokens")
    assert clean == ""
    _, long_warning = client.predict(" ".join(["red"] * 100), "default", api_name="/tokens")
    assert "cut off" in long_warning


def _solo(url, args) -> tuple[np.ndarray, np.ndarray]:
    c = Client(url, verbose=False)
    try:
        full, acc, *_ = c.predict(*args, api_name="/run")
        return _img(full), _img(acc)
    finally:
        c.close()


def test_stop_and_cancel_mid_run_leave_the_pipeline_clean(server):
    url, app = server
    follow = run_args(prompt="a small blue square at the top", seed="5", atedm={})
    expected = _solo(url, follow)
    for attempt in range(3):
        c = Client(url, verbose=False)
        try:
            job = c.submit(*run_args(prompt="a large green triangle", seed=str(100 + attempt), steps=60, atedm={}),
                           api_name="/run")
            deadline = time.time() + 60
            while job.status().code.name not in ("PROCESSING", "FINISHED") and time.time() < deadline:
                time.sleep(0.05)
            time.sleep(0.2)
            job.cancel()
            c.predict(api_name="/stop")  # the cancelled job's thread sees it at its next denoising step
            assert np.array_equal(np.stack(_solo(url, follow)), np.stack(expected))
            assert app.STORE.get(c.session_hash).runs == []  # the stopped run never finished
        finally:
            c.close()


def test_two_sessions_at_once_get_their_own_results(server):
    url, _ = server
    requests = [run_args(prompt="a large red circle on the left", seed="1", tgate={}),
                run_args(prompt="a small yellow square on the right", seed="2", atedm={})]
    expected = [_solo(url, r) for r in requests]
    clients = [Client(url, verbose=False) for _ in requests]
    try:
        jobs = [c.submit(*r, api_name="/run") for c, r in zip(clients, requests)]
        for job, (full, acc) in zip(jobs, expected):
            out = job.result(timeout=120)
            assert np.array_equal(_img(out[0]), full) and np.array_equal(_img(out[1]), acc)
            assert len(out[5]["data"]) == 1  # each session sees only its own run
    finally:
        for c in clients:
            c.close()


def test_only_the_offered_models_load_and_errors_name_no_path(client):
    status, note = client.predict("default", api_name="/load_model")
    assert "default" in status and "Reading these maps" in note
    for name in ("nobody/no-such-model", "/etc", "tiny", "x" * 5000):
        with pytest.raises(AppError) as caught:
            client.predict(name, api_name="/load_model")
        message = str(caught.value)  # Gradio's dropdown refuses it before the handler, as the handler would
        assert "not offered" in message or "not in the list of choices" in message
        assert "model_index" not in message and "folder" not in message
    with pytest.raises(AppError, match="not offered|not in the list"):
        client.predict(*run_args(model="tiny"), api_name="/run")
    _, acc, *_ = client.predict(*run_args(tgate={}), api_name="/run")
    assert acc is not None


def test_step_dependent_knobs_follow_the_step_count_unless_set():
    from analysis.accel.reuse import max_reuse_steps
    from ui.techniques import follow_steps, panel_defaults

    def panel(steps, policy="hurry", r=None, gate=None, reduced=None):
        d = panel_defaults(steps)
        d["reuse"][1] = policy
        for name, index, value in (("reuse", 2, r), ("tgate", 1, gate), ("steps", 1, reduced)):
            if value is not None:
                d[name][index] = value
        return [v for block in d.values() for v in block]

    d6 = panel_defaults(6)
    # untouched (at their 20-step defaults: R 7, gate 8, 10 steps): the 6-step defaults, no note
    assert follow_steps(6, 20, panel(20)) == ([d6["reuse"][2], d6["tgate"][1], d6["steps"][1]], [])
    # set by the user: kept where 6 steps allow them, clamped (with a note) where not
    assert follow_steps(6, 20, panel(20, r=3, gate=9, reduced=4)) == (
        [3, 5, 4], ["T-GATE gate step 9 clamped to 5 for 6 steps"])
    (r, _, _), notes = follow_steps(6, 20, panel(20, "strided", 5, 8, 10))
    assert r == 3 == max_reuse_steps(6, "strided") and len(notes) == 1
    assert max_reuse_steps(6, "hurry") == 4  # CCRRCR... : 4 R need 6 steps with runs of at most 2
    # back up again: the knobs shown for 6 follow to 20
    assert follow_steps(20, 6, panel(6))[0] == [7, 8, 10]


def test_a_new_step_count_updates_the_knobs_before_the_run(server):
    """The Steps slider's release first moves the step-dependent knobs, then runs with them (a run triggered
    by the release itself would read the knobs of the old step count)."""
    from analysis.models import random_pipeline

    _, app = server
    demo = app.build_demo(random_pipeline("toy"))
    names = {key: getattr(fn.fn, "__name__", "") for key, fn in demo.fns.items()}
    (follow,) = [key for key, name in names.items() if name == "steps_changed"]
    chained = [d for d in demo.config["dependencies"] if names.get(d["id"]) == "run_live" and d["trigger_after"] == follow]
    assert len(chained) == 1 and chained[0]["trigger_only_on_success"]
