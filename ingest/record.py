"""CRC-framed log records.

Frame: ``<u32 length><u32 crc32(payload)><payload>``.
Payload: ``<u8 version><u8 kind><u64 offset><i64 received_us><u16 team_len><u16 key_len><u8 flags>``
then team, key and the raw body. The offset travels inside the record so a cleaned segment
(records removed) keeps every surviving record's identity, as in Kafka's compacted topics.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

VERSION = 1
FRAME = struct.Struct("<II")
HEAD = struct.Struct("<BBQqHHB")
FRAME_SIZE = FRAME.size
MAX_RECORD = 1 << 31

KIND_TRIP = 1
KIND_EVENT = 2
KIND_CRASH = 3
KIND_DIAGNOSIS = 4
KIND_NAMES = {KIND_TRIP: "trip", KIND_EVENT: "event", KIND_CRASH: "crash", KIND_DIAGNOSIS: "diagnosis"}


@dataclass(frozen=True, slots=True)
class Record:
    kind: int
    offset: int
    received_us: int
    team: str
    key: str
    body: bytes
    flags: int = 0

    @property
    def kind_name(self) -> str:
        return KIND_NAMES.get(self.kind, str(self.kind))


class CorruptRecord(Exception):
    """A frame whose CRC or layout does not check out."""


def encode(kind: int, offset: int, received_us: int, team: str, key: str, body: bytes, flags: int = 0) -> bytes:
    t = team.encode()
    k = key.encode()
    payload = b"".join((HEAD.pack(VERSION, kind, offset, received_us, len(t), len(k), flags), t, k, body))
    return FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def decode_payload(payload: bytes | memoryview) -> Record:
    version, kind, offset, received_us, tlen, klen, flags = HEAD.unpack_from(payload, 0)
    if version != VERSION:
        raise CorruptRecord(f"unknown record version {version}")
    p = HEAD.size
    team = bytes(payload[p:p + tlen]).decode()
    p += tlen
    key = bytes(payload[p:p + klen]).decode()
    p += klen
    return Record(kind, offset, received_us, team, key, bytes(payload[p:]), flags)


def check_frame(buf: bytes | memoryview, pos: int) -> tuple[int, int] | None:
    """Return (payload_start, payload_end) of a whole, CRC-valid frame at pos, None if the frame
    is incomplete; raise CorruptRecord if it is complete but wrong."""
    if len(buf) - pos < FRAME_SIZE:
        return None
    length, crc = FRAME.unpack_from(buf, pos)
    if length < HEAD.size or length > MAX_RECORD:
        raise CorruptRecord(f"impossible record length {length}")
    start = pos + FRAME_SIZE
    end = start + length
    if end > len(buf):
        return None
    if zlib.crc32(buf[start:end]) != crc:
        raise CorruptRecord("CRC mismatch")
    return start, end
