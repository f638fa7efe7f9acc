"""The server's model allowlist and pipeline pool (analysis/model_pool.py), without a server."""
from __future__ import annotations

import gc
import weakref

import pytest

from analysis.model_pool import (
    ModelChoice,
    ModelPool,
    UnknownModel,
    allowlist_from,
    capacity_from,
    parse_allowlist,
)
from analysis.models import model_name, set_model_name


class FakePipe:
    def __init__(self, source):
        self.source = source

    def set_progress_bar_config(self, **_):
        pass


def test_allowlist_entries_are_labels_and_folders_show_only_their_name():
    choices = parse_allowlist(" default, tiny ,emb=/srv/models/embeddings , /data/secret/frozen-v2/, "
                              "owner/model")
    assert choices == (ModelChoice("default", "default"), ModelChoice("tiny", "tiny"),
                       ModelChoice("emb", "/srv/models/embeddings"), ModelChoice("frozen-v2", "/data/secret/frozen-v2/"),
                       ModelChoice("owner/model", "owner/model"))


@pytest.mark.parametrize("text, message", [
    ("", "empty"), (" , ", "empty"), ("a=", "no source"), ("a=x,a=y", "twice"), ("bad label=x", "label"),
])
def test_a_bad_allowlist_is_refused_in_one_line(text, message):
    with pytest.raises(ValueError, match=message):
        parse_allowlist(text)


def test_the_operator_decides_flag_then_environment_then_default():
    assert [c.label for c in allowlist_from(None, {})] == ["default"]
    assert [c.label for c in allowlist_from(None, {"DIFFSCOPE_MODEL": "tiny"})] == ["tiny"]
    env = {"DIFFSCOPE_MODEL": "tiny", "DIFFSCOPE_MODELS": "default,tiny"}
    assert [c.label for c in allowlist_from(None, env)] == ["default", "tiny"]
    assert [c.label for c in allowlist_from("sd=owner/sd", env)] == ["sd"]


def test_capacity_is_one_on_a_space_unless_the_operator_says_otherwise():
    assert capacity_from(None, {}) == 2
    assert capacity_from(None, {"SPACE_ID": "user/diffscope"}) == 1
    assert capacity_from(None, {"SPACE_ID": "user/diffscope", "DIFFSCOPE_MAX_PIPELINES": "3"}) == 3
    assert capacity_from(4, {"DIFFSCOPE_MAX_PIPELINES": "3"}) == 4
    for bad in ("0", "two"):
        with pytest.raises(ValueError, match="DIFFSCOPE_MAX_PIPELINES"):
            capacity_from(None, {"DIFFSCOPE_MAX_PIPELINES": bad})


def test_least_recently_used_pipeline_is_evicted_and_freed():
    loads = []
    pool = ModelPool(parse_allowlist("a,b,c"), capacity=2, loader=lambda s: loads.append(s) or FakePipe(s))
    a = weakref.ref(pool.get("a"))
    pool.get("b")
    pool.get("a")  # a is now the most recently used
    pool.get("c")  # evicts b
    assert pool.loaded() == ["a", "c"] and loads == ["a", "b", "c"]
    assert pool.get("a") is a() and loads == ["a", "b", "c"]  # still cached, not reloaded
    b_ref = weakref.ref(pool.get("b"))  # reloads b, evicts c
    assert loads[-1] == "b" and pool.loaded() == ["a", "b"]
    pool.get("c")  # evicts a
    gc.collect()
    assert a() is None and b_ref() is not None  # nothing but the pool held a: it is gone
    assert model_name(pool.get("b")) == "b"


def test_unknown_and_failing_models_name_no_server_path():
    def loader(source):
        raise OSError(f"{source}/model_index.json not found")

    pool = ModelPool((ModelChoice("emb", "/srv/private/emb"),), loader=loader)
    with pytest.raises(UnknownModel) as caught:
        pool.get("emb")
    assert "/srv" not in str(caught.value) and "could not be loaded" in str(caught.value)
    with pytest.raises(UnknownModel) as caught:
        pool.get("/srv/private/emb")
    assert "not offered here; choose one of emb" in str(caught.value)
    with pytest.raises(UnknownModel) as caught:
        pool.get("x" * 5000)
    assert len(str(caught.value)) < 120
    with pytest.raises(UnknownModel):
        pool.get(None)


def test_a_pool_of_one_pipeline_offers_only_it():
    pipe = FakePipe("x")
    set_model_name(pipe, "default")
    pool = ModelPool.of(pipe)
    assert pool.labels == ["default"] and pool.get("default") is pipe
    with pytest.raises(UnknownModel):
        pool.get("tiny")
