"""HF-style directories: config.json + model.safetensors (or pytorch_model.bin), MegatronBert or Bert layout.

Saving is atomic across the files of a checkpoint: the new files are written into a fresh directory
beside the target, fsynced, and swapped in with one rename, so any failure (full disk, a config value
JSON cannot hold, a crash) leaves either the old checkpoint or the new one, complete. Files a user put
into the target directory (a README, tokenizer files, logs) are carried over; of our own files
(``OWN_FILES``) only those of the new save remain -- a stale pytorch_model.bin is not kept beside a
new model.safetensors, as transformers cleans up its own weight files.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import stat
import tempfile
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from ..config import MegatronBertConfig
from .loading import build_model, resolve_config
from .report import CheckpointError

__all__ = ["WEIGHT_FILES", "load_hf_directory", "read_hf_config", "read_state_dict", "save_pretrained",
           "tensors_checksum"]

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
CHECKSUM_KEY = "megabert_edu.crc32"  # safetensors metadata entry (transformers ignores it)
OWN_FILES = ("config.json", *WEIGHT_FILES)


# ---- loading -----------------------------------------------------------------------------------------


def read_state_dict(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of an HF directory, from safetensors if present, else pytorch_model.bin.

    A model.safetensors written here carries a CRC32 of its tensors (safetensors itself has none), so a
    flipped bit is an error instead of a silently different weight; files from elsewhere load unchecked.
    """
    directory = Path(directory)
    for name in WEIGHT_FILES:
        path = directory / name
        if not path.is_file():
            continue
        try:
            if name.endswith(".safetensors"):
                with safetensors.safe_open(str(path), framework="pt") as f:
                    expected = (f.metadata() or {}).get(CHECKSUM_KEY)
                tensors = safetensors.torch.load_file(str(path))
            else:
                return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # safetensors / pickle errors do not say "your file is cut short"
            raise CheckpointError(f"could not read {path}: the file is truncated or corrupt ({e})") from e
        if expected is not None and expected != tensors_checksum(tensors):
            raise CheckpointError(f"{path} is damaged: its tensors do not match the checksum written with them "
                                  f"({CHECKSUM_KEY}={expected})")
        return tensors
    raise CheckpointError(f"{directory} has no weights: expected one of {', '.join(WEIGHT_FILES)}")


def tensors_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """CRC32 over every tensor's name, dtype, shape and bytes, in name order (8 hex digits)."""
    crc = 0
    for key in sorted(tensors):
        tensor = tensors[key].detach().contiguous().cpu()
        crc = zlib.crc32(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode(), crc)
        crc = zlib.crc32(tensor.reshape(-1).view(torch.uint8).numpy(), crc)  # raw bytes, any dtype
    return f"{crc:08x}"


