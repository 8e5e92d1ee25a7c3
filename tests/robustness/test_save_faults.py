"""Saving is atomic across the files of a checkpoint (issue 9).

Every file write, fsync, link and rename that save_pretrained makes is made to fail in turn; after each
failure the directory holds one complete checkpoint -- the previous one when the fault came before the
swap -- and loads. Plus permissions, saving over a checkpoint, a user's own files, values JSON cannot
hold, and a real ENOSPC on a small tmpfs (root only).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from reference import tiny_config

from megabert_edu import ConfigError, MegatronBertForSequenceClassification
from megabert_edu.checkpoints import hf

IDS = torch.tensor([[4, 8, 15, 16, 23, 42]])


def model(seed: int, labels: tuple[str, ...]) -> MegatronBertForSequenceClassification:
    torch.manual_seed(seed)
    return MegatronBertForSequenceClassification(tiny_config(id2label=dict(enumerate(labels)))).eval()


OLD_LABELS, NEW_LABELS = ("neg", "pos"), ("bad", "good")


def assert_is(directory: Path, expected: MegatronBertForSequenceClassification) -> None:
    """The directory loads, and config and weights both come from `expected` (never a mix of two saves)."""
    loaded = MegatronBertForSequenceClassification.from_pretrained(directory)
    assert loaded.config.id2label == expected.config.id2label
    for key, tensor in expected.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key
    torch.testing.assert_close(loaded(IDS).logits, expected(IDS).logits, atol=0, rtol=0)


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".saving-" in p.name)


class Faults:
    """Wrap save_pretrained's I/O primitives: count their calls, and make the n-th call of one fail."""

    PRIMITIVES = [(os, "write"), (os, "fsync"), (os, "rename"), (os, "link"), (safetensors.torch, "save_file"),
                  (hf, "_rename_exchange")]

    def __init__(self, monkeypatch, fail: tuple[str, int] | None = None, exchange_errno: int = 0):
        self.calls: list[str] = []
        self.fail = fail
        for module, name in self.PRIMITIVES:
            monkeypatch.setattr(module, name, self.wrap(name, getattr(module, name)))
        if exchange_errno:  # a system without RENAME_EXCHANGE: the two-rename fallback runs
            monkeypatch.setattr(hf, "_rename_exchange", self.wrap("_rename_exchange", lambda a, b: exchange_errno))

    def wrap(self, name, function):
        def wrapped(*args, **kwargs):
            self.calls.append(name)
            if self.fail == (name, self.calls.count(name)):
                raise OSError(errno.EIO, f"injected fault in {name}")
            return function(*args, **kwargs)
        return wrapped


@pytest.mark.parametrize("exchange_errno", [0, errno.ENOSYS], ids=["rename-exchange", "two-renames"])
def test_every_failing_io_step_leaves_one_complete_checkpoint(tmp_path, monkeypatch, exchange_errno):
    target = tmp_path / "ckpt"
    old, new = model(0, OLD_LABELS), model(1, NEW_LABELS)
    old.save_pretrained(target)
    (target / "README.md").write_text("my notes")
    with monkeypatch.context() as m:  # a dry run lists the steps of one save over an existing checkpoint
        faults = Faults(m, exchange_errno=exchange_errno)
        old.save_pretrained(target)
        steps = list(faults.calls)
    swap = max(i for i, name in enumerate(steps) if name in ("_rename_exchange", "rename"))  # the commit
    assert {"write", "fsync", "link", "save_file", "_rename_exchange"} <= set(steps)
    tried = 0
    for position, name in enumerate(steps):
        fault = (name, steps[: position + 1].count(name))
        shutil.rmtree(target)
        old.save_pretrained(target)
        (target / "README.md").write_text("my notes")
        with monkeypatch.context() as m:
            Faults(m, fail=fault, exchange_errno=exchange_errno)
            try:
                new.save_pretrained(target)
                failed = False
            except OSError:
                failed = True
        # before the swap a failure must leave the old checkpoint; a fault the saver works around
        # (a filesystem without hard links) or one after the swap leaves the new one
        assert_is(target, old if failed and position <= swap else new)
        assert (target / "README.md").read_text() == "my notes"
        assert leftovers(tmp_path) == [], fault
        tried += 1
    assert tried == len(steps) >= 8


