"""NVIDIA Megatron-LM checkpoints: built here, in the release layout, from a known transformers model
(one per fused-QKV layout), then converted and compared output for output."""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from megabert_edu import CheckpointError, MegatronBertForPreTraining, MegatronBertModel
from megabert_edu.checkpoints.megatron_lm import (
    convert_megatron_lm_checkpoint,
    map_megatron_name,
    split_fused_qkv,
)

transformers = pytest.importorskip("transformers")

HIDDEN, HEADS, LAYERS, VOCAB = 128, 2, 2, 64  # 64-wide heads, like every released BERT


@pytest.fixture(scope="module")
def known() -> torch.nn.Module:
    """The model the checkpoints are made from: transformers' MegatronBert with random weights."""
    config = transformers.MegatronBertConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=256, max_position_embeddings=32, layer_norm_eps=1e-5,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.MegatronBertForPreTraining(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, version: float, heads: int = HEADS) -> torch.Tensor:
    """Megatron's fused row order, written out index by index from the documented layouts:
    0: [Q | K | V]
    1.0: row (head * head_dim + dim) * 3 + which
    >= 2.0: row (head * 3 + which) * head_dim + dim
    """
    head_dim = HIDDEN // heads
    parts = (q, k, v)
    rows = []
    for r in range(3 * HIDDEN):
        if version == 0:
            which, head, dim = r // HIDDEN, (r % HIDDEN) // head_dim, r % head_dim
        elif version == 1.0:
            which, head, dim = r % 3, r // (3 * head_dim), (r // 3) % head_dim
        else:
            which, head, dim = (r // head_dim) % 3, r // (3 * head_dim), r % head_dim
        rows.append(parts[which][head * head_dim + dim])
    return torch.stack(rows)


def megatron_checkpoint(
    model,
    version=2.0,
    attention="attention",
    stack="transformer",
    args=True,
    dtype=torch.float32,
    extra_vocab_rows=0,
    heads=HEADS,
) -> dict:
    """The dict NVIDIA's model_optim_rng.pt holds, made from a transformers model's weights."""
    sd = {k: v.detach().clone().to(dtype) for k, v in model.state_dict().items()}
    layers = {}
    for i in range(LAYERS):
        ours, theirs = f"bert.encoder.layer.{i}.", f"layers.{i}."
        for leaf in ("weight", "bias"):
            layers[theirs + f"input_layernorm.{leaf}"] = sd[ours + f"attention.ln.{leaf}"]
            qkv = [sd[ours + f"attention.self.{p}.{leaf}"] for p in ("query", "key", "value")]
            layers[theirs + f"{attention}.query_key_value.{leaf}"] = fuse_qkv(*qkv, version, heads)
            layers[theirs + f"{attention}.dense.{leaf}"] = sd[ours + f"attention.output.dense.{leaf}"]
            layers[theirs + f"post_attention_layernorm.{leaf}"] = sd[ours + f"ln.{leaf}"]
            layers[theirs + f"mlp.dense_h_to_4h.{leaf}"] = sd[ours + f"intermediate.dense.{leaf}"]
            layers[theirs + f"mlp.dense_4h_to_h.{leaf}"] = sd[ours + f"output.dense.{leaf}"]
    layers["final_layernorm.weight"] = sd["bert.encoder.ln.weight"]
    layers["final_layernorm.bias"] = sd["bert.encoder.ln.bias"]
    word = sd["bert.embeddings.word_embeddings.weight"]
    word = torch.cat([word, torch.randn(extra_vocab_rows, HIDDEN).to(dtype)])
    checkpoint = {
        "model": {
            "language_model": {
                "embedding": {
                    "word_embeddings": {"weight": word},
                    "position_embeddings": {"weight": sd["bert.embeddings.position_embeddings.weight"]},
                    "tokentype_embeddings": {"weight": sd["bert.embeddings.token_type_embeddings.weight"]},
                },
                stack: layers,
                "pooler": {
                    "dense.weight": sd["bert.pooler.dense.weight"],
                    "dense.bias": sd["bert.pooler.dense.bias"],
                },
            },
            "lm_head": {
                "bias": sd["cls.predictions.bias"],
                "dense.weight": sd["cls.predictions.transform.dense.weight"],
                "dense.bias": sd["cls.predictions.transform.dense.bias"],
                "layernorm.weight": sd["cls.predictions.transform.LayerNorm.weight"],
                "layernorm.bias": sd["cls.predictions.transform.LayerNorm.bias"],
            },
            "binary_head": {
                "weight": sd["cls.seq_relationship.weight"],
                "bias": sd["cls.seq_relationship.bias"],
            },
        },
    }
    if version:
        checkpoint["checkpoint_version"] = version
    if args:
        checkpoint["args"] = argparse.Namespace(
            hidden_size=HIDDEN, num_layers=LAYERS, num_attention_heads=heads, ffn_hidden_size=256,
            max_position_embeddings=32, padded_vocab_size=VOCAB, layernorm_epsilon=1e-5,
            tokenizer_type="BertWordPieceLowerCase",
        )  # fmt: skip
    return checkpoint


def save_release_zip(checkpoint: dict, path: Path, member="release/mp_rank_00/model_optim_rng.pt") -> Path:
    pt = path.with_suffix(".pt")
    torch.save(checkpoint, pt)
    with zipfile.ZipFile(path, "w") as z:
        z.write(pt, member)
    return path


def assert_same_outputs(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 9:] = 0
    types = (torch.arange(12) >= 6).long().expand(2, 12)
    with torch.no_grad():
        a = ours.eval()(ids, attention_mask=mask, token_type_ids=types)
        b = theirs.eval()(ids, attention_mask=mask, token_type_ids=types)
    torch.testing.assert_close(a.prediction_logits, b.prediction_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.seq_relationship_logits, b.seq_relationship_logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("version", "attention", "stack"),
    [(0, "attention", "transformer"), (1.0, "attention", "transformer"),
     (2.0, "attention", "transformer"), (3.0, "self_attention", "encoder")],
)  # fmt: skip
def test_converted_checkpoint_reproduces_the_known_model(tmp_path, known, version, attention, stack):
    path = save_release_zip(megatron_checkpoint(known, version, attention, stack), tmp_path / "345m.zip")
    config, state_dict = convert_megatron_lm_checkpoint(path)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (
        HIDDEN,
        LAYERS,
        HEADS,
    )
    assert config.layer_norm_position == "pre" and config.vocab_size == VOCAB
    model = MegatronBertForPreTraining(config)
    model.load_state_dict(state_dict)  # every key, nothing extra
    assert_same_outputs(model, known)


def test_a_wrong_qkv_layout_would_be_caught(tmp_path, known):
    """Guard against a test that cannot fail: version 1.0 rows read as version 2.0 give other outputs."""
    checkpoint = megatron_checkpoint(known, 1.0)
    checkpoint["checkpoint_version"] = 2.0
    torch.save(checkpoint, tmp_path / "wrong.pt")
    config, state_dict = convert_megatron_lm_checkpoint(tmp_path / "wrong.pt")
    model = MegatronBertForPreTraining(config)
    model.load_state_dict(state_dict)
    with pytest.raises(AssertionError):
        assert_same_outputs(model, known)


def test_split_fused_qkv_inverts_each_layout():
    q, k, v = (torch.randn(HIDDEN, 5) for _ in range(3))
    for version in (0, 1.0, 2.0, 3.0):
        for got, want in zip(
            split_fused_qkv(fuse_qkv(q, k, v, version), version, HEADS), (q, k, v), strict=True
        ):
            assert torch.equal(got, want), version


def test_from_pretrained_takes_the_zip_directly(tmp_path, known):
    checkpoint = megatron_checkpoint(known)
    # A training checkpoint also pickles its random-number state, numpy arrays included.
    checkpoint["iteration"] = 2_000_000
    checkpoint["rng_state"] = [
        {"np_rng_state": np.random.get_state(), "torch_rng_state": torch.get_rng_state()}
    ]
    path = save_release_zip(checkpoint, tmp_path / "megatron-bert-uncased-345m.zip")
    model = MegatronBertForPreTraining.from_pretrained(path)
    assert model.load_report.ok and not model.load_report.unexpected
    assert_same_outputs(model, known)
    encoder = MegatronBertModel.from_pretrained(path)  # the bare encoder: heads reported, not loaded
    assert any(name.startswith("cls.") for name in encoder.load_report.unexpected)


def test_the_pt_file_itself_in_fp16(tmp_path, known):
    torch.save(megatron_checkpoint(known, dtype=torch.float16), tmp_path / "model_optim_rng.pt")
    config, state_dict = convert_megatron_lm_checkpoint(tmp_path / "model_optim_rng.pt")
    assert state_dict["bert.pooler.dense.weight"].dtype == torch.float16  # the checkpoint's own dtype
    model = MegatronBertForPreTraining(config)
    model.load_state_dict(state_dict)
    rounded = type(known)(known.config)
    rounded.load_state_dict({k: v.half().float() for k, v in known.state_dict().items()})
    assert_same_outputs(model, rounded)


def test_without_args_sizes_come_from_shapes_and_epsilon_is_megatrons(tmp_path, known):
    torch.save(megatron_checkpoint(known, args=False, version=0), tmp_path / "old.pt")
    config, state_dict = convert_megatron_lm_checkpoint(tmp_path / "old.pt", num_attention_heads=HEADS)
    assert config.layer_norm_eps == 1e-5  # Megatron's default, not BERT's 1e-12
    assert (config.hidden_size, config.num_attention_heads, config.intermediate_size) == (HIDDEN, HEADS, 256)
    assert (config.max_position_embeddings, config.num_hidden_layers) == (32, LAYERS)
    model = MegatronBertForPreTraining(config)
    model.load_state_dict(state_dict)
    assert_same_outputs(model, known)


def test_epsilon_and_heads_from_args(tmp_path, known):
    checkpoint = megatron_checkpoint(known)
    checkpoint["args"].layernorm_epsilon = 1e-6
    checkpoint["args"].num_attention_heads = 4
    torch.save(checkpoint, tmp_path / "args.pt")
    config, _ = convert_megatron_lm_checkpoint(tmp_path / "args.pt")
    assert config.layer_norm_eps == 1e-6 and config.num_attention_heads == 4
    config, _ = convert_megatron_lm_checkpoint(tmp_path / "args.pt", num_attention_heads=8)
    assert config.num_attention_heads == 8


def test_vocab_size_comes_from_the_lm_head_bias(tmp_path, known):
    torch.save(megatron_checkpoint(known, extra_vocab_rows=64), tmp_path / "padded.pt")
    config, state_dict = convert_megatron_lm_checkpoint(tmp_path / "padded.pt")
    assert config.vocab_size == VOCAB
    assert state_dict["bert.embeddings.word_embeddings.weight"].shape == (VOCAB, HIDDEN)


def test_args_that_disagree_with_the_tensors_are_an_error(tmp_path, known):
    checkpoint = megatron_checkpoint(known)
    checkpoint["args"].num_layers = 24
    torch.save(checkpoint, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="args.num_layers=24 but the tensors say num_hidden_layers=2"):
        convert_megatron_lm_checkpoint(tmp_path / "bad.pt")


def test_unknown_names_are_an_error(tmp_path, known):
    checkpoint = megatron_checkpoint(known)
    checkpoint["model"]["language_model"]["transformer"]["layers.0.mlp.gate.weight"] = torch.zeros(2)
    torch.save(checkpoint, tmp_path / "odd.pt")
    with pytest.raises(
        CheckpointError, match=r"unknown tensor model\.language_model\.transformer\.layers\.0\.mlp"
    ):
        convert_megatron_lm_checkpoint(tmp_path / "odd.pt")


class Unvetted:
    """Stands in for any class a pickle might name: the safe loader must refuse it."""


def test_pickled_objects_beyond_args_need_trust(tmp_path, known):
    checkpoint = megatron_checkpoint(known)
    checkpoint["args"].hook = Unvetted()
    torch.save(checkpoint, tmp_path / "objects.pt")
    with pytest.raises(CheckpointError, match=r"pickles .*Unvetted.*trust_pickle=True"):
        convert_megatron_lm_checkpoint(tmp_path / "objects.pt")
    config, _ = convert_megatron_lm_checkpoint(tmp_path / "objects.pt", trust_pickle=True)
    assert config.hidden_size == HIDDEN


def test_zip_problems_are_clear_errors(tmp_path, known):
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as z:
        z.writestr("README", "nothing here")
    with pytest.raises(CheckpointError, match="has no"):
        convert_megatron_lm_checkpoint(tmp_path / "empty.zip")
    checkpoint = megatron_checkpoint(known)
    path = save_release_zip(checkpoint, tmp_path / "split.zip")
    with zipfile.ZipFile(path, "a") as z:
        z.write(tmp_path / "split.pt", "release/mp_rank_01/model_optim_rng.pt")
    with pytest.raises(CheckpointError, match="2 model-parallel ranks"):
        convert_megatron_lm_checkpoint(path)
    with pytest.raises(CheckpointError, match="no Megatron-LM checkpoint"):
        convert_megatron_lm_checkpoint(tmp_path / "absent.zip")


def test_truncated_file_is_a_clear_error(tmp_path, known):
    torch.save(megatron_checkpoint(known), tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        convert_megatron_lm_checkpoint(tmp_path / "cut.pt")


def test_name_table_examples():
    assert map_megatron_name("language_model.encoder.layers.7.self_attention.dense.bias") == (
        "bert.encoder.layer.7.attention.output.dense.bias"
    )
    assert map_megatron_name("language_model.transformer.final_layernorm.weight") == "bert.encoder.ln.weight"
    assert map_megatron_name("lm_head.bias") == "cls.predictions.bias"
    assert map_megatron_name("language_model.embedding.word_embeddings.weight.extra") is None
