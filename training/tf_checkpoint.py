"""Read TensorFlow V2 checkpoints (tensor bundles) without TensorFlow.

A bundle ``<prefix>`` is two files:

* ``<prefix>.index``: a LevelDB-format table. Blocks of prefix-compressed entries with restart
  points, each followed by a 5-byte trailer (compression type, masked CRC32C); a 48-byte footer holds
  the metaindex and index block handles and the magic number. Keys are variable names; values are
  ``BundleEntryProto`` messages (dtype, shape, shard, offset, size, crc32c). The empty key holds the
  ``BundleHeaderProto`` (shard count, endianness, version).
* ``<prefix>.data-SSSSS-of-NNNNN``: the raw tensor bytes.

Every block and every tensor is checked against its masked CRC32C.
"""

from __future__ import annotations

import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import crc32c as _crc32c
import numpy as np

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_BYTES = 48
BLOCK_TRAILER_BYTES = 5
_MASK_DELTA = 0xA282EAD8

# tensorflow/core/framework/types.proto
DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"), 2: np.dtype("<f8"), 3: np.dtype("<i4"), 4: np.dtype("u1"), 5: np.dtype("<i2"),
    6: np.dtype("i1"), 9: np.dtype("<i8"), 10: np.dtype("?"), 17: np.dtype("<u2"), 19: np.dtype("<f2"),
    22: np.dtype("<u4"), 23: np.dtype("<u8"),
}


class CheckpointError(Exception):
    """A checkpoint that is missing, truncated, corrupt or uses a feature this reader lacks."""


def masked_crc32c(data: bytes) -> int:
    """LevelDB/TensorFlow's masked CRC32C: rotate right by 15 bits, add a constant."""
    crc = _crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise CheckpointError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise CheckpointError("varint too long")


def parse_protobuf(buf: bytes) -> dict[int, list]:
    """Decode a protobuf message into {field number: [values]} (varints, fixed32/64, bytes)."""
    fields: dict[int, list] = {}
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            if pos + 8 > len(buf):
                raise CheckpointError("truncated fixed64 field")
            value = struct.unpack_from("<Q", buf, pos)[0]
            pos += 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise CheckpointError("truncated length-delimited field")
            value = buf[pos:pos + length]
            pos += length
        elif wire == 5:
            if pos + 4 > len(buf):
                raise CheckpointError("truncated fixed32 field")
            value = struct.unpack_from("<I", buf, pos)[0]
            pos += 4
        else:
            raise CheckpointError(f"unsupported protobuf wire type {wire}")
        fields.setdefault(number, []).append(value)
    return fields


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives in the data shards (a decoded BundleEntryProto)."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int | None


def _parse_entry(name: str, buf: bytes) -> TensorEntry:
    f = parse_protobuf(buf)
    if 7 in f:
        raise CheckpointError(f"{name}: sliced (partitioned) tensors are not supported")
    dtype_code = f.get(1, [0])[0]
    if dtype_code not in DTYPES:
        raise CheckpointError(f"{name}: unsupported TensorFlow dtype {dtype_code}")
    shape: list[int] = []
    if 2 in f:
        shape_msg = parse_protobuf(f[2][0])
        for dim in shape_msg.get(2, []):
            size = parse_protobuf(dim).get(1, [0])[0]
            shape.append(size - (1 << 64) if size >= 1 << 63 else size)
    return TensorEntry(name, DTYPES[dtype_code], tuple(shape), f.get(3, [0])[0], f.get(4, [0])[0],
                       f.get(5, [0])[0], f[6][0] if 6 in f else None)


def _read_block(data: bytes, offset: int, size: int, what: str) -> bytes:
    end = offset + size + BLOCK_TRAILER_BYTES
    if offset < 0 or end > len(data):
        raise CheckpointError(f"{what} block at {offset}+{size} runs past the end of the index file")
    contents = data[offset:offset + size]
    compression = data[offset + size]
    (stored,) = struct.unpack_from("<I", data, offset + size + 1)
    if masked_crc32c(contents + bytes([compression])) != stored:
        raise CheckpointError(f"{what} block at {offset}: CRC32C mismatch (corrupt index file)")
    if compression != 0:
        raise CheckpointError(f"{what} block at {offset}: compression type {compression} is not supported")
    return contents


def _block_entries(block: bytes, what: str) -> list[tuple[bytes, bytes]]:
    if len(block) < 4:
        raise CheckpointError(f"{what} block too short")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 - 4 * num_restarts
    if limit < 0:
        raise CheckpointError(f"{what} block: bad restart count {num_restarts}")
    entries = []
    pos = 0
    key = b""
    while pos < limit:
        shared, pos = _varint(block, pos)
        non_shared, pos = _varint(block, pos)
        value_length, pos = _varint(block, pos)
        if shared > len(key) or pos + non_shared + value_length > limit:
            raise CheckpointError(f"{what} block: malformed entry at {pos}")
        key = key[:shared] + block[pos:pos + non_shared]
        pos += non_shared
        entries.append((key, block[pos:pos + value_length]))
        pos += value_length
    return entries


