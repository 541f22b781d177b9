"""The repository stands alone: every link and every path its documents cite exists in it."""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`\s]+)`")
DOC_NAME = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[A-Z][A-Z_]*\.md)\b")


@cache
def tracked_files() -> tuple[str, ...]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return tuple(line for line in out.stdout.splitlines() if (ROOT / line).is_file())


def documents() -> list[Path]:
    return [ROOT / f for f in tracked_files() if f.endswith(".md")]


def top_level_names() -> set[str]:
    return {f.split("/", 1)[0] for f in tracked_files()}


def heading_anchors(markdown: Path) -> set[str]:
    """GitHub's anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for line in markdown.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title)))
    return anchors


def ignored_by_git(relative: str) -> bool:
    """A generated path (a results file, a cache) is cited without being in the clone."""
    probe = ["git", "check-ignore", "-q", relative]
    return subprocess.run(probe, cwd=ROOT, check=False).returncode == 0


def link_problems(doc: Path) -> list[str]:
    problems = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.is_relative_to(ROOT):
            problems.append(f"{doc.relative_to(ROOT)}: link {target!r} leaves the repository")
        elif not file.exists():
            problems.append(f"{doc.relative_to(ROOT)}: link {target!r} does not exist")
        elif anchor and file.suffix == ".md" and anchor not in heading_anchors(file):
            problems.append(f"{doc.relative_to(ROOT)}: link {target!r} names no heading")
    return problems


def cited_path_problems(doc: Path) -> list[str]:
    """A code span that names a path of this tree (its first part is a top-level entry) must
    exist; `*` globs are allowed, placeholders (`<partition>`) and URLs are not paths."""
    problems = []
    tops = top_level_names()
    for span in CODE_SPAN.findall(doc.read_text()):
        if "/" not in span or re.search(r"[<>:=~$]|\.\.\.", span) or span.startswith("/"):
            continue
        relative = span.removeprefix("./").rstrip("/")
        if relative.startswith("../"):
            problems.append(f"{doc.relative_to(ROOT)}: cites {span!r}, outside the repository")
        elif (
            relative.split("/", 1)[0] in tops
            and not any(ROOT.glob(relative))
            and not ignored_by_git(relative)
        ):
            problems.append(f"{doc.relative_to(ROOT)}: cites {span!r}, which does not exist")
    return problems


def outside_document_problems() -> list[str]:
    """Any file may name a document (`README.md`, `docs/containers.md`); it must be one of the
    repository's. A name of a document kept elsewhere (a team's notes) means nothing to a user."""
    names = {Path(f).name for f in tracked_files()}
    problems = []
    for f in tracked_files():
        if ROOT / f == Path(__file__).resolve():
            continue  # its own probes name missing documents on purpose
        try:
            text = (ROOT / f).read_text()
        except UnicodeDecodeError:
            continue
        for cited in set(DOC_NAME.findall(text)):
            exists = (ROOT / cited).exists() or (ROOT / f).parent.joinpath(cited).exists()
            if ("/" in cited and not exists) or ("/" not in cited and cited not in names):
                problems.append(f"{f}: names {cited!r}, which is not in the repository")
    return problems


def test_every_markdown_link_resolves_inside_the_repository() -> None:
    """Each relative link of every tracked Markdown file points at a file of the repository
    (and, with #anchor, at one of its headings)."""
    problems = [p for doc in documents() for p in link_problems(doc)]
    assert problems == []


def test_every_path_cited_in_the_documents_exists() -> None:
    """A path of this tree written in a document (`containers/tier.sh`) exists in a clone."""
    problems = [p for doc in documents() for p in cited_path_problems(doc)]
    assert problems == []


def test_no_file_names_a_document_outside_the_repository() -> None:
    """README, scripts, Dockerfile and code cite only documents that ship with the project."""
    assert outside_document_problems() == []


def test_the_checks_catch_a_missing_link_a_missing_path_and_an_outside_document(
    tmp_path: Path,
) -> None:
    """The three checks above report what they exist to catch (a guard against a regex that
    silently matches nothing)."""
    doc = ROOT / "docs" / f"_probe_{tmp_path.name}.md"
    doc.write_text(
        "See [the guide](missing.md), [ok](containers.md),\n"
        "[heading](../README.md#no-such-heading),\n"
        "`containers/no-such-script.sh`, `../elsewhere/NOTES.md` and `shared/kafka`.\n"
    )
    try:
        links = link_problems(doc)
        paths = cited_path_problems(doc)
    finally:
        doc.unlink()
    assert [p.split(": ", 1)[1] for p in links] == [
        "link 'missing.md' does not exist",
        "link '../README.md#no-such-heading' names no heading",
    ]
    assert [p.split(": ", 1)[1] for p in paths] == [
        "cites 'containers/no-such-script.sh', which does not exist",
        "cites '../elsewhere/NOTES.md', outside the repository",
    ]
    assert DOC_NAME.findall("configured as in shared/CONTAINERS.md, and DESIGN.md") == [
        "shared/CONTAINERS.md",
        "DESIGN.md",
    ]
