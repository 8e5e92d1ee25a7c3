"""Damaged, crafted and ambiguous Megatron-LM files give CheckpointError naming the file (issue 9).

Zips that are cut short, fail their CRC or are not zips; zip bombs; two checkpoints in one zip; pickles
that name classes beyond the safe set (and must not run code without --trust-pickle); and the config:
a file saved without its args must be told its head count, never guess it.
"""

from __future__ import annotations

import argparse
import io
import zipfile
from pathlib import Path

import pytest
import torch

import megabert_edu as mb
from megabert_edu.checkpoints.megatron_lm import convert_megatron_lm_checkpoint, load_megatron_lm_model

FIELDS = dict(vocab_size=24, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=20,
              max_position_embeddings=10, layer_norm_eps=1e-5, layer_norm_position="pre")  # fmt: skip
MEMBER = "release/mp_rank_00/model_optim_rng.pt"
LEAVES = ("weight", "bias")


def known_model(heads: int = 4, seed: int = 0) -> mb.MegatronBertForPreTraining:
    torch.manual_seed(seed)
    model = mb.MegatronBertForPreTraining(mb.MegatronBertConfig(**{**FIELDS, "num_attention_heads": heads}))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


def fuse_v2(parts: list[torch.Tensor], heads: int) -> torch.Tensor:
    """Megatron's checkpoint_version 2.0 row order: per head, then q/k/v, then per dimension."""
    per_head = [p.reshape(heads, -1, *p.shape[1:]) for p in parts]  # (heads, d, ...)
    return torch.stack(per_head, dim=1).reshape(-1, *parts[0].shape[1:])  # (heads * 3 * d, ...)


RENAMES = [("input_layernorm", "attention.ln"), ("self_attention.dense", "attention.output.dense"),
           ("post_attention_layernorm", "ln"), ("mlp.dense_h_to_4h", "intermediate.dense"),
           ("mlp.dense_4h_to_h", "output.dense")]  # fmt: skip


def megatron_dict(model: torch.nn.Module, args: bool = True) -> dict:
    """The dict a model_optim_rng.pt holds, made from our model's weights (checkpoint_version 2.0)."""
    sd, heads = model.state_dict(), model.config.num_attention_heads
    layers = {}
    for i in range(model.config.num_hidden_layers):
        ours, theirs = f"bert.encoder.layer.{i}.", f"layers.{i}."
        for leaf in ("weight", "bias"):
            parts = [sd[ours + f"attention.self.{p}.{leaf}"] for p in ("query", "key", "value")]
            layers[theirs + f"self_attention.query_key_value.{leaf}"] = fuse_v2(parts, heads)
            for megatron, our in RENAMES:
                layers[theirs + f"{megatron}.{leaf}"] = sd[ours + f"{our}.{leaf}"]
    for leaf in ("weight", "bias"):
        layers[f"final_layernorm.{leaf}"] = sd[f"bert.encoder.ln.{leaf}"]
    embedding = {f"{m}_embeddings": {"weight": sd[f"bert.embeddings.{o}_embeddings.weight"]}
                 for m, o in (("word", "word"), ("position", "position"), ("tokentype", "token_type"))}  # fmt: skip
    lm_head = {"bias": sd["cls.predictions.bias"]}
    for leaf in ("weight", "bias"):
        lm_head[f"dense.{leaf}"] = sd[f"cls.predictions.transform.dense.{leaf}"]
        lm_head[f"layernorm.{leaf}"] = sd[f"cls.predictions.transform.LayerNorm.{leaf}"]
    checkpoint = {
        "model": {
            "language_model": {"embedding": embedding, "encoder": layers,
                               "pooler": {f"dense.{leaf}": sd[f"bert.pooler.dense.{leaf}"] for leaf in LEAVES}},
            "lm_head": lm_head,
            "binary_head": {leaf: sd[f"cls.seq_relationship.{leaf}"] for leaf in ("weight", "bias")},
        },
        "checkpoint_version": 2.0,
    }  # fmt: skip
    if args:
        c = model.config
        checkpoint["args"] = argparse.Namespace(hidden_size=c.hidden_size, num_layers=c.num_hidden_layers,
                                                num_attention_heads=heads, ffn_hidden_size=c.intermediate_size,
                                                max_position_embeddings=c.max_position_embeddings,
                                                layernorm_epsilon=c.layer_norm_eps)  # fmt: skip
    return checkpoint


