"""The attention backend knob (RunConfig.attention): "explicit" changes the baseline path and nothing else."""
import numpy as np
import pytest

from analysis import metrics
from analysis.accel import parse_accel
from analysis.models import set_scheduler
from analysis.run import RunConfig, run_once

STEPS = 4


def _config(attention="fused", accel=()):
    return RunConfig(prompt="a large red circle on the left", steps=STEPS, seed=1, size=32, attention=attention,
                     accel=accel)


def _run(pipe, config):
    return run_once(pipe, config, config.hooked_accel(), config.accel_steps)


@pytest.fixture(scope="module")
def pipe(sd15_pipe):
    set_scheduler(sd15_pipe, "ddim")
    return sd15_pipe


def test_explicit_attention_is_the_same_image_up_to_float_rounding_and_comes_off(pipe):
    before = dict(pipe.unet.attn_processors)
    fused = _run(pipe, _config()).images
    explicit = _run(pipe, _config("explicit")).images
    assert dict(pipe.unet.attn_processors) == before  # every original processor back
    assert metrics.psnr(fused, explicit) > 40  # the same math, another kernel
    assert np.array_equal(_run(pipe, _config()).images, fused)  # and the next run is fused again


def test_a_technique_does_the_same_work_under_either_backend(pipe):
    spec = "reuse:policy=CCRR"
    fused = _run(pipe, _config(accel=(parse_accel(spec),)))
    explicit = _run(pipe, _config("explicit", (parse_accel(spec),)))
    assert fused.counters["reuse"] == explicit.counters["reuse"]


def test_off_is_the_baseline_bit_for_bit_under_the_explicit_backend(pipe):
    base = _run(pipe, _config("explicit")).images
    off = _run(pipe, _config("explicit", (parse_accel("reuse:policy=CCCC"),))).images
    assert np.array_equal(off, base)


def test_an_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="attention must be one of fused, explicit"):
        _config("flash")
