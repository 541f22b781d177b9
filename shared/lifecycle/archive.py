"""The archive of pruned records: compressed JSON lines per (topic, partition, offset range),
and a manifest with the range, the count and the SHA-256 of each file.

    <dir>/manifest.json
    <dir>/<topic>/<partition>/<first offset>-<end offset>.jsonl.gz

One line per record: offset, timestamp, key and value (base64; values are JSON for this system's
topics, but the archive keeps bytes exactly), headers (base64). Readers verify the checksum.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from shared.errors import ConfigurationError
from shared.kafka.records import InboundRecord

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ArchiveEntry:
    topic: str
    partition: int
    start: int  # first offset in the file
    end: int  # offset after the last record in the file (the new log start)
    count: int
    sha256: str
    file: str  # relative to the archive directory
    created_at: str


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def _unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


def entries(directory: Path) -> list[ArchiveEntry]:
    """The manifest's entries; ConfigurationError if one names a file outside the archive."""
    path = directory / MANIFEST
    if not path.exists():
        return []
    found = [ArchiveEntry(**e) for e in json.loads(path.read_text())["entries"]]
    for entry in found:
        entry_path(directory, entry)
    return found


def entry_path(directory: Path, entry: ArchiveEntry) -> Path:
    """Where the file of `entry` is: always inside `directory`. A manifest is data, possibly
    edited or copied from elsewhere; a file named by an absolute path, with `..`, or through a
    symbolic link that leads out of the archive is refused, never followed."""
    rel = PurePosixPath(entry.file)
    if not entry.file or rel.is_absolute() or ".." in rel.parts or "\\" in entry.file:
        raise ConfigurationError(
            f"archive manifest {directory / MANIFEST} names the file {entry.file!r}: files must "
            "be relative paths inside the archive directory (no absolute path, no '..')"
        )
    path = directory / rel
    root = directory.resolve()
    if not path.resolve().is_relative_to(root):
        raise ConfigurationError(
            f"archive manifest {directory / MANIFEST} names the file {entry.file!r}, which "
            f"leads out of the archive directory {root} (a symbolic link)"
        )
    return path


class ArchiveWriter:
    """Streams the records of one (topic, partition) range into an archive file: `add` batches
    as they are read (memory stays flat whatever the range), then `finish(end)` names the file
    after its offset range and adds it to the manifest — only then, so a crash leaves a partial
    file that the manifest ignores."""

    def __init__(self, directory: Path, topic: str, partition: int) -> None:
        self.directory, self.topic, self.partition = directory, topic, partition
        self._dir = directory / topic / str(partition)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._tmp = self._dir / "partial.jsonl.gz.tmp"
        self._out = gzip.open(self._tmp, "wt", encoding="utf-8")  # noqa: SIM115
        self.start: int | None = None
        self.count = 0

    def add(self, records: Iterable[InboundRecord]) -> None:
        for r in records:
            if self.start is None:
                self.start = r.offset
            line = {
                "offset": r.offset,
                "timestamp_ms": r.timestamp_ms,
                "key": _b64(r.key),
                "value": _b64(r.value),
                "headers": [[k, _b64(v)] for k, v in r.headers],
            }
            self._out.write(json.dumps(line, separators=(",", ":")) + "\n")
            self.count += 1

    def abort(self) -> None:
        """Drop the partial file (reading failed): nothing enters the manifest."""
        self._out.close()
        self._tmp.unlink(missing_ok=True)

    def finish(self, end: int) -> ArchiveEntry:
        """Close the file (all records added were below `end`) and record it in the manifest."""
        self._out.close()
        start = end if self.start is None else self.start
        rel = Path(self.topic) / str(self.partition) / f"{start}-{end}.jsonl.gz"
        self._tmp.replace(self.directory / rel)
        digest = hashlib.sha256()
        with (self.directory / rel).open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        entry = ArchiveEntry(
            topic=self.topic,
            partition=self.partition,
            start=start,
            end=end,
            count=self.count,
            sha256=digest.hexdigest(),
            file=str(rel),
            created_at=datetime.now(UTC).isoformat(),
        )
        known = [e for e in entries(self.directory) if e.file != entry.file]
        tmp = self.directory / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps({"entries": [asdict(e) for e in [*known, entry]]}, indent=2))
        tmp.replace(self.directory / MANIFEST)
        return entry


def write(
    directory: Path, topic: str, partition: int, records: Iterable[InboundRecord], end: int
) -> ArchiveEntry:
    """Write one archive file for `records` (offsets ascending, all below `end`)."""
    writer = ArchiveWriter(directory, topic, partition)
    writer.add(records)
    return writer.finish(end)


def read(directory: Path, topic: str, partition: int) -> Iterator[InboundRecord]:
    """Every archived record of (topic, partition), in offset order, checksums verified."""
    for entry in sorted(
        (e for e in entries(directory) if e.topic == topic and e.partition == partition),
        key=lambda e: e.start,
    ):
        path = entry_path(directory, entry)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != entry.sha256:
            raise ConfigurationError(
                f"archive file {path} does not match its manifest checksum "
                f"({digest} != {entry.sha256}): it was changed or is incomplete"
            )
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            for line in lines:
                obj = json.loads(line)
                yield InboundRecord(
                    topic,
                    partition,
                    int(obj["offset"]),
                    _unb64(obj["key"]),
                    _unb64(obj["value"]),
                    [(k, _unb64(v) or b"") for k, v in obj["headers"]],
                    int(obj.get("timestamp_ms") or 0),
                )


def archived_end(directory: Path, topic: str, partition: int) -> int:
    """The offset after the last archived record of (topic, partition); 0 if none."""
    return max(
        (e.end for e in entries(directory) if e.topic == topic and e.partition == partition),
        default=0,
    )