def pt_bytes(checkpoint: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return buffer.getvalue()


def write_zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


@pytest.fixture(scope="module")
def known() -> mb.MegatronBertForPreTraining:
    return known_model()


@pytest.fixture
def release(tmp_path, known) -> Path:
    return write_zip(tmp_path / "megatron-bert-345m.zip", {MEMBER: pt_bytes(megatron_dict(known))})


def assert_same_weights(model: torch.nn.Module, known: torch.nn.Module) -> None:
    ours, theirs = model.state_dict(), known.state_dict()
    assert sorted(ours) == sorted(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


# ---- damaged files --------------------------------------------------------------------------------------


def test_a_zip_that_is_not_a_zip(tmp_path):
    (tmp_path / "model.zip").write_text("these are not the weights you are looking for")
    with pytest.raises(mb.CheckpointError, match=r"model\.zip is not a readable zip file"):
        convert_megatron_lm_checkpoint(tmp_path / "model.zip")


def test_a_truncated_zip(release):
    release.write_bytes(release.read_bytes()[: release.stat().st_size // 2])
    with pytest.raises(mb.CheckpointError, match=r"megatron-bert-345m\.zip is not a readable zip file \(truncated"):
        mb.MegatronBertForPreTraining.from_pretrained(release)


def test_a_zip_member_with_a_bad_crc(release):
    raw = bytearray(release.read_bytes())
    raw[len(raw) // 2] ^= 0x10  # inside the stored .pt member
    release.write_bytes(bytes(raw))
    with pytest.raises(mb.CheckpointError, match=r"megatron-bert-345m\.zip is corrupt: .*model_optim_rng\.pt"):
        convert_megatron_lm_checkpoint(release)


def test_a_pt_file_with_a_bad_crc_which_torch_load_would_accept(tmp_path, known):
    raw = bytearray(pt_bytes(megatron_dict(known)))
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as z:  # the first tensor's bytes inside the .pt
        info = next(i for i in z.infolist() if "/data/" in i.filename)
    raw[info.header_offset + 200] ^= 0x01  # past the local header, inside the tensor's stored bytes
    (tmp_path / "flipped.pt").write_bytes(bytes(raw))
    torch.load(tmp_path / "flipped.pt", weights_only=False)  # torch itself loads the damage silently
    with pytest.raises(mb.CheckpointError, match=rf"flipped\.pt is corrupt: Bad CRC-32 for file '.*{info.filename}'"):
        convert_megatron_lm_checkpoint(tmp_path / "flipped.pt")


def test_a_truncated_pt_file(tmp_path, known):
    data = pt_bytes(megatron_dict(known))
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(mb.CheckpointError, match=r"cut\.pt is not a readable zip file \(truncated"):
        convert_megatron_lm_checkpoint(tmp_path / "cut.pt")


def test_a_pt_file_that_is_text(tmp_path):
    (tmp_path / "notes.pt").write_text("hello")
    with pytest.raises(mb.CheckpointError, match=r"could not read .*notes\.pt: truncated, corrupt or not a PyTorch"):
        convert_megatron_lm_checkpoint(tmp_path / "notes.pt")


def test_a_missing_file(tmp_path):
    with pytest.raises(mb.CheckpointError, match=r"no Megatron-LM checkpoint at .*absent\.zip: the file does not"):
        convert_megatron_lm_checkpoint(tmp_path / "absent.zip")


# ---- zip bombs ------------------------------------------------------------------------------------------


def test_a_zip_bomb_is_refused_before_it_expands(tmp_path):
    """128 MB of zeros deflate to about 128 KB: 1000x, where real weights expand at most 20x."""
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z, z.open(MEMBER, "w") as member:
        zeros = bytes(1 << 20)
        for _ in range(128):
            member.write(zeros)
    assert path.stat().st_size < 1 << 20
    with pytest.raises(mb.CheckpointError, match=r"bomb\.zip would expand from [\d,]+ to 134,217,728 bytes "
                                                 r"\(\d+x\): refused as a zip bomb"):
        convert_megatron_lm_checkpoint(path)


def test_a_pt_that_declares_a_huge_member_is_refused(tmp_path, known):
    raw = bytearray(pt_bytes(megatron_dict(known)))
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as z:
        info = z.getinfo(next(n for n in z.namelist() if n.endswith("data.pkl")))
    entry = raw.find(b"PK\x01\x02")  # the central directory: one entry per member, name at byte 46
    while raw[entry + 46 : entry + 46 + len(info.filename)] != info.filename.encode():
        entry = raw.find(b"PK\x01\x02", entry + 1)
    raw[entry + 24 : entry + 28] = (1 << 31).to_bytes(4, "little")  # declared uncompressed size: 2 GB
    (tmp_path / "big.pt").write_bytes(bytes(raw))
    with pytest.raises(mb.CheckpointError, match=r"big\.pt would expand from .* refused as a zip bomb"):
        convert_megatron_lm_checkpoint(tmp_path / "big.pt")


# ---- several checkpoints in one zip ---------------------------------------------------------------------


def two_iterations(tmp_path: Path, latest: str | None) -> Path:
    members = {f"iter_{n:07d}/mp_rank_00/model_optim_rng.pt": pt_bytes(megatron_dict(known_model(seed=n)))
               for n in (100, 200)}  # fmt: skip
    if latest is not None:
        members["latest_checkpointed_iteration.txt"] = latest.encode()
    return write_zip(tmp_path / "run.zip", members)


def test_two_iterations_without_a_pointer_are_listed(tmp_path):
    path = two_iterations(tmp_path, latest=None)
    message = (r"run\.zip holds 2 checkpoints \(iter_0000100/mp_rank_00/model_optim_rng\.pt, "
               r"iter_0000200/mp_rank_00/model_optim_rng\.pt\) and no latest_checkpointed_iteration\.txt")
    with pytest.raises(mb.CheckpointError, match=message):
        convert_megatron_lm_checkpoint(path)


def test_megatrons_pointer_picks_the_iteration(tmp_path):
    model = load_megatron_lm_model(mb.MegatronBertForPreTraining, two_iterations(tmp_path, latest="200"))
    assert_same_weights(model, known_model(seed=200))


def test_a_dangling_iteration_pointer_is_an_error(tmp_path):
    path = two_iterations(tmp_path, latest="300")
    with pytest.raises(mb.CheckpointError, match=r"latest_checkpointed_iteration\.txt names '300', but the zip has "
                                                 r"no such checkpoint"):
        convert_megatron_lm_checkpoint(path)


# ---- pickles: the refused global is named, and nothing runs without trust ------------------------------


class Unvetted:
    """Stands in for any class a pickle might name: the safe loader must refuse it."""


class Payload:
    """Unpickling this touches a file: the stand-in for code a malicious checkpoint would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_refused_global_is_named_with_what_trust_pickle_means(tmp_path, known):
    checkpoint = megatron_dict(known)
    checkpoint["args"].hook = Unvetted()
    path = write_zip(tmp_path / "objects.zip", {MEMBER: pt_bytes(checkpoint)})
    with pytest.raises(mb.CheckpointError) as error:
        convert_megatron_lm_checkpoint(path)
    message = str(error.value)
    assert f"objects.zip:{MEMBER} pickles {__name__}.Unvetted, which the safe loader refuses" in message
    assert "--trust-pickle" in message and "run code" in message
    assert "will likely succeed" not in message and "weights_only" not in message
    config, _ = convert_megatron_lm_checkpoint(path, trust_pickle=True)
    assert config.num_attention_heads == 4


@pytest.mark.parametrize("container", ["pt", "zip"])
def test_a_malicious_pickle_runs_nothing_without_trust_pickle(tmp_path, known, container):
    marker = tmp_path / "code-ran"
    checkpoint = megatron_dict(known)
    checkpoint["args"].payload = Payload(marker)
    data = pt_bytes(checkpoint)
    path = tmp_path / f"evil.{container}"
    if container == "zip":
        write_zip(path, {MEMBER: data})
    else:
        path.write_bytes(data)
    refused = r"evil\.\w+.* pickles builtins\.getattr, pathlib\.Path, pathlib\.PosixPath, .*--trust-pickle"
    with pytest.raises(mb.CheckpointError, match=refused):
        mb.MegatronBertForPreTraining.from_pretrained(path)
    assert not marker.exists()
    convert_megatron_lm_checkpoint(path, trust_pickle=True)  # the guard is what stopped it: trusted, it runs
    assert marker.exists()


# ---- the config: config=, overrides, and the head count ---------------------------------------------------


@pytest.fixture(scope="module")
def four_heads() -> mb.MegatronBertForPreTraining:
    return known_model(heads=4, seed=3)


def test_without_args_the_head_count_must_be_given(tmp_path, four_heads):
    path = write_zip(tmp_path / "noargs.zip", {MEMBER: pt_bytes(megatron_dict(four_heads, args=False))})
    with pytest.raises(mb.CheckpointError, match=r"noargs\.zip stores no args\.num_attention_heads.*pass "
                                                 r"config=MegatronBertConfig"):
        mb.MegatronBertForPreTraining.from_pretrained(path)
    by_config = mb.MegatronBertForPreTraining.from_pretrained(path, config=mb.MegatronBertConfig(**FIELDS))
    by_keyword = mb.MegatronBertForPreTraining.from_pretrained(path, num_attention_heads=4)
    for model in (by_config, by_keyword):
        assert model.config.num_attention_heads == 4
        assert_same_weights(model, four_heads)


def test_config_that_disagrees_with_the_tensors(tmp_path, known):
    path = write_zip(tmp_path / "m.zip", {MEMBER: pt_bytes(megatron_dict(known))})
    wrong = mb.MegatronBertConfig(**{**FIELDS, "intermediate_size": 40})
    with pytest.raises(mb.CheckpointError, match=r"the config passed in says intermediate_size=40, but the "
                                                 r"checkpoint has intermediate_size=20"):
        mb.MegatronBertForPreTraining.from_pretrained(path, config=wrong)
    post = mb.MegatronBertConfig(**{**FIELDS, "layer_norm_position": "post"})
    with pytest.raises(mb.CheckpointError, match=r"layer_norm_position='post', but Megatron-LM checkpoints are"):
        convert_megatron_lm_checkpoint(path, config=post)
    with pytest.raises(mb.CheckpointError, match=r"m\.zip says num_attention_heads=3, which does not divide"):
        convert_megatron_lm_checkpoint(path, num_attention_heads=3)


def test_overrides_reach_megatron_lm_loading(release):
    model = mb.MegatronBertForSequenceClassification.from_pretrained(release, num_labels=5, hidden_dropout_prob=0.0)
    assert model.config.num_labels == 5 and model.config.hidden_dropout_prob == 0.0
    assert model.classifier.out_features == 5


@pytest.mark.parametrize(("edit", "message"), [
    (lambda c: [1, 2, 3], r"is not a Megatron-LM checkpoint: no 'model' dict"),
    (lambda c: {**c, "model": {**c["model"], "note": "hello"}}, r"unexpected str at model\.note in .*x\.pt"),
    (lambda c: {**c, "checkpoint_version": "new"}, r"x\.pt: checkpoint_version='new' is not a number"),
    (lambda c: {**c, "model": {"lm_head": c["model"]["lm_head"]}}, r"x\.pt has no 2-D bert\.embeddings\.word"),
], ids=["a list", "a string among the tensors", "a text version", "no embeddings"])  # fmt: skip
def test_malformed_contents_are_named(tmp_path, known, edit, message):
    torch.save(edit(megatron_dict(known)), tmp_path / "x.pt")
    with pytest.raises(mb.CheckpointError, match=message):
        convert_megatron_lm_checkpoint(tmp_path / "x.pt")


def test_fused_qkv_of_the_wrong_height_is_named(tmp_path, known):
    checkpoint = megatron_dict(known)
    layer = checkpoint["model"]["language_model"]["encoder"]
    name = "layers.1.self_attention.query_key_value.weight"
    layer[name] = layer[name][:-4]
    torch.save(checkpoint, tmp_path / "x.pt")
    with pytest.raises(mb.CheckpointError, match=r"x\.pt: the fused query/key/value tensor for "
                                                 r"bert\.encoder\.layer\.1\.attention\.self\.QKV\.weight has shape"):
        convert_megatron_lm_checkpoint(tmp_path / "x.pt")


def with_pickle(pt: bytes, payload: bytes) -> bytes:
    """The same .pt with its data.pkl replaced (CRCs valid): a pickle crafted byte by byte."""
    source, out = zipfile.ZipFile(io.BytesIO(pt)), io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for info in source.infolist():
            z.writestr(info.filename, payload if info.filename.endswith("data.pkl") else source.read(info))
    return out.getvalue()


@pytest.mark.parametrize(("payload", "message"), [
    (b"\x80\x02cos\nsystem\nq\x00.", r"crafted\.pt pickles os\.system, which the safe loader refuses.*--trust-pickle"),
    (b"\x80\x02\xff garbage", r"could not read .*crafted\.pt: its pickle is corrupt \(UnpicklingError: Unsupported "
                              r"operand 255\)$"),
], ids=["os.system", "bad opcode"])  # fmt: skip
def test_crafted_pickles_are_named_without_torchs_advice(tmp_path, known, payload, message):
    (tmp_path / "crafted.pt").write_bytes(with_pickle(pt_bytes(megatron_dict(known)), payload))
    with pytest.raises(mb.CheckpointError, match=message) as error:
        convert_megatron_lm_checkpoint(tmp_path / "crafted.pt")
    assert "will likely succeed" not in str(error.value) and "weights_only" not in str(error.value)
