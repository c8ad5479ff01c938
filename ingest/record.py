"""CRC-framed log records.

Frame: ``<u32 length><u32 crc32(payload)><payload>``.
Payload: ``<u8 version><u8 kind><u64 offset><i64 received_us><u16 team_len><u16 key_len><u8 flags>``
then team, key and the raw body. The offset travels inside the record so a cleaned segment
(records removed) keeps every surviving record's identity, as in Kafka's compacted topics.
"""
from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import BinaryIO

VERSION = 1
FRAME = struct.Struct("<II")
HEAD = struct.Struct("<BBQqHHB")
FRAME_SIZE = FRAME.size
MAX_RECORD = 1 << 31



class Kind(IntEnum):
    """What was pushed: the ``<u8 kind>`` of a record, and the ``kind`` column of the catalog.

    An ``int`` subclass, so it is written as the same byte into frames and as a plain INTEGER
    by sqlite3; records read back carry the plain int, which compares equal to its member."""
    TRIP = 1
    EVENT = 2
    CRASH = 3
    DIAGNOSIS = 4

    @property
    def label(self) -> str:
        """The lower-case name: trip, event, crash or diagnosis."""
        return self.name.lower()


def kind_label(kind: int) -> str | None:
    """The label of a kind, None for a kind this release does not know."""
    try:
        return Kind(kind).label
    except ValueError:
        return None


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
        return kind_label(self.kind) or str(self.kind)


class CorruptRecord(Exception):
    """A frame whose CRC or layout does not check out."""


def frame_head(kind: int, offset: int, received_us: int, team: str, key: str, body: bytes, flags: int = 0) -> bytes:
    """Everything of a record's frame but its body, which is written after it as it is: the
    writer hands both to one ``writev`` instead of copying a 170 KB body into a new frame."""
    t = team.encode()
    k = key.encode()
    head = b"".join((HEAD.pack(VERSION, kind, offset, received_us, len(t), len(k), flags), t, k))
    return FRAME.pack(len(head) + len(body), zlib.crc32(body, zlib.crc32(head))) + head


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


def frames(f: BinaryIO, pos: int = 0, want: Callable[[int], bool] | None = None
           ) -> Iterator[tuple[int, int, Record | None]]:
    """The frames of an open segment from byte ``pos``: (start, end, record).

    The one frame parser of the log. It stops at an incomplete frame (the end of what was
    written, or a torn tail: the caller decides which) and raises CorruptRecord, with the byte
    position, at a complete frame that is wrong. With ``want``, a record whose offset it
    rejects is skipped without reading or checking its body, and yielded as None."""
    f.seek(pos)
    size = os.fstat(f.fileno()).st_size if want is not None else 0  # to tell a skipped frame is whole
    while True:
        head = f.read(FRAME_SIZE + HEAD.size)
        if len(head) < FRAME_SIZE + HEAD.size:
            return
        length, crc = FRAME.unpack_from(head)
        if length < HEAD.size or length > MAX_RECORD:
            raise CorruptRecord(f"impossible record length {length} at byte {pos}")
        end = pos + FRAME_SIZE + length
        if want is not None and not want(HEAD.unpack_from(head, FRAME_SIZE)[2]):
            if end > size:
                return
            f.seek(end)
            yield pos, end, None
            pos = end
            continue
        payload = head[FRAME_SIZE:] + f.read(length - HEAD.size)
        if len(payload) < length:
            return
        if zlib.crc32(payload) != crc:
            raise CorruptRecord(f"CRC mismatch at byte {pos}")
        yield pos, end, decode_payload(payload)
        pos = end

