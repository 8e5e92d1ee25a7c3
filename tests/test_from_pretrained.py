"""from_pretrained / save_pretrained behave like transformers' (issue 8) and load strictly (issue 9).

Loading information and mismatch handling are compared with transformers 4.57.6 on the same directory.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import transformers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import tiny_config
from safetensors.torch import load_file, save_file

import megabert_edu as mb
from megabert_edu import CheckpointError, ConfigError, MegatronBertConfig
from megabert_edu.checkpoints.loading import load_state_dict

GOOGLE = Path(__file__).parent / "fixtures" / "tf" / "google" / "model.ckpt"
IDS = torch.tensor([[5, 9, 11, 3, 7, 2]])


def saved(tmp_path: Path, name: str = "MegatronBertForMaskedLM", seed: int = 0, **overrides) -> Path:
    torch.manual_seed(seed)
    model = getattr(mb, name)(tiny_config(hidden_dropout_prob=0.3, **overrides))
    model.save_pretrained(tmp_path / name)
    return tmp_path / name


def test_returns_an_eval_mode_model_with_repeatable_outputs(tmp_path):
    model = mb.MegatronBertModel.from_pretrained(saved(tmp_path, "MegatronBertModel"))
    assert not model.training and not any(m.training for m in model.modules())
    a, b = model(IDS).last_hidden_state, model(IDS).last_hidden_state
    assert torch.equal(a, b)


def test_num_labels_override_builds_the_classifier_it_names(tmp_path):
    model = mb.MegatronBertForSequenceClassification.from_pretrained(saved(tmp_path), num_labels=5)
    assert model.classifier.out_features == 5 and model.config.num_labels == 5
    assert model.config.id2label == {i: f"LABEL_{i}" for i in range(5)}
    assert sorted(model.load_report.initialized) == ["bert.pooler.dense.bias", "bert.pooler.dense.weight",
                                                      "classifier.bias", "classifier.weight"]
    labels = {0: "neg", 1: "neutral", 2: "pos"}
    model = mb.MegatronBertForSequenceClassification.from_pretrained(saved(tmp_path), id2label=labels)
    assert model.classifier.out_features == 3 and model.config.label2id == {"neg": 0, "neutral": 1, "pos": 2}


def test_config_overrides_apply_before_the_model_is_built(tmp_path):
    model = mb.MegatronBertForCausalLM.from_pretrained(saved(tmp_path), is_decoder=True, hidden_dropout_prob=0.0,
                                                       attention_probs_dropout_prob=0.25)
    assert model.config.is_decoder and model.config.hidden_dropout_prob == 0.0
    assert model.bert.embeddings.dropout.p == 0.0
    with pytest.raises(ConfigError, match="hidden_dropout_prob must be in"):
        mb.MegatronBertModel.from_pretrained(saved(tmp_path), hidden_dropout_prob=1.5)


def test_overrides_and_config_apply_to_tf_checkpoints():
    model = mb.MegatronBertForSequenceClassification.from_pretrained(GOOGLE, num_labels=4, hidden_dropout_prob=0.0)
    assert model.classifier.out_features == 4 and model.config.hidden_dropout_prob == 0.0
    assert not model.training
    config = model.config.copy(num_labels=2)
    assert mb.MegatronBertModel.from_pretrained(GOOGLE, config=config).config.num_labels == 2
    assert config.num_labels == 2  # the caller's config is not changed


def test_config_may_be_a_path(tmp_path):
    path = saved(tmp_path, "MegatronBertModel")
    tiny_config(num_labels=4).save_pretrained(tmp_path / "config_only")
    assert mb.MegatronBertModel.from_pretrained(path, config=tmp_path / "config_only").config.num_labels == 4
    assert mb.MegatronBertModel.from_pretrained(path, config=str(path / "config.json")).config.num_labels == 2


def test_the_callers_config_is_copied_and_overridden(tmp_path):
    config = tiny_config()
    model = mb.MegatronBertForSequenceClassification.from_pretrained(saved(tmp_path), config=config, num_labels=3)
    assert model.config.num_labels == 3 and config.num_labels == 2 and model.config is not config


@pytest.mark.parametrize("dtype", [torch.float16, "float16", torch.bfloat16])
def test_torch_dtype(tmp_path, dtype):
    model = mb.MegatronBertModel.from_pretrained(saved(tmp_path, "MegatronBertModel"), torch_dtype=dtype)
    assert model.dtype == (getattr(torch, dtype) if isinstance(dtype, str) else dtype)


def test_torch_dtype_auto_is_the_stored_dtype(tmp_path):
    model = mb.MegatronBertModel(tiny_config()).half()
    model.save_pretrained(tmp_path)
    assert mb.MegatronBertModel.from_pretrained(tmp_path).dtype == torch.float32  # default, as transformers
    assert mb.MegatronBertModel.from_pretrained(tmp_path, torch_dtype="auto").dtype == torch.float16
    assert mb.MegatronBertModel.from_pretrained(tmp_path, dtype="auto").dtype == torch.float16
    with pytest.raises(ValueError, match="torch_dtype must be a floating-point torch.dtype.*got 'int8'"):
        mb.MegatronBertModel.from_pretrained(tmp_path, torch_dtype="int8")


def test_output_loading_info_matches_transformers(tmp_path):
    path = saved(tmp_path)  # an MLM checkpoint loaded as a classifier: new pooler and classifier, cls.* unused
    model, info = mb.MegatronBertForSequenceClassification.from_pretrained(path, output_loading_info=True)
    _, ref_info = transformers.MegatronBertForSequenceClassification.from_pretrained(path, output_loading_info=True)
    assert set(info) == set(ref_info) == {"missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"}
    for key in ("missing_keys", "unexpected_keys"):
        ref = {k for k in ref_info[key] if not k.endswith("position_ids")}
        assert set(info[key]) == ref, key
    assert info["mismatched_keys"] == [] and info["error_msgs"] == []


def test_ignore_mismatched_sizes_reinitialises_and_reports_like_transformers(tmp_path):
    path = saved(tmp_path, "MegatronBertForSequenceClassification")  # 2 labels
    with pytest.raises(CheckpointError, match=r"shape mismatch for classifier.weight: checkpoint \(2, 32\) vs model "
                                              r"\(5, 32\)"):
        mb.MegatronBertForSequenceClassification.from_pretrained(path, num_labels=5)
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes=True"):  # what transformers raises
        mb.MegatronBertForSequenceClassification.from_pretrained(path, num_labels=5)
    model, info = mb.MegatronBertForSequenceClassification.from_pretrained(
        path, num_labels=5, ignore_mismatched_sizes=True, output_loading_info=True)
    _, ref_info = transformers.MegatronBertForSequenceClassification.from_pretrained(
        path, num_labels=5, ignore_mismatched_sizes=True, output_loading_info=True)
    assert sorted(info["mismatched_keys"]) == sorted(ref_info["mismatched_keys"]) == ["classifier.bias",
                                                                                      "classifier.weight"]
    assert sorted(model.load_report.reinitialized) == [("classifier.bias", (2,), (5,)),
                                                        ("classifier.weight", (2, 32), (5, 32))]
    assert model.classifier.weight.shape == (5, 32)
    stored = load_file(path / "model.safetensors")
    assert torch.equal(model.bert.pooler.dense.weight, stored["bert.pooler.dense.weight"])  # the rest still loads


def test_state_dict_argument_with_and_without_a_path(tmp_path):
    torch.manual_seed(3)
    source = mb.MegatronBertModel(tiny_config())
    model = mb.MegatronBertModel.from_pretrained(None, config=tiny_config(), state_dict=source.state_dict())
    assert torch.equal(model(IDS).last_hidden_state, source.eval()(IDS).last_hidden_state)
    path = saved(tmp_path, "MegatronBertModel")
    model = mb.MegatronBertModel.from_pretrained(path, state_dict=source.state_dict())  # config from the path
    assert torch.equal(model.embeddings.word_embeddings.weight, source.embeddings.word_embeddings.weight)
    with pytest.raises(TypeError, match=r"needs config=MegatronBertConfig"):
        mb.MegatronBertModel.from_pretrained(None, state_dict=source.state_dict())
    with pytest.raises(TypeError, match="needs a checkpoint path"):
        mb.MegatronBertModel.from_pretrained(None)


def test_device_and_map_location(tmp_path):
    path = saved(tmp_path, "MegatronBertModel")
    assert mb.MegatronBertModel.from_pretrained(path, device="cpu").device.type == "cpu"
    assert mb.MegatronBertModel.from_pretrained(path, map_location=torch.device("cpu")).device.type == "cpu"


@pytest.mark.parametrize("keyword", ["num_attention_head", "foo_bar", "revision"])
def test_an_unknown_keyword_is_a_type_error_naming_it(tmp_path, keyword):
    with pytest.raises(TypeError, match=rf"unknown config field\(s\) \['{keyword}'\]"):
        mb.MegatronBertModel.from_pretrained(saved(tmp_path, "MegatronBertModel"), **{keyword: 1})


def test_safe_serialization_false_writes_pytorch_model_bin_that_both_libraries_load(tmp_path):
    torch.manual_seed(0)
    model = mb.MegatronBertForMaskedLM(tiny_config()).eval()
    model.save_pretrained(tmp_path, safe_serialization=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "pytorch_model.bin"]
    ours = mb.MegatronBertForMaskedLM.from_pretrained(tmp_path)
    theirs = transformers.MegatronBertForMaskedLM.from_pretrained(tmp_path).eval()
    expected = model(IDS).logits
    torch.testing.assert_close(ours(IDS).logits, expected, atol=0, rtol=0)
    torch.testing.assert_close(theirs(IDS).logits, expected, atol=1e-5, rtol=0)
    model.save_pretrained(tmp_path)  # back to safetensors: the stale .bin is not left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_save_pretrained_keywords(tmp_path):
    model = mb.MegatronBertModel(tiny_config())
    model.save_pretrained(tmp_path / "not_main", is_main_process=False)
    assert not (tmp_path / "not_main").exists()
    model.save_pretrained(tmp_path / "fits", max_shard_size="10MB")
    assert (tmp_path / "fits" / "model.safetensors").is_file()
    with pytest.raises(NotImplementedError, match=r"more than max_shard_size='1KB'.*unsharded"):
        model.save_pretrained(tmp_path / "sharded", max_shard_size="1KB")
    with pytest.raises(NotImplementedError, match="push_to_hub is not supported"):
        model.save_pretrained(tmp_path / "hub", push_to_hub=True)
    with pytest.raises(TypeError, match="variant"):
        model.save_pretrained(tmp_path / "variant", variant="fp16")
    with pytest.raises(ValueError, match="max_shard_size must be a number of bytes"):
        model.save_pretrained(tmp_path / "bad", max_shard_size="lots")
    assert not [p for p in tmp_path.iterdir() if p.name not in ("fits",)]


def test_save_pretrained_with_a_state_dict_argument(tmp_path):
    torch.manual_seed(1)
    model, other = mb.MegatronBertForMaskedLM(tiny_config()), mb.MegatronBertForMaskedLM(tiny_config())
    model.save_pretrained(tmp_path, state_dict=other.state_dict())
    loaded = mb.MegatronBertForMaskedLM.from_pretrained(tmp_path)
    assert torch.equal(loaded.cls.predictions.transform.dense.weight, other.cls.predictions.transform.dense.weight)


def test_strict_load_fails_on_a_layer_the_config_leaves_out(tmp_path):
    path = saved(tmp_path, "MegatronBertModel")  # 3 layers
    with pytest.raises(CheckpointError, match=r"encoder tensors the config leaves out \(16\): encoder.layer.2."):
        mb.MegatronBertModel.from_pretrained(path, num_hidden_layers=2)
    model = mb.MegatronBertModel.from_pretrained(path, num_hidden_layers=2, strict=False)
    assert all(k.startswith("encoder.layer.2.") for k in model.load_report.unexpected_body)
    assert len(model.load_report.unexpected_body) == 16


def test_strict_load_fails_on_relative_position_weights_the_config_leaves_out(tmp_path):
    path = saved(tmp_path, "MegatronBertModel", position_embedding_type="relative_key")
    with pytest.raises(CheckpointError, match=r"leaves out.*encoder.layer.0.attention.self.distance_embedding.weight"):
        mb.MegatronBertModel.from_pretrained(path, position_embedding_type="absolute")


def test_another_tasks_head_is_dropped_and_reported(tmp_path):
    model = mb.MegatronBertModel.from_pretrained(saved(tmp_path, "MegatronBertForPreTraining"))
    assert model.load_report.unexpected and all(k.startswith("cls.") for k in model.load_report.unexpected)
    assert not model.load_report.unexpected_body
    qa = mb.MegatronBertForTokenClassification.from_pretrained(saved(tmp_path, "MegatronBertForQuestionAnswering"))
    assert sorted(qa.load_report.unexpected) == ["qa_outputs.bias", "qa_outputs.weight"]


def test_shapes_are_checked_before_any_tensor_is_copied():
    torch.manual_seed(0)
    model = mb.MegatronBertModel(tiny_config())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    other = mb.MegatronBertModel(tiny_config()).state_dict()
    other["encoder.layer.2.output.dense.weight"] = torch.zeros(5, 5)
    with pytest.raises(CheckpointError, match="shape mismatch for encoder.layer.2.output.dense.weight"):
        load_state_dict(model, other)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_config_file_errors_name_the_file_and_field(tmp_path):
    path = saved(tmp_path, "MegatronBertModel")
    text = (path / "config.json").read_text().replace('"is_decoder": false', '"is_decoder": "false"')
    (path / "config.json").write_text(text)
    with pytest.raises(ConfigError, match=r"config.json: is_decoder must be true or false, got 'false' \(str\)"):
        mb.MegatronBertModel.from_pretrained(path)


def test_hidden_act_unknown_to_the_model_is_a_config_error(tmp_path):
    path = saved(tmp_path, "MegatronBertModel")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ConfigError, match="hidden_act='swiglu' is not supported"):
            mb.MegatronBertModel.from_pretrained(path, hidden_act="swiglu")


def test_config_overrides_keep_a_validated_config(tmp_path):
    with pytest.raises(ConfigError, match="num_hidden_layers must be >= 1, got 0"):
        mb.MegatronBertModel.from_pretrained(saved(tmp_path, "MegatronBertModel"), num_hidden_layers=0)
    assert isinstance(MegatronBertConfig.from_pretrained(saved(tmp_path, "MegatronBertModel")), MegatronBertConfig)


def megatron_lm_file(model: mb.MegatronBertForPreTraining, path: Path) -> Path:
    """The dict NVIDIA's model_optim_rng.pt holds (checkpoint_version 0: fused [Q|K|V], no stored args)."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    layers = {}
    for i in range(model.config.num_hidden_layers):
        ours, theirs = f"bert.encoder.layer.{i}.", f"layers.{i}."
        for leaf in ("weight", "bias"):
            qkv = [sd[f"{ours}attention.self.{p}.{leaf}"] for p in ("query", "key", "value")]
            layers[f"{theirs}attention.query_key_value.{leaf}"] = torch.cat(qkv)
            for megatron, name in (("input_layernorm", "attention.ln"), ("attention.dense", "attention.output.dense"),
                                   ("post_attention_layernorm", "ln"), ("mlp.dense_h_to_4h", "intermediate.dense"),
                                   ("mlp.dense_4h_to_h", "output.dense")):
                layers[f"{theirs}{megatron}.{leaf}"] = sd[f"{ours}{name}.{leaf}"]
    layers.update({f"final_layernorm.{leaf}": sd[f"bert.encoder.ln.{leaf}"] for leaf in ("weight", "bias")})
    embedding = {name: {"weight": sd[f"bert.embeddings.{ours}_embeddings.weight"]}
                 for name, ours in (("word_embeddings", "word"), ("position_embeddings", "position"),
                                    ("tokentype_embeddings", "token_type"))}
    lm_head = {"bias": sd["cls.predictions.bias"], "dense.weight": sd["cls.predictions.transform.dense.weight"],
               "dense.bias": sd["cls.predictions.transform.dense.bias"],
               "layernorm.weight": sd["cls.predictions.transform.LayerNorm.weight"],
               "layernorm.bias": sd["cls.predictions.transform.LayerNorm.bias"]}
    torch.save({"model": {
        "language_model": {"embedding": embedding, "transformer": layers,
                           "pooler": {"dense.weight": sd["bert.pooler.dense.weight"],
                                      "dense.bias": sd["bert.pooler.dense.bias"]}},
        "lm_head": lm_head,
        "binary_head": {"weight": sd["cls.seq_relationship.weight"], "bias": sd["cls.seq_relationship.bias"]},
    }}, path)
    return path


