"""The log on its own: CRC-framed records, segments named by base offset, torn tails, readers."""
from __future__ import annotations

import os

import pytest

from ingest.log import LogReader, LogWriter, list_segments, scan_segment
from ingest.record import KIND_CRASH, KIND_TRIP, CorruptRecord, frames


def items(n: int, start: int = 0, size: int = 100) -> list[tuple]:
    return [(KIND_TRIP if i % 2 else KIND_CRASH, 1_000 + i, "acme", f"k{i}", os.urandom(size))
            for i in range(start, start + n)]


def test_records_come_back_as_written_with_consecutive_offsets(tmp_path):
    w = LogWriter(tmp_path, 0)
    batch = items(10) + [(KIND_TRIP, 5, "t\u00e9am", "cl\u00e9 \u00e0 \U0001F600", b"")]
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
