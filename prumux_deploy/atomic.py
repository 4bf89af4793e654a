"""Atomic outputs: build a directory or a file in a temporary sibling, rename it into place when complete.

An interrupted or failed command (Ctrl-C, a parity failure, a full disk) leaves the target as it was:
absent, or the previous complete version. An existing target is replaced only with force (--force).
Every directory and file prumux-deploy writes goes through `atomic_dir` or `atomic_file`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from .errors import PruMuxError


def check_target(target: str | os.PathLike, force: bool) -> Path:
    """Refuse an output directory that exists (unless force) or is a file; call before long work."""
    target = Path(target)
    if target.exists() and not force:
        raise PruMuxError(f"{target} already exists; pass `force` to replace it")
    if target.exists() and not target.is_dir():
        raise PruMuxError(f"{target} exists and is not a directory; choose another output path")
    return target


def _default_permissions(root: Path) -> None:
    """mkdtemp (and some writers) create private files; give the output the usual umask permissions."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [root, *root.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, force: bool = False):
    """Yield a fresh temporary directory beside `target`; on success it replaces `target` atomically."""
    target = check_target(target, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        _default_permissions(tmp)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / "x")  # move the old version aside, then swap the new one in
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_file_target(target: str | os.PathLike, force: bool) -> Path:
    """Refuse an output file that exists (unless force) or is a directory; call before long work."""
    target = Path(target)
    if target.is_dir():
        raise PruMuxError(f"{target} is a directory; choose a file name")
    if target.exists() and not force:
        raise PruMuxError(f"{target} already exists; pass `force` to replace it")
    return target


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike, force: bool = False):
    """Yield a fresh temporary path beside `target` (same folder, so the rename is atomic; the caller creates
    it, with the usual umask permissions, unlike mkstemp's private ones); on success it replaces `target`."""
    target = check_file_target(target, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_file(target: str | os.PathLike, text: str, force: bool = False) -> Path:
    """Write `text` to `target` atomically (see atomic_file)."""
    with atomic_file(target, force) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)
