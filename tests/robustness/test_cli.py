"""``python -m megabert_edu``: every failure is one line on stderr naming the file and the problem, exit status 1
(2 for a usage error), no traceback unless ``--debug`` (issue 9)."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import megabert_edu as mb
from megabert_edu.__main__ import main
from megabert_edu.checkpoints.tf import state_dict_to_tf

FIELDS = dict(vocab_size=20, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24,
              max_position_embeddings=12, type_vocab_size=2, layer_norm_position="post")  # fmt: skip
ROOT = Path(__file__).parents[2]


def tf_bundle(folder: Path, drop: str | None = None) -> Path:
    """A tiny Google-named checkpoint with bert_config.json beside it (optionally missing one tensor)."""
    torch.manual_seed(0)
    arrays = state_dict_to_tf(mb.MegatronBertForPreTraining(mb.MegatronBertConfig(**FIELDS)).state_dict())
    arrays["global_step"] = np.int64(7)
    arrays.pop(drop, None)
    mb.write_tf_checkpoint(folder / "model.ckpt", arrays)
    (folder / "bert_config.json").write_text(json.dumps(FIELDS))
    return folder / "model.ckpt"


def megatron_pt(path: Path, args: bool = True, extra=None) -> Path:
    """A tiny Megatron-LM .pt (checkpoint_version 0: fused rows [Q | K | V])."""
    torch.manual_seed(0)
    sd = mb.MegatronBertForPreTraining(mb.MegatronBertConfig(**{**FIELDS, "layer_norm_position": "pre"})).state_dict()
    layers = {}
    for i in range(2):
        p = f"bert.encoder.layer.{i}."
        for leaf in ("weight", "bias"):
            qkv = [sd[f"{p}attention.self.{x}.{leaf}"] for x in ("query", "key", "value")]
            layers[f"layers.{i}.attention.query_key_value.{leaf}"] = torch.cat(qkv)
            for theirs, ours in (("input_layernorm", "attention.ln"), ("attention.dense", "attention.output.dense"),
                                 ("post_attention_layernorm", "ln"), ("mlp.dense_h_to_4h", "intermediate.dense"),
                                 ("mlp.dense_4h_to_h", "output.dense")):  # fmt: skip
                layers[f"layers.{i}.{theirs}.{leaf}"] = sd[f"{p}{ours}.{leaf}"]
    layers.update({f"final_layernorm.{leaf}": sd[f"bert.encoder.ln.{leaf}"] for leaf in ("weight", "bias")})
    embedding = {f"{m}_embeddings": {"weight": sd[f"bert.embeddings.{o}_embeddings.weight"]}
                 for m, o in (("word", "word"), ("position", "position"), ("tokentype", "token_type"))}  # fmt: skip
    checkpoint = {"model": {"language_model": {"embedding": embedding, "transformer": layers}}}
    if args:
        checkpoint["args"] = argparse.Namespace(num_attention_heads=4, extra=extra)
    torch.save(checkpoint, path)
    return path


class Unvetted:
    """A class the safe unpickler must refuse."""


def fail(capsys, *argv: str, status: int = 1) -> str:
    """Run the CLI, expect it to fail with ``status``; return stderr, checked to be one line without a traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main([*map(str, argv)])
    assert exit_info.value.code == status
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: "), captured.err
    assert "Traceback" not in captured.err and not captured.out
    return captured.err


def test_missing_source_is_reported_as_missing(tmp_path, capsys):
    err = fail(capsys, "convert", tmp_path / "nowhere" / "model.ckpt", tmp_path / "out")
    assert "nowhere/model.ckpt does not exist" in err
    assert not (tmp_path / "out").exists()


def test_corrupt_tf_tensor_names_file_and_tensor(tmp_path, capsys):
    prefix = tf_bundle(tmp_path)
    data = tmp_path / "model.ckpt.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 0x01  # the last tensor in the file
    data.write_bytes(bytes(raw))
    err = fail(capsys, "convert", prefix, tmp_path / "out")
    assert "model.ckpt.data-00000-of-00001 is corrupt: checksum mismatch for tensor 'global_step'" in err


def test_two_checkpoints_in_the_source_directory(tmp_path, capsys):
    tf_bundle(tmp_path)
    for f in tmp_path.glob("model.ckpt.*"):
        shutil.copy(f, tmp_path / f.name.replace("model.ckpt", "model.ckpt-9"))
    err = fail(capsys, "convert", tmp_path, tmp_path / "out")
    assert "holds 2 TF checkpoints (model.ckpt, model.ckpt-9)" in err


def test_multi_line_load_error_becomes_one_line(tmp_path, capsys):
    prefix = tf_bundle(tmp_path, drop="bert/encoder/layer_1/output/dense/bias")
    err = fail(capsys, "convert", prefix, tmp_path / "out")
    assert "could not load TF checkpoint" in err and "missing (1): bert.encoder.layer.1.output.dense.bias" in err


def test_refused_pickle_says_what_trust_pickle_does(tmp_path, capsys):
    path = megatron_pt(tmp_path / "model_optim_rng.pt", extra=Unvetted())
    err = fail(capsys, "convert", path, tmp_path / "out")
    assert f"model_optim_rng.pt pickles {__name__}.Unvetted" in err and "--trust-pickle" in err
    main(["convert", str(path), str(tmp_path / "out"), "--trust-pickle"])
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_megatron_without_heads_needs_config(tmp_path, capsys):
    path = megatron_pt(tmp_path / "old.pt", args=False)
    err = fail(capsys, "convert", path, tmp_path / "out")
    assert "old.pt stores no args.num_attention_heads" in err and "--config" in err
    (tmp_path / "config.json").write_text(json.dumps({**FIELDS, "layer_norm_position": "pre"}))
    main(["convert", str(path), str(tmp_path / "out"), "--config", str(tmp_path / "config.json")])
    assert mb.MegatronBertModel.from_pretrained(tmp_path / "out").config.num_attention_heads == 4


@pytest.mark.parametrize("kind", ["tf", "megatron"])
def test_missing_config_file_is_named(tmp_path, capsys, kind):
    source = tf_bundle(tmp_path) if kind == "tf" else megatron_pt(tmp_path / "m.pt")
    err = fail(capsys, "convert", source, tmp_path / "out", "--config", tmp_path / "absent.json")
    assert "absent.json" in err and "not found" in err


def test_bad_config_file_is_named(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{oops")
    source = megatron_pt(tmp_path / "m.pt")
    err = fail(capsys, "convert", source, tmp_path / "out", "--config", tmp_path / "config.json")
    assert "config.json is not valid JSON" in err


def test_destination_that_is_a_file(tmp_path, capsys):
    (tmp_path / "out").write_text("I am a file")
    err = fail(capsys, "convert", tf_bundle(tmp_path), tmp_path / "out")
    assert str(tmp_path / "out") in err


def test_usage_errors_are_one_line_with_status_2(tmp_path, capsys):
    err = fail(capsys, "convert", tmp_path, status=2)
    assert "the following arguments are required: dst" in err and "--help" in err
    fail(capsys, "explode", status=2)


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_exception(tmp_path, where):
    argv = ["convert", str(tmp_path / "missing"), str(tmp_path / "out")]
    argv = ["--debug", *argv] if where == "before" else [*argv, "--debug"]
    with pytest.raises(FileNotFoundError, match="missing does not exist"):
        main(argv)


def test_python_dash_m_failure_has_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "megabert_edu", "convert", str(tmp_path / "missing.zip"),
                             str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT, timeout=300)  # fmt: skip
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "missing.zip does not exist" in result.stderr
