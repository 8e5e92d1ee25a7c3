"""The TensorFlow tensor-bundle format, without TensorFlow: bytes, CRC32C, protobuf, SSTable.

A TensorFlow checkpoint ``model.ckpt`` (the "V2" format: Google's BERT releases, tf.train.Saver,
tf.train.Checkpoint) is a *tensor bundle*, two kinds of file beside each other:

    model.ckpt.index                  a sorted key -> value table (LevelDB's SSTable format).
                                      Key ""  -> BundleHeaderProto (number of shards, byte order)
                                      Key name -> BundleEntryProto (dtype, shape, shard, offset, size, crc32c)
    model.ckpt.data-00000-of-00001    the tensors' raw bytes, back to back (one file per shard)

Both protobufs are small, so we decode them by hand (a protobuf field is a varint tag followed by a
varint, a fixed-size number or a length-prefixed byte string) instead of depending on TensorFlow
(about 1.6 GB) or protobuf. Every block of the index and every tensor carries a CRC32C checksum,
which we verify, so a truncated download fails loudly instead of loading garbage. Every size and
offset read from a file is checked against the file's real length before anything is allocated.

This module knows nothing about BERT: the name mapping and model loading live in ``tf.py``.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import struct
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np
import torch

from .report import CheckpointError

# ---- CRC32C (Castagnoli), the checksum LevelDB and TensorFlow use ----------------------------------

_CRC_TABLE = np.arange(256, dtype=np.uint32)
for _ in range(8):  # the classic byte-at-a-time table for the reflected polynomial 0x82F63B78
    _CRC_TABLE = np.where(_CRC_TABLE & 1, (_CRC_TABLE >> 1) ^ np.uint32(0x82F63B78), _CRC_TABLE >> 1)
_CRC_TABLE = _CRC_TABLE.astype(np.uint32)
_CRC_LIST = _CRC_TABLE.tolist()
# "Slicing by 4": _SLICE[k][b] is the register after byte b and then k zero bytes, so one 4-byte word
# is four table look-ups instead of four dependent byte steps.
_SLICE = [_CRC_TABLE]
for _ in range(3):
    _SLICE.append((_SLICE[-1] >> 8) ^ _CRC_TABLE[_SLICE[-1] & 0xFF])

_CHUNK = 1024  # bytes each lane checksums
_GROUP = 8192  # lanes processed together: an 8 MB slice, small enough to transpose quickly


def _apply(op: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Apply a linear map on 32-bit registers, given as four 256-entry tables (one per byte)."""
    return op[0][s & 0xFF] ^ op[1][(s >> 8) & 0xFF] ^ op[2][(s >> 16) & 0xFF] ^ op[3][s >> 24]


def _zeros_operator(n: int) -> np.ndarray:
    """The linear map "push a register through n zero bytes", as four 256-entry tables."""
    states = (
        np.arange(256, dtype=np.uint32)[None, :] << (8 * np.arange(4, dtype=np.uint32)[:, None])
    ).ravel()
    for _ in range(n):
        states = _CRC_TABLE[states & 0xFF] ^ (states >> 8)
    return states.reshape(4, 256)


_CHUNK_SHIFT = _zeros_operator(_CHUNK)


