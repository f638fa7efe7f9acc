"""Issue 10's experiment: the word kinds it measures and its decision rule."""
import numpy as np

from analysis.toy import scenes
from benchmarks.eval_signals import WORD_KINDS, words_by_kind
from analysis.models import DEFAULT_MODEL_DIR
from benchmarks.text_encoders import choose, decide, text_encoder_of


def test_word_kinds_cover_every_word_of_a_one_object_prompt_once():
    rng = np.random.default_rng(0)
    for position in scenes.POSITIONS:
        obj = scenes.sample_object(rng, position)
        kinds = words_by_kind(obj)
        assert tuple(kinds) == WORD_KINDS
        assert sorted(w for words in kinds.values() for w in words) == sorted(obj.phrase().split())


def _signals(colour, shape):
    return {"mass_over_area_median": {"colour": colour, "shape": shape}}


GOOD_ACCURACY = {"seen": {"overall": 0.90}, "held_out": {"overall": 0.75}}
GOOD_BINDING = {"colour_binding_median": 2.0, "shape_binding_median": 2.0}
GOOD_COST = {"psnr_half_vs_full_median_db": 35.0, "kid_half_minus_full": {"value": 0.01, "low": 0.001, "high": 0.02}}


def _decide(accuracy=GOOD_ACCURACY, signals=_signals(2.0, 2.0), binding=GOOD_BINDING, cost=GOOD_COST,
            latency=2.0, size=50.0):
    return decide(accuracy, signals, binding, cost, latency, size)


def test_decision_rule_thresholds_are_inclusive_and_each_check_can_fail():
    assert _decide()["passes"]
    assert _decide(signals=_signals(2.0, 1.99))["misses"] == ["shape_localisation"]
    assert _decide(signals=_signals(None, 3.0))["misses"] == ["colour_localisation"]  # no object drawn
    assert _decide(accuracy={"seen": {"overall": 0.899}, "held_out": {"overall": 0.9}})["misses"] == ["seen_accuracy"]
    assert _decide(binding={**GOOD_BINDING, "colour_binding_median": 1.99})["misses"] == ["colour_binding"]
    assert _decide(cost={**GOOD_COST, "psnr_half_vs_full_median_db": 35.1})["misses"] == ["half_steps_psnr"]
    # KID at half the steps must be above full steps by an interval that excludes 0
    assert _decide(cost={**GOOD_COST, "kid_half_minus_full": {"value": 0.01, "low": -0.001, "high": 0.02}})[
        "misses"] == ["half_steps_kid"]
    assert _decide(latency=2.01)["misses"] == ["latency"]
    assert _decide(size=50.1, latency=None)["misses"] == ["latency", "size"]
    assert _decide(size=50.1)["rules"] == {"i": True, "ii": True, "iii": True, "iv": False}


def _candidate(ok_rules, colour, shape):
    rules = {r: r in ok_rules for r in ("i", "ii", "iii", "iv")}
    return {"decision": {"passes": all(rules.values()), "rules": rules, "misses": [] if all(rules.values()) else ["x"]},
            "binding": {"colour_binding_median": colour, "shape_binding_median": shape}}


def test_choice_prefers_a_model_meeting_every_rule_then_the_best_min_binding_meeting_i_and_iv():
    models = {"a": _candidate("i ii iii iv", 2.1, 2.2), "b": _candidate("i ii iv", 5.0, 6.0)}
    assert choose(models)["ship"] == "a"
    models = {"a": _candidate("i iv", 2.1, 9.0), "b": _candidate("i iv", 3.0, 3.0), "c": _candidate("i ii iii", 9, 9)}
    choice = choose(models)
    assert choice["ship"] == "b" and choice["misses"] == ["x"]
    assert choose({"a": _candidate("ii iii", 9, 9)})["ship"] is None


def test_shipped_model_reports_its_text_encoder():
    assert text_encoder_of(DEFAULT_MODEL_DIR) == {"kind": "embeddings", "layers": 0}  # shapes-v2 (issue 16)
    assert text_encoder_of(DEFAULT_MODEL_DIR.parent / "shapes-v1") == {"kind": "joint", "layers": 3}


def test_own_word_cosine_is_one_without_transformer_layers():
    from types import SimpleNamespace

    from analysis.models import load_pipeline
    from analysis.toy.train import text_encoder_variant
    from benchmarks.text_encoders import own_word_cosine

    pipe = load_pipeline(str(DEFAULT_MODEL_DIR.parent / "shapes-v1"))  # the contextual (joint) encoder
    prompt = "a large red circle on the left"
    contextual = own_word_cosine(pipe, prompt)
    assert len(contextual) == len(prompt.split()) and max(contextual) < 0.9
    alone = SimpleNamespace(tokenizer=pipe.tokenizer, text_encoder=text_encoder_variant(pipe.text_encoder, "embeddings"))
    assert own_word_cosine(alone, prompt) == [1.0] * len(prompt.split())


def test_binding_finds_each_objects_words_in_its_own_phrase():
    from benchmarks.eval_signals import binding_ratio, object_words

    scene = scenes.Scene((scenes.SceneObject("red", "circle", "large", "left"),
                          scenes.SceneObject("blue", "circle", "small", "top")))
    tokens = scenes.caption(scene).split()
    words = object_words(tokens, scene)
    assert [tokens[w["colour"]] for w in words] == ["red", "blue"]
    assert words[0]["shape"] < tokens.index("and") < words[1]["shape"]  # "circle" twice: each in its phrase
    own, other = np.zeros((16, 16), bool), np.zeros((16, 16), bool)
    own[:5, :5], other[10:, 10:] = True, True
    word_map = np.where(own, 3.0, 1.0)
    assert binding_ratio(word_map, own, other) == 25 * 3.0 / 36
    assert binding_ratio(word_map, own, np.zeros((16, 16), bool)) is None  # the other object was not drawn
