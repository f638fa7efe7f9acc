"""Issue 10's experiment: the word kinds it measures and its decision rule."""
import numpy as np

from analysis.toy import scenes
from benchmarks.eval_signals import WORD_KINDS, words_by_kind
from analysis.models import DEFAULT_MODEL_DIR
from benchmarks.text_encoders import decide, text_encoder_of


def test_word_kinds_cover_every_word_of_a_one_object_prompt_once():
    rng = np.random.default_rng(0)
    for position in scenes.POSITIONS:
        obj = scenes.sample_object(rng, position)
        kinds = words_by_kind(obj)
        assert tuple(kinds) == WORD_KINDS
        assert sorted(w for words in kinds.values() for w in words) == sorted(obj.phrase().split())


def _signals(colour, shape):
    return {"mass_over_area_median": {"colour": colour, "shape": shape}}


def test_decision_rule_thresholds():
    good = {"seen": {"overall": 0.90}, "held_out": {"overall": 0.75}}
    assert decide(good, _signals(2.0, 2.0))["passes"]
    assert not decide(good, _signals(2.0, 1.99))["passes"]
    assert not decide(good, _signals(None, 3.0))["passes"]  # no object drawn: nothing localised
    assert not decide({"seen": {"overall": 0.899}, "held_out": {"overall": 0.9}}, _signals(3, 3))["passes"]
    checks = decide({"seen": {"overall": 0.95}, "held_out": {"overall": 0.74}}, _signals(3, 3))["checks"]
    assert checks == {"seen_accuracy": True, "held_out_accuracy": False, "colour_localisation": True,
                      "shape_localisation": True}


def test_shipped_model_reports_its_text_encoder():
    assert text_encoder_of(DEFAULT_MODEL_DIR)["layers"] == 3


def test_own_word_cosine_is_one_without_transformer_layers():
    from types import SimpleNamespace

    from analysis.models import load_pipeline
    from analysis.toy.train import text_encoder_variant
    from benchmarks.text_encoders import own_word_cosine

    pipe = load_pipeline("default")
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
