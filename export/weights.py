"""weights.bin: the packed integer parameters of a quantised LocalNet (format: export/FORMAT.md).

    from export.weights import write_weights, read_weights
    write_weights("weights.bin", records, meta)      # records: list[Record]
    wb = read_weights("weights.bin")                 # -> WeightsFile(meta, records by name)

numpy and the standard library only: hw/ reads weights through this module on boards
without torch. Every byte of the file is covered by a CRC32 (header, metadata, each
record) and by the lengths in the header, so a flipped bit, a truncated file, a wrong magic
or version is a WeightsError naming the record, never a silently wrong tensor.
"""
from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from export.pack import decode_weights, encode_weights

MAGIC = b"LNWB"
VERSION = 3              # written; READ_VERSIONS are read (1: per-tensor weight exponents only; 1, 2: no graph)
READ_VERSIONS = (1, 2, 3)
ALIGN = 16
OP_CONV3D, OP_QUANT = 1, 2
FLAG_RELU, FLAG_PER_CHANNEL = 1, 2

# file header: magic, version, header bytes, record count, file bytes, meta bytes, meta crc, 0, header crc
HEADER = struct.Struct("<4sHHIIIIII")
# record header: record bytes, crc, op, flags, bits, encoding, name length, e0, e1, pad,
#                c_out, c_in, kd, kh, kw, pad, payload bytes, non-zeros
RECORD = struct.Struct("<IIBBBBBbbBHHBBBBII")
assert HEADER.size == 32 and RECORD.size == 32


class WeightsError(ValueError):
    pass


@dataclass
class Record:
    """One quantised layer. conv3d: e0 = e_w (weight scale 2^-e_w), e1 = e_in (input scale),
    weight int8 (C_out, C_in, kD, kH, kW) of `bits`, bias int32 (C_out,) at scale 2^-(e_in + e_w);
    with per-channel weight scales `e_ch` holds e_w per output channel (C_out,) and e0 is 0.
    quant: requantisation to int`bits` at scale 2^-e0 (e1 unused, 0), optional ReLU."""
    name: str
    op: int
    bits: int
    e0: int
    e1: int = 0
    relu: bool = False
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    e_ch: np.ndarray | None = None  # conv3d with per-channel weight scales: e_w per output channel
    encoding: int = 0  # filled in when written / read
    payload_bytes: int = 0  # packed weight bytes as stored (filled in when written / read)

    # the two exponent fields as the file stores them (FORMAT.md) are e0 and e1; code reads them
    # by what they mean:
    @property
    def e_in(self) -> int:
        """conv3d: the exponent of the input activation (its scale 2^-e_in)."""
        return self.e1

    @property
    def e_out(self) -> int:
        """quant: the exponent of the requantised output (its scale 2^-e_out)."""
        return self.e0

    @classmethod
    def conv3d(cls, name: str, bits: int, e_w: np.ndarray, e_in: int, weight: np.ndarray, bias: np.ndarray,
               per_channel: bool) -> "Record":
        """A conv3d record from its weight exponent per output channel `e_w` (C_out,): stored per
        channel, or (`per_channel` False) as the one exponent all channels share."""
        e_w = np.asarray(e_w, dtype=np.int64)
        if e_w.shape != (weight.shape[0],):
            raise WeightsError(f"record {name}: {e_w.shape} weight exponents for {weight.shape[0]} output channels")
        if per_channel:
            return cls(name, OP_CONV3D, bits, 0, e_in, weight=weight, bias=bias, e_ch=e_w)
        if (e_w != e_w[0]).any():
            raise WeightsError(f"record {name}: per-tensor weight scale with different exponents {e_w.tolist()}")
        return cls(name, OP_CONV3D, bits, int(e_w[0]), e_in, weight=weight, bias=bias)

    @property
    def per_channel(self) -> bool:
        """conv3d: whether the weight scale is stored per output channel (else one e0 for all)."""
        return self.e_ch is not None

    @property
    def e_w(self) -> np.ndarray:
        """conv3d: the weight exponent of every output channel, int64 (C_out,)."""
        if self.e_ch is not None:
            return np.asarray(self.e_ch, dtype=np.int64)
        return np.full(self.weight.shape[0], self.e0, dtype=np.int64)


@dataclass
class WeightsFile:
    meta: dict
    records: dict[str, Record] = field(default_factory=dict)
    version: int = VERSION
    where: str = "weights file"

    @cached_property
    def graph(self):
        """The network's node list (model/graph.py), checked against the records: the metadata's
        `graph` table (format 3); for format 1 and 2 files, LocalNet's graph from their `model`
        table. A WeightsError naming the file if there is none or it does not fit the records."""
        from model.graph import Graph, GraphError

        try:
            if "graph" in self.meta:
                g = Graph.from_json(self.meta["graph"], f"{self.where}: graph")
            elif self.version < 3:
                from model.graph import graph_from_records
                g = graph_from_records(self.meta.get("model"), self.records, self.where)
            else:
                raise GraphError(f"{self.where}: no 'graph' in the metadata: a record container, not a network")
            g.check(self.records, f"{self.where}: graph")
        except GraphError as e:
            raise WeightsError(str(e)) from None
        return g


