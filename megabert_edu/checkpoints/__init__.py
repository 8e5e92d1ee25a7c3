"""Checkpoint formats: HF directories (hf.py), TensorFlow tensor bundles (tf.py), NVIDIA Megatron-LM (megatron_lm.py)."""

from __future__ import annotations

import os
from pathlib import Path

from .report import CheckpointError, LoadReport

__all__ = ["CheckpointError", "LoadReport", "load_pretrained"]


def load_pretrained(cls, path: str | os.PathLike, config=None, strict: bool = True, **overrides):
    """Pick the loader from what `path` is: a directory, a TF prefix, or a Megatron-LM .zip/.pt."""
    p = Path(path)
    if Path(str(p) + ".index").is_file():
        from .tf import load_tf_checkpoint_model

        return load_tf_checkpoint_model(cls, str(p), config=config, strict=strict)
    if p.is_dir():
        from .hf import load_hf_directory

        tf_indexes = sorted(p.glob("*.index"))
        if not (p / "config.json").is_file() and tf_indexes:  # a Google BERT release directory
            from .tf import load_tf_checkpoint_model

            return load_tf_checkpoint_model(cls, str(tf_indexes[0])[: -len(".index")], config=config, strict=strict)
        return load_hf_directory(cls, p, config=config, strict=strict, **overrides)
    if p.is_file() and p.suffix in (".zip", ".pt"):
        from .megatron_lm import load_megatron_lm_model

        return load_megatron_lm_model(cls, str(p), strict=strict)
    if not p.exists():
        raise FileNotFoundError(f"no checkpoint at {path}: not a directory, a TF prefix (.index) or a .zip/.pt file")
    raise CheckpointError(f"don't know how to load {path}: expected an HF directory, a TF checkpoint prefix "
                          "or a Megatron-LM .zip/.pt")
