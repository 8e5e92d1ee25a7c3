"""MegatronBertConfig behaves like transformers' PretrainedConfig where user code touches it (issue 8).

Most checks run the same calls on transformers.MegatronBertConfig (the control) and on ours.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import transformers

from megabert_edu import ConfigError, MegatronBertConfig, MegatronBertModel

SMALL = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)


@pytest.mark.parametrize("config_class", [transformers.MegatronBertConfig, MegatronBertConfig])
def test_num_labels_and_label_maps_stay_consistent_both_ways(config_class):
    config = config_class(num_labels=5)
    assert config.id2label == {i: f"LABEL_{i}" for i in range(5)}
    assert config.label2id == {f"LABEL_{i}": i for i in range(5)}
    config.num_labels = 3
    assert config.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    assert len(config.label2id) == 3
    assert config_class(id2label={"0": "neg", "1": "pos"}).id2label == {0: "neg", 1: "pos"}  # JSON keys -> ints
    assert config_class(id2label={"0": "neg", "1": "pos"}).num_labels == 2


def test_label2id_follows_a_new_id2label():
    config = MegatronBertConfig(id2label={0: "neg", 1: "pos"})
    assert config.label2id == {"neg": 0, "pos": 1}
    config.id2label = {"0": "a", "1": "b", "2": "c"}
    assert config.num_labels == 3 and config.label2id == {"a": 0, "b": 1, "c": 2}


def test_conflicting_num_labels_and_id2label_is_named():
    with pytest.raises(ConfigError, match=r"num_labels=3 disagrees with id2label, which has 2 labels"):
        MegatronBertConfig(num_labels=3, id2label={0: "a", 1: "b"})
    with pytest.raises(TypeError, match="id2label must be a dict"):
        MegatronBertConfig(id2label=["a", "b"])


@pytest.mark.parametrize("config_class", [transformers.MegatronBertConfig, MegatronBertConfig])
def test_extra_keywords_are_kept_and_saved(config_class, tmp_path):
    config = config_class(**SMALL, embedding_size=32)
    assert config.embedding_size == 32
    assert json.loads(config.to_json_string())["embedding_size"] == 32
    config.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ours reports the key it does not use; the value survives
        assert config_class.from_pretrained(tmp_path).embedding_size == 32


def test_an_unused_key_in_a_config_file_is_reported_by_name(tmp_path):
    MegatronBertConfig(**SMALL, embedding_size=32).save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="embedding_size"):
        MegatronBertConfig.from_pretrained(tmp_path)


@pytest.mark.parametrize("config_class", [transformers.MegatronBertConfig, MegatronBertConfig])
def test_hf_defaults_and_return_dict_flags(config_class):
    config = config_class()
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (
        29056, 1024, 24, 16)
    assert config.return_dict is True and config.torchscript is False and config.use_return_dict is True
    assert config.output_attentions is False and config.output_hidden_states is False
    assert config_class(torchscript=True).use_return_dict is False
    assert config_class(return_dict=False).use_return_dict is False
    assert config.num_labels == 2 and config.pad_token_id == 0


@pytest.mark.parametrize("config_class", [transformers.MegatronBertConfig, MegatronBertConfig])
def test_json_round_trips(config_class, tmp_path):
    """HF's ConfigTester: to_json_string, to_json_file/from_json_file, save_pretrained/from_pretrained."""
    first = config_class(hidden_size=37)  # not a multiple of 16 heads: fine for a config (HF's tests use it)
    assert json.loads(first.to_json_string())["hidden_size"] == 37
    first.to_json_file(tmp_path / "c.json")
    assert config_class.from_json_file(tmp_path / "c.json").to_dict() == first.to_dict()
    first.save_pretrained(tmp_path / "dir")
    assert config_class.from_pretrained(tmp_path / "dir").to_dict() == first.to_dict()
    assert config_class.from_pretrained(tmp_path / "dir" / "config.json").to_dict() == first.to_dict()
    first.save_pretrained(tmp_path / "outer" / "sub")
    assert config_class.from_pretrained(tmp_path / "outer", subfolder="sub").to_dict() == first.to_dict()
    with pytest.raises(OSError):
        config_class.from_pretrained(tmp_path / "nowhere")


def test_to_dict_from_dict_round_trip_keeps_every_field():
    config = MegatronBertConfig(**SMALL, layer_norm_position="post", is_decoder=True, pruned_heads={1: [0, 2]},
                                id2label={0: "x", 1: "y", 2: "z"}, problem_type="regression", eos_token_id=3)
    again = MegatronBertConfig.from_dict(config.to_dict())
    assert again == config
    assert again.pruned_heads == {1: [0, 2]} and again.id2label == {0: "x", 1: "y", 2: "z"}
    assert again.layer_norm_position == "post" and config.to_dict()["model_type"] == "bert"


