"""Read TensorFlow tensor-bundle checkpoints (``<prefix>.index`` + ``<prefix>.data-*``) without TensorFlow.

The ``.index`` file is a LevelDB-format sorted table (SSTable): data blocks of prefix-compressed
``key -> value`` entries with restart points, an index block pointing at them and a 48-byte footer.
Keys are variable names; the value of the empty key is a ``BundleHeaderProto``; every other value is
a ``BundleEntryProto`` (dtype, shape, shard id, offset, size, masked crc32c) locating the raw
little-endian tensor bytes in ``<prefix>.data-<shard>-of-<num_shards>``.

Only what TF-1/TF-2 ``Saver`` checkpoints of plain (unpartitioned, non-string) variables need is
supported; anything else raises :class:`~dragontune.errors.CheckpointError` naming the file.
Block checksums and per-tensor checksums (CRC-32C) are verified.
"""

from __future__ import annotations

import os
import struct
from functools import lru_cache

import numpy as np

from dragontune.errors import CheckpointError

__all__ = ["read_tf_checkpoint", "list_tf_checkpoint", "crc32c"]

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_LEN = 48
_BLOCK_TRAILER_LEN = 5  # 1 byte compression type + 4 bytes masked crc32c
_MASK_DELTA = 0xA282EAD8

# tensorflow/core/framework/types.proto DataType -> numpy little-endian dtype
_DTYPES = {
    1: np.dtype("<f4"),  # DT_FLOAT
    2: np.dtype("<f8"),  # DT_DOUBLE
    3: np.dtype("<i4"),  # DT_INT32
    4: np.dtype("u1"),  # DT_UINT8
    5: np.dtype("<i2"),  # DT_INT16
    6: np.dtype("i1"),  # DT_INT8
    8: np.dtype("<c8"),  # DT_COMPLEX64
    9: np.dtype("<i8"),  # DT_INT64
    10: np.dtype("?"),  # DT_BOOL
    17: np.dtype("<u2"),  # DT_UINT16
    18: np.dtype("<c16"),  # DT_COMPLEX128
    19: np.dtype("<f2"),  # DT_HALF
    22: np.dtype("<u4"),  # DT_UINT32
    23: np.dtype("<u8"),  # DT_UINT64
}


# ----------------------------------------------------------------------------------------------
# CRC-32C (Castagnoli), reflected polynomial 0x82F63B78