def _handle(buf: bytes, pos: int = 0) -> tuple[int, int, int]:
    offset, pos = _varint(buf, pos)
    size, pos = _varint(buf, pos)
    return offset, size, pos


def read_index(index: bytes) -> tuple[dict, dict[str, TensorEntry]]:
    """Parse an index file's bytes into (header fields, {name: TensorEntry})."""
    if len(index) < FOOTER_BYTES:
        raise CheckpointError(f"index file is {len(index)} bytes, shorter than its {FOOTER_BYTES}-byte footer")
    footer = index[-FOOTER_BYTES:]
    (magic,) = struct.unpack_from("<Q", footer, FOOTER_BYTES - 8)
    if magic != TABLE_MAGIC:
        raise CheckpointError("index file has no table magic number (truncated, or not a TF checkpoint)")
    _, _, pos = _handle(footer)  # metaindex: unused (no filter blocks in bundles)
    index_offset, index_size, _ = _handle(footer, pos)
    header: dict = {}
    entries: dict[str, TensorEntry] = {}
    index_block = _read_block(index, index_offset, index_size, "index")
    for _, handle in _block_entries(index_block, "index"):
        offset, size, _ = _handle(handle)
        for key, value in _block_entries(_read_block(index, offset, size, "data"), "data"):
            if key == b"":
                h = parse_protobuf(value)
                header = {"num_shards": h.get(1, [1])[0], "endianness": h.get(2, [0])[0]}
            else:
                name = key.decode("utf-8")
                entries[name] = _parse_entry(name, value)
    if not header:
        raise CheckpointError("index file has no bundle header")
    if header["endianness"] != 0:
        raise CheckpointError("big-endian checkpoints are not supported")
    return header, entries


class Checkpoint:
    """A checkpoint's tensors, read from a directory prefix or from inside a wheel/zip.

    Args:
        index: the ``.index`` file bytes.
        shards: the data shards' bytes, in shard order.
        source: a name for messages.
    """

    def __init__(self, index: bytes, shards: list[bytes], source: str = "checkpoint") -> None:
        self.source = source
        try:
            self.header, self.entries = read_index(index)
        except CheckpointError as exc:
            raise CheckpointError(f"{source}: {exc}") from None
        if len(shards) != self.header["num_shards"]:
            raise CheckpointError(f"{source}: expected {self.header['num_shards']} data shards, got {len(shards)}")
        self._shards = shards

    @classmethod
    def open(cls, prefix: str | Path) -> Checkpoint:
        """Open ``<prefix>.index`` and its ``<prefix>.data-*`` shards on disk."""
        prefix = Path(prefix)
        index_path = Path(f"{prefix}.index")
        if not index_path.is_file():
            raise CheckpointError(f"{index_path}: no such checkpoint index")
        index = index_path.read_bytes()
        header, _ = read_index(index)  # to learn the shard count
        n = header["num_shards"]
        shards = []
        for i in range(n):
            shard = Path(f"{prefix}.data-{i:05d}-of-{n:05d}")
            if not shard.is_file():
                raise CheckpointError(f"{shard}: missing data shard")
            shards.append(shard.read_bytes())
        return cls(index, shards, str(prefix))

    @classmethod
    def from_zip(cls, archive: str | Path, prefix: str) -> Checkpoint:
        """Open a checkpoint stored inside a zip archive (such as a wheel) under ``prefix``."""
        try:
            with zipfile.ZipFile(archive) as zf:
                index = zf.read(f"{prefix}.index")
                header, _ = read_index(index)
                n = header["num_shards"]
                shards = [zf.read(f"{prefix}.data-{i:05d}-of-{n:05d}") for i in range(n)]
        except KeyError as exc:
            raise CheckpointError(f"{archive}: {exc.args[0]}") from None
        except zipfile.BadZipFile as exc:
            raise CheckpointError(f"{archive}: not a zip archive ({exc})") from None
        return cls(index, shards, f"{archive}:{prefix}")

    def names(self) -> list[str]:
        return sorted(self.entries)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def tensor(self, name: str) -> np.ndarray:
        """One tensor as a numpy array (CRC-checked)."""
        if name not in self.entries:
            raise KeyError(f"{self.source}: no tensor {name!r}")
        e = self.entries[name]
        shard = self._shards[e.shard_id]
        if e.offset + e.size > len(shard):
            raise CheckpointError(f"{self.source}: tensor {name!r} runs past the end of its data shard (truncated)")
        raw = shard[e.offset:e.offset + e.size]
        if e.crc32c is not None and masked_crc32c(raw) != e.crc32c:
            raise CheckpointError(f"{self.source}: tensor {name!r} fails its CRC32C check (corrupt data)")
        count = int(np.prod(e.shape)) if e.shape else 1
        if count * e.dtype.itemsize != e.size:
            raise CheckpointError(f"{self.source}: tensor {name!r} holds {e.size} bytes, shape {e.shape} needs "
                                  f"{count * e.dtype.itemsize}")
        return np.frombuffer(raw, dtype=e.dtype).reshape(e.shape).astype(e.dtype.newbyteorder("="))

    def tensors(self) -> dict[str, np.ndarray]:
        return {name: self.tensor(name) for name in self.names()}
