"""HF-style directories: config.json + model.safetensors (or pytorch_model.bin), MegatronBert or Bert layout."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from ..config import MegatronBertConfig
from .report import CheckpointError, LoadReport

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def read_state_dict(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of an HF directory, from safetensors if present, else pytorch_model.bin."""
    directory = Path(directory)
    for name in WEIGHT_FILES:
        path = directory / name
        if not path.is_file():
            continue
        try:
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file

                return load_file(str(path))
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # safetensors / pickle errors do not say "your file is cut short"
            raise CheckpointError(f"could not read {path}: the file is truncated or corrupt ({e})") from e
    raise CheckpointError(f"{directory} has no weights: expected one of {', '.join(WEIGHT_FILES)}")


BASE_MODULES = ("embeddings", "encoder")  # everything else (pooler, cls, classifier, ...) is a head


def normalise_keys(state_dict: dict[str, torch.Tensor], model_keys: set[str], prefix: str) -> dict[str, torch.Tensor]:
    """Adapt key names: TF-style gamma/beta, and a bare-model checkpoint vs a task model ("bert." prefix)."""
    model_prefixed = any(k.startswith(prefix) for k in model_keys)
    ckpt_prefixed = any(k.startswith(prefix) for k in state_dict)
    out = {}
    for key, tensor in state_dict.items():
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        if model_prefixed and not ckpt_prefixed and key.split(".")[0] in BASE_MODULES + ("pooler",):
            key = prefix + key  # e.g. BertModel weights into a task model
        elif ckpt_prefixed and not model_prefixed and key.startswith(prefix):
            key = key[len(prefix):]  # e.g. a task model's encoder into a bare MegatronBertModel
        out[key] = tensor
    return out


def load_state_dict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], strict: bool = True,
                    source: str = "checkpoint") -> LoadReport:
    """Copy tensors into `model` by name and report every name. Heads absent from the checkpoint are new."""
    own = model.state_dict(keep_vars=True)
    state_dict = normalise_keys(state_dict, set(own), getattr(model, "base_model_prefix", "bert") + ".")
    report = LoadReport()
    loaded_params = set()
    with torch.no_grad():
        for key, tensor in state_dict.items():
            if key.endswith("position_ids"):  # a non-persistent buffer some old checkpoints carry
                report.skipped.append(key)
            elif key not in own:
                report.unexpected.append(key)
            elif tuple(tensor.shape) != tuple(own[key].shape):
                report.mismatched.append((key, tuple(tensor.shape), tuple(own[key].shape)))
            else:
                own[key].copy_(tensor)
                report.loaded.append(key)
                loaded_params.add(id(own[key]))
    absent = [k for k in own if k not in state_dict and id(own[k]) not in loaded_params]  # tied aliases count
    heads_in_checkpoint = {_head_of(k) for k in state_dict}
    for key in absent:  # a head the checkpoint has no trace of is new; a gap anywhere else is an error
        head = _head_of(key)
        (report.initialized if head and head not in heads_in_checkpoint else report.missing).append(key)
    if strict:
        report.raise_if_failed(source)
    return report


def _head_of(key: str) -> str | None:
    """'classifier' for 'classifier.weight', 'pooler' for 'bert.pooler.dense.bias', None for encoder weights."""
    parts = key.split(".")
    top = parts[1] if parts[0] == "bert" and len(parts) > 1 else parts[0]
    return None if top in BASE_MODULES else top


def load_hf_directory(cls, directory: str | os.PathLike, config: MegatronBertConfig | None = None,
                      strict: bool = True, **overrides):
    directory = Path(directory)
    if config is None:
        config_path = directory / "config.json"
        if not config_path.is_file():
            raise CheckpointError(f"{directory} has no config.json (pass config=MegatronBertConfig(...))")
        config = MegatronBertConfig.from_json_file(config_path, **overrides)
    model = cls(config)
    model.load_report = load_state_dict(model, read_state_dict(directory), strict, source=str(directory))
    return model


def save_pretrained(model: torch.nn.Module, directory: str | os.PathLike) -> None:
    """config.json + model.safetensors. Tied decoder tensors are left out (the loader re-ties them).

    Each file is written to a temporary name and renamed, so a crash never leaves a half-written checkpoint.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors, seen = {}, set()
    for key, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:  # a second name for a tied parameter (decoder.weight / decoder.bias)
            continue
        seen.add(id(tensor))
        tensors[key] = tensor.detach().contiguous().cpu()
    _atomic_write(directory / "model.safetensors", lambda path: save_file(tensors, path, metadata={"format": "pt"}))
    config = model.config.to_dict()
    config["architectures"] = [_architecture_name(model)]
    import json

    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    _atomic_write(directory / "config.json", lambda path: Path(path).write_text(text))


def _architecture_name(model: torch.nn.Module) -> str:
    name = type(model).__name__
    if model.config.layer_norm_position == "post":
        # post-LN checkpoints are saved in BERT layout, under BERT's class names
        return "BertLMHeadModel" if name == "MegatronBertForCausalLM" else name.replace("MegatronBert", "Bert")
    return name


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