def read_hf_config(directory: str | os.PathLike) -> MegatronBertConfig:
    """``directory/config.json``, validated (errors name the file and the field)."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory} has no config.json (pass config=MegatronBertConfig(...))")
    return MegatronBertConfig.from_json_file(path)


def load_hf_directory(cls: type, directory: str | os.PathLike, config: MegatronBertConfig | None = None,
                      strict: bool = True, ignore_mismatched_sizes: bool = False, **config_overrides: Any):
    """``cls.from_pretrained(<HF directory>)``: config (file, or ``config``, plus overrides), build, load."""
    config = resolve_config(config, config_overrides, lambda: read_hf_config(directory))
    return build_model(cls, config, read_state_dict(directory), source=str(directory), strict=strict,
                       ignore_mismatched_sizes=ignore_mismatched_sizes)


# ---- saving ------------------------------------------------------------------------------------------


def save_pretrained(model: torch.nn.Module, directory: str | os.PathLike, *, safe_serialization: bool = True,
                    state_dict: dict[str, torch.Tensor] | None = None, is_main_process: bool = True,
                    max_shard_size: int | str | None = None, push_to_hub: bool = False) -> None:
    """config.json + model.safetensors (``safe_serialization=False``: pytorch_model.bin), atomically.

    Tied decoder tensors are left out (the loader re-ties them), as transformers does. ``state_dict``
    saves those tensors instead of the model's; ``is_main_process=False`` writes nothing (multi-process
    training). Checkpoints are never sharded: a ``max_shard_size`` smaller than the weights is an error.
    """
    if push_to_hub:
        raise NotImplementedError("push_to_hub is not supported: megabert_edu saves to local directories only")
    if not is_main_process:
        return
    directory = Path(directory)
    if directory.is_file():
        raise NotADirectoryError(f"{directory} is a file; save_pretrained needs a directory")
    config = model.config.to_dict()  # a value JSON cannot hold fails here, before any file is touched
    config["architectures"] = [_architecture_name(model)]
    config["dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
    config_text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    tensors = _unique_tensors(model.state_dict() if state_dict is None else state_dict)
    _check_shard_size(tensors, max_shard_size)
    weights = WEIGHT_FILES[0] if safe_serialization else WEIGHT_FILES[1]

    def write(staging: Path) -> None:
        if safe_serialization:
            _save_safetensors(tensors, staging / weights)
        else:
            torch.save(tensors, staging / weights)
        _fsync(staging / weights)
        _write_file(staging / "config.json", config_text.encode())

    replace_directory(directory, write, own_files=OWN_FILES)


def _save_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors' writer, its I/O errors (a full disk) raised as OSError with the errno and the file."""
    try:
        metadata = {"format": "pt", CHECKSUM_KEY: tensors_checksum(tensors)}
        safetensors.torch.save_file(tensors, str(path), metadata=metadata)
    except safetensors.SafetensorError as e:
        code = re.search(r"os error (\d+)", str(e))
        raise OSError(int(code[1]) if code else errno.EIO, f"could not write {path.name}: {e}") from e