@lru_cache(maxsize=1)
def _crc_table() -> np.ndarray:
    poly = 0x82F63B78
    t = np.zeros(256, dtype=np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        t[i] = c
    return t


def _crc_update_py(reg: int, data: bytes) -> int:
    t = _crc_table().tolist()
    for b in data:
        reg = (reg >> 8) ^ t[(reg ^ b) & 0xFF]
    return reg


def _gf2_apply(cols: list[int], v: int) -> int:
    out = 0
    i = 0
    while v:
        if v & 1:
            out ^= cols[i]
        v >>= 1
        i += 1
    return out


def _zeros_operator(n_bytes: int) -> list[int]:
    """Columns of the 32x32 GF(2) matrix that advances a raw CRC register over ``n_bytes`` zero bytes."""
    one = [_crc_update_py(1 << j, b"\x00") for j in range(32)]  # one zero byte
    result = [1 << j for j in range(32)]  # identity
    power = one
    while n_bytes:
        if n_bytes & 1:
            result = [_gf2_apply(power, c) for c in result]
        power = [_gf2_apply(power, c) for c in power]
        n_bytes >>= 1
    return result


def crc32c(data: bytes | memoryview | np.ndarray) -> int:
    """Standard CRC-32C of ``data`` (init and final xor 0xFFFFFFFF), vectorised with NumPy for large inputs.

    Large buffers are cut into equal chunks whose raw CRCs are computed in parallel (one byte per
    NumPy step across all chunks) and then chained with the linear "advance over L zero bytes" operator.
    """
    buf = np.frombuffer(bytes(data) if not isinstance(data, np.ndarray) else data.tobytes(), dtype=np.uint8)
    n = buf.size
    if n < 8192:
        return _crc_update_py(0xFFFFFFFF, buf.tobytes()) ^ 0xFFFFFFFF
    n_chunks = 4096
    length = n // n_chunks
    body = buf[: n_chunks * length].reshape(n_chunks, length)
    table = _crc_table()
    reg = np.zeros(n_chunks, dtype=np.uint32)
    for j in range(length):
        reg = (reg >> np.uint32(8)) ^ table[(reg ^ body[:, j]) & np.uint32(0xFF)]
    advance = _zeros_operator(length)
    crc = 0xFFFFFFFF
    for part in reg.tolist():
        crc = _gf2_apply(advance, crc) ^ part
    crc = _crc_update_py(crc, buf[n_chunks * length :].tobytes())
    return crc ^ 0xFFFFFFFF


def _unmask(masked: int) -> int:
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


# ----------------------------------------------------------------------------------------------
# varints and a minimal protobuf wire-format decoder


def _varint(buf: bytes, pos: int, where: str) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise CheckpointError(f"{where}: truncated or overlong varint at byte {pos}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _proto_fields(buf: bytes, where: str) -> list[tuple[int, int, int | bytes]]:
    """Decode one protobuf message into ``(field_number, wire_type, value)`` triples."""
    out = []
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos, where)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            val, pos = _varint(buf, pos, where)
        elif wire == 1:
            if pos + 8 > len(buf):
                raise CheckpointError(f"{where}: truncated fixed64 field {field}")
            val = struct.unpack_from("<Q", buf, pos)[0]
            pos += 8
        elif wire == 2:
            n, pos = _varint(buf, pos, where)
            if pos + n > len(buf):
                raise CheckpointError(f"{where}: length-delimited field {field} overruns its message")
            val = bytes(buf[pos : pos + n])
            pos += n
        elif wire == 5:
            if pos + 4 > len(buf):
                raise CheckpointError(f"{where}: truncated fixed32 field {field}")
            val = struct.unpack_from("<I", buf, pos)[0]
            pos += 4
        else:
            raise CheckpointError(f"{where}: unsupported protobuf wire type {wire} (field {field})")
        out.append((field, wire, val))
    return out


def _decode_shape(buf: bytes, where: str) -> tuple[int, ...]:
    dims = []
    for field, wire, val in _proto_fields(buf, where):
        if field == 2 and wire == 2:  # TensorShapeProto.dim
            size = 0
            for f2, w2, v2 in _proto_fields(val, where):
                if f2 == 1 and w2 == 0:
                    size = v2 - (1 << 64) if v2 >= 1 << 63 else v2
            if size < 0:
                raise CheckpointError(f"{where}: tensor has an unknown dimension ({size})")
            dims.append(size)
        elif field == 3 and wire == 0 and val:
            raise CheckpointError(f"{where}: tensor shape has unknown rank")
    return tuple(dims)


def _decode_entry(buf: bytes, where: str) -> dict:
    entry = {"dtype": 0, "shape": (), "shard_id": 0, "offset": 0, "size": 0, "crc32c": None}
    for field, wire, val in _proto_fields(buf, where):
        if field == 1 and wire == 0:
            entry["dtype"] = val
        elif field == 2 and wire == 2:
            entry["shape"] = _decode_shape(val, where)
        elif field == 3 and wire == 0:
            entry["shard_id"] = val
        elif field == 4 and wire == 0:
            entry["offset"] = val
        elif field == 5 and wire == 0:
            entry["size"] = val
        elif field == 6 and wire == 5:
            entry["crc32c"] = val
        elif field == 7:
            raise CheckpointError(f"{where}: partitioned (sliced) variables are not supported")
    return entry


# ----------------------------------------------------------------------------------------------
# SSTable


def _read_block(data: bytes, offset: int, size: int, path: str, what: str) -> bytes:
    end = offset + size + _BLOCK_TRAILER_LEN
    if offset < 0 or end > len(data):
        raise CheckpointError(
            f"TensorFlow index {path!r} is corrupt: {what} block [{offset}, {end}) lies outside the file "
            f"({len(data)} bytes); reinstall the weights"
        )
    block = data[offset : offset + size]
    ctype = data[offset + size]
    stored = struct.unpack_from("<I", data, offset + size + 1)[0]
    if _unmask(stored) != crc32c(data[offset : offset + size + 1]):
        raise CheckpointError(
            f"TensorFlow index {path!r} is corrupt: checksum mismatch in the {what} block at byte {offset}; "
            "reinstall the weights"
        )
    if ctype != 0:
        kind = {1: "snappy", 2: "zstd"}.get(ctype, f"type {ctype}")
        raise CheckpointError(
            f"TensorFlow index {path!r} has a {kind}-compressed {what} block at byte {offset}; only uncompressed "
            "tables are supported (re-save the checkpoint with TensorFlow, or convert it to safetensors)"
        )
    return block


def _block_entries(block: bytes, path: str, what: str) -> list[tuple[bytes, bytes]]:
    where = f"TensorFlow index {path!r} ({what} block)"
    if len(block) < 4:
        raise CheckpointError(f"{where} is corrupt: block of {len(block)} bytes has no restart array")
    n_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    limit = len(block) - 4 - 4 * n_restarts
    if n_restarts < 1 or limit < 0:
        raise CheckpointError(f"{where} is corrupt: impossible restart count {n_restarts}")
    restarts = set(struct.unpack_from(f"<{n_restarts}I", block, limit))
    entries = []
    pos = 0
    key = b""
    while pos < limit:
        start = pos
        shared, pos = _varint(block, pos, where)
        non_shared, pos = _varint(block, pos, where)
        vlen, pos = _varint(block, pos, where)
        if start in restarts and shared != 0:
            raise CheckpointError(f"{where} is corrupt: restart entry at byte {start} shares a prefix")
        if shared > len(key) or pos + non_shared + vlen > limit:
            raise CheckpointError(f"{where} is corrupt: entry at byte {start} overruns the block")
        key = key[:shared] + block[pos : pos + non_shared]
        pos += non_shared
        entries.append((key, block[pos : pos + vlen]))
        pos += vlen
    return entries


def _read_index(index_path: str) -> tuple[dict, dict[str, dict]]:
    try:
        with open(index_path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise CheckpointError(f"TensorFlow checkpoint index {index_path!r} does not exist") from None
    if len(data) < _FOOTER_LEN:
        raise CheckpointError(f"TensorFlow index {index_path!r} is too short ({len(data)} bytes) to be a table")
    footer = data[-_FOOTER_LEN:]
    if struct.unpack_from("<Q", footer, 40)[0] != _TABLE_MAGIC:
        raise CheckpointError(f"TensorFlow index {index_path!r} is corrupt or not a table (bad magic number)")
    where = f"TensorFlow index {index_path!r} footer"
    _meta_off, pos = _varint(footer, 0, where)
    _meta_size, pos = _varint(footer, pos, where)
    idx_off, pos = _varint(footer, pos, where)
    idx_size, pos = _varint(footer, pos, where)
    index_block = _read_block(data, idx_off, idx_size, index_path, "index")
    header: dict | None = None
    entries: dict[str, dict] = {}
    last_key = None
    for _sep, handle in _block_entries(index_block, index_path, "index"):
        off, p = _varint(handle, 0, where)
        size, _ = _varint(handle, p, where)
        block = _read_block(data, off, size, index_path, "data")
        for key, value in _block_entries(block, index_path, "data"):
            if last_key is not None and key <= last_key:
                raise CheckpointError(f"TensorFlow index {index_path!r} is corrupt: keys out of order at {key!r}")
            last_key = key
            if key == b"":
                header = {"num_shards": 1, "endianness": 0}
                for field, wire, val in _proto_fields(value, f"{index_path!r} header"):
                    if field == 1 and wire == 0:
                        header["num_shards"] = val
                    elif field == 2 and wire == 0:
                        header["endianness"] = val
                continue
            name = key.decode("utf-8", errors="replace")
            entries[name] = _decode_entry(value, f"TensorFlow index {index_path!r} entry {name!r}")
    if header is None:
        raise CheckpointError(f"TensorFlow index {index_path!r} has no bundle header (empty key); not a checkpoint")
    if header["endianness"] != 0:
        raise CheckpointError(f"TensorFlow checkpoint {index_path!r} is big-endian; only little-endian is supported")
    return header, entries


def _prefix_paths(prefix: str | os.PathLike) -> tuple[str, str]:
    prefix = os.fspath(prefix)
    return prefix, prefix + ".index"


def list_tf_checkpoint(prefix: str | os.PathLike) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{variable name: (numpy dtype name, shape)}`` of a checkpoint, without reading tensor data."""
    prefix, index_path = _prefix_paths(prefix)
    _header, entries = _read_index(index_path)
    out = {}
    for name, e in entries.items():
        dt = _DTYPES.get(e["dtype"])
        out[name] = (dt.name if dt is not None else f"tf-dtype-{e['dtype']}", e["shape"])
    return out


def read_tf_checkpoint(
    prefix: str | os.PathLike, names: list[str] | None = None, verify: bool = True
) -> dict[str, np.ndarray]:
    """Load variables of the TF checkpoint at ``prefix`` (the path without ``.index``) as NumPy arrays.

    ``names`` restricts loading to those variables (all by default). ``verify`` checks each tensor's
    CRC-32C. Raises :class:`CheckpointError` naming the file on anything missing, corrupt or unsupported.
    """
    prefix, index_path = _prefix_paths(prefix)
    header, entries = _read_index(index_path)
    wanted = list(entries) if names is None else list(names)
    missing = [n for n in wanted if n not in entries]
    if missing:
        raise CheckpointError(
            f"TensorFlow checkpoint {index_path!r} has no variable(s) {missing}; it holds {sorted(entries)[:20]}..."
        )
    num_shards = header["num_shards"]
    shards: dict[int, bytes] = {}
    out: dict[str, np.ndarray] = {}
    for name in wanted:
        e = entries[name]
        dt = _DTYPES.get(e["dtype"])
        if dt is None:
            raise CheckpointError(
                f"TensorFlow checkpoint {index_path!r}: variable {name!r} has unsupported dtype enum {e['dtype']}"
            )
        sid = e["shard_id"]
        data_path = f"{prefix}.data-{sid:05d}-of-{num_shards:05d}"
        if sid not in shards:
            try:
                with open(data_path, "rb") as f:
                    shards[sid] = f.read()
            except FileNotFoundError:
                raise CheckpointError(
                    f"TensorFlow checkpoint data shard {data_path!r} does not exist (index {index_path!r} needs it)"
                ) from None
        blob = shards[sid]
        count = int(np.prod(e["shape"], dtype=np.int64))
        if e["size"] != count * dt.itemsize:
            raise CheckpointError(
                f"TensorFlow checkpoint {index_path!r}: variable {name!r} of shape {e['shape']} and dtype {dt} "
                f"should take {count * dt.itemsize} bytes but the index says {e['size']}; the file is corrupt"
            )
        lo, hi = e["offset"], e["offset"] + e["size"]
        if hi > len(blob):
            raise CheckpointError(
                f"TensorFlow checkpoint data {data_path!r} is truncated: variable {name!r} needs bytes [{lo}, {hi}) "
                f"but the file has {len(blob)}; reinstall the weights"
            )
        raw = blob[lo:hi]
        if verify and e["crc32c"] is not None and crc32c(raw) != _unmask(e["crc32c"]):
            raise CheckpointError(
                f"TensorFlow checkpoint data {data_path!r} is corrupt: checksum mismatch for variable {name!r} "
                f"(bytes [{lo}, {hi})); reinstall the weights"
            )
        out[name] = np.frombuffer(raw, dtype=dt).reshape(e["shape"]).astype(dt.newbyteorder("="), copy=True)
    return out
