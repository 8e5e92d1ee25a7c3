"""BERT weights from TensorFlow checkpoints: the TF-name table, config inference, model loading.

The file format itself (tensor bundles: CRC32C, protobuf, SSTable index, reading and writing) is in
``tf_bundle.py``; its public names are re-exported here. This module maps Google-BERT and Megatron TF
variable names onto our PyTorch names (``TF_NAME_TABLE``), builds a config for a checkpoint and
checks it against the tensors' shapes, and loads the weights into a model.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from ..config import MegatronBertConfig
from .loading import check_config_sizes, load_state_dict, resolve_config
from .report import CheckpointError, LoadReport
from .tf_bundle import (
    TFVariable,
    crc32c,
    is_tf_checkpoint,
    iter_tf_checkpoint,
    list_tf_variables,
    read_tf_checkpoint,
    resolve_tf_prefix,
    write_tf_checkpoint,
)

__all__ = [
    "OPTIMIZER_NAMES", "TF_NAME_TABLE", "TFVariable", "check_tf_config", "crc32c", "is_tf_checkpoint",
    "iter_tf_checkpoint", "layer_norm_hint", "list_tf_variables", "load_tf_checkpoint_model", "load_tf_weights",
    "map_tf_name", "read_tf_checkpoint", "resolve_tf_prefix", "state_dict_to_tf", "tf_config", "tf_sizes",
    "write_tf_checkpoint",
]  # fmt: skip

# ---- TF names -> PyTorch names ----------------------------------------------------------------------

# THE name mapping, one row per TF scope. "{L}" is one encoder layer: bert/encoder/layer_N in TF,
# bert.encoder.layer.N in PyTorch. Google's BERT code and our modules use the same scope names, so
# the rows differ only in their separators and their leaves:
#   "dense":  <scope>/kernel -> <module>.weight, TRANSPOSED (TF stores [in, out], nn.Linear [out, in])
#             <scope>/bias   -> <module>.bias
#   "norm":   <scope>/gamma  -> <module>.weight,  <scope>/beta -> <module>.bias
#   "tensor": the name itself, as is
# Google BERT (post-LN) checkpoints have the LayerNorm rows; Megatron (pre-LN) ones the ln rows.
TF_NAME_TABLE: list[tuple[str, str, str]] = [
    # TF scope                                 PyTorch name                                     kind
    ("bert/embeddings/word_embeddings",        "bert.embeddings.word_embeddings.weight",        "tensor"),
    ("bert/embeddings/position_embeddings",    "bert.embeddings.position_embeddings.weight",    "tensor"),
    ("bert/embeddings/token_type_embeddings",  "bert.embeddings.token_type_embeddings.weight",  "tensor"),
    ("bert/embeddings/LayerNorm",              "bert.embeddings.LayerNorm",                     "norm"),
    ("{L}/attention/ln",                       "{L}.attention.ln",                              "norm"),
    ("{L}/attention/self/query",               "{L}.attention.self.query",                      "dense"),
    ("{L}/attention/self/key",                 "{L}.attention.self.key",                        "dense"),
    ("{L}/attention/self/value",               "{L}.attention.self.value",                      "dense"),
    ("{L}/attention/output/dense",             "{L}.attention.output.dense",                    "dense"),
    ("{L}/attention/output/LayerNorm",         "{L}.attention.output.LayerNorm",                "norm"),
    ("{L}/ln",                                 "{L}.ln",                                        "norm"),
    ("{L}/intermediate/dense",                 "{L}.intermediate.dense",                        "dense"),
    ("{L}/output/dense",                       "{L}.output.dense",                              "dense"),
    ("{L}/output/LayerNorm",                   "{L}.output.LayerNorm",                          "norm"),
    ("bert/encoder/ln",                        "bert.encoder.ln",                               "norm"),
    ("bert/pooler/dense",                      "bert.pooler.dense",                             "dense"),
    ("cls/predictions/transform/dense",        "cls.predictions.transform.dense",               "dense"),
    ("cls/predictions/transform/LayerNorm",    "cls.predictions.transform.LayerNorm",           "norm"),
    ("cls/predictions/output_bias",            "cls.predictions.bias",                          "tensor"),
    # Google's output layers store their weights [out, in] already: no transpose.
    ("cls/seq_relationship/output_weights",    "cls.seq_relationship.weight",                   "tensor"),
    ("cls/seq_relationship/output_bias",       "cls.seq_relationship.bias",                     "tensor"),
    ("output_weights",                         "classifier.weight",                             "tensor"),
    ("output_bias",                            "classifier.bias",                               "tensor"),
    ("cls/squad/output_weights",               "qa_outputs.weight",                             "tensor"),
    ("cls/squad/output_bias",                  "qa_outputs.bias",                               "tensor"),
]  # fmt: skip

# Training state that a checkpoint carries but a model does not need: reported as skipped.
OPTIMIZER_NAMES = re.compile(
    r"(^|/)(adam_m|adam_v|Adam|Adam_1|Momentum)$|AdamWeightDecayOptimizer|^global_step$|^beta[12]_power$"
    r"|^_CHECKPOINTABLE_OBJECT_GRAPH$"
)

_LEAVES = {
    "dense": [("/kernel", ".weight", True), ("/bias", ".bias", False)],
    "norm": [("/gamma", ".weight", False), ("/beta", ".bias", False)],
    "tensor": [("", "", False)],
}


def _pattern(name: str, layer: str) -> re.Pattern:
    """A row's name as a regex; the layer number is captured as group N."""
    return re.compile(re.escape(name).replace(re.escape("{L}"), layer) + "$")


