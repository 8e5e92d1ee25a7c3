"""TensorFlow checkpoints without TensorFlow: read and write the tensor-bundle format, load BERT weights.

A TensorFlow checkpoint ``model.ckpt`` (the "V2" format: Google's BERT releases, tf.train.Saver,
tf.train.Checkpoint) is a *tensor bundle*, two kinds of file beside each other:

    model.ckpt.index                  a sorted key -> value table (LevelDB's SSTable format).
                                      Key ""  -> BundleHeaderProto (number of shards, byte order)
                                      Key name -> BundleEntryProto (dtype, shape, shard, offset, size, crc32c)
    model.ckpt.data-00000-of-00001    the tensors' raw bytes, back to back (one file per shard)

Both protobufs are small, so we decode them by hand (a protobuf field is a varint tag followed by a
varint, a fixed-size number or a length-prefixed byte string) instead of depending on TensorFlow
(about 1.6 GB) or protobuf. Every block of the index and every tensor carries a CRC32C checksum,
which we verify, so a truncated download fails loudly instead of loading garbage.

The second half of the file maps TF variable names onto our PyTorch names: see ``TF_NAME_TABLE``.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from .report import CheckpointError, LoadReport

if TYPE_CHECKING:
    import torch

    from ..config import MegatronBertConfig

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


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise CheckpointError("corrupt TF checkpoint index: a varint runs past the end of its record")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _proto_fields(buf: bytes) -> dict[int, list]:
    """Decode one protobuf message into {field number: [values]} (ints or bytes)."""
    out: dict[int, list] = {}
    pos = 0
    while pos < len(buf):
        tag, pos = _read_varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:  # varint
            value, pos = _read_varint(buf, pos)
        elif wire == 1:  # fixed 64-bit
            value, pos = int.from_bytes(buf[pos : pos + 8], "little"), pos + 8
        elif wire == 2:  # length-delimited: bytes, strings, sub-messages
            size, pos = _read_varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        elif wire == 5:  # fixed 32-bit
            value, pos = int.from_bytes(buf[pos : pos + 4], "little"), pos + 4
        else:
            raise CheckpointError(f"corrupt TF checkpoint index: protobuf wire type {wire}")
        if pos > len(buf):
            raise CheckpointError("corrupt TF checkpoint index: a protobuf field runs past its record")
        out.setdefault(number, []).append(value)
    return out


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


def _read_block(data: bytes, handle: bytes, path: str) -> list[tuple[bytes, bytes]]:
    """Read the block a handle (offset, size) points at; check its CRC; return its (key, value) entries."""
    offset, pos = _read_varint(handle, 0)
    size, _ = _read_varint(handle, pos)
    end = offset + size + 5  # block, then a 1-byte compression type and a 4-byte masked CRC
    if end > len(data):
        raise CheckpointError(f"{path} is truncated: a block ends at byte {end}, the file has {len(data)}")
    block, kind = data[offset : offset + size], data[offset + size]
    (stored,) = struct.unpack_from("<I", data, offset + size + 1)
    if _mask(crc32c(data[offset : offset + size + 1])) != stored:
        raise CheckpointError(f"{path} is corrupt: checksum mismatch in the block at byte {offset}")
    if kind != 0:
        raise CheckpointError(f"{path}: compressed index blocks (type {kind}) are not supported")
    # A block is a run of entries, then an array of restart offsets and its length. Each entry stores
    # only the part of its key that differs from the previous key (prefix compression).
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 - 4 * num_restarts
    entries, key, pos = [], b"", 0
    while pos < limit:
        shared, pos = _read_varint(block, pos)
        unshared, pos = _read_varint(block, pos)
        value_len, pos = _read_varint(block, pos)
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


def _parse_entry(name: str, value: bytes) -> _Entry:
    f = _proto_fields(value)
    dtype = _TF_DTYPES.get(f.get(1, [0])[0])
    if dtype is None:
        raise CheckpointError(f"tensor {name!r} has an unsupported TensorFlow dtype enum {f.get(1, [0])[0]}")
    shape_fields = _proto_fields(f[2][0]) if 2 in f else {}
    dims = [_proto_fields(d) for d in shape_fields.get(2, [])]
    shape = tuple(_signed64(d.get(1, [0])[0]) for d in dims)
    shard, offset, size, crc = (f.get(i, [0])[0] for i in (3, 4, 5, 6))
    return _Entry(dtype, shape, shard, offset, size, crc, sliced=7 in f)


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
    footer = data[-_FOOTER_SIZE:]
    _, pos = _read_varint(footer, _read_varint(footer, 0)[1])  # skip the (unused) meta-index handle
    index_handle = footer[pos:]
    entries: dict[str, _Entry] = {}
    num_shards = None
    for _, handle in _read_block(data, index_handle, path):  # the index block points at the data blocks
        for key, value in _read_block(data, handle, path):
            if key == b"":  # the header: BundleHeaderProto
                header = _proto_fields(value)
                num_shards = header.get(1, [1])[0]
                if header.get(2, [0])[0] != 0:
                    raise CheckpointError(f"{path} was written big-endian, which is not supported")
            elif not key.startswith(b"\x00"):  # keys starting with 0 are the pieces of sliced tensors
                name = key.decode("utf-8")
                entries[name] = _parse_entry(name, value)
    if num_shards is None:
        raise CheckpointError(f"{path} has no bundle header: not a tensor-bundle checkpoint")
    return num_shards, entries


class TFVariable(NamedTuple):
    """One variable as listed in a checkpoint's index."""

    name: str
    shape: tuple[int, ...]
    dtype: str


