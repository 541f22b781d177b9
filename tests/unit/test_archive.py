"""The archive writer streams records into a file that reads back exactly; a partial file
(reading failed, or a crash) never enters the manifest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from shared.errors import ConfigurationError
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


def _manifest_naming(directory: Path, file: str) -> None:
    """A manifest whose one entry names `file` (with that file's true checksum, if it exists)."""
    target = directory / file if not Path(file).is_absolute() else Path(file)
    digest = hashlib.sha256(target.read_bytes()).hexdigest() if target.exists() else "0" * 64
    entry = {
        "topic": "t",
        "partition": 2,
        "start": 0,
        "end": 5,
        "count": 5,
        "sha256": digest,
        "file": file,
        "created_at": "2025-01-01T00:00:00+00:00",
    }
    (directory / archive.MANIFEST).write_text(json.dumps({"entries": [entry]}))


@pytest.mark.parametrize("escape", ["absolute", "dotdot", "symlink"])
def test_a_manifest_naming_a_file_outside_the_archive_is_refused(
    tmp_path: Path, escape: str
) -> None:
    """A manifest entry with an absolute path, `..`, or a link out of the archive is refused
    with a clear error, and the file outside is never read."""
    outside = tmp_path / "outside"
    archive.write(outside, "t", 2, records(0, 5), 5)  # a well-formed archive file, elsewhere
    stolen = outside / "t" / "2" / "0-5.jsonl.gz"
    directory = tmp_path / "archive"
    directory.mkdir()
    if escape == "absolute":
        file = str(stolen)
    elif escape == "dotdot":
        file = "../outside/t/2/0-5.jsonl.gz"
    else:
        (directory / "t").mkdir()
        (directory / "t" / "2").symlink_to(outside / "t" / "2")
        file = "t/2/0-5.jsonl.gz"
    _manifest_naming(directory, file)
    with pytest.raises(ConfigurationError, match="archive") as refused:
        list(archive.read(directory, "t", 2))
    assert repr(file) in str(refused.value)
    with pytest.raises(ConfigurationError):
        archive.archived_end(directory, "t", 2)
