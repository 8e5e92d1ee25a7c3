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
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import re
import zipfile
from typing import TYPE_CHECKING, Any

import torch

from .report import CheckpointError

if TYPE_CHECKING:
    from ..config import MegatronBertConfig

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


def _safe_globals() -> list:
    """The classes a Megatron-LM checkpoint pickles besides tensors: its ``args`` namespace, and numpy
    arrays in the random-number-generator state that training checkpoints carry."""
    import numpy as np

    core = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    numpy_types = [np.ndarray, np.dtype, core._reconstruct, core.scalar]
    numpy_types += [type(np.dtype(t)) for t in ("u1", "u4", "u8", "i4", "i8", "f4", "f8", "b1")]
    old_names = [
        (core._reconstruct, "numpy.core.multiarray._reconstruct"),
        (core.scalar, "numpy.core.multiarray.scalar"),
    ]
    return [argparse.Namespace, *numpy_types, *old_names]  # numpy < 2 pickles say numpy.core


def _torch_load(data: io.BytesIO | str, source: str, trust_pickle: bool) -> dict:
    """torch.load that refuses to run code from the file.

    A .pt file is a pickle, and unpickling can run arbitrary code. torch's weights_only mode allows
    only tensors and plain containers; Megatron also pickles an argparse.Namespace and numpy arrays,
    so we allow exactly those (``_safe_globals``). Anything else needs ``trust_pickle=True``, which
    the caller should pass only for a file from a source they trust.
    """
    if trust_pickle:
        return torch.load(data, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(data, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"(but got|Unsupported global: GLOBAL) (\S+)", str(e))
        what = found.group(2) if found else str(e).splitlines()[0]
        raise CheckpointError(
            f"{source} pickles {what}, which the safe loader refuses. If you trust the file, "
            "pass trust_pickle=True."
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"could not read {source}: truncated or not a PyTorch file ({e})") from e


def read_megatron_lm_file(path: str | os.PathLike, trust_pickle: bool = False) -> dict:
    """The raw checkpoint dict from a release .zip or a model_optim_rng.pt file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"no Megatron-LM checkpoint at {path}")
    if not path.endswith(".zip"):  # (a .pt is a zip file too, since torch 1.6, so go by the name)
        return _torch_load(path, path, trust_pickle)
    with zipfile.ZipFile(path) as z:
        members = [n for n in z.namelist() if n.endswith("model_optim_rng.pt")]
        ranks = sorted({m for n in members for m in re.findall(r"mp_rank_\d+", n)})
        if len(ranks) > 1:
            raise CheckpointError(f"{path} is split over {len(ranks)} model-parallel ranks; merge them first")
        if not members:
            raise CheckpointError(
                f"{path} has no */mp_rank_00/model_optim_rng.pt (it has {z.namelist()[:5]})"
            )
        release = "release/mp_rank_00/model_optim_rng.pt"
        name = release if release in members else members[0]
        data = io.BytesIO(z.read(name))  # torch.load needs to seek; a zip member stream seeks slowly
    return _torch_load(data, f"{path}:{name}", trust_pickle)


def _flatten(tree: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        elif isinstance(value, torch.Tensor):
            out[name] = value
        else:
            raise CheckpointError(f"unexpected {type(value).__name__} at model.{name} in the checkpoint")
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


def _sizes(tensors: dict[str, torch.Tensor], args: Any, heads: int | None) -> dict[str, Any]:
    """Config fields from the tensors' shapes, checked against the stored args when there are any."""
    layers = {int(m) for k in tensors for m in re.findall(r"^bert\.encoder\.layer\.(\d+)\.", k)}
    word = tensors["bert.embeddings.word_embeddings.weight"]
    sizes = {
        "hidden_size": word.shape[1],
        "num_hidden_layers": max(layers) + 1 if layers else 0,
        "intermediate_size": tensors.get("bert.encoder.layer.0.intermediate.dense.weight", word).shape[0],
        "max_position_embeddings": tensors["bert.embeddings.position_embeddings.weight"].shape[0],
    }
    stored_as = {"num_hidden_layers": "num_layers", "intermediate_size": "ffn_hidden_size"}
    for field in list(sizes):
        arg = stored_as.get(field, field)
        value = getattr(args, arg, None)
        if value is not None and value != sizes[field]:
            raise CheckpointError(f"args.{arg}={value} but the tensors say {field}={sizes[field]}")
    # The head count is invisible in the shapes. Every released BERT uses 64-dimensional heads.
    heads = heads or getattr(args, "num_attention_heads", None) or sizes["hidden_size"] // 64
    sizes["num_attention_heads"] = heads
    sizes["layer_norm_eps"] = getattr(args, "layernorm_epsilon", None) or MEGATRON_LAYER_NORM_EPS
    sizes["hidden_act"] = "gelu_new" if getattr(args, "openai_gelu", False) else "gelu"  # tanh approx vs erf
    return sizes


def convert_megatron_lm_checkpoint(
    path: str | os.PathLike, num_attention_heads: int | None = None, trust_pickle: bool = False
) -> tuple[MegatronBertConfig, dict[str, torch.Tensor]]:
    """Read a Megatron-LM BERT checkpoint (.zip or .pt) as (config, state dict in our names).

    The state dict has the keys of ``MegatronBertForPreTraining`` (tied decoder tensors included) and
    the checkpoint's dtype (fp16 for NVIDIA's release). The vocabulary size comes from the LM-head bias
    (the padded 29056 cased / 30592 uncased); sizes, heads and epsilon from the stored args when present.
    Pass ``num_attention_heads`` for a checkpoint without args whose heads are not 64 wide.
    """
    from ..config import MegatronBertConfig

    raw = read_megatron_lm_file(path, trust_pickle)
    if not isinstance(raw, dict) or "model" not in raw:
        raise CheckpointError(f"{path} is not a Megatron-LM checkpoint: no 'model' entry")
    args, version = raw.get("args"), float(raw.get("checkpoint_version", 0))
    tensors: dict[str, torch.Tensor] = {}
    for name, value in _flatten(raw["model"]).items():
        ours = map_megatron_name(name)
        if ours is None:
            raise CheckpointError(f"unknown tensor model.{name} in {path} (see MEGATRON_NAME_TABLE)")
        tensors[ours] = value
    if "bert.embeddings.word_embeddings.weight" not in tensors:
        raise CheckpointError(f"{path} has no word embeddings: not a Megatron-LM BERT checkpoint")

    sizes = _sizes(tensors, args, num_attention_heads)
    for key in [k for k in tensors if ".QKV." in k]:
        q, k, v = split_fused_qkv(tensors.pop(key), version, sizes["num_attention_heads"])
        for part, value in (("query", q), ("key", k), ("value", v)):
            tensors[key.replace(".QKV.", f".{part}.")] = value

    # Megatron pads the vocabulary to a multiple of 128 (x model-parallel ranks) so the matrix splits
    # evenly; the LM head's bias has one entry per row the model actually predicts.
    word = tensors["bert.embeddings.word_embeddings.weight"]
    vocab = tensors["cls.predictions.bias"].numel() if "cls.predictions.bias" in tensors else word.shape[0]
    vocab = min(vocab, word.shape[0])
    tensors["bert.embeddings.word_embeddings.weight"] = word[:vocab]
    if "cls.predictions.bias" in tensors:  # the MLM decoder is tied to the word embeddings
        tensors["cls.predictions.decoder.weight"] = tensors["bert.embeddings.word_embeddings.weight"]
        tensors["cls.predictions.decoder.bias"] = tensors["cls.predictions.bias"]
    config = MegatronBertConfig(
        vocab_size=vocab,
        type_vocab_size=tensors["bert.embeddings.token_type_embeddings.weight"].shape[0],
        layer_norm_position="pre",
        **sizes,
    )
    return config, tensors


def is_megatron_lm_checkpoint(path: str | os.PathLike) -> bool:
    return os.path.isfile(path) and os.fspath(path).endswith((".zip", ".pt"))


def load_megatron_lm_model(cls: type | None, path: str | os.PathLike, strict: bool = True,
                           trust_pickle: bool = False) -> torch.nn.Module:
    """``cls.from_pretrained("<...>.zip")``: convert, build the model, load, and keep the report.

    cls=None picks the class from the checkpoint: pre-training heads if it has them, else the bare model.
    """
    from .. import models
    from .hf import load_state_dict

    config, state_dict = convert_megatron_lm_checkpoint(path, trust_pickle=trust_pickle)
    if cls is None:
        has_heads = any(key.startswith("cls.") for key in state_dict)
        cls = models.MegatronBertForPreTraining if has_heads else models.MegatronBertModel
    model = cls(config)
    model.load_report = load_state_dict(model, state_dict, strict=strict, source=os.fspath(path))
    return model
