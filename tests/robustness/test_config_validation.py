"""A config.json can never load as a different model (issue 9).

One test per class of bad value (the exception type, and the field named in the message), then a
hypothesis fuzz: random mutations of a saved config.json (types, ranges, missing, misspelt and extra keys)
either raise the library's own error or load a model whose config says exactly what the file says and
whose weights and outputs equal the original's.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from reference import tiny_config

from megabert_edu import CheckpointError, ConfigError, MegatronBertConfig, MegatronBertForSequenceClassification
from megabert_edu.config import FIELD_CHECKS, SHAPE_FIELDS, ConfigTypeError

IDS = torch.tensor([[5, 9, 11, 3, 7, 2, 40]])


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """A saved 2-label classifier: (directory, model, its config.json as a dict)."""
    torch.manual_seed(0)
    model = MegatronBertForSequenceClassification(tiny_config()).eval()
    directory = tmp_path_factory.mktemp("original")
    model.save_pretrained(directory)
    return directory, model, json.loads((directory / "config.json").read_text())


def load_with(tmp_path: Path, original, config_json) -> MegatronBertForSequenceClassification:
    directory, _, _ = original
    target = tmp_path / "mutated"
    target.mkdir(exist_ok=True)
    (target / "model.safetensors").write_bytes((directory / "model.safetensors").read_bytes())
    (target / "config.json").write_text(json.dumps(config_json))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return MegatronBertForSequenceClassification.from_pretrained(target)


BAD_VALUES = [  # (field, value, error class, message pattern)
    ("hidden_size", "32", ConfigTypeError, r"hidden_size must be an integer, got '32' \(str\)"),
    ("intermediate_size", 37.0, ConfigTypeError, "intermediate_size must be an integer, got 37.0"),
    ("vocab_size", None, ConfigTypeError, "vocab_size must be an integer, got None"),
    ("num_attention_heads", 0, ConfigError, "num_attention_heads must be >= 1, got 0"),
    ("num_attention_heads", -4, ConfigError, "num_attention_heads must be >= 1, got -4"),
    ("num_hidden_layers", True, ConfigTypeError, "num_hidden_layers must be an integer, got True"),
    ("max_position_embeddings", 0, ConfigError, "max_position_embeddings must be >= 1"),
    ("is_decoder", "false", ConfigTypeError, r"is_decoder must be true or false, got 'false' \(str\)"),
    ("use_cache", 1, ConfigTypeError, "use_cache must be true or false, got 1"),
    ("id2label", ["neg", "pos"], ConfigTypeError, "id2label must be a dict"),
    ("id2label", {}, ConfigError, "id2label is empty"),
    ("label2id", {"LABEL_0": "0", "LABEL_1": 1}, ConfigTypeError, "label2id must map string labels to integer ids"),
    ("position_embedding_type", "rotary", ConfigError, "position_embedding_type='rotary' is not one of"),
    ("layer_norm_position", "middle", ConfigError, "layer_norm_position='middle' is not one of"),
    ("problem_type", "ranking", ConfigError, "problem_type='ranking' is not one of"),
    ("hidden_act", 3, ConfigTypeError, "hidden_act must be a string, got 3"),
    ("hidden_act", "swiglu", ConfigError, "hidden_act='swiglu' is not supported"),
    ("hidden_dropout_prob", 1.5, ConfigError, r"hidden_dropout_prob must be in \[0.0, 1.0\], got 1.5"),
    ("attention_probs_dropout_prob", "0.1", ConfigTypeError, "attention_probs_dropout_prob must be a number"),
    ("layer_norm_eps", 0, ConfigError, r"layer_norm_eps must be in \(0.0, inf\], got 0"),
    ("layer_norm_eps", math.nan, ConfigError, "layer_norm_eps must be in"),
    ("initializer_range", -0.02, ConfigError, "initializer_range must be in"),
    ("pad_token_id", 99, ConfigError, "pad_token_id=99 is not a token id: vocab_size=99"),
    ("pad_token_id", -1, ConfigError, "pad_token_id must be >= 0"),
    ("eos_token_id", "2", ConfigTypeError, "eos_token_id must be an integer"),
    ("chunk_size_feed_forward", -1, ConfigError, "chunk_size_feed_forward must be >= 0"),
    ("pruned_heads", {"7": [0]}, ConfigError, r"pruned_heads names layer 7; the config has layers 0..2"),
    ("pruned_heads", {"0": [0, 1, 2, 3]}, ConfigError, r"pruned_heads\[0\] prunes every head of layer 0"),
    ("pruned_heads", [[0, 1]], ConfigTypeError, "pruned_heads must be a dict"),
    ("add_cross_attention", True, ConfigError, "add_cross_attention=True needs is_decoder=True"),
    ("hidden_size", 30, ConfigError, r"hidden_size \(30\) is not a multiple of num_attention_heads \(4\)"),
    ("dtype", "int8", ConfigError, "dtype=torch.int8 is not a floating-point torch dtype"),
    ("num_labels", "3", ConfigTypeError, "num_labels must be a non-negative integer"),
]


@pytest.mark.parametrize("field, value, error, message", BAD_VALUES, ids=[f"{f}={v!r}" for f, v, _, _ in BAD_VALUES])
def test_a_bad_value_is_named(tmp_path, original, field, value, error, message):
    config = {**original[2], field: value}
    if field == "num_labels":
        config.pop("id2label")
        config.pop("label2id")
    with pytest.raises(error, match=message):
        load_with(tmp_path, original, config)


@pytest.mark.parametrize("field", SHAPE_FIELDS)
def test_a_missing_shape_field_is_an_error_not_a_default(tmp_path, original, field):
    config = dict(original[2])
    del config[field]
    with pytest.raises(ConfigError, match=rf"config.json: config lacks {field}"):
        load_with(tmp_path, original, config)


def test_a_misspelt_key_is_reported_and_the_missing_field_named(tmp_path, original):
    config = dict(original[2])
    config["num_attention_head"] = config.pop("num_attention_heads")
    with pytest.warns(UserWarning, match="num_attention_head"):
        with pytest.raises(ConfigError, match=r"lacks num_attention_heads \(found 'num_attention_head': a misspell"):
            MegatronBertConfig.from_dict(config)


def test_unknown_keys_are_kept_and_reported(tmp_path, original):
    config = {**original[2], "embedding_size": 32, "classifier_dropout": 0.2}
    with pytest.warns(UserWarning, match="classifier_dropout, embedding_size"):
        loaded = MegatronBertConfig.from_dict(config)
    assert loaded.embedding_size == 32 and loaded.to_dict()["classifier_dropout"] == 0.2


@pytest.mark.parametrize("document", [[1, 2], "config", 3, None])
def test_a_config_that_is_not_a_json_object(tmp_path, original, document):
    with pytest.raises(ConfigTypeError, match="a config must be a JSON object"):
        load_with(tmp_path, original, document)


def test_invalid_json_names_the_file(tmp_path, original):
    load_with(tmp_path, original, original[2])
    (tmp_path / "mutated" / "config.json").write_text('{"hidden_size": 32,')
    with pytest.raises(ConfigError, match=r"mutated/config.json is not valid JSON"):
        MegatronBertForSequenceClassification.from_pretrained(tmp_path / "mutated")


# ---- fuzzing -------------------------------------------------------------------------------------------

JSON_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 130), st.sampled_from([0.0, 0.5, 1e-12, -1.0, 2.0, math.inf, math.nan]),
    st.sampled_from(["false", "true", "32", "4", "", "absolute", "relative_key", "pre", "post", "gelu", "relu"]),
    st.lists(st.integers(0, 4), max_size=3),
    st.dictionaries(st.sampled_from(["0", "1", "2", "a"]), st.sampled_from(["x", 1, [0]]), max_size=3),
)
EXTRA_KEYS = ["num_attention_head", "hidden_sizes", "embedding_size", "vocab"]
# fields whose value changes what the model computes on IDS (the rest: dropout in eval mode, flags, names)
BEHAVIOUR = ("hidden_act", "layer_norm_eps", "is_decoder", "position_embedding_type", "layer_norm_position",
             "add_cross_attention", "pruned_heads", "torchscript", "return_dict")


@st.composite
def mutations(draw, keys: list[str]):
    actions = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["delete", "set", "set", "add"]))
        key = draw(st.sampled_from(EXTRA_KEYS if kind == "add" else keys))
        actions.append((kind, key, None if kind == "delete" else draw(JSON_VALUES)))
    return actions


NULLABLE = ("pad_token_id", "bos_token_id", "eos_token_id", "problem_type")
NULL_MEANS_DEFAULT = ("id2label", "pruned_heads")


def json_kind(value) -> str:
    """A JSON type; ints count as numbers where a float is expected (a dropout of 0 is fine)."""
    return "number" if isinstance(value, (int, float)) and not isinstance(value, bool) else type(value).__name__


def same(a, b) -> bool:
    """Equal values of equal JSON types (so "false" is not False, 1 is not True, 32.0 is not 32)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_config_json_loads_the_same_model_or_raises_our_error(tmp_path, original, data):
    directory, model, config_json = original
    mutated = dict(config_json)
    for action, key, value in data.draw(mutations(sorted(config_json))):
        if action == "delete":
            mutated.pop(key, None)
        else:
            mutated[key] = value
    try:
        loaded = load_with(tmp_path, original, mutated)
    except (ConfigError, CheckpointError) as e:
        event(f"raised {type(e).__name__}")
        return
    event("loaded")
    written = json.loads((tmp_path / "mutated" / "config.json").read_text())
    saved = loaded.config.to_dict()
    for key, value in written.items():  # the config says exactly what the file says: no coercion
        if key in ("model_type", "num_labels", "label2id") or key not in saved:
            continue
        if value is None and key in NULL_MEANS_DEFAULT:  # as transformers: null id2label = LABEL_i, null pruned = {}
            continue
        assert same(saved[key], value), (key, value, saved[key])
    assert all(key in written for key in SHAPE_FIELDS)  # no shape field was filled in by a default
    for key, value in config_json.items():  # every checked field keeps the JSON type a valid config gives it
        if key in FIELD_CHECKS and value is not None and not (saved[key] is None and key in NULLABLE):
            assert json_kind(saved[key]) == json_kind(value), (key, saved[key])
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key
    if all(same(saved.get(k), config_json.get(k)) for k in BEHAVIOUR):
        torch.testing.assert_close(loaded(IDS)[0], model(IDS)[0], atol=1e-6, rtol=0)
