"""``python -m megabert_edu convert SRC DST``: a TF or Megatron-LM checkpoint -> an HF-style directory.

The directory (config.json + model.safetensors) loads with ``MegatronBert*.from_pretrained`` here
and with transformers' ``MegatronBertFor*`` / ``BertFor*`` classes, so the slow, pickle-based or
TensorFlow-only formats need converting only once.
"""

from __future__ import annotations

import argparse
import json
import os

from .. import models
from ..config import MegatronBertConfig
from .megatron_lm import is_megatron_lm_checkpoint, load_megatron_lm_model
from .report import CheckpointError, LoadReport
from .tf import is_tf_checkpoint, list_tf_variables, load_tf_weights, resolve_tf_prefix, tf_config

# The model class that keeps a TF checkpoint's output layers, by the first of their names it has.
TF_HEADS = [
    ("cls/squad/output_weights", "MegatronBertForQuestionAnswering"),  # Google's run_squad.py
    ("output_weights", "MegatronBertForSequenceClassification"),  # Google's run_classifier.py
    ("cls/seq_relationship/output_weights", "MegatronBertForPreTraining"),  # run_pretraining.py
    ("cls/predictions/output_bias", "MegatronBertForMaskedLM"),
]


def _tf_model(prefix: str, config: MegatronBertConfig):
    variables = {v.name: v.shape for v in list_tf_variables(prefix)}
    for name, class_name in TF_HEADS:
        if name in variables:
            if class_name.endswith("SequenceClassification"):
                config = config.copy(num_labels=variables[name][0], id2label=None)
            return getattr(models, class_name)(config)
    return models.MegatronBertModel(config)


def convert(
    src: str | os.PathLike, dst: str | os.PathLike, config: str | os.PathLike | None = None,
    trust_pickle: bool = False,
) -> LoadReport:  # fmt: skip
    """Convert ``src`` (TF prefix or directory, or Megatron-LM .zip/.pt) and save it to ``dst``.

    ``config`` is a bert_config.json / config.json for a TF checkpoint with none beside it. Raises
    CheckpointError, before writing anything, if any tensor the model needs is missing or mis-shaped.
    """
    if is_tf_checkpoint(src):
        prefix = resolve_tf_prefix(src)
        model = _tf_model(prefix, tf_config(prefix, config))
        report = load_tf_weights(model, prefix, strict=True)
    elif is_megatron_lm_checkpoint(src):
        model = load_megatron_lm_model(None, src, strict=True, trust_pickle=trust_pickle)
        report = model.load_report
    else:
        raise CheckpointError(
            f"{src} is neither a TF checkpoint (prefix.index) nor a Megatron-LM .zip/.pt file"
        )
    model.save_pretrained(dst)
    return report


def run_convert(args: argparse.Namespace) -> None:
    try:
        report = convert(args.src, args.dst, config=args.config, trust_pickle=args.trust_pickle)
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from None
    print(report)
    with open(os.path.join(args.dst, "config.json")) as f:
        architecture = json.load(f)["architectures"][0]
    print(f"wrote {args.dst}/config.json and model.safetensors ({architecture})")


def add_convert_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """Register ``convert SRC DST`` on the ``python -m megabert_edu`` parser."""
    p = subparsers.add_parser(
        "convert",
        help="TF or Megatron-LM checkpoint -> config.json + model.safetensors",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("src", help="TF checkpoint prefix or its directory, or a Megatron-LM .zip / .pt file")
    p.add_argument("dst", help="output directory")
    p.add_argument(
        "--config", help="bert_config.json / config.json, for a TF checkpoint without one beside it"
    )
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="let a Megatron-LM .pt unpickle arbitrary Python objects (runs code from the file!)",
    )
    p.set_defaults(func=run_convert)
