"""Resources the machine runs short of, named in one line: disk space while an output is saved, and memory
(an address-space limit, `ulimit -v`) while the libraries load or an engine opens.

The libraries underneath report these failures in their own words, none of which names the cause: torch's
zip writer says `[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598`, safetensors says
`I/O error: No space left on device (os error 28)`, ONNX Runtime and OpenVINO say `std::bad_alloc`, a shared
library that cannot be mapped is an ImportError, and a Rust thread pool that cannot start is a panic. Worse,
the OpenBLAS that numpy and scipy bundle spins forever when it cannot allocate its per-thread buffers at
start-up, so a tight limit can hang a command instead of failing it, and OpenVINO's read_model can segfault.
This module recognises each of them (`out_of_space`, `memory_failure`), words the one line (`refuse_full_disk`
for every save path: atomic.py, checkpoints, the training state; `not_enough_memory` for the runtimes;
`resource_message` for the command line's last resort), refuses what would crash rather than fail
(`require_address_space`), and, for the command line, refuses a limit too low to load the libraries and caps
the thread pools that reserve memory when they start (`prepare_for_address_limit`).

Nothing here imports numpy or torch: the command line calls it before they load.
"""

from __future__ import annotations

import errno
import os
import re
import resource
import shutil
from pathlib import Path

from .errors import PruMuxError

MB = 1 << 20

# --- disk space ----------------------------------------------------------------------------------------

_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
# Rust's io::Error (safetensors) ends its text with the errno: "... No space left on device (os error 28)"
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")
# torch's zip writer (PyTorchStreamWriter) when a write fails; its text carries no errno
_TORCH_WRITE_FAILED = re.compile(r"inline_container\.cc.*(unexpected pos|failed writing|file write failed)",
                                 re.DOTALL)


class DiskFullError(PruMuxError):
    """An output could not be saved because its file system is full or over quota; the previous version of
    the output is untouched. need: the bytes the save writes, when known."""

    def __init__(self, message: str, need: int | None = None):
        super().__init__(message)
        self.need = need


class NotEnoughMemoryError(PruMuxError, MemoryError):
    """Memory (or address space under `ulimit -v`) ran out; the input is not at fault. Also a MemoryError,
    which callers may already catch."""


def exception_chain(error: BaseException):
    """`error` and the exceptions it was raised from or while handling (a library's wrapper often hides the
    OSError that says what happened in __context__), each once."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def out_of_space(error: BaseException, where=None, need: int | None = None) -> str | None:
    """Why saving failed, when it is a full disk: "no space left on device" or "disk quota exceeded"; None for
    any other failure. Recognises OSError (ENOSPC, EDQUOT) anywhere in the exception chain and a Rust "(os error
    28)"; torch's zip-writer RuntimeError, whose text has no errno, counts when `where` (the file system
    written) has less than `need` bytes (or 1 MB) free, i.e. the write could not have fitted."""
    for e in exception_chain(error):
        if isinstance(e, OSError) and e.errno in _FULL:
            return _FULL[e.errno]
        match = _RUST_OS_ERROR.search(str(e))
        if match and int(match.group(1)) in _FULL:
            return _FULL[int(match.group(1))]
    if where is not None and any(_TORCH_WRITE_FAILED.search(str(e)) for e in exception_chain(error)):
        free = free_bytes(where)
        if free is not None and free < max(need or 0, MB):
            return _FULL[errno.ENOSPC]
    return None


def mount_point(path) -> Path:
    """The mount point of the file system `path` is (or would be) on: what a user frees space on."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path.parent != path:
        path = path.parent
    while not os.path.ismount(path) and path.parent != path:
        path = path.parent
    return path


def free_bytes(path) -> int | None:
    try:
        return shutil.disk_usage(mount_point(path)).free
    except OSError:
        return None


def size_text(size: int) -> str:
    return f"{size / MB:,.0f} MB" if size >= MB else f"{max(size, 0) / 1024:,.0f} KB"


def out_of_space_message(target, reason: str, need: int | None = None, rerun: str = "rerun",
                         written: int | None = None) -> str:
    """`TARGET: no space left on device while saving; free space on /mnt (3 MB free, need about 94 MB) and
    rerun`. need: the bytes the save writes, when known, else written: what it had written when the disk
    filled; rerun: what to do once space is freed."""
    mount = mount_point(target)
    free = free_bytes(mount)
    sizes = [f"{size_text(free)} free"] if free is not None else []
    if need:
        sizes.append(f"need about {size_text(need)}")
    elif written:
        sizes.append(f"it had written {size_text(written)} when the disk filled")
    shown = f" ({', '.join(sizes)})" if sizes else ""
    return f"{target}: {reason} while saving; free space on {mount}{shown} and {rerun}"


