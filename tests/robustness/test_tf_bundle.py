"""Damaged, crafted and ambiguous TF checkpoints give CheckpointError naming the file and the tensor (issue 9).

The bundle is a tiny BERT written by our writer, with Adam slots and global_step like a training
checkpoint; crafted entries go through the writer's own index code, so their checksums are valid and
only the reader's bounds checks stand between them and a huge allocation.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import megabert_edu as mb
from megabert_edu.checkpoints import tf_bundle
from megabert_edu.checkpoints.tf import load_tf_checkpoint_model, load_tf_weights, state_dict_to_tf, tf_config
from megabert_edu.checkpoints.tf_bundle import _HEADER, _entry_proto, _field, _write_index

FIELDS = dict(vocab_size=20, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24,
              max_position_embeddings=12, type_vocab_size=2, layer_norm_position="post")  # fmt: skip
DATA = "model.ckpt.data-00000-of-00001"


def make_bundle(folder: Path, seed: int = 0) -> tuple[Path, dict[str, torch.Tensor]]:
    """A Google-named post-LN BERT with optimizer state, and bert_config.json beside it."""
    torch.manual_seed(seed)
    model = mb.MegatronBertForPreTraining(mb.MegatronBertConfig(**FIELDS))
    arrays = state_dict_to_tf(model.state_dict())
    for name in list(arrays)[:3]:
        arrays[f"{name}/adam_m"] = np.ones_like(arrays[name])
    arrays["global_step"] = np.int64(1000)
    folder.mkdir(parents=True, exist_ok=True)
    mb.write_tf_checkpoint(folder / "model.ckpt", arrays)
    (folder / "bert_config.json").write_text(json.dumps(FIELDS))
    return folder / "model.ckpt", model.state_dict()


@pytest.fixture
def bundle(tmp_path) -> Path:
    return make_bundle(tmp_path / "ckpt")[0]


def fresh_model() -> torch.nn.Module:
    return mb.MegatronBertForPreTraining(mb.MegatronBertConfig(**FIELDS))


def entry_offset(prefix: Path, name: str) -> int:
    """Where tensor ``name`` starts in the data file (from the index, through the reader)."""
    _, entries = tf_bundle._read_index(str(prefix))
    return entries[name].offset


def flip(path: Path, position: int, bit: int = 0x01) -> None:
    raw = bytearray(path.read_bytes())
    raw[position] ^= bit
    path.write_bytes(bytes(raw))


def craft(prefix: Path, name: str, entry: bytes, header: bytes = _HEADER, data: bytes = b"\0" * 64) -> Path:
    """A one-tensor checkpoint whose entry (and header) say whatever the test wants, checksums valid."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{prefix}.data-00000-of-00001").write_bytes(data)
    _write_index(f"{prefix}.index", [(name.encode(), entry)], header)
    return prefix


# ---- damage in tensors that are then skipped, in the index's blocks and in its footer -----------------


def test_damaged_optimizer_slot_is_reported_though_it_is_skipped(bundle):
    slot = next(v.name for v in mb.list_tf_variables(bundle) if v.name.endswith("/adam_m"))
    flip(bundle.parent / DATA, entry_offset(bundle, slot) + 3)
    with pytest.raises(mb.CheckpointError, match=rf"{DATA} is corrupt: checksum mismatch for tensor '{slot}'"):
        load_tf_weights(fresh_model(), bundle)


def test_damaged_global_step_is_reported(bundle):
    flip(bundle.parent / DATA, entry_offset(bundle, "global_step"))
    with pytest.raises(mb.CheckpointError, match=r"checksum mismatch for tensor 'global_step'"):
        mb.MegatronBertForPreTraining.from_pretrained(bundle)


def test_stray_byte_in_the_footer_padding_is_reported(bundle):
    index = Path(f"{bundle}.index")
    flip(index, index.stat().st_size - 8 - 2)  # the last padding byte before the magic number
    with pytest.raises(mb.CheckpointError, match=r"model\.ckpt\.index is corrupt: its footer has stray bytes"):
        mb.list_tf_variables(bundle)


def test_footer_handle_pointing_past_the_blocks_is_reported(bundle):
    index = Path(f"{bundle}.index")
    raw = index.read_bytes()
    footer = raw[-48:-8]
    _, pos = tf_bundle._read_handle(footer, 0, "footer")
    meta = tf_bundle._varint(10**6) + tf_bundle._varint(5)  # the meta-index block: far past the end
    index.write_bytes(raw[:-48] + (meta + footer[pos:]).rstrip(b"\0").ljust(40, b"\0") + raw[-8:])
    with pytest.raises(mb.CheckpointError, match=r"model\.ckpt\.index is truncated or corrupt: a block ends at"):
        mb.list_tf_variables(bundle)


