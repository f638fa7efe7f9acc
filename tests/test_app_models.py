"""Models are a server setting: two gradio_client sessions against one server, one switching models between
every request of the other, and the other's images never change (issue 19, item 1)."""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from PIL import Image  # noqa: E402

from ui.techniques import client_inputs  # noqa: E402

PROMPT = "a large red circle on the left"
ROUNDS = 10


def _loader(source: str):
    """The server's model loader: random-weight pipelines built in code (seeded, so a reload is the same model)."""
    from analysis.models import random_pipeline

    if source == "toy-random":
        return random_pipeline("toy", seed=0)
    if source == "tiny-random":
        return random_pipeline("sd15", image_size=64, seed=1)
    raise OSError(f"no model at /srv/private/{source}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    os.environ["GRADIO_TEMP_DIR"] = str(tmp_path_factory.mktemp("gradio"))
    import app
    from analysis.model_pool import ModelPool, parse_allowlist

    # Capacity 1: every switch evicts the other model, the harshest case for the session that did not switch.
    pool = ModelPool(parse_allowlist("default=toy-random,tiny=tiny-random,broken=missing"), capacity=1,
                     loader=_loader)
    demo = app.build_demo(pool)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, **app.LAUNCH_SETTINGS)
    yield url, pool, demo
    demo.close()


def _img(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _run(client, model: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    args = client_inputs(PROMPT, seed=str(seed), steps=3, model=model, on={"tgate": {1: 2}})
    full, acc, *_ = client.predict(*args, api_name="/run")
    return _img(full), _img(acc)


def test_one_sessions_model_switches_never_change_anothers_images(server):
    url, pool, _ = server
    solo = Client(url, verbose=False)
    try:
        expected = [_run(solo, "default", seed) for seed in range(ROUNDS)]
    finally:
        solo.close()
    a, b = Client(url, verbose=False), Client(url, verbose=False)
    loads_before = pool.loads
    unchanged = 0
    try:
        for seed in range(ROUNDS):
            status, _ = b.predict("tiny", api_name="/load_model")
            assert "tiny" in status
            tiny_full, _ = _run(b, "tiny", seed)
            assert pool.loaded() == ["tiny"]  # B's switch evicted the default model from the server
            full, acc = _run(a, "default", seed)
            unchanged += np.array_equal(full, expected[seed][0]) and np.array_equal(acc, expected[seed][1])
            assert not np.array_equal(tiny_full, full)  # B really ran another model
    finally:
        a.close()
        b.close()
    assert unchanged == ROUNDS
    assert pool.loads - loads_before == 2 * ROUNDS  # every round reloaded both: the pool never held two


def test_a_model_that_fails_to_load_says_so_without_its_path(server):
    url, _, _ = server
    c = Client(url, verbose=False)
    try:
        with pytest.raises(AppError) as caught:
            c.predict("broken", api_name="/load_model")
        assert "could not be loaded on this server" in str(caught.value) and "/srv" not in str(caught.value)
        full, _ = _run(c, "default", 0)
        assert full.size > 0
    finally:
        c.close()


def test_uploads_are_refused(server):
    import httpx

    url, _, _ = server
    response = httpx.post(url.rstrip("/") + "/gradio_api/upload", files={"files": ("big.bin", b"x" * 4096)})
    assert response.status_code == 413, response.text


def test_the_app_is_built_and_runs_with_spaces_installed(server):
    """The Space runtime package is imported by app.py when installed (requirements-dev.txt installs it):
    the app above was built with it, its ZeroGPU wrapper exists, and requests run (off ZeroGPU, in-process)."""
    import spaces

    import app

    assert app.spaces is spaces and callable(app.on_device) and app.ZERO_GPU is False
    c = Client(server[0], verbose=False)
    try:
        full, acc = _run(c, "default", 3)
        assert full.shape == acc.shape and full.size > 0
    finally:
        c.close()


def test_exports_stay_in_gradios_temp_folder_and_its_cleanup_removes_them(server):
    import tempfile
    from pathlib import Path

    from gradio.route_utils import delete_files_created_by_app

    url, _, demo = server
    cache = Path(os.environ["GRADIO_TEMP_DIR"])
    outside = set(Path(tempfile.gettempdir()).glob("diffscope-*"))
    c = Client(url, verbose=False)
    try:
        _run(c, "default", 4)
        c.predict("psnr", api_name="/export")
    finally:
        c.close()
    exports = [p for p in (cache / "diffscope-exports").rglob("*") if p.is_file()]
    assert sorted(p.name for p in exports) == ["diffscope-figures.zip", "diffscope-slide.png"]
    assert set(Path(tempfile.gettempdir()).glob("diffscope-*")) == outside  # nothing written outside the cache
    import app

    assert demo.delete_cache == app.DELETE_CACHE
    delete_files_created_by_app(demo, age=0)  # what the schedule does once an export is an hour old
    assert not any(p.exists() for p in exports)


def test_show_run_with_a_bogus_row_answers_with_a_message(server):
    """/show_run is a table selection: a client can send any event data, and gets a message, never null."""
    import httpx

    url, _, _ = server
    base = url.rstrip("/") + "/gradio_api/call/show_run"
    for row in (["abc"], [None], [], "x", [10**12]):
        event = httpx.post(base, json={"data": ["psnr"], "event_data": {"index": [0, 0], "value": None,
                                                                         "row_value": row}}).json()["event_id"]
        stream = httpx.get(f"{base}/{event}", timeout=60).text
        assert "event: error" in stream and "data: null" not in stream, stream
        assert "run" in stream.split("event: error", 1)[1], stream  # the message says what is wrong


def test_selecting_a_run_in_the_table_shows_it(server):
    """The browser's path: a table selection with its event data (queue/join, as the frontend sends it)."""
    import json as _json

    import httpx

    url, _, demo = server
    c = Client(url, verbose=False)
    try:
        _run(c, "default", 5)
        args = client_inputs(PROMPT, seed="5", steps=3, on={"tgate": {1: 1}})
        runs = c.predict(*args, api_name="/run")[5]["data"]
        first = runs[-1]  # the table lists the newest first
        fn_index = next(i for i, fn in demo.fns.items() if fn.api_name == "show_run")
        base = url.rstrip("/") + "/gradio_api/queue"
        httpx.post(f"{base}/join", json={"data": ["psnr"], "fn_index": fn_index, "session_hash": c.session_hash,
                                         "event_data": {"index": [len(runs) - 1, 0], "value": first[0],
                                                        "row_value": first}}).raise_for_status()
        with httpx.stream("GET", f"{base}/data", params={"session_hash": c.session_hash}, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data:") and '"process_completed"' in line:
                    message = _json.loads(line[5:])
                    break
    finally:
        c.close()
    assert message["success"], message
    numbers = message["output"]["data"][3]
    assert "gate at step 2" in numbers  # the first run (gate 2), not the one on screen (gate 1)