def resolve_tf_prefix(path: str | os.PathLike) -> str:
    """Accept a checkpoint prefix, its ``.index`` file, or a directory holding one checkpoint."""
    path = os.fspath(path)
    path = re.sub(r"\.(index|data-\d{5}-of-\d{5})$", "", path)
    if os.path.isdir(path):
        state = os.path.join(path, "checkpoint")  # TensorFlow's "latest checkpoint" pointer file
        if os.path.isfile(state):
            with open(state) as f:
                m = re.search(r'^model_checkpoint_path:\s*"(.*)"', f.read(), re.M)
            if m:
                return os.path.join(path, m.group(1))
        prefixes = sorted(f[: -len(".index")] for f in os.listdir(path) if f.endswith(".index"))
        if len(prefixes) == 1:
            return os.path.join(path, prefixes[0])
        raise CheckpointError(f"{path} holds {len(prefixes)} TF checkpoints; name one: {prefixes}")
    return path


def is_tf_checkpoint(path: str | os.PathLike) -> bool:
    """True when ``path`` names a TF checkpoint (prefix, .index file, or a directory holding one)."""
    try:
        return os.path.isfile(resolve_tf_prefix(path) + ".index")
    except CheckpointError:
        return False


def list_tf_variables(prefix: str | os.PathLike) -> list[TFVariable]:
    """Names, shapes and dtypes of a checkpoint's variables, from the index alone (no tensor data read)."""
    _, entries = _read_index(resolve_tf_prefix(prefix))
    return [TFVariable(name, e.shape, e.dtype) for name, e in sorted(entries.items())]


def _decode_strings(raw: bytes, count: int, name: str, crc: int) -> np.ndarray:
    """String tensors: varint lengths, a masked CRC of the lengths, then the bytes back to back.

    TensorFlow checksums each length as a 4-byte integer (8 bytes if it does not fit), not as the
    varint it stores, so the checksum is computed over those re-encoded lengths plus the rest.
    """
    lengths, pos = [], 0
    for _ in range(count):
        n, pos = _read_varint(raw, pos)
        lengths.append(n)
    fixed = b"".join(struct.pack("<I" if n < 1 << 32 else "<Q", n) for n in lengths)
    ok = pos + 4 <= len(raw) and _mask(crc32c(fixed)) == struct.unpack_from("<I", raw, pos)[0]
    if not ok or _mask(crc32c(fixed + raw[pos:])) != crc:
        raise CheckpointError(f"string tensor {name!r} is corrupt: checksum mismatch")
    pos += 4
    out = np.empty(count, dtype=object)
    for i, n in enumerate(lengths):
        out[i], pos = raw[pos : pos + n], pos + n
    if pos != len(raw):
        raise CheckpointError(f"string tensor {name!r} is corrupt: its lengths do not add up")
    return out