def test_damaged_meta_index_block_is_reported(bundle):
    index = Path(f"{bundle}.index")
    footer = index.read_bytes()[-48:]
    meta_offset, _ = tf_bundle._read_varint(footer, 0, "footer")
    flip(index, meta_offset)  # the (unused) meta-index block still has its checksum verified
    with pytest.raises(mb.CheckpointError, match=r"model\.ckpt\.index is corrupt: checksum mismatch in the index"):
        mb.list_tf_variables(bundle)


def test_truncated_index_is_reported(bundle):
    index = Path(f"{bundle}.index")
    index.write_bytes(index.read_bytes()[:-20])
    with pytest.raises(mb.CheckpointError, match=r"model\.ckpt\.index is not a TensorFlow checkpoint index"):
        mb.list_tf_variables(bundle)


def test_truncated_data_file_names_the_tensor(bundle):
    data = bundle.parent / DATA
    data.write_bytes(data.read_bytes()[:-1])
    last = max(mb.list_tf_variables(bundle), key=lambda v: entry_offset(bundle, v.name)).name
    with pytest.raises(mb.CheckpointError, match=rf"{DATA} is truncated or corrupt: tensor '{last}' needs bytes"):
        mb.read_tf_checkpoint(bundle)


def test_missing_data_shard_names_it(bundle):
    (bundle.parent / DATA).unlink()
    with pytest.raises(mb.CheckpointError, match=rf"missing data shard .*{DATA}"):
        load_tf_weights(fresh_model(), bundle)


# ---- crafted entries: sizes and offsets are checked before anything is allocated --------------------

