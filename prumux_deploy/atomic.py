"""Atomic outputs: build a directory or a file in a temporary sibling, rename it into place when complete.

An interrupted or failed command (Ctrl-C, a parity failure, a full disk) leaves the target as it was:
absent, or the previous complete version. An existing target is replaced only with force (--force).
Every directory and file prumux-deploy writes goes through `atomic_dir` or `atomic_file` (the model
directories of one Triton repository update together: `atomic_dirs`), and every command
checks its outputs with `check_target` / `check_file_target` (or `check_writable`) before its work starts, so
an output that cannot be created is refused in one line before minutes of compaction, training or timing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
import tempfile
import uuid
from pathlib import Path

from .errors import PruMuxError
from .resources import out_of_space, refuse_full_disk, tree_bytes


# What the OS says when a probe entry cannot be created, and what to do about it.
_PROBE_FIXES = {
    errno.EROFS: ("is on a read-only file system", "choose a location on a writable file system"),
    errno.ENOSPC: ("is on a full file system", "free space there or choose another location"),
    errno.EDQUOT: ("is over its disk quota", "free space there or choose another location"),
    errno.EACCES: ("does not let this process create entries", "choose a location you can write, or change its "
                                                               "permissions"),
    errno.EPERM: ("does not let this process create entries", "choose a location you can write, or change its "
                                                              "permissions"),
}


def check_writable(target: str | os.PathLike) -> Path:
    """Refuse an output `target` (a file or a directory, existing or not) that cannot be written where it is to
    go, without creating anything: the nearest existing ancestor of its parent must be a directory in which a
    new entry can be made (tried, by creating and removing a one-byte temporary file there, since permission
    bits do not tell: root ignores them, a read-only mount or a full disk does not show in them), and every
    name to be made (the missing parents, the target's temporary sibling) must fit that file system.

    Raises PruMuxError: `cannot write TARGET: WHAT (OS reason); FIX`, one line. Returns `target` as a Path."""
    target = Path(target)
    if os.path.islink(target) and not target.exists():  # found now, not when the finished output is renamed
        raise PruMuxError(f"cannot write {target}: it is a symbolic link to {os.readlink(target)}, which does not "
                          "exist; remove the link or choose another output path")
    folder = _nearest_existing(target.parent)
    if os.path.islink(folder) and not folder.exists():
        raise PruMuxError(f"cannot write {target}: {folder} is a symbolic link to {os.readlink(folder)}, which does "
                          "not exist; create its target or choose another output path")
    if not folder.is_dir():
        kind = "a file" if folder.is_file() else "not a directory"
        raise PruMuxError(f"cannot write {target}: {folder} is {kind}, so nothing can be created inside it; "
                          "choose an output path outside it")
    _check_name_lengths(target, folder)
    _probe(target, folder)
    return target


def _nearest_existing(folder: Path) -> Path:
    """`folder`, or the closest of its ancestors that exists (as a link too): where the first missing
    directory on the way to an output would be made."""
    while not os.path.lexists(folder) and folder.parent != folder:
        folder = folder.parent
    return folder


def _check_name_lengths(target: Path, folder: Path) -> None:
    """The missing parents and the writers' temporary siblings of `target` (`.NAME.tmp-PID-XXXXXXXX`, the
    longest of them) must fit the file system's name length, or they fail after the work is done."""
    try:
        longest = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return
    missing = [] if target.parent == folder else list(target.parent.relative_to(folder).parts)
    for name in missing:
        if len(name) > longest:
            shown = name if len(name) <= 40 else name[:37] + "..."
            raise PruMuxError(f"cannot write {target}: the directory name {shown} has {len(name)} characters, more "
                              f"than the {longest} the file system of {folder} allows; choose a shorter name")
    extra = len(f"..tmp-{os.getpid()}-{'0' * 8}")
    if len(target.name) + extra > longest:
        raise PruMuxError(f"cannot write {target}: its name has {len(target.name)} characters, more than the "
                          f"{longest - extra} that leave room for its temporary sibling on the file system of "
                          f"{folder}; choose a shorter name")