# (TF regex, PyTorch template, transpose) and the reverse, one per leaf of every row.
_TF_LAYER, _PT_LAYER = r"bert/encoder/layer_(?P<N>\d+)", r"bert\.encoder\.layer\.(?P<N>\d+)"
_RULES = [
    (_pattern(scope + tf_leaf, _TF_LAYER), torch + pt_leaf, transpose)
    for scope, torch, kind in TF_NAME_TABLE
    for tf_leaf, pt_leaf, transpose in _LEAVES[kind]
]
_INVERSE_RULES = [
    (_pattern(torch + pt_leaf, _PT_LAYER), scope + tf_leaf, transpose)
    for scope, torch, kind in TF_NAME_TABLE
    for tf_leaf, pt_leaf, transpose in _LEAVES[kind]
]


def _fill(template: str, m: re.Match, layer: str) -> str:
    return template.replace("{L}", layer.replace("{N}", m.groupdict().get("N") or ""))


def map_tf_name(name: str) -> tuple[str, bool] | None:
    """The PyTorch name for a TF variable and whether to transpose it; None if no row matches."""
    for pattern, torch_name, transpose in _RULES:
        m = pattern.match(name)
        if m:
            return _fill(torch_name, m, "bert.encoder.layer.{N}"), transpose
    return None


# Tensors a TF BERT checkpoint does not store: the MLM decoder is tied to the word embeddings (its
# bias to cls/predictions/output_bias) and position_ids is a constant buffer.
_NOT_IN_TF = re.compile(r"(^|\.)position_ids$|^cls\.predictions\.decoder\.(weight|bias)$")


def state_dict_to_tf(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """PyTorch weights (our names or HF BERT's) -> numpy arrays under Google/Megatron TF names.

    The inverse of ``map_tf_name``; pass the result to ``write_tf_checkpoint``.
    """
    out, unknown = {}, []
    for key, value in state_dict.items():
        if _NOT_IN_TF.search(key):
            continue
        for candidate in (key, "bert." + key):  # a bare encoder's keys lack the "bert." prefix
            for pattern, tf_name, transpose in _INVERSE_RULES:
                m = pattern.match(candidate)
                if m:
                    array = value.detach().cpu().numpy() if torch.is_tensor(value) else np.asarray(value)
                    out[_fill(tf_name, m, "bert/encoder/layer_{N}")] = array.T if transpose else array
                    break
            else:
                continue
            break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"no TF name for {', '.join(unknown)} (see TF_NAME_TABLE)")
    return out


# ---- loading into a model ----------------------------------------------------------------------------


