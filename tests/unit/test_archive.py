"""The archive writer streams records into a file that reads back exactly; a partial file
(reading failed, or a crash) never enters the manifest."""

from __future__ import annotations

import hashlib
from pathlib import Path

from shared.kafka.records import InboundRecord
from shared.lifecycle import archive


def records(start: int, n: int) -> list[InboundRecord]:
    return [
        InboundRecord(
            "t", 2, o, f"k{o}".encode(), f'{{"n": {o}}}'.encode(), [("h", b"\x00\x01")], o
        )
        for o in range(start, start + n)
    ]


def test_batches_streamed_in_read_back_exactly_with_a_verified_checksum(tmp_path: Path) -> None:
    writer = archive.ArchiveWriter(tmp_path, "t", 2)
    for batch_start in range(10, 1010, 100):  # ten batches, as a partition read delivers them
        writer.add(records(batch_start, 100))
    entry = writer.finish(1012)  # e.g. a commit marker at 1010-1011
    assert (entry.start, entry.end, entry.count) == (10, 1012, 1000)
    assert entry.file == "t/2/10-1012.jsonl.gz"
    digest = hashlib.sha256((tmp_path / entry.file).read_bytes()).hexdigest()
    assert entry.sha256 == digest
    assert archive.entries(tmp_path) == [entry]
    back = list(archive.read(tmp_path, "t", 2))
    assert back == records(10, 1000)
    assert archive.archived_end(tmp_path, "t", 2) == 1012


def test_an_aborted_file_leaves_no_trace_and_the_manifest_untouched(tmp_path: Path) -> None:
    first = archive.write(tmp_path, "t", 2, records(0, 5), 5)
    writer = archive.ArchiveWriter(tmp_path, "t", 2)
    writer.add(records(5, 5))
    writer.abort()
    assert archive.entries(tmp_path) == [first]
    assert sorted(p.name for p in (tmp_path / "t" / "2").iterdir()) == ["0-5.jsonl.gz"]