def crc32c(data: bytes | bytearray | memoryview | np.ndarray) -> int:
    """CRC32C of a byte buffer, in numpy: about a second per 100 MB, no compiled extension needed.

    A byte-at-a-time loop in Python would take minutes for a BERT-large checkpoint. CRC is linear
    over GF(2), so we cut the buffer into 1 KB chunks, checksum thousands of chunks at once (one numpy
    operation per word *position*), and fold the chunk CRCs together: crc(A + B) is crc(A) pushed
    through len(B) zero bytes, xor crc(B).
    """
    buf = np.frombuffer(data, np.uint8)
    n = buf.size
    if n < 16 * _CHUNK:  # small buffers: the plain loop is quicker than numpy's call overhead
        crc = 0xFFFFFFFF
        for b in buf.tobytes():
            crc = _CRC_LIST[(crc ^ b) & 0xFF] ^ (crc >> 8)
        return crc ^ 0xFFFFFFFF
    padded = np.zeros(-(-n // _CHUNK) * _CHUNK, np.uint8)
    start = padded.size - n
    padded[start:] = buf  # leading zeros leave a zero register unchanged
    # Starting the register at 0xFFFFFFFF is the same as starting at 0 with the first 4 bytes flipped.
    padded[start : start + 4] ^= 0xFF
    words = padded.view("<u4").reshape(-1, _CHUNK // 4)  # (chunks, words per chunk)
    count = 1 << (len(words) - 1).bit_length()  # chunk CRCs, padded in front to a power of two
    crcs = np.zeros(count, np.uint32)  # (a chunk of zeros in front has CRC 0)
    for g in range(0, len(words), _GROUP):
        rows = words[g : g + _GROUP].T.copy()  # (words per chunk, lanes): one row per word position
        s = np.zeros(rows.shape[1], np.uint32)
        t0, t1, t2, t3 = _SLICE
        for w in rows:
            s ^= w  # the word's first byte (lowest bits) has the most bytes still to go: table 3
            s = t3[s & 0xFF] ^ t2[(s >> 8) & 0xFF] ^ t1[(s >> 16) & 0xFF] ^ t0[s >> 24]
        crcs[count - len(words) + g :][: len(s)] = s
    op = _CHUNK_SHIFT  # fold neighbours pairwise; the zero-shift doubles at each level
    while crcs.size > 1:
        crcs = _apply(op, crcs[0::2]) ^ crcs[1::2]
        op = _apply(op, op.ravel()).reshape(4, 256)
    return int(crcs[0]) ^ 0xFFFFFFFF


def _mask(crc: int) -> int:
    """LevelDB stores rotated-plus-constant CRCs, so a CRC of data that embeds CRCs stays well mixed."""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ---- protobuf wire format, by hand --------------------------------------------------------------

_MAX_VARINT_BYTES = 10  # a 64-bit number takes at most ten 7-bit groups


def _read_varint(buf: bytes, pos: int, where: str) -> tuple[int, int]:
    """One varint starting at ``pos``: (value, position after it). ``where`` names the file in errors."""
    result = 0
    for shift in range(0, 7 * _MAX_VARINT_BYTES, 7):
        if pos >= len(buf):
            raise CheckpointError(f"{where} is corrupt: a number runs past the end of its record")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
    raise CheckpointError(f"{where} is corrupt: a number is longer than {_MAX_VARINT_BYTES} bytes")


def _proto_fields(buf: bytes, where: str) -> dict[int, list[int | bytes]]:
    """Decode one protobuf message into {field number: [values]} (ints, or bytes for wire type 2)."""
    out: dict[int, list[int | bytes]] = {}
    pos = 0
    while pos < len(buf):
        tag, pos = _read_varint(buf, pos, where)
        number, wire = tag >> 3, tag & 7
        if wire == 0:  # varint
            value, pos = _read_varint(buf, pos, where)
        elif wire in (1, 5):  # fixed 64-bit, fixed 32-bit
            width = 8 if wire == 1 else 4
            if pos + width > len(buf):
                raise CheckpointError(f"{where} is corrupt: a protobuf field runs past its record")
            value, pos = int.from_bytes(buf[pos : pos + width], "little"), pos + width
        elif wire == 2:  # length-delimited: bytes, strings, sub-messages
            size, pos = _read_varint(buf, pos, where)
            if pos + size > len(buf):
                raise CheckpointError(f"{where} is corrupt: a protobuf field runs past its record")
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise CheckpointError(f"{where} is corrupt: protobuf wire type {wire}")
        out.setdefault(number, []).append(value)
    return out


def _int_field(fields: dict[int, list], number: int, where: str, default: int = 0) -> int:
    value = fields.get(number, [default])[0]
    if not isinstance(value, int):
        raise CheckpointError(f"{where} is corrupt: protobuf field {number} should be a number")
    return value


def _message(value: int | bytes, where: str) -> bytes:
    if not isinstance(value, bytes):
        raise CheckpointError(f"{where} is corrupt: a protobuf field should be a message, not a number")
    return value


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, value: int | bytes) -> bytes:
    """Encode one field: ints as varints (wire type 0), bytes as length-delimited (wire type 2)."""
    if isinstance(value, bytes):
        return _varint(number << 3 | 2) + _varint(len(value)) + value
    return _varint(number << 3) + _varint(value)


def _signed64(n: int) -> int:
    return n - (1 << 64) if n >= 1 << 63 else n


# ---- dtypes ---------------------------------------------------------------------------------------

# TensorFlow's DataType enum (types.proto) -> numpy. bfloat16 has no numpy dtype: we read its
# 16-bit patterns and widen them to float32, which is exact (a bfloat16 is the top half of a float32).
_TF_DTYPES: dict[int, str] = {
    1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 7: "string",
    8: "complex64", 9: "int64", 10: "bool", 14: "bfloat16", 17: "uint16", 18: "complex128",
    19: "float16", 22: "uint32", 23: "uint64",
}  # fmt: skip
_TF_ENUM = {name: num for num, name in _TF_DTYPES.items()}


def _numpy_dtype(tf_dtype: str) -> np.dtype:
    return np.dtype("<u2" if tf_dtype == "bfloat16" else tf_dtype).newbyteorder("<")


# ---- the .index table (LevelDB SSTable) -------------------------------------------------------------

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_SIZE = 48  # two block handles padded to 40 bytes, then the 8-byte magic number
_BLOCK_TRAILER = 5  # after each block: a 1-byte compression type and a 4-byte masked CRC
_MAX_SHARDS = 99_999  # shard file names have five digits


class _Handle(NamedTuple):
    """Where a block lies in the index file."""

    offset: int
    size: int


def _read_handle(buf: bytes, pos: int, path: str) -> tuple[_Handle, int]:
    offset, pos = _read_varint(buf, pos, path)
    size, pos = _read_varint(buf, pos, path)
    return _Handle(offset, size), pos


def _read_block(data: bytes, handle: _Handle, path: str) -> list[tuple[bytes, bytes]]:
    """Read the block a handle points at; check its CRC; return its (key, value) entries."""
    limit = len(data) - _FOOTER_SIZE  # blocks lie before the footer
    end = handle.offset + handle.size + _BLOCK_TRAILER
    if end > limit:
        raise CheckpointError(f"{path} is truncated or corrupt: a block ends at byte {end}, "
                              f"but the blocks end at byte {limit}")
    start, stop = handle.offset, handle.offset + handle.size
    (stored,) = struct.unpack_from("<I", data, stop + 1)
    if _mask(crc32c(data[start : stop + 1])) != stored:
        raise CheckpointError(f"{path} is corrupt: checksum mismatch in the index block at byte {start}")
    if data[stop] != 0:
        raise CheckpointError(f"{path}: compressed index blocks (type {data[stop]}) are not supported")
    return _block_entries(data[start:stop], path)


def _block_entries(block: bytes, path: str) -> list[tuple[bytes, bytes]]:
    """A block's entries. A block is a run of entries, then an array of restart offsets and its length.
    Each entry stores only the part of its key that differs from the previous key (prefix compression)."""
    if len(block) < 4:
        raise CheckpointError(f"{path} is corrupt: an index block of {len(block)} bytes")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 - 4 * num_restarts
    if limit < 0:
        raise CheckpointError(f"{path} is corrupt: an index block claims {num_restarts} restart points")
    entries, key, pos = [], b"", 0
    while pos < limit:
        shared, pos = _read_varint(block, pos, path)
        unshared, pos = _read_varint(block, pos, path)
        value_len, pos = _read_varint(block, pos, path)
        if shared > len(key) or pos + unshared + value_len > limit:
            raise CheckpointError(f"{path} is corrupt: an index entry runs past its block")
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        entries.append((key, block[pos : pos + value_len]))
        pos += value_len
    return entries


class _Entry(NamedTuple):
    dtype: str
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    crc: int
    sliced: bool  # stored as pieces of a partitioned variable

    @property
    def count(self) -> int:
        """Number of elements (a Python int: no overflow however large the shape claims to be)."""
        return math.prod(self.shape)


def _parse_entry(name: str, value: bytes, path: str, num_shards: int) -> _Entry:
    """Decode one BundleEntryProto and check it is self-consistent before any data is read."""
    where = f"{path} (entry for tensor {name!r})"
    f = _proto_fields(value, where)
    enum = _int_field(f, 1, where)
    dtype = _TF_DTYPES.get(enum)
    if dtype is None:
        raise CheckpointError(f"{where}: unsupported TensorFlow dtype enum {enum}")
    shape_fields = _proto_fields(_message(f.get(2, [b""])[0], where), where)  # TensorShapeProto
    dims = [_proto_fields(_message(d, where), where) for d in shape_fields.get(2, [])]
    shape = tuple(_signed64(_int_field(d, 1, where)) for d in dims)
    if any(d < 0 for d in shape):
        raise CheckpointError(f"{where} is corrupt: shape {list(shape)} has a negative dimension")
    shard, offset, size, crc = (_int_field(f, i, where) for i in (3, 4, 5, 6))
    entry = _Entry(dtype, shape, shard, offset, size, crc, sliced=7 in f)
    if shard >= num_shards:
        raise CheckpointError(f"{where} is corrupt: it points at shard {shard} of {num_shards}")
    if dtype != "string" and entry.count * _numpy_dtype(dtype).itemsize != size:
        raise CheckpointError(f"{where} is corrupt: {size} bytes cannot hold {dtype}{list(shape)}")
    return entry


def _read_index(prefix: str) -> tuple[int, dict[str, _Entry]]:
    """Parse ``prefix.index``: the number of data shards and every tensor's entry."""
    path = prefix + ".index"
    if not os.path.isfile(path):
        old = " (a single-file V1 checkpoint? those are not supported)" if os.path.isfile(prefix) else ""
        raise CheckpointError(f"no TensorFlow checkpoint at {prefix!r}: {path} does not exist{old}")
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < _FOOTER_SIZE or struct.unpack_from("<Q", data, len(data) - 8)[0] != _TABLE_MAGIC:
        raise CheckpointError(f"{path} is not a TensorFlow checkpoint index (truncated or wrong file)")
    footer = data[-_FOOTER_SIZE:-8]  # the footer has no checksum, so every byte of it is checked
    meta_handle, pos = _read_handle(footer, 0, path)
    index_handle, pos = _read_handle(footer, pos, path)
    if any(footer[pos:]):
        raise CheckpointError(f"{path} is corrupt: its footer has stray bytes after the block handles")
    _read_block(data, meta_handle, path)  # unused, but read so that its checksum is verified
    header, raw_entries = None, []
    for _, handle_bytes in _read_block(data, index_handle, path):  # the index block points at the data blocks
        handle, end = _read_handle(handle_bytes, 0, path)
        if end != len(handle_bytes):
            raise CheckpointError(f"{path} is corrupt: a block handle has {len(handle_bytes) - end} extra bytes")
        for key, value in _read_block(data, handle, path):
            if key == b"":
                header = value
            elif not key.startswith(b"\x00"):  # keys starting with 0 are the pieces of sliced tensors
                raw_entries.append((key, value))
    if header is None:
        raise CheckpointError(f"{path} has no bundle header: not a tensor-bundle checkpoint")
    num_shards = _parse_header(header, path)
    entries = {}
    for key, value in raw_entries:
        try:
            name = key.decode("utf-8")
        except UnicodeDecodeError:
            raise CheckpointError(f"{path} is corrupt: tensor name {key!r} is not UTF-8") from None
        entries[name] = _parse_entry(name, value, path, num_shards)
    return num_shards, entries


def _parse_header(header: bytes, path: str) -> int:
    """BundleHeaderProto: the number of shards, which must be sane, and the byte order (little only)."""
    fields = _proto_fields(header, path)
    num_shards = _int_field(fields, 1, path, default=1)
    if not 1 <= num_shards <= _MAX_SHARDS:
        raise CheckpointError(f"{path} is corrupt: its header says {num_shards} data shards")
    if _int_field(fields, 2, path) != 0:
        raise CheckpointError(f"{path} was written big-endian, which is not supported")
    return num_shards


class TFVariable(NamedTuple):
    """One variable as listed in a checkpoint's index."""

    name: str
    shape: tuple[int, ...]
    dtype: str


# ---- finding the checkpoint ------------------------------------------------------------------------

_SHARD_SUFFIX = re.compile(r"\.(index|data-\d{5}-of-\d{5})$")
_POINTER = re.compile(r'^model_checkpoint_path:\s*"(.*)"', re.M)


def resolve_tf_prefix(path: str | os.PathLike) -> str:
    """Accept a checkpoint prefix, its ``.index`` file, or a directory holding one checkpoint.

    In a directory, TensorFlow's ``checkpoint`` file names the latest checkpoint; without it the
    directory must hold exactly one. A pointer to a checkpoint that is not there is an error.
    """
    path = _SHARD_SUFFIX.sub("", os.fspath(path))
    if not os.path.isdir(path):
        return path
    prefixes = sorted(f[: -len(".index")] for f in os.listdir(path) if f.endswith(".index"))
    present = ", ".join(prefixes) if prefixes else "no checkpoint (.index file)"
    pointer = os.path.join(path, "checkpoint")  # TensorFlow's "latest checkpoint" pointer file
    if os.path.isfile(pointer):
        with open(pointer, encoding="utf-8", errors="replace") as f:
            m = _POINTER.search(f.read())
        if m is None:
            raise CheckpointError(f"{pointer} has no model_checkpoint_path line (the directory holds {present})")
        target = os.path.join(path, m.group(1))
        if not os.path.isfile(target + ".index"):
            raise CheckpointError(
                f"{pointer} points at {m.group(1)!r}, but {target}.index does not exist (a dangling "
                f"pointer; the directory holds {present}): name the checkpoint prefix instead"
            )
        return target
    if len(prefixes) == 1:
        return os.path.join(path, prefixes[0])
    if not prefixes:
        raise CheckpointError(f"{path} holds no TF checkpoint (no .index file)")
    raise CheckpointError(
        f"{path} holds {len(prefixes)} TF checkpoints ({present}) and no 'checkpoint' file saying which "
        f"is the latest: name one, e.g. {os.path.join(path, prefixes[-1])}"
    )


def is_tf_checkpoint(path: str | os.PathLike) -> bool:
    """True when ``path`` looks like a TF checkpoint: a prefix or .index file that exists, or a directory
    holding an .index file or a ``checkpoint`` pointer. Whether it is usable is for the reader to say."""
    path = _SHARD_SUFFIX.sub("", os.fspath(path))
    if os.path.isdir(path):
        return os.path.isfile(os.path.join(path, "checkpoint")) or any(
            f.endswith(".index") for f in os.listdir(path)
        )
    return os.path.isfile(path + ".index")


def list_tf_variables(prefix: str | os.PathLike) -> list[TFVariable]:
    """Names, shapes and dtypes of a checkpoint's variables, from the index alone (no tensor data read)."""
    _, entries = _read_index(resolve_tf_prefix(prefix))
    return [TFVariable(name, e.shape, e.dtype) for name, e in sorted(entries.items())]


# ---- reading tensors --------------------------------------------------------------------------------


def _decode_strings(raw: bytes, e: _Entry, name: str, path: str) -> np.ndarray:
    """String tensors: varint lengths, a masked CRC of the lengths, then the bytes back to back.

    TensorFlow checksums each length as a 4-byte integer (8 bytes if it does not fit), not as the
    varint it stores, so the checksum is computed over those re-encoded lengths plus the rest.
    """
    where = f"{path} (string tensor {name!r})"
    if e.count > len(raw):  # each length takes at least one byte
        raise CheckpointError(f"{where} is corrupt: {len(raw)} bytes cannot hold {e.count} strings")
    lengths, pos = [], 0
    for _ in range(e.count):
        n, pos = _read_varint(raw, pos, where)
        lengths.append(n)
    fixed = b"".join(struct.pack("<I" if n < 1 << 32 else "<Q", n) for n in lengths)
    ok = pos + 4 <= len(raw) and _mask(crc32c(fixed)) == struct.unpack_from("<I", raw, pos)[0]
    if not ok or _mask(crc32c(fixed + raw[pos:])) != e.crc:
        raise CheckpointError(f"{path} is corrupt: checksum mismatch for tensor {name!r}")
    pos += 4
    if pos + sum(lengths) != len(raw):
        raise CheckpointError(f"{where} is corrupt: its lengths do not add up")
    out = np.empty(e.count, dtype=object)
    for i, n in enumerate(lengths):
        out[i], pos = raw[pos : pos + n], pos + n
    return out.reshape(e.shape)


def _decode(raw: bytearray, e: _Entry, name: str, path: str) -> np.ndarray:
    """Check a tensor's CRC and turn its bytes into a numpy array (bfloat16 widened to float32)."""
    if e.dtype == "string":
        return _decode_strings(bytes(raw), e, name, path)
    if _mask(crc32c(raw)) != e.crc:
        raise CheckpointError(f"{path} is corrupt: checksum mismatch for tensor {name!r}")
    array = np.frombuffer(raw, _numpy_dtype(e.dtype)).reshape(e.shape)
    if e.dtype == "bfloat16":
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array.astype(array.dtype.newbyteorder("="), copy=False)


def _read_raw(f: Any, path: str, e: _Entry, name: str) -> bytearray:
    """A tensor's bytes, after checking they lie inside the shard (no allocation for a size that lies)."""
    file_size = os.fstat(f.fileno()).st_size
    if e.offset + e.size > file_size:
        raise CheckpointError(f"{path} is truncated or corrupt: tensor {name!r} needs bytes "
                              f"{e.offset}..{e.offset + e.size}, the file has {file_size}")
    f.seek(e.offset)
    raw = bytearray(e.size)
    if f.readinto(raw) != e.size:
        raise CheckpointError(f"{path} is truncated: tensor {name!r} could not be read in full")
    return raw


def iter_tf_checkpoint(
    prefix: str | os.PathLike, names: Iterable[str] | None = None
) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (name, array) for a checkpoint's tensors (all, or ``names``), each CRC-checked, in file order.

    One tensor at a time: a caller that only verifies some tensors (optimizer slots) never holds them all.
    """
    prefix = resolve_tf_prefix(prefix)
    num_shards, entries = _read_index(prefix)
    wanted = sorted(entries) if names is None else list(names)
    unknown = [n for n in wanted if n not in entries]
    if unknown:
        raise CheckpointError(f"{prefix}: no tensor named {', '.join(map(repr, unknown))}")
    sliced = [n for n in wanted if entries[n].sliced]
    if sliced:
        raise CheckpointError(f"{prefix}: tensor {sliced[0]!r} is partitioned (stored in slices): not supported")
    with contextlib.ExitStack() as stack:
        files: dict[int, Any] = {}
        for name in sorted(wanted, key=lambda n: (entries[n].shard, entries[n].offset)):
            e = entries[name]
            path = f"{prefix}.data-{e.shard:05d}-of-{num_shards:05d}"
            if e.shard not in files:
                if not os.path.isfile(path):
                    raise CheckpointError(f"missing data shard {path} (it holds tensor {name!r})")
                files[e.shard] = stack.enter_context(open(path, "rb"))
            yield name, _decode(_read_raw(files[e.shard], path, e, name), e, name, path)


def read_tf_checkpoint(
    prefix: str | os.PathLike, names: Iterable[str] | None = None
) -> dict[str, np.ndarray]:
    """Read a TF checkpoint's tensors (all, or ``names``) into numpy arrays; no TensorFlow needed.

    Every tensor's CRC32C is checked. bfloat16 tensors come back as float32 (exactly: each bfloat16
    is the upper half of a float32); string tensors as object arrays of bytes.
    """
    return dict(iter_tf_checkpoint(prefix, names))


# ---- writing -------------------------------------------------------------------------------------


def _encode(value: Any) -> tuple[str, tuple[int, ...], bytes, int]:
    """(TF dtype, shape, bytes to store, CRC32C) for a numpy array, torch tensor or scalar."""
    if isinstance(value, torch.Tensor):  # numpy has no bfloat16, so keep its bit patterns
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            raw = value.contiguous().view(torch.int16).numpy().astype("<i2").tobytes()
            return "bfloat16", tuple(value.shape), raw, crc32c(raw)
        value = value.numpy()
    array = np.asarray(value)
    if array.dtype.kind in "OS":  # strings: see _decode_strings for the layout
        items = [bytes(x) for x in array.reshape(-1)]
        fixed = b"".join(struct.pack("<I" if len(x) < 1 << 32 else "<Q", len(x)) for x in items)
        checksum = struct.pack("<I", _mask(crc32c(fixed)))
        body = checksum + b"".join(items)
        raw = b"".join(_varint(len(x)) for x in items) + body
        return "string", array.shape, raw, crc32c(fixed + body)
    if array.dtype.name == "bfloat16":  # ml_dtypes' bfloat16, as TensorFlow returns it
        name, array = "bfloat16", array.view("<u2")
    else:
        name, array = array.dtype.name, array.astype(array.dtype.newbyteorder("<"), copy=False)
    if name not in _TF_ENUM:
        raise CheckpointError(f"cannot write dtype {array.dtype} to a TF checkpoint")
    raw = np.ascontiguousarray(array).tobytes()
    return name, array.shape, raw, crc32c(raw)


def _block(entries: list[tuple[bytes, bytes]], restart_interval: int = 16) -> bytes:
    """Build an SSTable block: prefix-compressed entries, a full key every 16 entries (a restart)."""
    out, restarts, previous = bytearray(), [], b""
    for i, (key, value) in enumerate(entries):
        shared = 0
        if i % restart_interval:
            while shared < min(len(key), len(previous)) and key[shared] == previous[shared]:
                shared += 1
        else:
            restarts.append(len(out))
        out += _varint(shared) + _varint(len(key) - shared) + _varint(len(value)) + key[shared:] + value
        previous = key
    restarts = restarts or [0]
    return bytes(out) + struct.pack(f"<{len(restarts)}I", *restarts) + struct.pack("<I", len(restarts))


def _entry_proto(dtype: str, shape: tuple[int, ...], offset: int, size: int, crc: int) -> bytes:
    """A BundleEntryProto: dtype, shape, (shard 0,) offset, size and the masked CRC32C of the bytes."""
    dims = b"".join(_field(2, _field(1, d)) for d in shape)  # TensorShapeProto.dim
    entry = _field(1, _TF_ENUM[dtype]) + _field(2, dims)
    entry += _field(4, offset) if offset else b""
    entry += _field(5, size) if size else b""
    return entry + _varint(6 << 3 | 5) + struct.pack("<I", _mask(crc))  # crc32c is a fixed32


def _write_index(path: str, entries: list[tuple[bytes, bytes]], header: bytes) -> None:
    """Write an SSTable of (key, BundleEntryProto) sorted by key, after the header under key ""."""
    blocks = bytearray()

    def add_block(contents: bytes) -> bytes:
        handle = _varint(len(blocks)) + _varint(len(contents))
        blocks.extend(contents + b"\x00" + struct.pack("<I", _mask(crc32c(contents + b"\x00"))))
        return handle

    data_entries = [(b"", header), *entries]
    data_handle = add_block(_block(data_entries))
    meta_handle = add_block(_block([]))
    index_handle = add_block(_block([(data_entries[-1][0], data_handle)]))  # last key of the block
    footer = (meta_handle + index_handle).ljust(40, b"\x00") + struct.pack("<Q", _TABLE_MAGIC)
    with open(path, "wb") as f:
        f.write(bytes(blocks) + footer)


# BundleHeaderProto: num_shards=1, little-endian (0, the default), VersionDef(producer=1).
_HEADER = _field(1, 1) + _field(3, _field(1, 1))


def write_tf_checkpoint(prefix: str | os.PathLike, arrays: Mapping[str, Any]) -> None:
    """Write ``arrays`` (name -> numpy array, torch tensor, or bytes array) as a one-shard TF2 checkpoint.

    ``tf.train.load_checkpoint(prefix)`` reads the result back exactly. Writes
    ``prefix.index`` and ``prefix.data-00000-of-00001``.
    """
    prefix = os.fspath(prefix)
    os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
    index_entries = []
    offset = 0
    with open(f"{prefix}.data-00000-of-00001", "wb") as data:
        for name in sorted(arrays):  # the index is sorted bytewise, so we write the data in that order too
            dtype, shape, raw, crc = _encode(arrays[name])
            data.write(raw)
            index_entries.append((name.encode("utf-8"), _entry_proto(dtype, shape, offset, len(raw), crc)))
            offset += len(raw)
    _write_index(f"{prefix}.index", index_entries, _HEADER)
