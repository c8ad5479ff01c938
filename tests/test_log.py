"""The log on its own: CRC-framed records, segments named by base offset, torn tails, readers."""
from __future__ import annotations

import os
import struct
import zlib

import pytest

from ingest.log import LogReader, LogWriter, list_segments, scan_segment
from ingest.record import CorruptRecord, Kind, frame_head, frames, kind_label


def items(n: int, start: int = 0, size: int = 100) -> list[tuple]:
    return [(Kind.TRIP if i % 2 else Kind.CRASH, 1_000 + i, "acme", f"k{i}", os.urandom(size))
            for i in range(start, start + n)]


def test_records_come_back_as_written_with_consecutive_offsets(tmp_path):
    w = LogWriter(tmp_path, 0)
    batch = items(10) + [(Kind.TRIP, 5, "t\u00e9am", "cl\u00e9 \u00e0 \U0001F600", b"")]
    assert w.append(batch[:4]) == 0 and w.append(batch[4:]) == 4
    w.close()
    got = LogReader(tmp_path, "p0").read(0)
    assert [r.offset for r in got] == list(range(11))
    assert [(r.kind, r.received_us, r.team, r.key, r.body) for r in got] == batch


def test_segments_are_named_by_their_base_offset(tmp_path):
    w = LogWriter(tmp_path, 0, segment_bytes=500)  # 4 records of ~150 bytes seal a segment
    for k in range(5):
        w.append(items(4, start=4 * k))
    w.close()
    segs = list_segments(tmp_path / "log" / "p0")
    assert [b for b, _ in segs][:5] == [0, 4, 8, 12, 16]
    assert all(p.name == f"{b:020d}.log" for b, p in segs)
    assert [r.offset for r in LogReader(tmp_path, "p0").read(6)] == list(range(6, 20))


@pytest.mark.parametrize("cut", [1, 7, 50])
def test_a_torn_tail_is_cut_at_the_last_whole_frame_and_kept_aside(tmp_path, cut):
    w = LogWriter(tmp_path, 0)
    w.append(items(3))
    w.close()
    (seg,) = [p for _, p in list_segments(tmp_path / "log" / "p0")]
    whole = seg.stat().st_size
    with open(seg, "ab") as f:
        f.write(os.urandom(cut))  # a frame that was being written when the machine stopped
    w = LogWriter(tmp_path, 0)
    assert w.recovery is not None and (w.recovery.kept_bytes, w.recovery.cut_bytes) == (whole, cut)
    assert (seg.parent / w.recovery.saved_as).stat().st_size == cut
    assert w.append(items(1, start=3)) == 3  # the next record follows the last whole one
    w.close()
    assert [r.offset for r in LogReader(tmp_path, "p0").read(0)] == [0, 1, 2, 3]


def test_a_flipped_byte_is_a_crc_error_naming_its_position(tmp_path):
    w = LogWriter(tmp_path, 0)
    w.append(items(3))
    w.close()
    (seg,) = [p for _, p in list_segments(tmp_path / "log" / "p0")]
    with open(seg, "rb") as f:
        ends = [end for _, end, _ in frames(f)]
    data = bytearray(seg.read_bytes())
    data[ends[0] + 30] ^= 0xFF  # inside the second frame
    seg.write_bytes(bytes(data))
    res = scan_segment(seg)
    assert res.records == 1 and res.good_bytes == ends[0] and f"byte {ends[0]}" in res.error
    with open(seg, "rb") as f, pytest.raises(CorruptRecord, match="CRC"):
        list(frames(f))


def test_skipped_frames_are_not_read(tmp_path):
    w = LogWriter(tmp_path, 0)
    w.append(items(6, size=10_000))
    w.close()
    (seg,) = [p for _, p in list_segments(tmp_path / "log" / "p0")]
    with open(seg, "rb") as f:
        got = [(r.offset if r else None) for _, _, r in frames(f, want=lambda off: off % 3 == 0)]
    assert got == [0, None, None, 3, None, None]


def test_a_second_writer_cannot_take_a_held_partition(tmp_path):
    from ingest.log import PartitionBusy
    w = LogWriter(tmp_path, 0)
    try:
        with pytest.raises(PartitionBusy):
            LogWriter(tmp_path, 0, wait=0.1)
    finally:
        w.close()


def _frame_by_hand(kind: int, offset: int, received_us: int, team: str, key: str, body: bytes) -> bytes:
    """A frame built from the layout documented in ingest/record.py, not from its code:
    ``<u32 length><u32 crc32(payload)><payload>``, the payload ``<u8 version><u8 kind><u64 offset>
    <i64 received_us><u16 team_len><u16 key_len><u8 flags>`` then team, key and body."""
    t, k = team.encode(), key.encode()
    payload = struct.pack("<BBQqHHB", 1, kind, offset, received_us, len(t), len(k), 0) + t + k + body
    return struct.pack("<II", len(payload), zlib.crc32(payload)) + payload


def test_frames_keep_the_documented_layout(tmp_path):
    """A log written before ``Kind`` existed (kinds as plain integers) reads back identically,
    and a record written with a ``Kind`` is the same bytes."""
    old = [(1, 7, 1_750_000_000_000_001, "acme", "itin-1", b'{"itinId":"itin-1"}'),
           (2, 8, -5, "t\u00e9am", "itin-1:TRIP_DELETION", b""),
           (3, 9, 0, "globex", "c1", b"\x00\xff"),
           (4, 10, 2**62, "acme", "driver:abc", b"{}")]
    seg = tmp_path / "00000000000000000007.log"
    seg.write_bytes(b"".join(_frame_by_hand(*it) for it in old))
    with open(seg, "rb") as f:
        got = [r for _, _, r in frames(f)]
    assert [(r.kind, r.offset, r.received_us, r.team, r.key, r.body, r.flags) for r in got] == \
        [(*it, 0) for it in old]
    assert [r.kind_name for r in got] == ["trip", "event", "crash", "diagnosis"]
    for (kind, offset, ts, team, key, body), member in zip(old, Kind):
        assert member == kind
        assert frame_head(member, offset, ts, team, key, body) + body == _frame_by_hand(kind, offset, ts, team, key, body)
    w = LogWriter(tmp_path / "new", 0)
    w.append([(Kind(kind), ts, team, key, body) for kind, _, ts, team, key, body in old])
    w.close()
    seg2 = tmp_path / "new" / "log" / "p0" / "00000000000000000000.log"
    assert seg2.read_bytes() == b"".join(_frame_by_hand(kind, n, ts, team, key, body)
                                          for n, (kind, _, ts, team, key, body) in enumerate(old))


def test_an_unknown_kind_is_read_and_named_by_its_number(tmp_path):
    seg = tmp_path / "00000000000000000000.log"
    seg.write_bytes(_frame_by_hand(9, 0, 1, "acme", "k", b"{}"))
    with open(seg, "rb") as f:
        [(_, _, r)] = list(frames(f))
    assert r.kind == 9 and r.kind_name == "9" and kind_label(9) is None
