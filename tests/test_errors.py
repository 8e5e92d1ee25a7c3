"""Bad input gets a clear error that names the problem."""

from __future__ import annotations

import pytest
import torch
from reference import tiny_config

import megabert_edu
from megabert_edu import CheckpointError, MegatronBertConfig, MegatronBertForMaskedLM, MegatronBertModel


@pytest.fixture(scope="module")
def model():
    return MegatronBertModel(tiny_config()).eval()


def test_token_id_out_of_range(model):
    with pytest.raises(ValueError, match=r"token id 99 is out of range \[0, 99\)"):
        model(torch.tensor([[1, 2, 99]]))
    with pytest.raises(ValueError, match=r"token id -1 is out of range"):
        model(torch.tensor([[1, -1, 3]]))


def test_non_integer_input_ids(model):
    with pytest.raises(TypeError, match="input_ids must be an integer tensor.*float32"):
        model(torch.tensor([[1.0, 2.0]]))


def test_input_ids_must_be_two_dimensional(model):
    with pytest.raises(ValueError, match=r"input_ids must have shape \(batch, seq_len\)"):
        model(torch.tensor([1, 2, 3]))


def test_sequence_longer_than_max_position_embeddings(model):
    with pytest.raises(ValueError, match="sequence length 65 .* longer than max_position_embeddings=64"):
        model(torch.ones(1, 65, dtype=torch.long))


def test_attention_mask_shape_mismatch(model):
    with pytest.raises(ValueError, match=r"attention_mask shape \(1, 4\) does not match \(batch, seq_len\) = \(1, 3\)"):
        model(torch.tensor([[1, 2, 3]]), attention_mask=torch.ones(1, 4))


def test_token_type_ids_shape_and_range(model):
    with pytest.raises(ValueError, match=r"token_type_ids shape \(1, 2\) does not match input shape \(1, 3\)"):
        model(torch.tensor([[1, 2, 3]]), token_type_ids=torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"token_type_ids must be in \[0, 2\)"):
        model(torch.tensor([[1, 2, 3]]), token_type_ids=torch.tensor([[0, 1, 2]]))


def test_head_mask_shape(model):
    with pytest.raises(ValueError, match="head_mask must have shape"):
        model(torch.tensor([[1, 2]]), head_mask=torch.ones(2, 4))


def test_both_or_neither_of_ids_and_embeds(model):
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model()


def test_prune_requests_for_missing_layers_or_heads(model):
    with pytest.raises(ValueError, match="cannot prune layer 7: the model has layers 0..2"):
        model.prune_heads({7: [0]})
    with pytest.raises(ValueError, match=r"cannot prune heads \[4\] of layer 0: heads are numbered 0..3"):
        model.prune_heads({0: [4]})
    with pytest.raises(ValueError, match="cannot prune every head of layer 1"):
        model.prune_heads({1: [0, 1, 2, 3]})


def test_bad_config_values():
    config = MegatronBertConfig(hidden_size=30, num_attention_heads=4)  # accepted, as in transformers
    with pytest.raises(ValueError, match="not a multiple of num_attention_heads"):
        MegatronBertModel(config)  # ... and refused when a model is built
    with pytest.raises(ValueError, match="position_embedding_type='rotary' is not one of"):
        MegatronBertConfig(position_embedding_type="rotary")
    with pytest.raises(ValueError, match="layer_norm_position"):
        MegatronBertConfig(layer_norm_position="middle")


def test_missing_path():
    with pytest.raises(FileNotFoundError, match="no checkpoint at /nonexistent/model"):
        MegatronBertModel.from_pretrained("/nonexistent/model")


def test_checkpoint_shape_mismatch_lists_every_name_and_both_shapes(tmp_path):
    MegatronBertModel(tiny_config()).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError) as info:
        MegatronBertModel.from_pretrained(tmp_path, hidden_size=48, num_attention_heads=4)
    message = str(info.value)
    assert "shape mismatch for embeddings.word_embeddings.weight: checkpoint (99, 32) vs model (99, 48)" in message
    assert "encoder.layer.2.output.dense.weight" in message


def test_checkpoint_missing_tensors_are_listed(tmp_path):
    from safetensors.torch import load_file, save_file

    MegatronBertForMaskedLM(tiny_config()).save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["bert.encoder.layer.1.attention.self.key.weight"]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"missing \(1\): bert.encoder.layer.1.attention.self.key.weight"):
        MegatronBertForMaskedLM.from_pretrained(tmp_path)
    model = MegatronBertForMaskedLM.from_pretrained(tmp_path, strict=False)
    assert model.load_report.missing == ["bert.encoder.layer.1.attention.self.key.weight"]


def test_truncated_weights_file(tmp_path):
    MegatronBertModel(tiny_config()).save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        MegatronBertModel.from_pretrained(tmp_path)


def test_corrupt_config_json(tmp_path):
    MegatronBertModel(tiny_config()).save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        MegatronBertModel.from_pretrained(tmp_path)


def test_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    model = MegatronBertModel(tiny_config())
    model.save_pretrained(tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_encoder_hidden_states_without_cross_attention():
    model = megabert_edu.MegatronBertForCausalLM(tiny_config(is_decoder=True)).eval()
    with pytest.raises(ValueError, match="no cross-attention"):
        model(torch.tensor([[1, 2]]), encoder_hidden_states=torch.zeros(1, 3, 32))