def layer_norm_hint(report: LoadReport) -> str:
    """Say so when a checkpoint's LayerNorms belong to the other ``layer_norm_position``."""
    unexpected, missing = " ".join(report.unexpected), " ".join(report.missing)
    if "LayerNorm" in unexpected and ".ln." in missing:
        style, position = "Google BERT (post-LN)", "post"
    elif ".ln." in unexpected or "/ln/" in unexpected:
        style, position = "Megatron (pre-LN)", "pre"
    else:
        return ""
    return (
        f"the checkpoint has {style} LayerNorm names: build the model with layer_norm_position={position!r}"
    )


def _plan(variables: Iterable[TFVariable]) -> tuple[dict[str, tuple[str, bool]], list[str], list[str]]:
    """Sort a checkpoint's names: {TF name: (PyTorch name, transpose?)}, skipped optimizer state, unknown."""
    plan, skipped, unknown = {}, [], []
    for var in variables:
        mapped = map_tf_name(var.name)
        if OPTIMIZER_NAMES.search(var.name):
            skipped.append(var.name)
        elif mapped is None:
            unknown.append(var.name)
        else:
            plan[var.name] = mapped
    return plan, skipped, unknown


def load_tf_weights(model: torch.nn.Module, prefix: str | os.PathLike, strict: bool = True,
                    ignore_mismatched_sizes: bool = False) -> LoadReport:
    """Load a Google-BERT- or Megatron-named TF checkpoint into ``model`` (pre- or post-LN) in place.

    Every tensor is read and its checksum verified, including the optimizer slots and global_step,
    which are then skipped and listed. With ``strict``, a missing or mis-shaped tensor raises
    CheckpointError listing them all (``ignore_mismatched_sizes``: mis-shaped ones stay as initialised).
    """
    prefix = resolve_tf_prefix(prefix)
    plan, skipped, unknown = _plan(list_tf_variables(prefix))
    tensors = {}
    for tf_name, array in iter_tf_checkpoint(prefix):  # all of them: a damaged slot is damage too
        if tf_name in plan:
            key, transpose = plan[tf_name]
            tensors[key] = torch.from_numpy(np.ascontiguousarray(array.T if transpose else array))
    # From here on it is an ordinary state dict: the generic loader matches names, shapes and tied weights.
    report = load_state_dict(model, tensors, strict=False, source=prefix,
                             ignore_mismatched_sizes=ignore_mismatched_sizes)
    report.skipped[:0] = skipped
    report.unexpected.extend(unknown)
    if strict and not report.ok:
        hint = layer_norm_hint(report)
        try:
            report.raise_if_failed(f"TF checkpoint {prefix}")
        except CheckpointError as e:
            raise type(e)(f"{e}\n  hint: {hint}" if hint else str(e)) from None  # keeps CheckpointMismatchError
    return report


# ---- the config -------------------------------------------------------------------------------------

# Config fields a checkpoint's shapes fix: (field, TF variable, axis).
_SHAPE_FIELDS = [
    ("vocab_size", "bert/embeddings/word_embeddings", 0),
    ("hidden_size", "bert/embeddings/word_embeddings", 1),
    ("max_position_embeddings", "bert/embeddings/position_embeddings", 0),
    ("type_vocab_size", "bert/embeddings/token_type_embeddings", 0),
    ("intermediate_size", "bert/encoder/layer_0/intermediate/dense/kernel", 1),
]
_LAYER = re.compile(r"^bert/encoder/layer_(\d+)/")
_QUERY = "bert/encoder/layer_0/attention/self/query/kernel"  # [hidden, heads x head size]


def tf_sizes(variables: Iterable[TFVariable]) -> dict[str, tuple[int, str]]:
    """The config fields a checkpoint's shapes fix: {field: (value, the TF variable that says so)}."""
    shapes = {v.name: v.shape for v in variables}
    sizes = {field: (shapes[name][axis], name) for field, name, axis in _SHAPE_FIELDS
             if len(shapes.get(name, ())) > axis}  # fmt: skip
    layers = {int(m.group(1)) for name in shapes if (m := _LAYER.match(name))}
    if layers:
        sizes["num_hidden_layers"] = (max(layers) + 1, f"bert/encoder/layer_{max(layers)}")
    return sizes


