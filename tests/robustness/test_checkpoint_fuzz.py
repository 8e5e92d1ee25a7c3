"""Random byte flips and truncations of TF bundles and Megatron-LM files (issue 9, property-based).

Each damaged file must either raise CheckpointError or load weights bit-identical to the undamaged
file's: never another exception, never different weights. Checksums cover every byte that matters
(TF: each tensor and index block, the footer checked field by field; Megatron-LM: zip CRC-32s, which
torch.load itself ignores), so a damaged byte either fails a check or did not matter. (A bare .pt in
torch's legacy, pre-1.6 format has no checksum at all; inside a release .zip the zip's CRC covers it.)
"""

from __future__ import annotations

import argparse
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import megabert_edu as mb
from megabert_edu.checkpoints.megatron_lm import convert_megatron_lm_checkpoint
from megabert_edu.checkpoints.tf import load_tf_weights, state_dict_to_tf

FIELDS = dict(vocab_size=11, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=12,
              max_position_embeddings=6, type_vocab_size=2)  # fmt: skip
FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# One damage: flip some bits of one byte, or cut the file short. Positions are taken modulo the length.
damage = st.tuples(st.sampled_from(["flip", "truncate"]), st.integers(0, 1 << 30), st.integers(1, 255))


def damaged(data: bytes, how: tuple[str, int, int]) -> bytes:
    kind, position, bits = how
    if kind == "truncate":
        return data[: position % len(data)]
    raw = bytearray(data)
    raw[position % len(raw)] ^= bits
    return bytes(raw)


def assert_identical(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for key, tensor in want.items():
        assert got[key].dtype == tensor.dtype and torch.equal(got[key], tensor), key


# ---- TF tensor bundles -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tf_files(tmp_path_factory) -> tuple[Path, dict[str, bytes], dict[str, torch.Tensor]]:
    """A tiny post-LN BERT with an Adam slot per tensor and global_step; the bytes of both files."""
    folder = tmp_path_factory.mktemp("tf")
    torch.manual_seed(0)
    config = mb.MegatronBertConfig(**FIELDS, layer_norm_position="post")
    model = mb.MegatronBertForPreTraining(config)
    arrays = state_dict_to_tf(model.state_dict())
    arrays.update({f"{name}/adam_m": np.full_like(array, 0.5) for name, array in list(arrays.items())})
    arrays["global_step"] = np.int64(123)
    mb.write_tf_checkpoint(folder / "model.ckpt", arrays)
    files = {suffix: (folder / f"model.ckpt{suffix}").read_bytes() for suffix in (".index", ".data-00000-of-00001")}
    want = mb.MegatronBertForPreTraining(config)
    load_tf_weights(want, folder / "model.ckpt")
    return folder / "model.ckpt", files, want.state_dict()


@pytest.mark.parametrize("suffix", [".index", ".data-00000-of-00001"])
@FUZZ
@given(how=damage)
def test_damaged_tf_bundle_raises_or_loads_identical_weights(tf_files, suffix, how):
    prefix, files, want = tf_files
    for name, data in files.items():
        Path(f"{prefix}{name}").write_bytes(damaged(data, how) if name == suffix else data)
    model = mb.MegatronBertForPreTraining(mb.MegatronBertConfig(**FIELDS, layer_norm_position="post"))
    try:
        load_tf_weights(model, prefix)
    except mb.CheckpointError:
        return
    assert_identical(model.state_dict(), want)


# ---- Megatron-LM: a .pt (torch's zip format) and the release .zip around it ---------------------------------


def megatron_bytes() -> bytes:
    torch.manual_seed(0)
    sd = mb.MegatronBertForPreTraining(mb.MegatronBertConfig(**FIELDS)).state_dict()
    layer = {}
    for leaf in ("weight", "bias"):
        qkv = [sd[f"bert.encoder.layer.0.attention.self.{p}.{leaf}"] for p in ("query", "key", "value")]
        layer[f"layers.0.attention.query_key_value.{leaf}"] = torch.cat(qkv)  # checkpoint_version 0 layout
        layer[f"layers.0.input_layernorm.{leaf}"] = sd[f"bert.encoder.layer.0.attention.ln.{leaf}"]
        layer[f"layers.0.mlp.dense_h_to_4h.{leaf}"] = sd[f"bert.encoder.layer.0.intermediate.dense.{leaf}"]
        layer[f"final_layernorm.{leaf}"] = sd[f"bert.encoder.ln.{leaf}"]
    embedding = {"word_embeddings": {"weight": sd["bert.embeddings.word_embeddings.weight"]},
                 "position_embeddings": {"weight": sd["bert.embeddings.position_embeddings.weight"]},
                 "tokentype_embeddings": {"weight": sd["bert.embeddings.token_type_embeddings.weight"]}}  # fmt: skip
    checkpoint = {"model": {"language_model": {"embedding": embedding, "transformer": layer}},
                  "args": argparse.Namespace(num_attention_heads=2), "iteration": np.int64(5)}  # fmt: skip
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def megatron_files(tmp_path_factory) -> tuple[Path, dict[str, bytes], dict[str, dict[str, torch.Tensor]]]:
    folder = tmp_path_factory.mktemp("megatron")
    pt = megatron_bytes()
    legacy = io.BytesIO()  # torch < 1.6's format, as in NVIDIA's 2019 release: no checksums of its own
    torch.save(torch.load(io.BytesIO(pt), weights_only=False), legacy, _use_new_zipfile_serialization=False)
    files = {"model_optim_rng.pt": pt}
    for name, inner, compression in (("stored.zip", pt, zipfile.ZIP_STORED), ("deflated.zip", pt, zipfile.ZIP_DEFLATED),
                                     ("legacy.zip", legacy.getvalue(), zipfile.ZIP_STORED)):  # fmt: skip
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=compression) as z:
            z.writestr("release/mp_rank_00/model_optim_rng.pt", inner)
        files[name] = buffer.getvalue()
    want = {}
    for name, data in files.items():
        (folder / name).write_bytes(data)
        want[name] = convert_megatron_lm_checkpoint(folder / name)[1]
    return folder, files, want


@pytest.mark.parametrize("name", ["model_optim_rng.pt", "stored.zip", "deflated.zip", "legacy.zip"])
@FUZZ
@given(how=damage)
def test_damaged_megatron_lm_file_raises_or_loads_identical_weights(megatron_files, name, how):
    folder, files, want = megatron_files
    (folder / name).write_bytes(damaged(files[name], how))
    try:
        _, state_dict = convert_megatron_lm_checkpoint(folder / name)
    except mb.CheckpointError:
        return
    assert_identical(state_dict, want[name])