def test_config_and_overrides_reach_megatron_lm_files(tmp_path):
    """A file saved without args: only config= or an override can say the model has 4 heads."""
    config = tiny_config(hidden_size=128, num_attention_heads=4, layer_norm_eps=1e-5)
    torch.manual_seed(0)
    model = mb.MegatronBertForPreTraining(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    path = megatron_lm_file(model, tmp_path / "model_optim_rng.pt")
    with pytest.raises(CheckpointError, match="stores no args.num_attention_heads"):
        mb.MegatronBertForPreTraining.from_pretrained(path)
    by_override = mb.MegatronBertForPreTraining.from_pretrained(path, num_attention_heads=4)
    assert by_override.config.num_attention_heads == 4
    loaded = mb.MegatronBertForPreTraining.from_pretrained(path, config=config, hidden_dropout_prob=0.05)
    assert loaded.config.num_attention_heads == 4 and loaded.config.hidden_dropout_prob == 0.05
    assert not loaded.training
    torch.testing.assert_close(loaded(IDS).prediction_logits, model(IDS).prediction_logits, atol=1e-5, rtol=0)
    classifier = mb.MegatronBertForSequenceClassification.from_pretrained(path, config=config, num_labels=3)
    assert classifier.classifier.out_features == 3


@pytest.fixture(scope="module")
def saved_bytes(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pristine")
    torch.manual_seed(0)
    model = mb.MegatronBertForMaskedLM(tiny_config()).eval()
    model.save_pretrained(directory)
    return model, (directory / "config.json").read_text(), (directory / "model.safetensors").read_bytes()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_weights_raise_our_error_or_load_bit_identical(tmp_path, saved_bytes, data):
    """A flipped byte or a cut anywhere in model.safetensors: the checksum or the reader notices, or the
    damage missed every tensor (the header's padding, the metadata's name) and the weights are the same."""
    model, config_text, blob = saved_bytes
    damaged = bytearray(blob)
    if data.draw(st.booleans(), label="truncate"):
        damaged = damaged[: data.draw(st.integers(0, len(blob) - 1), label="length")]
    else:
        damaged[data.draw(st.integers(0, len(blob) - 1), label="offset")] ^= data.draw(st.integers(1, 255))
    (tmp_path / "config.json").write_text(config_text)
    (tmp_path / "model.safetensors").write_bytes(bytes(damaged))
    try:
        loaded = mb.MegatronBertForMaskedLM.from_pretrained(tmp_path)
    except CheckpointError:
        return
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key


def test_tensors_the_checkpoint_lacks_are_initialised_as_in_a_fresh_model(tmp_path):
    """from_pretrained skips random init for what it loads; what it does not load must still be initialised."""
    path = saved(tmp_path)  # MLM: no pooler, no classifier
    torch.manual_seed(5)
    model = mb.MegatronBertForSequenceClassification.from_pretrained(path, initializer_range=0.5)
    for weight in (model.classifier.weight, model.bert.pooler.dense.weight):
        assert 0.4 < float(weight.std()) < 0.6  # N(0, initializer_range), not leftover memory
    assert torch.equal(model.classifier.bias, torch.zeros(2))
    stored = load_file(path / "model.safetensors")
    assert torch.equal(model.bert.encoder.layer[0].intermediate.dense.weight,
                       stored["bert.encoder.layer.0.intermediate.dense.weight"])
    del stored["bert.encoder.layer.1.attention.self.key.weight"], stored["bert.encoder.ln.weight"]
    save_file(stored, path / "model.safetensors", metadata={"format": "pt"})
    partial = mb.MegatronBertForMaskedLM.from_pretrained(path, strict=False, initializer_range=0.5)
    key = partial.bert.encoder.layer[1].attention.self.key
    assert 0.4 < float(key.weight.std()) < 0.6
    assert torch.equal(key.bias, stored["bert.encoder.layer.1.attention.self.key.bias"])  # loaded after init
    assert torch.equal(partial.bert.encoder.ln.weight, torch.ones(32))
    assert torch.equal(partial.bert.encoder.ln.bias, stored["bert.encoder.ln.bias"])
