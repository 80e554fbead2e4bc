"""The repository stays readable by a newcomer: no machine's paths, a short README, no dead links.

Checks the tracked files only (``git ls-files``); skipped outside a git checkout.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README_MAX_LINES = 200

# A path that exists only on the machine where something was run: a home or root directory, a
# scratch tree, or a named file in the temp dir. Written so that this file does not match itself.
MACHINE_PATH = re.compile(r"/(work|home|root|tmp)/")
# A markdown link or image: [text](target) or ![alt](target), target without spaces.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.DOTALL | re.MULTILINE)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name


def tracked_files() -> list[Path]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    return [REPO / name for name in out.decode().split("\0") if name]


def text_of(path: Path) -> str | None:
    """The file's text, or None for binary files (and files deleted but not yet staged)."""
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return None
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def machine_paths(files: list[Path]) -> list[str]:
    """``file:line: text`` for every line of a tracked text file that names a machine's path."""
    found = []
    for path in files:
        text = text_of(path)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if MACHINE_PATH.search(line):
                found.append(f"{shown(path)}:{number}: {line.strip()}")
    return found


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors_of(markdown: str) -> set[str]:
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", FENCE.sub("", markdown), re.MULTILINE):
        base = github_anchor(heading)
        anchor, n = base, 0
        while anchor in anchors:
            n += 1
            anchor = f"{base}-{n}"
        anchors.add(anchor)
    return anchors


def broken_links(markdown_files: list[Path]) -> list[str]:
    """``file: target (why)`` for every relative link to a missing file or heading."""
    broken = []
    for page in markdown_files:
        text = INLINE_CODE.sub("", FENCE.sub("", page.read_text()))
        for target in LINK.findall(text):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = (page.parent / file_part).resolve() if file_part else page
            if not dest.exists():
                broken.append(f"{shown(page)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors_of(dest.read_text()):
                broken.append(f"{shown(page)}: {target} (no such heading)")
    return broken


def test_no_machine_specific_paths() -> None:
    found = machine_paths(tracked_files())
    assert not found, (
        "machine-specific paths (use a placeholder such as MODEL_DIR, or tmp_path in tests):\n" + "\n".join(found)
    )


def test_machine_path_check_catches_one(tmp_path: Path) -> None:
    (tmp_path / "x.md").write_text("run it on " + "/wo" + "rk/state/model\nthe OS temp dir is fine\n")
    assert len(machine_paths([tmp_path / "x.md"])) == 1


def test_readme_is_a_front_door() -> None:
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail to docs/"


def test_relative_links_in_readme_and_docs_resolve() -> None:
    pages = [REPO / "README.md", REPO / "bench" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = broken_links([p for p in pages if p.exists()])
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_link_check_catches_a_missing_file_and_heading(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Top\n\n## Two words\n\n[ok](#two-words) [ok](a.md#top)\n")
    (tmp_path / "b.md").write_text("[gone](missing.md) [gone](a.md#nowhere) [web](https://example.org/x)\n")
    assert broken_links([tmp_path / "a.md"]) == []
    assert broken_links([tmp_path / "b.md"]) == [
        "b.md: missing.md (no such file)",
        "b.md: a.md#nowhere (no such heading)",
    ]
