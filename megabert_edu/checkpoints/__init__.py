"""Checkpoint formats: HF directories (hf.py), TF tensor bundles (tf.py), NVIDIA Megatron-LM (megatron_lm.py)."""

from __future__ import annotations

import os
from pathlib import Path

from .report import CheckpointError, LoadReport

__all__ = ["CheckpointError", "LoadReport", "load_pretrained"]


def load_pretrained(cls, path: str | os.PathLike, config=None, strict: bool = True, **overrides):
    """Pick the loader from what `path` is: an HF directory, a TF checkpoint, or a Megatron-LM .zip/.pt."""
    from .tf import is_tf_checkpoint, load_tf_checkpoint_model

    p = Path(path)
    if p.is_dir() and (p / "config.json").is_file() and not is_tf_checkpoint(p):
        from .hf import load_hf_directory

        return load_hf_directory(cls, p, config=config, strict=strict, **overrides)
    if is_tf_checkpoint(p):  # a prefix, its .index file, or a Google BERT release directory
        return load_tf_checkpoint_model(cls, str(p), config=config, strict=strict)
    from .megatron_lm import is_megatron_lm_checkpoint, load_megatron_lm_model

    if is_megatron_lm_checkpoint(p):
        return load_megatron_lm_model(cls, str(p), strict=strict)
    if not p.exists():
        raise FileNotFoundError(f"no checkpoint at {path}: not a directory, a TF prefix (.index) or a .zip/.pt file")
    if p.is_dir():
        raise CheckpointError(f"{path} has no config.json and no TF checkpoint (.index)")
    raise CheckpointError(f"don't know how to load {path}: expected an HF directory, a TF checkpoint prefix "
                          "or a Megatron-LM .zip/.pt")
