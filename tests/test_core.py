"""The engine's contracts: the seam and dispatcher restore the pipeline exactly, RunResult pickles."""
import pickle

import numpy as np
import pytest

from analysis.attention import AttentionPlugin
from analysis.plugins import HandleBase
from analysis.run import RunConfig, generate, run_once


def _processors(pipe):
    return dict(pipe.unet.attn_processors)


class _Boom(AttentionPlugin):
    name = "boom"

    def on_output(self, call, output):
        if call.step == 1:
            raise RuntimeError("boom at step 1")


class _BoomConfig:
    name = "boom"

    def attach(self, ctx):
        ctx.attention().add(_Boom())
        return HandleBase()


def test_baseline_is_deterministic(toy_pipe):
    cfg = RunConfig("a red circle on the left", steps=3, seed=7)
    a = run_once(toy_pipe, cfg, (), 3).images
    b = run_once(toy_pipe, cfg, (), 3).images
    assert a.dtype == np.uint8 and a.shape == (1, 64, 64, 3)
    assert np.array_equal(a, b)


def test_hooks_removed_after_exception(toy_pipe):
    before = _processors(toy_pipe)
    cfg = RunConfig("a red circle", steps=3)
    with pytest.raises(RuntimeError, match="boom"):
        run_once(toy_pipe, cfg, (_BoomConfig(),), 3)
    after = _processors(toy_pipe)
    assert all(after[k] is before[k] for k in before)
    assert "forward" not in toy_pipe.unet.__dict__
    # and the next run is the baseline again
    ref = run_once(toy_pipe, cfg, (), 3).images
    again = run_once(toy_pipe, cfg, (), 3).images
    assert np.array_equal(ref, again)


def test_dispatcher_without_plugins_is_bit_identical(toy_pipe):
    cfg = RunConfig("a small blue square at the top", steps=3)

    class Attach:
        name = "noop"

        def attach(self, ctx):
            ctx.attention()
            return HandleBase()

    ref = run_once(toy_pipe, cfg, (), 3).images
    result = run_once(toy_pipe, cfg, (Attach(),), 3)
    hooked, counters = result.images, result.counters
    assert np.array_equal(ref, hooked)
    assert counters["unet"]["batch_rows"] == [2, 2, 2]


def test_dispatcher_marks_replaced_outputs_and_shares_probs(toy_pipe):
    """AttnCall's declared fields: output_replaced when a plug-in's replace_output answered, probs when some
    plug-in wanted the probabilities (set before on_probs)."""
    cfg = RunConfig("a small blue square at the top", steps=2)
    seen, shared = [], []

    class Replace(AttentionPlugin):
        def __init__(self):
            self.cache = {}

        def replace_output(self, call):
            return self.cache.get(call.name) if call.step == 1 and call.is_cross else None

        def wants_probs(self, call):
            return call.step == 0 and not call.is_cross

        def on_probs(self, call, probs):
            shared.append(call.probs is probs)

        def on_output(self, call, output):
            seen.append((call.step, call.is_cross, call.output_replaced))
            if call.step == 0:
                self.cache[call.name] = output

    class Attach:
        name = "replace"

        def attach(self, ctx):
            ctx.attention().add(Replace())
            return HandleBase()

    run_once(toy_pipe, cfg, (Attach(),), 2)
    assert seen and all(replaced == (step == 1 and cross) for step, cross, replaced in seen)
    assert any(step == 1 and cross for step, cross, _ in seen)
    assert shared and all(shared)


def test_run_result_pickles_and_reports(toy_pipe):
    result = generate(toy_pipe, RunConfig(("a red circle", "a blue square"), steps=2, repeats=1))
    assert result.image.shape == (2, 64, 64, 3)
    assert np.array_equal(result.image, result.baseline_image)
    assert result.psnr_db == float("inf")
    assert result.baseline_latency_s > 0 and result.latency_s == result.baseline_latency_s
    assert result.tokens[0][0] == "<|startoftext|>" and "<pad>" in result.tokens[0]
    clone = pickle.loads(pickle.dumps(result))
    assert np.array_equal(clone.image, result.image)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompt=""), "prompt"),
        (dict(prompt="x", steps=0), "steps"),
        (dict(prompt="x", guidance=-1), "guidance"),
        (dict(prompt="x", scheduler="heun"), "scheduler"),
        (dict(prompt="x", size=65), "size"),
    ],
)
def test_run_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**kwargs)