def _unique_tensors(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop second names of one tensor (a tied decoder.weight), as safetensors cannot store shared memory."""
    tensors, seen = {}, set()
    for key, tensor in state_dict.items():
        identity = (tensor.data_ptr(), tuple(tensor.shape), tensor.stride(), tensor.device)
        if identity in seen and tensor.numel():
            continue
        seen.add(identity)
        tensors[key] = tensor.detach().contiguous().cpu()
    return tensors


def _check_shard_size(tensors: dict[str, torch.Tensor], max_shard_size: int | str | None) -> None:
    if max_shard_size is None:
        return
    limit = _parse_size(max_shard_size)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    if total > limit:
        raise NotImplementedError(f"the weights take {total:,} bytes, more than max_shard_size={max_shard_size!r}; "
                                  "megabert_edu writes one unsharded file (raise max_shard_size)")


def _parse_size(size: int | str) -> int:
    """5_000_000, "5GB" (10^9) or "5GiB" (2^30), as transformers reads max_shard_size."""
    if isinstance(size, int) and not isinstance(size, bool):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B)\s*", str(size), flags=re.IGNORECASE)
    if match is None:
        raise ValueError(f"max_shard_size must be a number of bytes or a string like '5GB'; got {size!r}")
    number, unit = float(match[1]), match[2].upper()
    base = 1024 if "I" in unit else 1000
    return int(number * base ** ("KMGT".index(unit[0]) + 1))


def _architecture_name(model: torch.nn.Module) -> str:
    name = type(model).__name__
    if model.config.layer_norm_position == "post":
        # post-LN checkpoints are saved in BERT layout, under BERT's class names
        return "BertLMHeadModel" if name == "MegatronBertForCausalLM" else name.replace("MegatronBert", "Bert")
    return name


# ---- atomic directory replacement --------------------------------------------------------------------


def replace_directory(target: Path, write: Callable[[Path], None], own_files: tuple[str, ...] = ()) -> None:
    """Give ``target`` the files ``write(staging)`` creates, so that every failure leaves the old content whole.

    1. stage: a fresh sibling directory receives the new files (each fsynced) and hard links to the
       target's other entries, except ``own_files`` (the writer's files from an earlier save);
    2. swap: one atomic rename -- RENAME_EXCHANGE when the target exists, a plain rename when it is new;
    3. fsync the parent so the swap survives a power cut, then delete the old content.

    New files get the usual permissions (0666 minus the umask); the directory keeps its mode.
    """
    target = Path(target).resolve()  # a symlink's directory is replaced, not the link; "." has a real parent
    target.parent.mkdir(parents=True, exist_ok=True)
    existed = target.is_dir()
    if existed and os.path.ismount(target):
        return _replace_files_in_mount_point(target, write, own_files)
    cwd = Path.cwd()
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.saving-", dir=target.parent))
    try:
        write(staging)
        for path in staging.iterdir():  # some writers (safetensors) create files 0600
            os.chmod(path, 0o666 & ~_umask())
        if existed:
            _carry_over(target, staging, skip=own_files)
        os.chmod(staging, stat.S_IMODE(target.stat().st_mode) if existed else 0o777 & ~_umask())
        _fsync(staging)
        if existed:
            _exchange(staging, target)  # staging now holds the old content
            if cwd == target or target in cwd.parents:
                os.chdir(cwd)  # the process sat in the old directory: step into the new one
        else:
            os.rename(staging, target)
        _fsync(target.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace_files_in_mount_point(target: Path, write: Callable[[Path], None], own_files: tuple[str, ...]) -> None:
    """A mount point cannot be renamed: stage inside it and replace the files one by one (config.json last)."""
    warnings.warn(f"{target} is a mount point, which cannot be swapped: its files are replaced one by one, "
                  "so a crash in between could mix two saves (save into a directory inside it instead)",
                  RuntimeWarning, stacklevel=5)  # the caller of model.save_pretrained
    staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=target))
    try:
        write(staging)
        new = sorted((p.name for p in staging.iterdir()), key=lambda name: name == "config.json")
        for name in new:
            os.chmod(staging / name, 0o666 & ~_umask())
            os.replace(staging / name, target / name)
        for name in own_files:
            if name not in new and (target / name).exists():
                os.remove(target / name)  # a stale weights file of the other format
        _fsync(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _carry_over(source: Path, staging: Path, skip: tuple[str, ...]) -> None:
    """Hard-link (or copy) every entry of ``source`` except ``skip`` into ``staging``."""
    for entry in source.iterdir():
        if entry.name in skip or (staging / entry.name).exists():
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry), staging / entry.name)
        elif entry.is_dir():
            shutil.copytree(entry, staging / entry.name, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry, staging / entry.name)


def _link_or_copy(source: str | os.PathLike, destination: str | os.PathLike) -> None:
    try:
        os.link(source, destination)
    except OSError:  # a filesystem without hard links
        shutil.copy2(source, destination)


def _exchange(a: Path, b: Path) -> None:
    """Swap two directories in one atomic step (Linux renameat2 RENAME_EXCHANGE).

    Without it (another OS, an old kernel, a filesystem that refuses) the swap takes two renames; a crash
    between them leaves the old checkpoint under ``a``'s name with ``.old`` appended and none at ``b``.
    """
    code = _rename_exchange(a, b)
    if code == 0:
        return
    if code not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        raise OSError(code, f"cannot swap in the new checkpoint: {os.strerror(code)}", str(b))
    old = a.with_name(a.name + ".old")
    os.rename(b, old)
    try:
        os.rename(a, b)
    except OSError:
        os.rename(old, b)  # put the old checkpoint back
        raise
    shutil.rmtree(old, ignore_errors=True)


def _rename_exchange(a: Path, b: Path) -> int:
    """The C library's renameat2(a, b, RENAME_EXCHANGE): 0, or the errno (ENOSYS where there is none)."""
    rename_exchange, at_fdcwd = 2, -100
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return errno.ENOSYS
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return 0
    return ctypes.get_errno()


def _write_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0666 minus the umask, as open() does
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync(path: Path) -> None:
    """Flush a file's or a directory's entries to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