TERA = 1 << 40
CRAFTED = [
    ("huge size", _entry_proto("float32", (TERA // 4,), 0, TERA, 0),
     r"DATA is truncated or corrupt: tensor 'w' needs bytes 0\.\.1099511627776, the file has 64"),
    ("huge offset", _entry_proto("float32", (4,), TERA, 16, 0), r"tensor 'w' needs bytes 1099511627776\.\."),
    ("shape claims more than its size", _entry_proto("float32", (TERA, TERA), 0, 16, 0),
     r"entry for tensor 'w'\) is corrupt: 16 bytes cannot hold float32\[1099511627776, 1099511627776\]"),
    ("negative dimension", _field(1, 1) + _field(2, _field(2, _field(1, (1 << 64) - 5))),
     r"entry for tensor 'w'\) is corrupt: shape \[-5\] has a negative dimension"),
    ("string tensor with more strings than bytes", _entry_proto("string", (TERA,), 0, 64, 0),
     r"string tensor 'w'\) is corrupt: 64 bytes cannot hold 1099511627776 strings"),
    ("shard past the header's count", _entry_proto("float32", (4,), 0, 16, 0) + _field(3, 3),
     r"entry for tensor 'w'\) is corrupt: it points at shard 3 of 1"),
    ("unknown dtype", _field(1, 99), r"entry for tensor 'w'\): unsupported TensorFlow dtype enum 99"),
    ("a number where a message belongs", _field(1, 1) + _field(2, 7),
     r"entry for tensor 'w'\) is corrupt: a protobuf field should be a message"),
    ("endless varint", _field(1, 1) + b"\x28" + b"\xff" * 12,
     r"entry for tensor 'w'\) is corrupt: a number is longer than 10 bytes"),
]  # fmt: skip


@pytest.mark.parametrize(("entry", "message"), [c[1:] for c in CRAFTED], ids=[c[0] for c in CRAFTED])
def test_crafted_entry_gives_our_error_not_memory_error(tmp_path, entry, message):
    prefix = craft(tmp_path / "model.ckpt", "w", entry)
    with pytest.raises(mb.CheckpointError, match=message.replace("DATA", re.escape(DATA))):
        mb.read_tf_checkpoint(prefix)


@pytest.mark.parametrize(("header", "message"), [
    (_field(1, 10**9), r"model\.ckpt\.index is corrupt: its header says 1000000000 data shards"),
    (_field(1, 0), r"its header says 0 data shards"),
    (_field(1, 1) + _field(2, 1), r"model\.ckpt\.index was written big-endian"),
], ids=["a billion shards", "zero shards", "big-endian"])  # fmt: skip
def test_crafted_header_is_reported(tmp_path, header, message):
    prefix = craft(tmp_path / "model.ckpt", "w", _entry_proto("float32", (4,), 0, 16, 0), header=header)
    with pytest.raises(mb.CheckpointError, match=message):
        mb.list_tf_variables(prefix)


# ---- which checkpoint: directories with two, and dangling pointers --------------------------------------


def test_two_checkpoints_without_a_pointer_say_so(tmp_path):
    make_bundle(tmp_path)
    for f in tmp_path.glob("model.ckpt.*"):
        shutil.copy(f, tmp_path / f.name.replace("model.ckpt", "model.ckpt-2000"))
    message = r"holds 2 TF checkpoints \(model\.ckpt, model\.ckpt-2000\) and no 'checkpoint' file"
    with pytest.raises(mb.CheckpointError, match=message):
        mb.list_tf_variables(tmp_path)
    with pytest.raises(mb.CheckpointError, match=message):  # not "no config.json and no TF checkpoint"
        mb.MegatronBertForPreTraining.from_pretrained(tmp_path)


def test_dangling_checkpoint_pointer_says_so(tmp_path):
    make_bundle(tmp_path)
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-999"\n')
    message = r"checkpoint points at 'model\.ckpt-999', but .*model\.ckpt-999\.index does not exist \(a dangling"
    with pytest.raises(mb.CheckpointError, match=message):
        mb.list_tf_variables(tmp_path)
    with pytest.raises(mb.CheckpointError, match=message):
        mb.MegatronBertForPreTraining.from_pretrained(tmp_path)


def test_pointer_file_without_a_path_says_so(tmp_path):
    make_bundle(tmp_path)
    (tmp_path / "checkpoint").write_text("garbage\n")
    with pytest.raises(mb.CheckpointError, match=r"checkpoint has no model_checkpoint_path line"):
        mb.list_tf_variables(tmp_path)


def test_the_pointer_picks_one_of_two(tmp_path):
    make_bundle(tmp_path, seed=0)
    _, second = make_bundle(tmp_path / "other", seed=1)
    for f in (tmp_path / "other").glob("model.ckpt.*"):
        shutil.copy(f, tmp_path / f.name.replace("model.ckpt", "model.ckpt-2000"))
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-2000"\n')
    model = mb.MegatronBertForPreTraining.from_pretrained(tmp_path)
    assert torch.equal(model.bert.pooler.dense.weight, second["bert.pooler.dense.weight"])


# ---- the config: bert_config.json, config= and keyword overrides ---------------------------------------


def write_config(bundle: Path, **changes) -> None:
    (bundle.parent / "bert_config.json").write_text(json.dumps({**FIELDS, **changes}))


@pytest.mark.parametrize(("changes", "message"), [
    (dict(num_attention_heads=3),
     r"bert_config\.json says num_attention_heads=3 \(head size 5\), which does not fit the 16-wide query"),
    (dict(num_hidden_layers=1), r"bert_config\.json says num_hidden_layers=1, but the checkpoint has "
                                r"num_hidden_layers=2 \(bert/encoder/layer_1\)"),
    (dict(intermediate_size=32), r"bert_config\.json says intermediate_size=32, but the checkpoint has "
                                 r"intermediate_size=24 \(bert/encoder/layer_0/intermediate/dense/kernel\)"),
    (dict(vocab_size=30), r"bert_config\.json says vocab_size=30, but the checkpoint has vocab_size=20"),
    (dict(num_attention_heads="4"), r"bert_config\.json: .*num_attention_heads"),
], ids=["heads", "layers", "intermediate", "vocab", "heads as a string"])  # fmt: skip
def test_bert_config_that_disagrees_with_the_tensors_fails(bundle, changes, message):
    write_config(bundle, **changes)
    with pytest.raises(mb.CheckpointError, match=message):
        mb.MegatronBertForPreTraining.from_pretrained(bundle)


@pytest.mark.parametrize(("text", "message"), [
    ("[1, 2]", r"bert_config\.json holds a JSON list, not an object"),
    ("{nope", r"could not read .*bert_config\.json"),
], ids=["a list", "not JSON"])  # fmt: skip
def test_unreadable_bert_config_is_named(bundle, text, message):
    (bundle.parent / "bert_config.json").write_text(text)
    with pytest.raises(mb.CheckpointError, match=message):
        tf_config(bundle)


def test_config_argument_replaces_bert_config_and_is_checked(bundle):
    write_config(bundle, num_attention_heads=3)  # wrong: the passed config must win over it
    config = mb.MegatronBertConfig(**FIELDS)
    model = load_tf_checkpoint_model(mb.MegatronBertForPreTraining, bundle, config=config)
    assert model.config.num_attention_heads == 4 and model.load_report.ok
    with pytest.raises(mb.CheckpointError, match=r"the config passed in says hidden_size=32, but the checkpoint"):
        load_tf_checkpoint_model(mb.MegatronBertModel, bundle, config=mb.MegatronBertConfig(**{**FIELDS,
                                                                                            "hidden_size": 32}))


def test_keyword_overrides_reach_tf_loading(bundle):
    model = mb.MegatronBertForSequenceClassification.from_pretrained(bundle, num_labels=3,
                                                                     hidden_dropout_prob=0.25)
    assert model.config.num_labels == 3 and model.classifier.out_features == 3
    assert model.config.hidden_dropout_prob == 0.25
    with pytest.raises(mb.CheckpointError, match=r"bert_config\.json says num_attention_heads=5"):
        mb.MegatronBertModel.from_pretrained(bundle, num_attention_heads=5)  # 16 is not a multiple of 5


def test_overrides_over_a_passed_config(bundle):
    config = mb.MegatronBertConfig(**FIELDS)
    model = load_tf_checkpoint_model(mb.MegatronBertModel, bundle, config=config, attention_probs_dropout_prob=0.0)
    assert model.config.attention_probs_dropout_prob == 0.0 and config.attention_probs_dropout_prob == 0.1