def read_tf_checkpoint(
    prefix: str | os.PathLike, names: Iterable[str] | None = None
) -> dict[str, np.ndarray]:
    """Read a TF checkpoint's tensors (all, or ``names``) into numpy arrays; no TensorFlow needed.

    Every tensor's CRC32C is checked. bfloat16 tensors come back as float32 (exactly: each bfloat16
    is the upper half of a float32); string tensors as object arrays of bytes.
    """
    prefix = resolve_tf_prefix(prefix)
    num_shards, entries = _read_index(prefix)
    wanted = sorted(entries) if names is None else list(names)
    unknown = [n for n in wanted if n not in entries]
    if unknown:
        raise CheckpointError(f"{prefix}: no tensor named {', '.join(map(repr, unknown))}")
    out: dict[str, np.ndarray] = {}
    files: dict[int, Any] = {}
    try:
        for name in wanted:
            e = entries[name]
            if e.sliced:
                raise CheckpointError(f"tensor {name!r} is partitioned (stored in slices): not supported")
            if e.shard >= num_shards:
                raise CheckpointError(f"tensor {name!r} points at shard {e.shard} of {num_shards}")
            path = f"{prefix}.data-{e.shard:05d}-of-{num_shards:05d}"
            if e.shard not in files:
                if not os.path.isfile(path):
                    raise CheckpointError(f"missing data shard {path}")
                files[e.shard] = open(path, "rb")
            f = files[e.shard]
            f.seek(e.offset)
            raw = bytearray(e.size)
            if f.readinto(raw) != e.size:
                raise CheckpointError(
                    f"{path} is truncated: tensor {name!r} needs bytes {e.offset}..{e.offset + e.size}, "
                    f"the file has {os.path.getsize(path)}"
                )
            count = int(np.prod(e.shape, dtype=np.int64))
            if e.dtype == "string":
                out[name] = _decode_strings(bytes(raw), count, name, e.crc).reshape(e.shape)
                continue
            if _mask(crc32c(raw)) != e.crc:
                raise CheckpointError(f"{path} is corrupt: checksum mismatch for tensor {name!r}")
            dtype = _numpy_dtype(e.dtype)
            if count * dtype.itemsize != e.size:
                raise CheckpointError(f"tensor {name!r}: {e.size} bytes do not hold {e.dtype}{list(e.shape)}")
            array = np.frombuffer(raw, dtype).reshape(e.shape)
            if e.dtype == "bfloat16":
                array = (array.astype(np.uint32) << 16).view(np.float32)
            out[name] = array.astype(array.dtype.newbyteorder("="), copy=False)
    finally:
        for f in files.values():
            f.close()
    return out


# ---- writing -------------------------------------------------------------------------------------


def _encode(value: Any) -> tuple[str, tuple[int, ...], bytes, int]:
    """(TF dtype, shape, bytes to store, CRC32C) for a numpy array, torch tensor or scalar."""
    if hasattr(value, "detach"):  # a torch tensor: numpy has no bfloat16, so keep its bit patterns
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            import torch

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
            dims = b"".join(_field(2, _field(1, d)) for d in shape)  # TensorShapeProto.dim
            entry = _field(1, _TF_ENUM[dtype]) + _field(2, dims)
            entry += _field(4, offset) if offset else b""
            entry += _field(5, len(raw)) if raw else b""
            entry += _varint(6 << 3 | 5) + struct.pack("<I", _mask(crc))  # crc32c is a fixed32
            index_entries.append((name.encode("utf-8"), entry))
            offset += len(raw)
    # BundleHeaderProto: num_shards=1, little-endian (0, the default), VersionDef(producer=1).
    header = _field(1, 1) + _field(3, _field(1, 1))
    blocks = bytearray()

    def add_block(contents: bytes) -> bytes:
        handle = _varint(len(blocks)) + _varint(len(contents))
        blocks.extend(contents + b"\x00" + struct.pack("<I", _mask(crc32c(contents + b"\x00"))))
        return handle

    data_entries = [(b"", header), *index_entries]
    data_handle = add_block(_block(data_entries))
    meta_handle = add_block(_block([]))
    index_handle = add_block(_block([(data_entries[-1][0], data_handle)]))  # last key of the block
    footer = (meta_handle + index_handle).ljust(40, b"\x00") + struct.pack("<Q", _TABLE_MAGIC)
    with open(f"{prefix}.index", "wb") as f:
        f.write(bytes(blocks) + footer)


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
                    array = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
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