def test_saved_files_have_the_usual_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        model(0, OLD_LABELS).save_pretrained(tmp_path / "new")
        model(1, NEW_LABELS).save_pretrained(tmp_path / "new")  # over an existing checkpoint too
    finally:
        os.umask(previous)
    for name in ("config.json", "model.safetensors"):
        assert oct((tmp_path / "new" / name).stat().st_mode & 0o777) == oct(0o644), name
    assert oct((tmp_path / "new").stat().st_mode & 0o777) == oct(0o755)


def test_saving_over_a_checkpoint_keeps_the_users_files(tmp_path):
    model(0, OLD_LABELS).save_pretrained(tmp_path)
    (tmp_path / "vocab.txt").write_text("[PAD]\n")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "log.txt").write_text("step 1")
    new = model(1, NEW_LABELS)
    new.save_pretrained(tmp_path)
    assert_is(tmp_path, new)
    assert (tmp_path / "vocab.txt").read_text() == "[PAD]\n"
    assert (tmp_path / "runs" / "log.txt").read_text() == "step 1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors", "runs", "vocab.txt"]


def test_saving_into_the_working_directory_or_through_a_symlink(tmp_path, monkeypatch):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    old, new = model(0, OLD_LABELS), model(1, NEW_LABELS)
    old.save_pretrained(tmp_path / "link")
    new.save_pretrained(tmp_path / "link")
    assert (tmp_path / "link").is_symlink()
    assert_is(tmp_path / "real", new)
    monkeypatch.chdir(tmp_path / "real")
    old.save_pretrained(".")
    assert_is(Path("."), old)  # the process now stands in the new directory
    assert leftovers(tmp_path) == []


def test_numpy_token_ids_are_saved_as_numbers(tmp_path):
    m = model(0, OLD_LABELS)
    m.config.eos_token_id = np.int64(2)
    m.save_pretrained(tmp_path)
    assert MegatronBertForSequenceClassification.from_pretrained(tmp_path).config.eos_token_id == 2


def test_a_value_json_cannot_hold_fails_before_anything_is_replaced(tmp_path):
    old = model(0, OLD_LABELS)
    old.save_pretrained(tmp_path / "ckpt")
    before = {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir()}
    new = model(1, NEW_LABELS)
    new.config.eos_token_id = {3, 4}  # a set: JSON has none
    with pytest.raises(ConfigError, match="config field eos_token_id holds a set"):
        new.save_pretrained(tmp_path / "ckpt")
    assert {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir()} == before
    assert leftovers(tmp_path) == []


def test_save_into_a_file_path_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        model(0, OLD_LABELS).save_pretrained(tmp_path / "file")


@pytest.fixture
def tmpfs(tmp_path):
    """mount(copies) -> a tmpfs mount point with room for that many checkpoints of `model()` (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    model(0, OLD_LABELS).save_pretrained(tmp_path / "measure")
    one = sum(-(-p.stat().st_size // 4096) * 4096 for p in (tmp_path / "measure").iterdir())
    mounted = []

    def mount(copies: float) -> Path:
        point = tmp_path / f"tmpfs{len(mounted)}"
        point.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(one * copies) // 1024}k", "tmpfs",
                                 str(point)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"mount -t tmpfs is not permitted here: {result.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=True)


def test_a_full_disk_leaves_the_previous_checkpoint(tmpfs):
    disk = tmpfs(1.5)  # room for one checkpoint, not for a second one beside it
    old = model(0, OLD_LABELS)
    old.save_pretrained(disk / "ckpt")
    with pytest.raises(OSError) as info:
        model(1, NEW_LABELS).save_pretrained(disk / "ckpt")
    assert info.value.errno == errno.ENOSPC or "No space" in str(info.value), info.value
    assert_is(disk / "ckpt", old)
    assert leftovers(disk) == []


def test_saving_into_a_mount_point_replaces_the_files_and_says_so(tmpfs):
    mount_point = tmpfs(3)  # the mount point itself cannot be renamed
    old, new = model(0, OLD_LABELS), model(1, NEW_LABELS)
    with pytest.warns(RuntimeWarning, match="is a mount point"):
        old.save_pretrained(mount_point)
    (mount_point / "README.md").write_text("notes")
    with pytest.warns(RuntimeWarning, match="is a mount point, which cannot be swapped"):
        new.save_pretrained(mount_point)
    assert_is(mount_point, new)
    assert sorted(p.name for p in mount_point.iterdir()) == ["README.md", "config.json", "model.safetensors"]
