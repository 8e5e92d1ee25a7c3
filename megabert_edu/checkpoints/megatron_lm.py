"""NVIDIA Megatron-LM checkpoints: the format megatron-bert-cased-345m and -uncased-345m were released in.

The release is a .zip holding ``release/mp_rank_00/model_optim_rng.pt`` ("mp_rank_00": model-parallel
rank 0 of 1). That file is a pickled dict:

    {"model": {"language_model": {"embedding": {...}, "transformer" (newer: "encoder"): {...},
                                  "pooler": {...}},
               "lm_head": {...}, "binary_head": {...}},
     "args": argparse.Namespace(hidden_size=..., ...),   # optional
     "checkpoint_version": 2.0}                            # optional; absent means 0

Flattened with dots, every tensor name is matched against ``MEGATRON_NAME_TABLE``. Megatron fuses the
query, key and value projections into one matrix whose row order changed between checkpoint
versions; ``split_fused_qkv`` undoes that.

Reading is defensive: the zip's sizes are capped relative to the file (no zip bombs), every member's
CRC-32 is checked (torch.load itself does not check them), several checkpoints in one zip must be
chosen between by Megatron's ``latest_checkpointed_iteration.txt``, and the pickle may only build
tensors, containers, an argparse.Namespace and numpy arrays unless the caller trusts the file.
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import re
import struct
import zipfile
import zlib
from typing import Any

import numpy as np
import torch

from ..config import MegatronBertConfig
from .loading import build_model, check_config_sizes, resolve_config
from .report import CheckpointError

# Megatron-LM module (flattened, under "model.")  -> our module; the leaves (.weight, .bias) carry over.
# {L} is layer N: language_model.transformer.layers.N in Megatron (later versions say "encoder" for
# "transformer"), bert.encoder.layer.N here. {T} is the layer stack itself.
MEGATRON_NAME_TABLE: list[tuple[str, str]] = [
    ("language_model.embedding.word_embeddings",       "bert.embeddings.word_embeddings"),
    ("language_model.embedding.position_embeddings",   "bert.embeddings.position_embeddings"),
    ("language_model.embedding.tokentype_embeddings",  "bert.embeddings.token_type_embeddings"),
    ("{L}.input_layernorm",                            "{L}.attention.ln"),
    ("{L}.attention.query_key_value",                  "{L}.attention.self.QKV"),  # fused: split below
    ("{L}.self_attention.query_key_value",             "{L}.attention.self.QKV"),
    ("{L}.attention.dense",                            "{L}.attention.output.dense"),
    ("{L}.self_attention.dense",                       "{L}.attention.output.dense"),
    ("{L}.post_attention_layernorm",                   "{L}.ln"),
    ("{L}.mlp.dense_h_to_4h",                          "{L}.intermediate.dense"),
    ("{L}.mlp.dense_4h_to_h",                          "{L}.output.dense"),
    ("{T}.final_layernorm",                            "bert.encoder.ln"),
    ("language_model.pooler.dense",                    "bert.pooler.dense"),
    ("lm_head.dense",                                  "cls.predictions.transform.dense"),
    ("lm_head.layernorm",                              "cls.predictions.transform.LayerNorm"),
    ("lm_head",                                        "cls.predictions"),  # lm_head.bias: the MLM bias
    ("binary_head",                                    "cls.seq_relationship"),
]  # fmt: skip
_STACK = r"language_model\.(?:transformer|encoder)"
_RULES = [
    (
        re.compile(
            re.escape(module).replace(r"\{L\}", _STACK + r"\.layers\.(?P<N>\d+)").replace(r"\{T\}", _STACK)
            + r"\.(?P<leaf>weight|bias)$"
        ),
        ours,
    )
    for module, ours in MEGATRON_NAME_TABLE
]


def map_megatron_name(name: str) -> str | None:
    """Our name for a flattened Megatron-LM tensor name, or None if no row matches."""
    for pattern, ours in _RULES:
        m = pattern.match(name)
        if m:
            layer = f"bert.encoder.layer.{m.groupdict().get('N')}"
            return ours.replace("{L}", layer) + "." + m.group("leaf")
    return None


MEGATRON_LAYER_NORM_EPS = 1e-5  # Megatron's default --layernorm-epsilon (HF's converter leaves BERT's 1e-12)

# ---- reading the file ------------------------------------------------------------------------------

# Zip-bomb guard. Floating-point weights barely compress (a few percent), so a checkpoint that
# expands to more than 20 times its file size is not made of weights. Small files may hold mostly
# zeros, so up to 64 MB is always allowed.
MAX_EXPANSION = 20
FREE_EXPANSION = 64 << 20
# What zipfile raises for a damaged archive: a bad directory or CRC, bad deflate data, a cut-off member,
# an unsupported compression method or encryption.
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError,
               ValueError, struct.error)  # fmt: skip


def _check_expansion(z: zipfile.ZipFile, source: str, file_size: int) -> None:
    """Refuse a zip whose members declare far more bytes than the file could hold as real weights."""
    declared = sum(info.file_size for info in z.infolist())
    limit = max(FREE_EXPANSION, MAX_EXPANSION * file_size)
    if declared > limit:
        raise CheckpointError(
            f"{source} would expand from {file_size:,} to {declared:,} bytes ({declared / max(file_size, 1):.0f}x): "
            f"refused as a zip bomb (weights expand at most {MAX_EXPANSION}x)"
        )


def _verify_members(z: zipfile.ZipFile) -> None:
    """Read every member to its end, which makes zipfile check its CRC-32 (torch.load never does)."""
    for info in z.infolist():
        with z.open(info) as member:
            while member.read(1 << 24):
                pass


def _open_zip(file: str | io.BytesIO, source: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(file)
    except _ZIP_ERRORS as e:
        raise CheckpointError(f"{source} is not a readable zip file (truncated, or not a zip at all): {e}") from None


def _checked_pt(file: str | io.BytesIO, source: str, size: int) -> None:
    """A .pt in torch's zip format: cap its sizes and verify every member's CRC before torch reads it.

    (A .pt in torch's legacy pickle format carries no checksum, so there is nothing to verify.)
    """
    if isinstance(file, str):
        with open(file, "rb") as f:
            magic = f.read(4)
    else:
        magic = file.getvalue()[:4]
    if magic != b"PK\x03\x04":
        return
    with _open_zip(file, source) as z:
        _check_expansion(z, source, size)
        try:
            _verify_members(z)
        except _ZIP_ERRORS as e:
            raise CheckpointError(f"{source} is corrupt: {e}") from None
    if not isinstance(file, str):
        file.seek(0)


def _safe_globals() -> list:
    """The classes a Megatron-LM checkpoint pickles besides tensors: its ``args`` namespace, and numpy
    arrays in the random-number-generator state that training checkpoints carry."""
    core = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray  # numpy 2 renamed np.core
    numpy_types = [np.ndarray, np.dtype, core._reconstruct, core.scalar]
    numpy_types += [type(np.dtype(t)) for t in ("u1", "u4", "u8", "i4", "i8", "f4", "f8", "b1")]
    old_names = [
        (core._reconstruct, "numpy.core.multiarray._reconstruct"),
        (core.scalar, "numpy.core.multiarray.scalar"),
    ]
    return [argparse.Namespace, *numpy_types, *old_names]  # numpy < 2 pickles say numpy.core


def _refused_globals(data: io.BytesIO | str, error: Exception) -> str:
    """The globals the safe loader refuses, named by torch's own scan of the pickle ("" if none)."""
    try:
        if isinstance(data, io.BytesIO):
            data.seek(0)
        with torch.serialization.safe_globals(_safe_globals()):
            names = torch.serialization.get_unsafe_globals_in_checkpoint(data)
    except Exception:  # a legacy-format file cannot be scanned: fall back to the name in the error
        found = re.search(r"GLOBAL (\S+)", str(error))
        names = [found.group(1)] if found else []
    return ", ".join(sorted(names))


def _torch_reason(error: Exception) -> str:
    """torch's own reason for a failed load, without its advice to retry with weights_only=False."""
    text = str(error)
    found = re.search(r"WeightsUnpickler error:\s*(.*)", text)
    reason = found.group(1) if found else (text.splitlines() or [""])[0]
    return f"{type(error).__name__}: {reason.strip()}"


def _torch_load(data: io.BytesIO | str, source: str, trust_pickle: bool) -> dict:
    """torch.load that refuses to run code from the file.

    A .pt file is a pickle, and unpickling can run arbitrary code. torch's weights_only mode allows
    only tensors and plain containers; Megatron also pickles an argparse.Namespace and numpy arrays,
    so we allow exactly those (``_safe_globals``). Anything else needs ``trust_pickle=True``, which
    the caller should pass only for a file from a source they trust.
    """
    try:
        if trust_pickle:
            return torch.load(data, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(data, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = "" if trust_pickle else _refused_globals(data, e)
        if not refused:
            raise CheckpointError(f"could not read {source}: its pickle is corrupt ({_torch_reason(e)})") from None
        raise CheckpointError(
            f"{source} pickles {refused}, which the safe loader refuses. Only if you trust "
            "where the file came from, pass --trust-pickle (trust_pickle=True in Python): it lets the file run "
            "code on this machine."
        ) from None
    except Exception as e:  # torch raises RuntimeError, EOFError, KeyError, ... for a damaged file
        raise CheckpointError(f"could not read {source}: truncated, corrupt or not a PyTorch file "
                              f"({_torch_reason(e)})") from None


_LATEST = "latest_checkpointed_iteration.txt"  # Megatron's pointer: "release" or an iteration number


def _choose_member(z: zipfile.ZipFile, path: str) -> str:
    """The one model_optim_rng.pt in a release zip, or the one Megatron's pointer file names."""
    names = z.namelist()
    members = sorted(n for n in names if n.endswith("model_optim_rng.pt"))
    if not members:
        raise CheckpointError(f"{path} has no */mp_rank_00/model_optim_rng.pt (it has {names[:5]})")
    ranks = sorted({m for n in members for m in re.findall(r"mp_rank_\d+", n)})
    if len(ranks) > 1:
        raise CheckpointError(f"{path} is split over {len(ranks)} model-parallel ranks; merge them first")
    if len(members) == 1:
        return members[0]
    pointers = [n for n in names if n.endswith(_LATEST)]
    if len(pointers) == 1:
        latest = z.read(pointers[0]).decode("utf-8", "replace").strip()
        folder = "release" if latest == "release" else f"iter_{int(latest):07d}" if latest.isdigit() else latest
        chosen = [m for m in members if f"{folder}/mp_rank_" in m]
        if len(chosen) == 1:
            return chosen[0]
        raise CheckpointError(f"{path}: {pointers[0]} names {latest!r}, but the zip has no such checkpoint "
                              f"(it has {', '.join(members)})")
    raise CheckpointError(f"{path} holds {len(members)} checkpoints ({', '.join(members)}) and no {_LATEST} "
                          "saying which to load: keep one in the zip")


def read_megatron_lm_file(path: str | os.PathLike, trust_pickle: bool = False) -> dict:
    """The raw checkpoint dict from a release .zip or a model_optim_rng.pt file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"no Megatron-LM checkpoint at {path}: the file does not exist")
    size = os.path.getsize(path)
    if not path.endswith(".zip"):  # (a .pt is a zip file too, since torch 1.6, so go by the name)
        _checked_pt(path, path, size)
        return _torch_load(path, path, trust_pickle)
    with _open_zip(path, path) as z:
        _check_expansion(z, path, size)
        name = _choose_member(z, path)
        try:
            data = io.BytesIO(z.read(name))  # torch.load needs to seek; a zip member stream seeks slowly
        except _ZIP_ERRORS as e:
            raise CheckpointError(f"{path} is corrupt: {name} could not be read ({e})") from None
    source = f"{path}:{name}"
    _checked_pt(data, source, len(data.getvalue()))
    return _torch_load(data, source, trust_pickle)


def _flatten(tree: dict, path: str, prefix: str = "") -> dict[str, torch.Tensor]:
    """{"a": {"b": tensor}} -> {"a.b": tensor}; anything but dicts and tensors is an error naming it."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, path, name + "."))
        elif isinstance(value, torch.Tensor):
            out[name] = value
        else:
            raise CheckpointError(f"unexpected {type(value).__name__} at model.{name} in {path}")
    return out


def split_fused_qkv(fused: torch.Tensor, version: float, heads: int) -> tuple[torch.Tensor, ...]:
    """Split Megatron's fused [3*hidden, ...] QKV weight or bias into query, key, value.

    The rows are grouped differently by checkpoint version:
      0:      [Q | K | V]                      -> view as (3, heads, head_dim)
      1.0:    per head, per dim, then q/k/v    -> stored (heads, head_dim, 3)
      >= 2.0: per head, q/k/v, then per dim    -> stored (heads, 3, head_dim)
    """
    rows, rest = fused.shape[0], tuple(fused.shape[1:])
    if rows % (3 * heads):
        raise CheckpointError(f"fused QKV has {rows} rows, not a multiple of 3 x {heads} heads")
    head_dim = rows // (3 * heads)
    if version < 1:
        qkv = fused.reshape(3, heads, head_dim, *rest)
    elif version < 2:
        qkv = fused.reshape(heads, head_dim, 3, *rest).movedim(2, 0)  # (3, heads, head_dim, ...)
    else:
        qkv = fused.reshape(heads, 3, head_dim, *rest).movedim(1, 0)  # (3, heads, head_dim, ...)
    return tuple(part.reshape(heads * head_dim, *rest).contiguous() for part in qkv)




# ---- config ------------------------------------------------------------------------------------------

# Config fields the tensors' shapes fix: (field, our tensor name, axis). The vocabulary is the LM-head
# bias's length when there is one (see convert_megatron_lm_checkpoint).
_SHAPE_FIELDS = [
    ("hidden_size", "bert.embeddings.word_embeddings.weight", 1),
    ("vocab_size", "bert.embeddings.word_embeddings.weight", 0),
    ("max_position_embeddings", "bert.embeddings.position_embeddings.weight", 0),
    ("type_vocab_size", "bert.embeddings.token_type_embeddings.weight", 0),
    ("intermediate_size", "bert.encoder.layer.0.intermediate.dense.weight", 0),
]
_ARG_NAMES = {"num_hidden_layers": "num_layers", "intermediate_size": "ffn_hidden_size"}  # Megatron's names


def _shape_sizes(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[int, str]]:
    """{config field: (value, the tensor that says so)} for every field the shapes fix."""
    sizes = {field: (tensors[name].shape[axis], name) for field, name, axis in _SHAPE_FIELDS
             if name in tensors and tensors[name].dim() > axis}  # fmt: skip
    layers = {int(m) for k in tensors for m in re.findall(r"^bert\.encoder\.layer\.(\d+)\.", k)}
    sizes["num_hidden_layers"] = (max(layers) + 1 if layers else 0, "bert.encoder.layer.*")
    return sizes


def _stored_fields(args: Any, sizes: dict[str, tuple[int, str]], path: str) -> dict[str, Any]:
    """Config fields from the stored ``args``, after checking them against the tensors' shapes."""
    for field, (value, _) in sizes.items():
        arg = _ARG_NAMES.get(field, field)
        stored = getattr(args, arg, None)
        if field != "vocab_size" and stored is not None and stored != value:  # (the vocabulary is padded)
            raise CheckpointError(f"{path}: args.{arg}={stored} but the tensors say {field}={value}")
    fields = {
        "layer_norm_eps": getattr(args, "layernorm_epsilon", None) or MEGATRON_LAYER_NORM_EPS,
        "hidden_act": "gelu_new" if getattr(args, "openai_gelu", False) else "gelu",  # tanh approx vs erf
    }
    heads = getattr(args, "num_attention_heads", None)
    if heads is not None:
        fields["num_attention_heads"] = heads
    return fields


def _check_config(config: MegatronBertConfig, sizes: dict[str, tuple[int, str]], source: str) -> None:
    """The config must describe the tensors: every shape field, pre-LN, and heads that divide the width."""
    check_config_sizes(config, sizes, source)
    if config.layer_norm_position != "pre":
        raise CheckpointError(f"{source} says layer_norm_position={config.layer_norm_position!r}, but "
                              "Megatron-LM checkpoints are pre-LN ('pre')")
    if config.hidden_size % config.num_attention_heads:
        raise CheckpointError(f"{source} says num_attention_heads={config.num_attention_heads}, which does not "
                              f"divide hidden_size={config.hidden_size}")


def _megatron_config(sizes: dict[str, tuple[int, str]], args: Any, path: str,
                     config: MegatronBertConfig | None, overrides: dict[str, Any]) -> MegatronBertConfig:
    """The model's config: ``config`` if given, else the shapes plus the stored args; ``overrides`` on top.

    The head count does not show in any shape. Without args, config= or num_attention_heads= it cannot
    be known, and guessing would build a different model, so that is an error.
    """
    stored = _stored_fields(args, sizes, path)
    source = "the config passed in" if config is not None else path
    if config is None:
        fields = {**stored, **{field: value for field, (value, _) in sizes.items()}}
        if "num_attention_heads" in overrides:  # needed now: no other way to know it (see above)
            fields["num_attention_heads"] = overrides["num_attention_heads"]
        if "num_attention_heads" not in fields:
            raise CheckpointError(
                f"{path} stores no args.num_attention_heads, and the head count does not show in the tensors' "
                "shapes: pass config=MegatronBertConfig(...) or num_attention_heads=... (--config on the "
                "command line)"
            )
        try:
            config = MegatronBertConfig(layer_norm_position="pre", **fields)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: {e}") from e
    config = resolve_config(config, overrides, lambda: config)  # errors name the overriding field
    _check_config(config, sizes, source)
    return config


# ---- conversion ----------------------------------------------------------------------------------------


def convert_megatron_lm_checkpoint(
    path: str | os.PathLike, num_attention_heads: int | None = None, trust_pickle: bool = False,
    config: MegatronBertConfig | None = None, **overrides: Any,
) -> tuple[MegatronBertConfig, dict[str, torch.Tensor]]:  # fmt: skip
    """Read a Megatron-LM BERT checkpoint (.zip or .pt) as (config, state dict in our names).

    The state dict has the keys of ``MegatronBertForPreTraining`` (tied decoder tensors included) and
    the checkpoint's dtype (fp16 for NVIDIA's release). The vocabulary size comes from the LM-head bias
    (the padded 29056 cased / 30592 uncased); sizes, heads and epsilon from the stored args when present.
    ``config`` replaces the stored args (its sizes must match the tensors); ``num_attention_heads`` and
    keyword ``overrides`` change single fields. A checkpoint without args needs one of them for its heads.
    """
    path = os.fspath(path)
    if num_attention_heads is not None:
        overrides["num_attention_heads"] = num_attention_heads
    raw = read_megatron_lm_file(path, trust_pickle)
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
        raise CheckpointError(f"{path} is not a Megatron-LM checkpoint: no 'model' dict in it")
    args = raw.get("args")
    try:
        version = float(raw.get("checkpoint_version", 0))
    except (TypeError, ValueError):
        raise CheckpointError(f"{path}: checkpoint_version={raw['checkpoint_version']!r} is not a number") from None
    tensors: dict[str, torch.Tensor] = {}
    for name, value in _flatten(raw["model"], path).items():
        ours = map_megatron_name(name)
        if ours is None:
            raise CheckpointError(f"unknown tensor model.{name} in {path} (see MEGATRON_NAME_TABLE)")
        tensors[ours] = value
    required = ["bert.embeddings.word_embeddings.weight", "bert.embeddings.position_embeddings.weight",
                "bert.embeddings.token_type_embeddings.weight"]  # fmt: skip
    absent = [name for name in required if tensors.get(name, torch.empty(0)).dim() != 2]
    if absent:
        raise CheckpointError(f"{path} has no 2-D {', '.join(absent)}: not a Megatron-LM BERT checkpoint")

    # Megatron pads the vocabulary to a multiple of 128 (x model-parallel ranks) so the matrix splits
    # evenly; the LM head's bias has one entry per row the model actually predicts.
    word = tensors["bert.embeddings.word_embeddings.weight"]
    vocab = tensors["cls.predictions.bias"].numel() if "cls.predictions.bias" in tensors else word.shape[0]
    tensors["bert.embeddings.word_embeddings.weight"] = word[: min(vocab, word.shape[0])]
    config = _megatron_config(_shape_sizes(tensors), args, path, config, overrides)

    for key in [k for k in tensors if ".QKV." in k]:
        fused = tensors.pop(key)
        if fused.dim() == 0 or fused.shape[0] != 3 * config.hidden_size:
            raise CheckpointError(f"{path}: the fused query/key/value tensor for {key} has shape "
                                  f"{tuple(fused.shape)}, expected {3 * config.hidden_size} rows")
        q, k, v = split_fused_qkv(fused, version, config.num_attention_heads)
        for part, value in (("query", q), ("key", k), ("value", v)):
            tensors[key.replace(".QKV.", f".{part}.")] = value
    if "cls.predictions.bias" in tensors:  # the MLM decoder is tied to the word embeddings
        tensors["cls.predictions.decoder.weight"] = tensors["bert.embeddings.word_embeddings.weight"]
        tensors["cls.predictions.decoder.bias"] = tensors["cls.predictions.bias"]
    return config, tensors


def is_megatron_lm_checkpoint(path: str | os.PathLike) -> bool:
    """True for a file named .zip or .pt (whether it reads is for the reader to say)."""
    return os.path.isfile(path) and os.fspath(path).endswith((".zip", ".pt"))


def load_megatron_lm_model(
    cls: type, path: str | os.PathLike, config: MegatronBertConfig | None = None, strict: bool = True,
    ignore_mismatched_sizes: bool = False, trust_pickle: bool = False, **overrides: Any,
) -> torch.nn.Module:  # fmt: skip
    """``cls.from_pretrained("<...>.zip")``: convert, build the model, load, and keep the report.

    ``config`` and keyword ``overrides`` as in ``convert_megatron_lm_checkpoint``.
    """
    config, state_dict = convert_megatron_lm_checkpoint(path, trust_pickle=trust_pickle, config=config,
                                                        **overrides)
    return build_model(cls, config, state_dict, source=os.fspath(path), strict=strict,
                       ignore_mismatched_sizes=ignore_mismatched_sizes)
