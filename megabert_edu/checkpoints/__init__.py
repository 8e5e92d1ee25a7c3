"""Checkpoint formats: HF directories (hf.py), TF tensor bundles (tf.py), NVIDIA Megatron-LM (megatron_lm.py).

``load_pretrained`` is what ``Model.from_pretrained`` does; ``load_checkpoint`` picks the format loader.
The generic state-dict loader and LoadReport live in loading.py and report.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..config import MegatronBertConfig
from .hf import load_hf_directory, read_hf_config
from .loading import build_model, finish_loading, resolve_config
from .megatron_lm import is_megatron_lm_checkpoint, load_megatron_lm_model
from .report import CheckpointError, CheckpointMismatchError, LoadReport
from .tf import is_tf_checkpoint, load_tf_checkpoint_model

__all__ = ["CheckpointError", "CheckpointMismatchError", "LoadReport", "load_checkpoint", "load_pretrained"]

# transformers keywords that mean nothing for a local, already-safe load: accepted and honoured trivially.
NO_OP_KEYWORDS = {"local_files_only": None, "low_cpu_mem_usage": None, "weights_only": True}


def load_pretrained(cls: type, path: str | os.PathLike | None = None, *, config=None, state_dict=None,
                    strict: bool = True, ignore_mismatched_sizes: bool = False, torch_dtype: Any = None,
                    device: Any = None, output_loading_info: bool = False, subfolder: str = "",
                    **config_overrides: Any):
    """``cls.from_pretrained(path, ...)`` as in transformers; returns an eval-mode model.

    - ``path``: an HF directory, a TF checkpoint prefix, or a Megatron-LM .zip/.pt (``subfolder`` is
      joined to it); None with ``config=`` and ``state_dict=``.
    - ``config`` (a MegatronBertConfig, or the path of a config.json or of its directory): replaces the
      checkpoint's own config; ``**config_overrides`` (any config field, e.g.
      ``num_labels=5``, ``hidden_dropout_prob=0.0``, ``is_decoder=True``) change it before the model is
      built, for every format. A keyword that is no config field raises TypeError naming it.
    - ``state_dict``: use these tensors instead of the checkpoint's weights.
    - ``strict``: missing, mis-shaped or unexpected encoder tensors raise CheckpointError (default True;
      transformers only warns). ``ignore_mismatched_sizes`` re-initialises mis-shaped tensors instead.
    - ``torch_dtype`` (alias ``dtype``): a torch.dtype, its name, or "auto" (the stored dtype).
    - ``device`` (alias ``map_location``): where the model goes after loading.
    - ``output_loading_info``: also return transformers' dict of missing / unexpected / mismatched keys.
    """
    if isinstance(config, (str, os.PathLike)):  # a config.json, or a directory holding one (as transformers)
        config = MegatronBertConfig.from_pretrained(config)
    torch_dtype = _alias(config_overrides, "dtype", "torch_dtype", torch_dtype)
    device = _alias(config_overrides, "map_location", "device", device)
    for key, expected in NO_OP_KEYWORDS.items():
        value = config_overrides.pop(key, expected)
        if expected is not None and value != expected:
            raise ValueError(f"{key}={value!r} is not supported (megabert_edu always loads with {key}={expected})")
    if path is not None:
        path = Path(path) / subfolder
    if state_dict is not None:
        if config is None and path is None:
            raise TypeError("from_pretrained(None, state_dict=...) needs config=MegatronBertConfig(...)")
        model_config = resolve_config(config, config_overrides, lambda: read_hf_config(path))
        model = build_model(cls, model_config, state_dict, source="the state_dict argument", strict=strict,
                            ignore_mismatched_sizes=ignore_mismatched_sizes)
    elif path is None:
        raise TypeError("from_pretrained needs a checkpoint path (or config= and state_dict=)")
    else:
        model = load_checkpoint(cls, path, config=config, strict=strict,
                                ignore_mismatched_sizes=ignore_mismatched_sizes, **config_overrides)
    finish_loading(model, torch_dtype=torch_dtype, device=device)
    return (model, model.load_report.loading_info()) if output_loading_info else model


def load_checkpoint(cls: type, path: str | os.PathLike, *, config=None, strict: bool = True,
                    ignore_mismatched_sizes: bool = False, **config_overrides: Any):
    """Pick the loader from what ``path`` is: an HF directory, a TF checkpoint, or a Megatron-LM .zip/.pt.

    Every format loader is called the same way and returns the model with ``model.load_report`` set:

        loader(cls, path, config=None, strict=True, ignore_mismatched_sizes=False, **config_overrides)

    ``config`` (a MegatronBertConfig) replaces the checkpoint's own config; ``config_overrides`` are
    config fields applied to whichever config is used, before the model is built -- through
    ``loading.resolve_config`` (or ``MegatronBertConfig.copy``), so a keyword that is no field raises
    TypeError naming it. The loader fills the model with ``loading.load_state_dict``. ``config`` and
    ``ignore_mismatched_sizes`` are passed only when set.
    """
    options = dict(config_overrides)
    if config is not None:
        options["config"] = config
    if ignore_mismatched_sizes:
        options["ignore_mismatched_sizes"] = True
    p = Path(path)
    if p.is_dir() and (p / "config.json").is_file() and not is_tf_checkpoint(p):
        return load_hf_directory(cls, p, strict=strict, **options)
    if is_tf_checkpoint(p):  # a prefix, its .index file, or a Google BERT release directory
        return load_tf_checkpoint_model(cls, str(p), strict=strict, **options)
    if is_megatron_lm_checkpoint(p):
        return load_megatron_lm_model(cls, str(p), strict=strict, **options)
    if not p.exists():
        raise FileNotFoundError(f"no checkpoint at {path}: not a directory, a TF prefix (.index) or a .zip/.pt file")
    if p.is_dir():
        raise CheckpointError(f"{path} has no config.json and no TF checkpoint (.index)")
    raise CheckpointError(f"don't know how to load {path}: expected an HF directory, a TF checkpoint prefix "
                          "or a Megatron-LM .zip/.pt")


def _alias(kwargs: dict[str, Any], alias: str, name: str, value: Any) -> Any:
    """transformers spells some options two ways (dtype / torch_dtype, map_location / device)."""
    if alias in kwargs:
        if value is not None:
            raise TypeError(f"pass {name} or {alias}, not both")
        return kwargs.pop(alias)
    return value
