import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def toy_pipe():
    from analysis.models import random_pipeline

    pipe = random_pipeline("toy")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def sd15_pipe():
    from analysis.models import random_pipeline

    pipe = random_pipeline("sd15")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def sdxl_pipe():
    from analysis.models import random_pipeline

    pipe = random_pipeline("sdxl")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def default_pipe():
    """The embedded shapes-world model."""
    from analysis.models import load_pipeline

    pipe = load_pipeline("default")
    pipe.set_progress_bar_config(disable=True)
    return pipe