def acc_bound(r: Record, act_bits: int = 8) -> int:
    """Worst |accumulator| of a conv3d record: max over output channels of
    sum |w| * max|x| + |bias|, with max|x| = 2^(act_bits-1) (int8: 128)."""
    xmax = 2 ** (act_bits - 1)
    per_out = np.abs(r.weight.astype(np.int64)).reshape(r.weight.shape[0], -1).sum(1) * xmax
    return int((per_out + np.abs(r.bias.astype(np.int64))).max())


def stored_bytes(records) -> tuple[int, int]:
    """(non-zero integer parameters, stored parameter bytes) of conv3d records as written or read:
    the packed weight payloads plus 4 bytes per int32 bias (the file adds headers and names)."""
    nonzero = stored = 0
    for r in records:
        if r.op == OP_CONV3D:
            nonzero += int(np.count_nonzero(r.weight)) + int(np.count_nonzero(r.bias))
            stored += r.payload_bytes + 4 * r.bias.size
    return nonzero, stored


def _pad(n: int, a: int = ALIGN) -> int:
    return (n + a - 1) // a * a


def _record_bytes(r: Record) -> bytes:
    name = r.name.encode()
    if not 0 < len(name) < 256:
        raise WeightsError(f"record name {r.name!r}: length must be 1..255 bytes")
    payload, nnz, shape = b"", 0, (0, 0, 0, 0, 0)
    bias = exps = b""
    flags = FLAG_RELU if r.relu else 0
    if r.op == OP_CONV3D:
        w = np.asarray(r.weight)
        if w.ndim != 5:
            raise WeightsError(f"record {r.name}: conv3d weight must be 5-D, got shape {w.shape}")
        r.encoding, payload = encode_weights(w, r.bits)
        r.payload_bytes = len(payload)
        nnz, shape = int(np.count_nonzero(w)), w.shape
        b = np.asarray(r.bias)
        if b.shape != (w.shape[0],) or b.dtype != np.int32:
            raise WeightsError(f"record {r.name}: bias must be int32 of shape ({w.shape[0]},)")
        bias = b.astype("<i4").tobytes()
        if r.e_ch is not None:
            e = np.asarray(r.e_ch)
            if e.shape != (w.shape[0],) or e.min() < -128 or e.max() > 127 or r.e0 != 0:
                raise WeightsError(f"record {r.name}: per-channel exponents must be {w.shape[0]} int8 values "
                                   f"(and e0 0), got shape {e.shape}, e0 {r.e0}")
            flags |= FLAG_PER_CHANNEL
            exps = e.astype(np.int8).tobytes()
            exps += b"\0" * (_pad(len(exps), 4) - len(exps))
    elif r.op != OP_QUANT:
        raise WeightsError(f"record {r.name}: unknown op {r.op}")
    body = name + b"\0" * (_pad(len(name), 4) - len(name)) + bias + exps + payload
    total = _pad(RECORD.size + len(body))
    body += b"\0" * (total - RECORD.size - len(body))
    head_wo_crc = RECORD.pack(total, 0, r.op, flags, r.bits, r.encoding, len(name), r.e0, r.e1,
                              0, shape[0], shape[1], shape[2], shape[3], shape[4], 0, len(payload), nnz)
    crc = zlib.crc32(head_wo_crc[8:] + body)
    return RECORD.pack(total, crc, *RECORD.unpack(head_wo_crc)[2:]) + body


def write_weights(path: str | Path, records: list[Record], meta: dict) -> int:
    """Write weights.bin atomically; returns its size in bytes. A `graph` in `meta` (the node
    list, model/graph.py) must fit the records: a file that cannot be interpreted is not written."""
    from model.artifacts import atomic_write_bytes  # stdlib-only helper

    if "graph" in meta:
        WeightsFile(meta, {r.name: r for r in records}, where=str(path)).graph

    meta_raw = json.dumps(meta, sort_keys=True).encode()
    meta_raw += b" " * (_pad(len(meta_raw)) - len(meta_raw))
    recs = b"".join(_record_bytes(r) for r in records)
    header_size = HEADER.size
    total = header_size + len(meta_raw) + len(recs)
    head = HEADER.pack(MAGIC, VERSION, header_size, len(records), total, len(meta_raw), zlib.crc32(meta_raw), 0, 0)
    head = head[:-4] + struct.pack("<I", zlib.crc32(head[:-4]))
    data = head + meta_raw + recs
    atomic_write_bytes(path, data)
    return len(data)


