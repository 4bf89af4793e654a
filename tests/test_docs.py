"""Every Python block in the README and docs runs as written (from the repository root, as the README's
commands do), in a scratch copy of the root so that its outputs (out/...) land in a temporary directory."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks():
    for doc in DOCS:
        text = doc.read_text()
        for match in BLOCK.finditer(text):
            line = text[:match.start()].count("\n") + 1
            yield pytest.param(match.group(1), id=f"{doc.relative_to(ROOT)}:{line}")


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: str(doc.relative_to(ROOT)))
def test_every_code_block_is_closed_and_names_its_language(doc):
    """A stray fence turns the rest of a page into code (it once hid the README's Layout section): fences pair
    up, and each opening one names its language, so an extra closing fence shows as an unnamed opening one."""
    lines = doc.read_text().splitlines()
    fences = [(number, line) for number, line in enumerate(lines, 1) if line.startswith("```")]
    assert len(fences) % 2 == 0, f"{doc.name}: an unclosed code block"
    unnamed = [number for number, line in fences[::2] if line.strip() == "```"]
    assert unnamed == [], f"{doc.name}: code blocks opened without a language at lines {unnamed}"


def test_the_docs_have_python_blocks():
    assert len(list(python_blocks())) >= 1


@pytest.mark.parametrize("source", list(python_blocks()))
def test_python_block_runs_as_written(source, tmp_path):
    for name in ("examples", "tests"):  # what the blocks read, from the scratch root
        (tmp_path / name).symlink_to(ROOT / name)
    result = subprocess.run([sys.executable, "-c", source], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
