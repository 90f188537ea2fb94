"""The repository's results/ stays small (issue 17: tables, not run copies; at most 80 tracked
files), and a version folder that left the tree is cited with a pointer into git history."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Issue 17's "Done when": results/ tracks <= 80 files.
MAX_RESULTS_FILES = 80
#: A version folder written by bench.sweep: results/<dataset>[/<sub>]/<YYYY-MM-DD>_<sha>[-dirty][-N].
VERSION_FOLDER = re.compile(r"results/(?:[\w.-]+/)+?\d{4}-\d{2}-\d{2}_[0-9a-f]{7,}(?:-dirty)?(?:-\d+)?(?=[/`)\s,;]|$)")
#: How far from a citation its ``git show <sha>:<path>`` pointer may stand.
POINTER_WINDOW = 250


def _tracked(path: str) -> list[str]:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    done = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--", path],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"not a git checkout: {done.stderr.strip()}")
    return [p for p in done.stdout.split("\0") if p]


def test_results_tracks_at_most_80_files():
    tracked = _tracked("results")
    assert tracked, "git ls-files results lists nothing: results/ should hold the version folders"
    assert len(tracked) <= MAX_RESULTS_FILES, (
        f"results/ tracks {len(tracked)} files (at most {MAX_RESULTS_FILES}, issue 17): drop superseded "
        "version folders or run copies and cite them as `git show <sha>:<path>` (docs/measurements.md)")


def missing_folder_citations(text: str, root: Path) -> list[str]:
    """The version folders ``text`` cites that are not under ``root`` and have no ``git show``
    pointer within POINTER_WINDOW characters of the citation."""
    out = []
    for m in VERSION_FOLDER.finditer(text):
        if (root / m.group(0)).is_dir():
            continue
        near = text[max(0, m.start() - POINTER_WINDOW):m.end() + POINTER_WINDOW]
        if "git show" not in near:
            out.append(m.group(0))
    return out


def test_missing_folder_citation_is_found(tmp_path):
    (tmp_path / "results" / "toy" / "2026-12-03_b0e22d2").mkdir(parents=True)
    text = ("kept: `results/toy/2026-12-03_b0e22d2/summary.md`; gone: `results/toy/2026-11-29_4906c84/`;\n"
            + "x" * (POINTER_WINDOW + 10) + "\nfine: results/toy/2026-11-28_8360919-dirty/ "
            "(`git show bd3e538:results/toy/2026-11-28_8360919-dirty/summary.md`)")
    assert missing_folder_citations(text, tmp_path) == ["results/toy/2026-11-29_4906c84"]


def test_docs_cite_dropped_version_folders_through_git_history():
    """A version folder cited in README.md or docs/ is in the tree or comes with its
    ``git show <sha>:<path>`` pointer."""
    found = {}
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        bad = missing_folder_citations(path.read_text(), ROOT)
        if bad:
            found[path.name] = bad
    assert not found, f"version folders cited without a `git show <sha>:<path>` pointer: {found}"