def read_weights(path: str | Path) -> WeightsFile:
    """Parse and verify weights.bin; every check failure is a WeightsError naming where."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise WeightsError(f"{path}: cannot read ({e.strerror})") from None
    if len(data) < HEADER.size:
        raise WeightsError(f"{path}: truncated: {len(data)} bytes, shorter than the {HEADER.size}-byte header")
    magic, version, header_size, count, total, meta_len, meta_crc, _, head_crc = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise WeightsError(f"{path}: wrong magic {magic!r}, expected {MAGIC!r}: not a weights.bin")
    if zlib.crc32(data[:HEADER.size - 4]) != head_crc:
        raise WeightsError(f"{path}: file header CRC mismatch: the header is corrupted")
    if version not in READ_VERSIONS:
        raise WeightsError(f"{path}: format version {version}, this reader understands versions "
                           f"{', '.join(map(str, READ_VERSIONS))}")
    if len(data) != total:
        raise WeightsError(f"{path}: {len(data)} bytes, the header says {total}: file truncated or extended")
    if header_size != HEADER.size:
        raise WeightsError(f"{path}: header size {header_size}, expected {HEADER.size}")
    meta_raw = data[header_size:header_size + meta_len]
    if zlib.crc32(meta_raw) != meta_crc:
        raise WeightsError(f"{path}: metadata CRC mismatch: the metadata block is corrupted")
    try:
        meta = json.loads(meta_raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"{path}: metadata is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise WeightsError(f"{path}: metadata must be a JSON object, got {type(meta).__name__}")
    out = WeightsFile(meta, version=version, where=str(path))
    at = header_size + meta_len
    for i in range(count):
        where = f"{path}: record {i} at byte {at}"
        if at + RECORD.size > total:
            raise WeightsError(f"{where}: truncated record header")
        (size, crc, op, flags, bits, enc, name_len, e0, e1, _, c_out, c_in, kd, kh, kw, _, n_payload,
         nnz) = RECORD.unpack_from(data, at)
        if size < RECORD.size or size % ALIGN or at + size > total:
            raise WeightsError(f"{where}: record length {size} is invalid or runs past the end of the file")
        if zlib.crc32(data[at + 8:at + size]) != crc:
            raise WeightsError(f"{where}: CRC mismatch: record corrupted")
        body = data[at + RECORD.size:at + size]
        try:
            name = body[:name_len].decode()
        except UnicodeDecodeError:
            raise WeightsError(f"{where}: record name is not UTF-8") from None
        if not 0 < name_len <= len(body) or "\0" in name:
            raise WeightsError(f"{where}: record name length {name_len} is invalid")
        where = f"{path}: record {i} ({name})"
        if op == OP_CONV3D and bits not in (4, 8) or op == OP_QUANT and bits != 8:
            raise WeightsError(f"{where}: {bits} bits is not a width this op takes")
        r = Record(name, op, bits, e0, e1, relu=bool(flags & FLAG_RELU), encoding=enc, payload_bytes=n_payload)
        if flags & ~(FLAG_RELU | (FLAG_PER_CHANNEL if version >= 2 and op == OP_CONV3D else 0)):
            raise WeightsError(f"{where}: flags {flags:#x} not defined for this op in format version {version}")
        if op == OP_CONV3D:
            shape = (c_out, c_in, kd, kh, kw)
            if min(shape) < 1:
                raise WeightsError(f"{where}: weight shape {shape} has an empty axis")
            off = _pad(name_len, 4)
            if off + 4 * c_out + (_pad(c_out, 4) if flags & FLAG_PER_CHANNEL else 0) + n_payload > len(body):
                raise WeightsError(f"{where}: bias, exponents and payload run past the record's {size} bytes")
            r.bias = np.frombuffer(body[off:off + 4 * c_out], dtype="<i4").astype(np.int32)
            off += 4 * c_out
            if flags & FLAG_PER_CHANNEL:
                r.e_ch = np.frombuffer(body[off:off + c_out], dtype=np.int8).astype(np.int64)
                off += _pad(c_out, 4)
            payload = body[off:off + n_payload]
            try:
                r.weight = decode_weights(enc, payload, shape, bits)
            except ValueError as e:
                raise WeightsError(f"{where}: {e}") from None
            if int(np.count_nonzero(r.weight)) != nnz:
                raise WeightsError(f"{where}: {np.count_nonzero(r.weight)} non-zero weights, header says {nnz}")
            wmax = 2 ** (bits - 1) - 1   # narrow range: int8 [-127, 127], int4 [-7, 7] (FORMAT.md)
            if r.weight.min() < -wmax:
                raise WeightsError(f"{where}: weight {int(r.weight.min())} outside the narrow int{bits} range "
                                   f"[-{wmax}, {wmax}]")
        elif op != OP_QUANT:
            raise WeightsError(f"{where}: unknown op {op}")
        if name in out.records:
            raise WeightsError(f"{where}: duplicate record name")
        out.records[name] = r
        at += size
    if at != total:
        raise WeightsError(f"{path}: {total - at} bytes after the last record")
    if "graph" in meta:
        out.graph  # checked as it is read: a file whose graph does not fit its records is refused here
    return out