def test_hidden_size_not_divisible_by_heads_fails_when_the_model_is_built():
    config = MegatronBertConfig(**{**SMALL, "hidden_size": 30})
    with pytest.raises(ConfigError, match=r"hidden_size \(30\) is not a multiple of num_attention_heads \(4\)"):
        MegatronBertModel(config)


def test_common_properties_can_be_set_and_passed(tmp_path):
    """HF ConfigTester.create_and_test_config_common_properties, including values no model could use."""
    for idx, name in enumerate(["hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size"]):
        config = MegatronBertConfig()
        setattr(config, name, idx)
        assert getattr(config, name) == idx
        assert getattr(MegatronBertConfig(**{name: idx}), name) == idx


def test_hf_common_keywords_are_stored_as_given():
    """HF ConfigTester.check_config_arguments_init (its common keyword set, abbreviated)."""
    kwargs = {"return_dict": False, "output_hidden_states": True, "output_attentions": True, "torchscript": True,
              "torch_dtype": "float16", "pruned_heads": {"a": 1}, "tie_word_embeddings": False, "is_decoder": True,
              "add_cross_attention": True, "chunk_size_feed_forward": 5, "architectures": ["BertModel"],
              "finetuning_task": "translation", "id2label": {0: "label"}, "label2id": {"label": "0"},
              "bos_token_id": 6, "pad_token_id": 7, "eos_token_id": 8, "sep_token_id": 9, "max_length": 50,
              "problem_type": "regression", "task_specific_params": {"translation": "some_params"}}
    config = MegatronBertConfig(**kwargs)
    for key, value in kwargs.items():
        expected = torch.float16 if key == "torch_dtype" else value
        assert getattr(config, key) == expected, key
    assert MegatronBertConfig().is_encoder_decoder is False  # HF attributes we never set answer with HF's default


def test_our_config_json_loads_in_transformers_and_theirs_in_ours(tmp_path):
    ours = MegatronBertConfig(**SMALL, num_labels=3, hidden_dropout_prob=0.05)
    ours.save_pretrained(tmp_path / "ours")
    theirs = transformers.MegatronBertConfig.from_pretrained(tmp_path / "ours")
    assert (theirs.hidden_size, theirs.num_labels, theirs.hidden_dropout_prob) == (32, 3, 0.05)
    transformers.MegatronBertConfig(**SMALL, num_labels=4).save_pretrained(tmp_path / "theirs")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a transformers-written config.json has no key we would report
        back = MegatronBertConfig.from_pretrained(tmp_path / "theirs")
    assert (back.hidden_size, back.num_labels, back.layer_norm_position) == (32, 4, "pre")
    transformers.BertConfig(**SMALL).save_pretrained(tmp_path / "bert")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # BertConfig's classifier_dropout is null: nothing to report
        assert MegatronBertConfig.from_pretrained(tmp_path / "bert").layer_norm_position == "post"


def test_copy_applies_changes_and_names_unknown_fields():
    config = MegatronBertConfig(**SMALL, id2label={0: "a", 1: "b"})
    three = config.copy(num_labels=3, id2label=None)
    assert three.num_labels == 3 and config.num_labels == 2  # the original is untouched
    assert config.copy(num_labels=5).id2label == {i: f"LABEL_{i}" for i in range(5)}
    with pytest.raises(TypeError, match=r"unknown config field\(s\) \['num_attention_head'\]"):
        config.copy(num_attention_head=2)


def test_numpy_and_torch_scalars_are_written_as_numbers():
    config = MegatronBertConfig(**SMALL, eos_token_id=np.int64(3), bos_token_id=torch.tensor(2))
    d = json.loads(config.to_json_string())
    assert d["eos_token_id"] == 3 and d["bos_token_id"] == 2


def test_a_value_json_cannot_hold_is_named():
    config = MegatronBertConfig(**SMALL)
    config.tokenizer_state = object()
    with pytest.raises(ConfigError, match="config field tokenizer_state holds a object"):
        config.to_json_string()


def test_dtype_names_and_repr():
    assert MegatronBertConfig(dtype="bfloat16", torch_dtype="float16").dtype == torch.bfloat16  # dtype wins, as HF
    assert MegatronBertConfig(torch_dtype="float16").to_dict()["dtype"] == "float16"
    config = MegatronBertConfig(**SMALL)
    assert repr(config).startswith("MegatronBertConfig {") and '"hidden_size": 32' in repr(config)
    config.handle = object()
    assert "handle" in repr(config)  # a value JSON cannot hold does not break repr