def _probe(target: Path, folder: Path) -> None:
    """Create, write one byte to and remove a temporary file in `folder`: the one test of writability that
    holds for root, read-only mounts, full disks and pseudo file systems (/proc, /sys) alike."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".prumux-write-check-", dir=folder)
    except OSError as e:
        _refuse_unwritable(target, folder, e)
    try:
        os.write(fd, b"\0")
    except OSError as e:
        _refuse_unwritable(target, folder, e)
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(probe)


def _refuse_unwritable(target: Path, folder: Path, error: OSError):
    what, fix = _PROBE_FIXES.get(error.errno, ("cannot hold new entries", "choose another output path"))
    reason = error.strerror or type(error).__name__
    raise PruMuxError(f"cannot write {target}: {folder} {what} ({reason}); {fix}") from None


def os_error_fix(error: OSError) -> str:
    """What to do about an OSError met while writing an output (a full disk, a lost permission), in the words
    of the checks above; a plain hint for any other."""
    return _PROBE_FIXES.get(error.errno, ("", "check that location and try again"))[1]


def _special_kind(target: Path) -> str | None:
    """What `target` is when it is neither a regular file nor a directory (a device, a FIFO, a socket: things
    no command writes, which `force` must never replace), else None."""
    try:
        mode = os.stat(target).st_mode
    except OSError:
        return None
    for test, kind in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return None


def _refuse_special(target: Path) -> None:
    kind = _special_kind(target)
    if kind is not None:
        raise PruMuxError(f"{target} is {kind}, not a file this command wrote; choose another path")


# what marks a directory as one prumux-deploy wrote (and `force` may replace): a checkpoint's config.json, an
# engine's manifest.json (each with our format name), a Triton model's config.pbtxt
_OUR_DIRECTORY_MARKS = (("config.json", '"prumux-checkpoint"'), ("manifest.json", '"prumux-engine"'),
                        ("config.pbtxt", None))


def _written_by_us(folder: Path) -> bool:
    """Whether `folder` is empty or is an output prumux-deploy writes (_OUR_DIRECTORY_MARKS)."""
    try:
        if not any(folder.iterdir()):
            return True
        for name, mark in _OUR_DIRECTORY_MARKS:
            file = folder / name
            if file.is_file() and (mark is None or mark in file.read_text(errors="replace")[:4096]):
                return True
    except OSError:
        return False
    return False


def check_target(target: str | os.PathLike, force: bool) -> Path:
    """Refuse an output directory that exists (unless force) or is a file, or that cannot be written where it
    is to go (check_writable, first: `force` would not help there); call before long work. Even with force, a
    device, FIFO or socket is never replaced, nor a directory that is not an output of ours (a checkpoint,
    an engine, a Triton model; or empty): `export CKPT ~ --force` must not delete a home directory."""
    target = check_writable(target)
    _refuse_special(target)
    # what `force` could not replace first, so that its advice never leads to a second refusal
    if target.exists() and not target.is_dir():
        raise PruMuxError(f"{target} exists and is not a directory; choose another output path")
    if target.is_dir() and not _written_by_us(target):
        raise PruMuxError(f"{target} is a directory this command did not write (no prumux-deploy checkpoint, engine "
                          "or Triton model in it), and `force` replaces only those; choose another path, or remove "
                          "it yourself")
    if target.exists() and not force:
        raise PruMuxError(f"{target} already exists; pass `force` to replace it")
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
        _swap_in(tmp, target, force)
    except BaseException as e:
        try:
            _refuse_full_disk(e, target, tmp)  # (measures tmp before it is removed, for the message)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


SWAP_TRIES = 20


def _swap_in(tmp: Path, target: Path, force: bool) -> None:
    """Rename `tmp` to `target`, replacing an existing target (force); on any failure or interrupt, `target` is
    its previous version again (_undo_swap)."""
    old = _old_dir(target)
    try:
        _swap_into(tmp, target, old, force)
    except BaseException:
        _undo_swap(tmp, target, old)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _old_dir(target: Path) -> Path:
    """A fresh `.NAME.old-*` directory beside `target`, where its previous version is kept during a swap."""
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))


def _swap_into(tmp: Path, target: Path, old: Path, force: bool) -> None:
    """Rename `tmp` to `target`, moving an existing target aside into `old` first (force). Other writers of the
    same target may swap theirs in between these steps (two `--force` runs at once): a step that finds the
    target gone or back is tried again, so the last writer wins and each leaves nothing behind. Without force,
    a target that appeared while this command worked is refused in one line (nothing replaced)."""
    for attempt in range(SWAP_TRIES):
        try:
            if os.path.lexists(target):
                if not force:
                    raise PruMuxError(f"{target} appeared while this command ran (another run writing it?); "
                                      "pass `force` to replace it, or choose another output path")
                os.replace(target, old / str(attempt))  # the old version aside, then the new one in
            os.replace(tmp, target)
            return
        except FileNotFoundError:  # another writer moved the target away first
            continue
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):  # (another writer swapped its own in)
                raise
    raise PruMuxError(f"{target}: other processes kept replacing it ({SWAP_TRIES} tries); run one writer at a "
                      "time")


def _undo_swap(tmp: Path, target: Path, old: Path) -> None:
    """Undo _swap_into(tmp, target, old), wherever it stopped: the new version (in place once `tmp` is gone,
    since only this writer renames it) out of the way into `old`, the version last moved aside back in, then
    `old` removed. A step that fails leaves `old` in place, holding the previous version, rather than lose it."""
    try:
        if not os.path.lexists(tmp) and os.path.lexists(target):
            os.replace(target, old / "new")
        kept = sorted((p for p in old.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
        if kept and not os.path.lexists(target):
            os.replace(kept[-1], target)
    except OSError:
        return
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dirs(targets: list[str | os.PathLike], force: bool = False):
    """Yield fresh temporary directories, one beside each of `targets` (all in one folder, e.g. the model
    directories of one Triton repository update); on success all of them replace their targets as one update:
    afterwards either every target is its new version or, after any failure or interrupt, every target is its
    previous version again (or absent, where there was none). See _swap_in_all."""
    targets = [check_target(t, force) for t in targets]
    folders = {t.parent for t in targets}
    if len(folders) != 1 or len(set(targets)) != len(targets):
        raise ValueError(f"atomic_dirs takes distinct targets in one folder, got {targets}")
    folder = folders.pop()
    folder.mkdir(parents=True, exist_ok=True)
    tmps: list[Path] = []
    try:
        for target in targets:
            tmps.append(Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=folder)))
        yield tmps
        for tmp in tmps:
            _default_permissions(tmp)
        _swap_in_all(list(zip(tmps, targets)), force, folder)
    finally:
        for tmp in tmps:  # renamed away on success; what is left is a failed update's
            shutil.rmtree(tmp, ignore_errors=True)


def _swap_in_all(pairs: list[tuple[Path, Path]], force: bool, folder: Path) -> None:
    """Swap each (tmp, target) in, in order (_swap_into), keeping every old version until all are in; on any
    failure or interrupt the ones already swapped, and the one under way, are undone last first (_undo_swap)
    before the error goes on. POSIX has no rename of several directories at once, so a SIGKILL or power loss
    during these few renames (microseconds) can still leave part of the update in, with the previous versions
    kept in `.NAME.old-*` beside them. Updates of one folder hold its lock (_folder_lock), so two of them at
    once (two `--force` runs) do not interleave: the last one in wins whole."""
    started: list[tuple[Path, Path, Path]] = []  # (tmp, target, the .NAME.old-* keeping its previous version)
    with _folder_lock(folder):
        try:
            for tmp, target in pairs:
                started.append((tmp, target, _old_dir(target)))
                _swap_into(tmp, target, started[-1][2], force)
        except BaseException:
            for tmp, target, old in reversed(started):
                _undo_swap(tmp, target, old)
            raise
    for _, _, old in started:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _folder_lock(folder: Path):
    """Hold an exclusive flock on `folder` itself (nothing is added to it: a Triton repository takes every
    entry for a model). Best effort: where the file system cannot lock a directory, go on without it."""
    fd = None
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        pass
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)


def check_file_target(target: str | os.PathLike, force: bool) -> Path:
    """Refuse an output file that exists (unless force) or is a directory, or that cannot be written where it
    is to go (check_writable, first: `force` would not help there); call before long work."""
    target = check_writable(target)
    _refuse_special(target)  # `--report /dev/null --force` must not replace the device with a file
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
    except BaseException as e:
        try:
            _refuse_full_disk(e, target, tmp)
        finally:
            tmp.unlink(missing_ok=True)
        raise


def _refuse_full_disk(error: BaseException, target: Path, partial: Path) -> None:
    """A write that failed for a full disk or quota (an OSError, or a library's wrapping of one: safetensors'
    "(os error 28)", torch's zip writer) as one line naming the output, the file system to free and what the
    partial output `partial` had written (measured only then); the target is untouched. Callers that know what
    the output needs say more (checkpoint, train state)."""
    if isinstance(error, Exception) and out_of_space(error, target.parent) is not None:
        refuse_full_disk(error, target, written=tree_bytes(partial))


def write_file(target: str | os.PathLike, text: str, force: bool = False) -> Path:
    """Write `text` to `target` atomically (see atomic_file)."""
    with atomic_file(target, force) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)
