"""`python -m megabert_edu convert SRC DST`: TF or Megatron-LM checkpoint -> an HF-style directory."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from megabert_edu import (
    CheckpointError,
    MegatronBertConfig,
    MegatronBertForPreTraining,
    MegatronBertForSequenceClassification,
)
from megabert_edu.__main__ import main
from megabert_edu.checkpoints.convert import convert
from megabert_edu.checkpoints.tf import read_tf_checkpoint, write_tf_checkpoint

FIXTURES = Path(__file__).parent / "fixtures" / "tf"
ROOT = Path(__file__).parent.parent


def batch() -> dict[str, torch.Tensor]:
    ids = torch.tensor([[2, 7, 11, 3, 40, 5, 0, 0], [2, 9, 9, 13, 17, 19, 23, 3]])
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def test_cli_converts_a_google_checkpoint_that_transformers_loads(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    main(["convert", str(FIXTURES / "google"), str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert "loaded 46" in printed and "skipped 93" in printed and "missing 0" in printed
    assert "BertForPreTraining" in printed
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors"]

    original = MegatronBertForPreTraining.from_pretrained(FIXTURES / "google").eval()
    theirs = transformers.BertForPreTraining.from_pretrained(tmp_path / "out").eval()
    ours = MegatronBertForPreTraining.from_pretrained(tmp_path / "out").eval()
    assert ours.config.layer_norm_position == "post"
    with torch.no_grad():
        want = original(**batch()).prediction_logits
        torch.testing.assert_close(theirs(**batch()).prediction_logits, want, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours(**batch()).prediction_logits, want, atol=0, rtol=0)


def test_megatron_named_tf_checkpoint_converts_to_megatron_bert(tmp_path):
    transformers = pytest.importorskip("transformers")
    report = convert(FIXTURES / "megatron" / "model.ckpt", tmp_path / "out")
    assert report.ok and len(report.skipped) == 93
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "megatron-bert"
    original = MegatronBertForPreTraining.from_pretrained(FIXTURES / "megatron").eval()
    theirs = transformers.MegatronBertForPreTraining.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        want = original(**batch()).seq_relationship_logits
        torch.testing.assert_close(theirs(**batch()).seq_relationship_logits, want, atol=1e-5, rtol=0)


def test_classifier_checkpoint_becomes_a_sequence_classifier(tmp_path):
    """Google's run_classifier.py leaves output_weights [num_labels, hidden] at the top level."""
    arrays = {k: v for k, v in read_tf_checkpoint(FIXTURES / "google").items() if not k.startswith("cls/")}
    arrays["output_weights"] = torch.randn(3, 32).numpy()
    arrays["output_bias"] = torch.randn(3).numpy()
    write_tf_checkpoint(tmp_path / "glue" / "model.ckpt", arrays)
    shutil.copy(FIXTURES / "google" / "bert_config.json", tmp_path / "glue")
    convert(tmp_path / "glue", tmp_path / "out")
    model = MegatronBertForSequenceClassification.from_pretrained(tmp_path / "out")
    assert model.config.num_labels == 3
    assert torch.equal(model.classifier.weight, torch.from_numpy(arrays["output_weights"]))


LAYER_OPS = [  # (Megatron-LM op inside layers.N, our module inside bert.encoder.layer.N)
    ("input_layernorm", "attention.ln"),
    ("attention.dense", "attention.output.dense"),
    ("post_attention_layernorm", "ln"),
    ("mlp.dense_h_to_4h", "intermediate.dense"),
    ("mlp.dense_4h_to_h", "output.dense"),
]
LEAVES = ("weight", "bias")


def test_megatron_lm_zip_converts(tmp_path):
    """A release-layout .zip (checkpoint_version 0: fused rows are [Q | K | V]) from a known model."""
    config = MegatronBertConfig(
        vocab_size=50, hidden_size=64, num_hidden_layers=1, num_attention_heads=1,
        intermediate_size=96, max_position_embeddings=16, layer_norm_eps=1e-5,
    )  # fmt: skip
    torch.manual_seed(0)
    known = MegatronBertForPreTraining(config).eval()
    sd = known.state_dict()
    layer = {}
    for leaf in LEAVES:
        for theirs, ours in LAYER_OPS:
            layer[f"layers.0.{theirs}.{leaf}"] = sd[f"bert.encoder.layer.0.{ours}.{leaf}"]
        parts = [sd[f"bert.encoder.layer.0.attention.self.{p}.{leaf}"] for p in ("query", "key", "value")]
        layer[f"layers.0.attention.query_key_value.{leaf}"] = torch.cat(parts)
        layer[f"final_layernorm.{leaf}"] = sd[f"bert.encoder.ln.{leaf}"]
    embeddings = {"word": "word", "position": "position", "tokentype": "token_type"}
    lm_head = {"bias": sd["cls.predictions.bias"]}
    for leaf in LEAVES:
        lm_head[f"dense.{leaf}"] = sd[f"cls.predictions.transform.dense.{leaf}"]
        lm_head[f"layernorm.{leaf}"] = sd[f"cls.predictions.transform.LayerNorm.{leaf}"]
    checkpoint = {
        "model": {
            "language_model": {
                "embedding": {
                    f"{theirs}_embeddings": {"weight": sd[f"bert.embeddings.{ours}_embeddings.weight"]}
                    for theirs, ours in embeddings.items()
                },
                "transformer": layer,
                "pooler": {f"dense.{leaf}": sd[f"bert.pooler.dense.{leaf}"] for leaf in LEAVES},
            },
            "lm_head": lm_head,
            "binary_head": {leaf: sd[f"cls.seq_relationship.{leaf}"] for leaf in LEAVES},
        }
    }
    torch.save(checkpoint, tmp_path / "model_optim_rng.pt")
    with zipfile.ZipFile(tmp_path / "megatron.zip", "w") as z:
        z.write(tmp_path / "model_optim_rng.pt", "release/mp_rank_00/model_optim_rng.pt")

    # Saved without its args, the file does not say how many heads it has: that must be given.
    with pytest.raises(CheckpointError, match=r"megatron\.zip stores no args\.num_attention_heads"):
        convert(tmp_path / "megatron.zip", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    report = convert(tmp_path / "megatron.zip", tmp_path / "out", config=tmp_path / "config.json")
    assert report.ok and not report.unexpected
    converted = MegatronBertForPreTraining.from_pretrained(tmp_path / "out").eval()
    assert converted.config.layer_norm_eps == 1e-5
    with torch.no_grad():
        torch.testing.assert_close(converted(**batch()).prediction_logits, known(**batch()).prediction_logits)


def test_tf_checkpoint_without_config_needs_the_config_flag(tmp_path, capsys):
    for f in (FIXTURES / "google").glob("model.ckpt.*"):
        shutil.copy(f, tmp_path / f.name)
    with pytest.raises(CheckpointError, match="bert_config.json"):
        convert(tmp_path / "model.ckpt", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written on failure
    main(["convert", str(tmp_path / "model.ckpt"), str(tmp_path / "out"),
          "--config", str(FIXTURES / "google" / "bert_config.json")])  # fmt: skip
    assert "loaded 46" in capsys.readouterr().out


def test_cli_reports_errors_without_a_traceback(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", str(tmp_path / "notes.txt"), str(tmp_path / "out")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "notes.txt is neither a TF checkpoint" in err


def test_python_dash_m_entry_point(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "megabert_edu", "convert", str(FIXTURES / "google"), str(tmp_path / "out")],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "LoadReport" in result.stdout and (tmp_path / "out" / "model.safetensors").is_file()