def rerun_hint(target) -> str:
    """What to do once space is freed: rerun, or, for the checkpoint of a training stage whose state is kept
    beside it (OUT.run, train/loop.run_dir), rerun with `resume`, which continues from that state."""
    if any(Path(f"{target}.run").glob("*_state.pt")):
        return "rerun with `resume` (the training state in OUT.run is kept)"
    return "rerun"


def refuse_full_disk(error: BaseException, target, need: int | None = None, written: int | None = None,
                     rerun: str | None = None) -> None:
    """DiskFullError (one line, out_of_space_message) naming `target` when `error` is a full disk or quota;
    nothing otherwise. A DiskFullError from a save nested inside this one (a checkpoint written into the
    temporary directory of a larger output) is named again for `target`, keeping what it needed."""
    reason = out_of_space(error, Path(target).parent, need)
    if reason is None:
        return
    need = need or getattr(error, "need", None)
    raise DiskFullError(out_of_space_message(target, reason, need, rerun or rerun_hint(target), written),
                        need) from error


def tensor_bytes(value) -> int:
    """The bytes of the tensors in a (nested) state: about the size of the file saving it writes."""
    if hasattr(value, "element_size") and hasattr(value, "nelement"):
        return value.element_size() * value.nelement()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0


def tree_bytes(folder) -> int:
    """What is written so far under `folder` (a partial output, a directory or a file): a lower bound of what
    the output needs."""
    if os.path.isfile(folder):
        return os.path.getsize(folder)
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


# --- memory --------------------------------------------------------------------------------------------

# Measured with torch 2.13 (CPU), onnxruntime 1.32, transformers 5.25, tokenizers 0.23 on x86-64 Linux, 2 cores:
# a process that imported them and loaded an engine's tokenizer (thread pools capped as below) peaks at 696 MB of
# address space (866 MB with OpenVINO 2026.4). From there to about 850 MB, `predict` of the shipped example
# sometimes answered and sometimes died where nothing can catch it (tokenizers' Rust allocator aborts the process:
# "memory allocation of 2162704 bytes failed"); from 860 MB every run answered. Below this, refuse at once.
LIBRARIES_NEED = 900 * MB
# Address space a command needs for its work beyond the libraries before thread pools are sized freely:
# `predict` of the shipped example needed 950 MB to 1 GB in all, OpenVINO engines 1.3 GB.
WORK_ROOM = 1024 * MB
SUGGESTED = 2048 * MB  # what the messages suggest: room for the libraries, the work and a few threads
# What one more thread of a pool reserves at start-up: its stack (8 MB), and for OpenBLAS a 32 MB buffer
# (measured: numpy's import grows by 41 MB per OpenBLAS thread), with room for per-thread arenas.
PER_THREAD = 64 * MB
# the thread pools that reserve memory when they start, and what caps each (only set where the user has not)
_BLAS_THREADS = ("OPENBLAS_NUM_THREADS",)             # numpy's and scipy's OpenBLAS: spins forever on failure
_COMPUTE_THREADS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # torch's intra-op pool (libgomp aborts on failure)


def address_space_limit() -> int | None:
    """The soft RLIMIT_AS (`ulimit -v`, `prlimit --as`) in bytes; None when unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY else soft


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _raise_limit(limit: int) -> str:
    suggested = max(SUGGESTED, 2 * limit)
    return (f"raise it to {size_text(suggested)} or more (ulimit -v {suggested // 1024}) or lift it "
            "(ulimit -v unlimited)")


def limit_text(limit: int | None) -> str:
    return "no address-space limit" if limit is None else f"address-space limit {size_text(limit)}, ulimit -v"


def prepare_for_address_limit(environ=None, limit: int | None = None, cores: int | None = None) -> dict:
    """For the command line, before numpy, torch and the runtimes load. Under an address-space limit too low
    to load them: PruMuxError naming the limit and the need. Under one too tight for a thread per core in
    each pool: sets conservative thread counts in `environ` (default os.environ; each only where the user has
    not set it): OpenBLAS 1 (numpy and scipy use it for nothing heavy here, and it hangs rather than fails when
    its buffers cannot be had), tokenizers without its thread pool, and torch's OpenMP / MKL pools to the threads
    the limit leaves room for. Returns what it set."""
    environ = os.environ if environ is None else environ
    limit = address_space_limit() if limit is None else limit
    if limit is None:
        return {}
    if limit < LIBRARIES_NEED:
        raise NotEnoughMemoryError(
            f"the address-space limit (ulimit -v) is {size_text(limit)}, below the about {size_text(LIBRARIES_NEED)} "
            f"prumux-deploy needs to load PyTorch, ONNX Runtime and transformers and start; {_raise_limit(limit)}")
    cores = cores or _cores()
    if limit >= LIBRARIES_NEED + WORK_ROOM + cores * PER_THREAD:
        return {}
    affordable = max(1, min(cores, (limit - LIBRARIES_NEED - WORK_ROOM) // PER_THREAD))
    wanted = {**{name: "1" for name in _BLAS_THREADS}, "TOKENIZERS_PARALLELISM": "false",
              **{name: str(affordable) for name in _COMPUTE_THREADS}}
    set_here = {name: value for name, value in wanted.items() if name not in environ}
    environ.update(set_here)
    return set_here


def address_space_used() -> int | None:
    """This process's address space now (VmSize), what RLIMIT_AS counts; None where /proc does not tell."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def require_address_space(need: int, doing: str) -> None:
    """Under an address-space limit, NotEnoughMemoryError unless `need` more bytes of it are left: for a
    library that crashes instead of failing when an allocation fails (OpenVINO's read_model segfaulted at 800
    MB), so it is not called at all."""
    limit, used = address_space_limit(), address_space_used()
    if limit is None or used is None or limit - used >= need:
        return
    left = max(limit - used, 0)
    raise NotEnoughMemoryError(f"not enough memory to {doing} ({limit_text(limit)}; {size_text(left)} of it left, "
                               f"it needs about {size_text(need)} more); {_raise_limit(limit)}")


