"""``python -m megabert_edu convert SRC DST``: a TF or Megatron-LM checkpoint -> an HF-style directory.

The directory (config.json + model.safetensors) loads with ``MegatronBert*.from_pretrained`` here
and with transformers' ``MegatronBertFor*`` / ``BertFor*`` classes, so the slow, pickle-based or
TensorFlow-only formats need converting only once.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping

from torch import nn

from .. import models
from ..config import MegatronBertConfig
from .loading import load_state_dict
from .megatron_lm import convert_megatron_lm_checkpoint, is_megatron_lm_checkpoint
from .report import CheckpointError, LoadReport
from .tf import is_tf_checkpoint, list_tf_variables, load_tf_weights, map_tf_name, resolve_tf_prefix, tf_config

# The model class that keeps a checkpoint's output layers, by the first of their (PyTorch) names it has.
HEAD_CLASSES = [
    ("qa_outputs.weight", "MegatronBertForQuestionAnswering"),  # Google's run_squad.py
    ("classifier.weight", "MegatronBertForSequenceClassification"),  # Google's run_classifier.py
    ("cls.seq_relationship.weight", "MegatronBertForPreTraining"),  # run_pretraining.py, Megatron-LM
    ("cls.predictions.bias", "MegatronBertForMaskedLM"),
]


def model_for(config: MegatronBertConfig, shapes: Mapping[str, tuple[int, ...]]) -> nn.Module:
    """The model that keeps every output layer a checkpoint has, from its tensors' names and shapes.

    A classifier's label count comes from its weight's first dimension; no head at all gives the
    bare ``MegatronBertModel``.
    """
    for name, class_name in HEAD_CLASSES:
        if name in shapes:
            if class_name.endswith("SequenceClassification"):
                config = config.copy(num_labels=shapes[name][0], id2label=None)
            return getattr(models, class_name)(config)
    return models.MegatronBertModel(config)


def _convert_tf(src: str | os.PathLike, config_path: str | os.PathLike | None) -> tuple[nn.Module, LoadReport]:
    prefix = resolve_tf_prefix(src)
    shapes = {mapped[0]: v.shape for v in list_tf_variables(prefix) if (mapped := map_tf_name(v.name))}
    model = model_for(tf_config(prefix, config_path), shapes)
    return model, load_tf_weights(model, prefix, strict=True)


def _convert_megatron_lm(
    src: str | os.PathLike, config_path: str | os.PathLike | None, trust_pickle: bool
) -> tuple[nn.Module, LoadReport]:
    given = MegatronBertConfig.from_json_file(config_path) if config_path else None
    config, state_dict = convert_megatron_lm_checkpoint(src, trust_pickle=trust_pickle, config=given)
    model = model_for(config, {key: tuple(t.shape) for key, t in state_dict.items()})
    return model, load_state_dict(model, state_dict, strict=True, source=os.fspath(src))


def convert(
    src: str | os.PathLike, dst: str | os.PathLike, config: str | os.PathLike | None = None,
    trust_pickle: bool = False,
) -> LoadReport:  # fmt: skip
    """Convert ``src`` (TF prefix or directory, or Megatron-LM .zip/.pt) and save it to ``dst``.

    ``config`` is a bert_config.json / config.json: for a TF checkpoint it replaces the one beside
    it; for a Megatron-LM file it replaces the stored args (and is the only way to give the head
    count of a file saved without them). Raises CheckpointError, before writing anything, if any
    tensor the model needs is missing or mis-shaped; FileNotFoundError if ``src`` does not exist.
    """
    if is_tf_checkpoint(src):
        model, report = _convert_tf(src, config)
    elif is_megatron_lm_checkpoint(src):
        model, report = _convert_megatron_lm(src, config, trust_pickle)
    elif not os.path.exists(src):
        raise FileNotFoundError(f"{src} does not exist (no such file, directory or TF checkpoint prefix)")
    else:
        raise CheckpointError(f"{src} is neither a TF checkpoint (prefix.index) nor a Megatron-LM .zip/.pt file")
    model.save_pretrained(dst)
    return report


def run_convert(args: argparse.Namespace) -> None:
    """The ``convert`` command; errors propagate to ``__main__.main``, which prints them on one line."""
    report = convert(args.src, args.dst, config=args.config, trust_pickle=args.trust_pickle)
    print(report)
    with open(os.path.join(args.dst, "config.json")) as f:
        architecture = json.load(f)["architectures"][0]
    print(f"wrote {args.dst}/config.json and model.safetensors ({architecture})")


def add_convert_subcommand(subparsers: argparse._SubParsersAction, **common) -> argparse.ArgumentParser:
    """Register ``convert SRC DST`` on the ``python -m megabert_edu`` parser (``common``: add_parser options)."""
    p = subparsers.add_parser(
        "convert",
        help="TF or Megatron-LM checkpoint -> config.json + model.safetensors",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **common,
    )
    p.add_argument("src", help="TF checkpoint prefix or its directory, or a Megatron-LM .zip / .pt file")
    p.add_argument("dst", help="output directory")
    p.add_argument(
        "--config",
        help="bert_config.json / config.json: replaces the one beside a TF checkpoint, or a Megatron-LM "
        "file's stored args (needed for the head count of a file saved without them)",
    )
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="let a Megatron-LM .pt unpickle arbitrary Python objects (runs code from the file!)",
    )
    p.set_defaults(func=run_convert, source="src")
    return p