def load_tf_weights(model: torch.nn.Module, prefix: str | os.PathLike, strict: bool = True) -> LoadReport:
    """Load a Google-BERT- or Megatron-named TF checkpoint into ``model`` (pre- or post-LN) in place.

    Optimizer slots and global_step are skipped and listed. With ``strict``, a missing or mis-shaped
    tensor raises CheckpointError listing them all.
    """
    import torch

    from .hf import load_state_dict

    prefix = resolve_tf_prefix(prefix)
    skipped, unknown, plan = [], [], {}  # plan: PyTorch name -> (TF name, transpose?)
    for var in list_tf_variables(prefix):
        mapped = map_tf_name(var.name)
        if OPTIMIZER_NAMES.search(var.name):
            skipped.append(var.name)
        elif mapped is None:
            unknown.append(var.name)
        else:
            plan[mapped[0]] = (var.name, mapped[1])
    arrays = read_tf_checkpoint(prefix, [tf_name for tf_name, _ in plan.values()])
    tensors = {}
    for key, (tf_name, transpose) in plan.items():
        array = arrays[tf_name]
        tensors[key] = torch.from_numpy(np.ascontiguousarray(array.T if transpose else array))
    # From here on it is an ordinary state dict: the HF loader matches names, shapes and tied weights.
    report = load_state_dict(model, tensors, strict=False, source=prefix)
    report.skipped[:0] = skipped
    report.unexpected.extend(unknown)
    if strict and not report.ok:
        hint = layer_norm_hint(report)
        try:
            report.raise_if_failed(f"TF checkpoint {prefix}")
        except CheckpointError as e:
            raise CheckpointError(f"{e}\n  hint: {hint}" if hint else str(e)) from None
    return report


def tf_config(prefix: str | os.PathLike, config_path: str | os.PathLike | None = None) -> MegatronBertConfig:
    """Config for a TF checkpoint: ``config_path``, else the bert_config.json or config.json beside it.

    Google's bert_config.json field names are ours. The LayerNorm names in the checkpoint decide
    ``layer_norm_position``: Google's ``LayerNorm`` means post-LN, Megatron's ``ln`` pre-LN.
    """
    from ..config import MegatronBertConfig

    prefix = resolve_tf_prefix(prefix)
    folder = os.path.dirname(prefix) or "."
    beside = [os.path.join(folder, n) for n in ("bert_config.json", "config.json")]
    path = next((p for p in ([config_path] if config_path else beside) if os.path.isfile(p)), None)
    if path is None:
        wanted = config_path or f"bert_config.json or config.json beside {prefix}"
        raise CheckpointError(f"config not found: {wanted} (pass a config)")
    with open(path) as f:
        fields = json.load(f)
    names = [v.name for v in list_tf_variables(prefix)]
    if any(re.match(r"bert/(embeddings|encoder/layer_\d+/(attention/)?output)/LayerNorm/", n) for n in names):
        fields["layer_norm_position"] = "post"
    elif any(re.match(r"bert/encoder/(layer_\d+/(attention/)?)?ln/", n) for n in names):
        fields["layer_norm_position"] = "pre"
    return MegatronBertConfig.from_dict(fields)


def load_tf_checkpoint_model(
    cls: type, prefix: str | os.PathLike, config: MegatronBertConfig | None = None, strict: bool = True
) -> torch.nn.Module:
    """``cls.from_pretrained(<TF prefix>)``: build the model from its config, then load the weights."""
    prefix = resolve_tf_prefix(prefix)
    model = cls(config if config is not None else tf_config(prefix))
    model.load_report = load_tf_weights(model, prefix, strict=strict)
    return model