# what the libraries say when an allocation fails (beside MemoryError and ENOMEM)
_ALLOCATION_FAILED = re.compile(r"bad_alloc|Failed to allocate|Cannot allocate memory|Unable to allocate|out of memory",
                                re.IGNORECASE)
# what counts as memory only where an address-space limit is set: a thread that could not start (its stack
# did not fit; elsewhere it may be a process limit) and a shared library that could not be mapped (elsewhere
# it may be a noexec mount)
_LIMIT_FAILED = re.compile(r"can't start new thread|ThreadPoolBuildError|Thread creation failed|pthread_create|"
                           r"failed to map segment from shared object", re.IGNORECASE)


def memory_failure(error: BaseException) -> bool:
    """Whether `error` (or one it was raised from) is an allocation that failed: MemoryError, ENOMEM, C++'s
    std::bad_alloc (ONNX Runtime, OpenVINO), "Failed to allocate N bytes of memory" (OpenVINO's CPU plugin);
    under an address-space limit also a thread that could not start or a library that could not be mapped."""
    limited = address_space_limit() is not None
    for e in exception_chain(error):
        if isinstance(e, NotEnoughMemoryError):
            return True
        if isinstance(e, PruMuxError):
            continue  # our own refusals say what they mean (a file too large is not memory running out)
        if isinstance(e, MemoryError) or (isinstance(e, OSError) and e.errno == errno.ENOMEM):
            return True
        text = f"{type(e).__name__}: {e}"
        if _ALLOCATION_FAILED.search(text) or (limited and _LIMIT_FAILED.search(text)):
            return True
    return False


def not_enough_memory(doing: str, error: BaseException | None = None) -> str:
    """`not enough memory to DOING (address-space limit 800 MB, ulimit -v; std::bad_alloc); FIX`."""
    limit = address_space_limit()
    said = ""
    if error is not None:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        said = next((line for line in lines if _ALLOCATION_FAILED.search(line) or _LIMIT_FAILED.search(line)),
                    lines[-1] if lines else "")
        said = f"; {said[:160]}" if said else f"; {type(error).__name__}"
    if limit is None:
        fix = "free memory (close other programs) or run it on a machine with more"
    else:  # the limit, not the machine, ran out
        fix = _raise_limit(limit)
    return f"not enough memory to {doing} ({limit_text(limit)}{said}); {fix}"


# --- the command line's last resort ----------------------------------------------------------------------

def resource_message(error: BaseException, doing: str, resumable: bool = False) -> str | None:
    """The one line for an error no library call turned into a PruMuxError, when it is a resource running out
    (a full disk, memory); None otherwise. doing: what ran out of memory ("run prumux-deploy predict");
    resumable: the command has a `resume` option, which is how to continue once space is freed."""
    rerun = "rerun with `resume`" if resumable else "rerun"
    reason = out_of_space(error)
    if reason:
        named = next((e.filename for e in exception_chain(error) if isinstance(e, OSError) and e.filename), None)
        if named:
            return out_of_space_message(named, reason, rerun=rerun)
        return f"{reason} while saving an output; free space on its file system and {rerun}"
    if memory_failure(error):
        return not_enough_memory(doing, error)
    return None