def check_tf_config(config: MegatronBertConfig, variables: Iterable[TFVariable], source: str) -> None:
    """Raise CheckpointError, naming ``source`` and the field, if ``config`` cannot hold these tensors."""
    variables = list(variables)
    check_config_sizes(config, tf_sizes(variables), source)
    query = next((v for v in variables if v.name == _QUERY), None)
    if query is not None and len(query.shape) == 2:
        heads = config.num_attention_heads - len(config.pruned_heads.get(0, []))
        if query.shape[1] != heads * config.head_size:
            raise CheckpointError(
                f"{source} says num_attention_heads={config.num_attention_heads} (head size {config.head_size}), "
                f"which does not fit the {query.shape[1]}-wide query projection {_QUERY}"
            )


def _layer_norm_position(names: list[str]) -> str | None:
    """Google's ``LayerNorm`` names mean post-LN, Megatron's ``ln`` names pre-LN; None if neither."""
    if any(re.match(r"bert/(embeddings|encoder/layer_\d+/(attention/)?output)/LayerNorm/", n) for n in names):
        return "post"
    if any(re.match(r"bert/encoder/(layer_\d+/(attention/)?)?ln/", n) for n in names):
        return "pre"
    return None


def _read_json_object(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            fields = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"could not read {path}: {e}") from e
    if not isinstance(fields, dict):
        raise CheckpointError(f"{path} holds a JSON {type(fields).__name__}, not an object of config fields")
    return fields


def tf_config(
    prefix: str | os.PathLike, config_path: str | os.PathLike | None = None, **overrides: Any
) -> MegatronBertConfig:
    """Config for a TF checkpoint: ``config_path``, else the bert_config.json or config.json beside it.

    Google's bert_config.json field names are ours. The LayerNorm names in the checkpoint decide
    ``layer_norm_position``; keyword ``overrides`` win over both (a keyword that is no config field
    raises TypeError). The result is checked against the tensors' shapes (CheckpointError naming the
    file and the field if they disagree).
    """
    prefix = resolve_tf_prefix(prefix)
    folder = os.path.dirname(prefix) or "."
    beside = [os.path.join(folder, n) for n in ("bert_config.json", "config.json")]
    path = next((os.fspath(p) for p in ([config_path] if config_path else beside) if os.path.isfile(p)), None)
    if path is None:
        wanted = config_path or f"bert_config.json or config.json beside {prefix}"
        raise CheckpointError(f"config not found: {wanted} (pass a config)")
    variables = list_tf_variables(prefix)
    fields = _read_json_object(path)
    position = _layer_norm_position([v.name for v in variables])
    if position is not None:
        fields["layer_norm_position"] = position
    try:
        config = MegatronBertConfig.from_dict(fields)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from e
    config = resolve_config(config, overrides, lambda: config)
    check_tf_config(config, variables, source=path)
    return config


def load_tf_checkpoint_model(
    cls: type, prefix: str | os.PathLike, config: MegatronBertConfig | None = None, strict: bool = True,
    ignore_mismatched_sizes: bool = False, **overrides: Any,
) -> torch.nn.Module:  # fmt: skip
    """``cls.from_pretrained(<TF prefix>)``: build the model from its config, then load the weights.

    ``config`` replaces the bert_config.json beside the checkpoint; keyword ``overrides`` change single
    fields of whichever config is used. The config's sizes must match the tensors' shapes (unless
    ``strict=False`` or ``ignore_mismatched_sizes`` asks for a partial load).
    """
    prefix = resolve_tf_prefix(prefix)
    if config is None:
        config = tf_config(prefix, **overrides)
    else:
        config = resolve_config(config, overrides, lambda: config)
        if strict and not ignore_mismatched_sizes:
            check_tf_config(config, list_tf_variables(prefix), source="the config passed in")
    model = cls(config)
    model.load_report = load_tf_weights(model, prefix, strict=strict, ignore_mismatched_sizes=ignore_mismatched_sizes)
    return model
