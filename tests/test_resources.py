"""Resources that run out, named in one line (issue 36): a full disk while a training state, a checkpoint or any
output is saved, and memory (an address-space limit, `ulimit -v`) while the libraries load or an engine opens.

The error texts fed to the classifiers below are the libraries' own, recorded here (torch 2.13, safetensors 0.8,
onnxruntime 1.32, OpenVINO 2026.4, tokenizers 0.23) from real failures: torch.save and safetensors onto a full
1 MB tmpfs, `prlimit --as` runs of `prumux-deploy predict`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import refused, run_cli
from prumux_deploy import resources
from prumux_deploy.errors import EngineError
from prumux_deploy.resources import DiskFullError, NotEnoughMemoryError
from prumux_deploy.train import loop

# torch.save's zip writer when a write fails: through a Python file object the OSError is its __context__;
# given a path, only "basic_ios::clear: iostream error" (no errno) is
TORCH_FULL = "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"
SAFETENSORS_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"


def _raised(make):
    try:
        make()
    except BaseException as e:  # noqa: BLE001 - the exception as the library leaves it, chain included
        return e
    raise AssertionError("nothing raised")


def _enospc(code=errno.ENOSPC):
    raise OSError(code, os.strerror(code))


def _torch_full_via_file(code=errno.ENOSPC):
    try:
        _enospc(code)
    except OSError:
        raise RuntimeError(TORCH_FULL)  # noqa: B904 - the chain torch leaves: the OSError as __context__


def _torch_full_via_path():
    try:
        raise RuntimeError("basic_ios::clear: iostream error")
    except RuntimeError:
        raise RuntimeError(TORCH_FULL)  # noqa: B904


def _digests(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --- a full disk: the classifier -----------------------------------------------------------------------

@pytest.mark.parametrize("make, reason", [
    (lambda: _enospc(), "no space left on device"),
    (lambda: _enospc(errno.EDQUOT), "disk quota exceeded"),
    (lambda: _torch_full_via_file(), "no space left on device"),
    (lambda: _torch_full_via_file(errno.EDQUOT), "disk quota exceeded"),
    (lambda: (_ for _ in ()).throw(Exception(SAFETENSORS_FULL)), "no space left on device"),
    (lambda: (_ for _ in ()).throw(Exception("I/O error: Disk quota exceeded (os error 122)")), "disk quota exceeded"),
])
def test_full_disk_is_recognised_in_each_library_s_words(make, reason):
    assert resources.out_of_space(_raised(make)) == reason


def test_torch_s_errno_less_writer_failure_counts_only_where_the_disk_cannot_hold_the_file(tmp_path, monkeypatch):
    """Given a path, torch's error names no cause: a full disk only where the file system has less free than
    the save needs; elsewhere it stays what it is (a disk error, a bug), not a full disk."""
    error = _raised(_torch_full_via_path)
    assert resources.out_of_space(error) is None
    assert resources.out_of_space(error, tmp_path, need=1 << 20) is None  # (the test's disk has a megabyte)
    monkeypatch.setattr(resources, "free_bytes", lambda where: 4096)
    assert resources.out_of_space(error, tmp_path, need=1 << 20) == "no space left on device"
    assert resources.out_of_space(_raised(lambda: _enospc(errno.EIO)), tmp_path) is None


# --- a full disk: the training state --------------------------------------------------------------------

def _saved_state(tmp_path) -> loop.RunState:
    run = loop.RunState(tmp_path / "OUT.run", "finetune")
    run.save(1, {"model": torch.nn.Linear(8, 8)})
    return run


@pytest.mark.parametrize("failure", ["oserror", "torch-via-file", "torch-via-path", "quota"])
def test_a_full_disk_while_saving_the_train_state_is_one_line_and_keeps_the_previous_state(tmp_path, monkeypatch,
                                                                                          failure):
    """Was "unexpected RuntimeError: [enforce fail at inline_container.cc:672]". The state saved before stays
    byte for byte, with no temporary file beside it, so --resume continues from it."""
    run = _saved_state(tmp_path)
    before = _digests(run.out)

    def full_save(state, f, *args, **kwargs):
        with open(f, "wb") if isinstance(f, (str, os.PathLike)) else contextlib.nullcontext(f) as handle:
            handle.write(b"PK\x03\x04 partial")  # a part written before the disk filled
        if failure == "torch-via-path":
            monkeypatch.setattr(resources, "free_bytes", lambda where: 4096)
            _torch_full_via_path()
        {"oserror": _enospc, "torch-via-file": _torch_full_via_file, "quota": lambda: _enospc(errno.EDQUOT)}[failure]()

    monkeypatch.setattr(loop.torch, "save", full_save)
    with pytest.raises(DiskFullError) as caught:
        run.save(2, {"model": torch.nn.Linear(512, 512)})
    message = str(caught.value)
    reason = "disk quota exceeded" if failure == "quota" else "no space left on device"
    assert message.startswith(f"{run.file}: {reason} while saving; free space on {resources.mount_point(run.out)} (")
    assert "need about 1 MB" in message and message.endswith("rerun with `resume` (the state saved before is intact)")
    assert "\n" not in message
    assert _digests(run.out) == before


def test_a_train_state_that_does_not_fit_a_real_full_file_system(tmp_path, request):
    """The same with the real torch.save on a 1 MB tmpfs (where this process may mount one)."""
    where = tmp_path / "small"
    where.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)],
                                                       capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    request.addfinalizer(lambda: subprocess.run(["umount", "-l", str(where)], capture_output=True))
    run = _saved_state(where)
    before = _digests(run.out)
    with pytest.raises(DiskFullError, match=r"train_state.pt: no space left on device while saving; free space on "
                                            rf"{where} \(.* free, need about 4 MB\) and rerun with `resume`"):
        run.save(2, {"model": torch.nn.Linear(1000, 1000)})
    assert _digests(run.out) == before


def test_train_cli_on_a_full_disk_says_so_and_resumes(tmp_path, bert_dir, glue_dir, monkeypatch):
    """`train finetune`: the second save fails as torch fails on a full disk; one line naming the state file,
    the file system and --resume (exit 2); the rerun with --resume continues from the first save's step."""
    real_save, saves = torch.save, []

    def fills_up(state, f, *args, **kwargs):
        saves.append(state["step"])
        if len(saves) == 2:
            _torch_full_via_file()
        real_save(state, f, *args, **kwargs)

    out = tmp_path / "out"
    args = ["train", "finetune", out, "--init", bert_dir, "--data", glue_dir, "--instances", 2, "--epochs", 1,
            "--batch-size", 8, "--lr", 1e-3, "--max-seq-length", 12, "--eval-every", 4, "--save-every", 3,
            "--seed", 0]
    monkeypatch.setattr(loop.torch, "save", fills_up)
    result = run_cli(*args)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    errors = result.output.split("error: ")[1:]  # (after the progress bar's carriage returns, on its line)
    assert len(errors) == 1, result.output
    line = errors[0].splitlines()[0]
    assert line.startswith(f"{loop.run_dir(out)}/train_state.pt: no space left on device while saving; free space on")
    assert line.endswith("need about 505 KB) and rerun with --resume (the state saved before is intact)")
    assert not out.exists()
    assert torch.load(loop.run_dir(out) / "train_state.pt", weights_only=True)["step"] == 3
    monkeypatch.setattr(loop.torch, "save", real_save)
    result = run_cli(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").is_file()


def test_a_full_disk_while_a_stage_writes_its_checkpoint_names_out_and_resumes(tmp_path, bert_dir, glue_dir,
                                                                              monkeypatch):
    """The stage's checkpoint is written inside OUT's temporary directory: the line names OUT (not the
    temporary path), the space the weights need, and --resume, which then only writes OUT."""
    from safetensors import SafetensorError

    from prumux_deploy import checkpoint

    def full(tensors, filename, metadata=None):
        raise SafetensorError(SAFETENSORS_FULL)

    out = tmp_path / "out"
    args = ["train", "finetune", out, "--init", bert_dir, "--data", glue_dir, "--instances", 2, "--epochs", 1,
            "--batch-size", 8, "--lr", 1e-3, "--max-seq-length", 12, "--eval-every", 4, "--save-every", 3]
    monkeypatch.setattr(checkpoint, "save_file", full)
    result = run_cli(*args)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    line = result.output.split("error: ")[-1].splitlines()[0]
    assert line.startswith(f"{out}: no space left on device while saving; free space on "), line
    assert "need about" in line and line.endswith("and rerun with --resume (the training state in OUT.run is kept)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SST-2", "out.run"]  # no OUT, no temporary directory
    monkeypatch.undo()
    result = run_cli(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").is_file()


# --- a full disk: checkpoints and other outputs --------------------------------------------------------

def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_keeps_the_previous_one(tmp_path, bert_dir,
                                                                                     monkeypatch):
    """safetensors' "I/O error: No space left on device (os error 28)" was "unexpected SafetensorError"."""
    from safetensors import SafetensorError

    from prumux_deploy import checkpoint

    out = tmp_path / "model"
    init = ["init", out, "--base", bert_dir, "--instances", 2, "--task", "sst2"]
    assert run_cli(*init).exit_code == 0
    before = _digests(out)

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise SafetensorError(SAFETENSORS_FULL)

    monkeypatch.setattr(checkpoint, "save_file", full)
    line = refused(run_cli(*init, "--force"), 2, f"{out}: no space left on device while saving; free space on ")
    assert "need about" in line and line.endswith("and rerun")
    assert _digests(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary directory left


def test_any_output_on_a_full_disk_names_the_output(tmp_path, monkeypatch):
    """Reports, CSVs, plots (atomic_file, atomic_dir): one line naming the output and its file system."""
    from prumux_deploy.atomic import atomic_dir, write_file

    target = tmp_path / "report.json"
    target.write_text("{}")
    monkeypatch.setattr(Path, "write_text", lambda self, *a, **k: _enospc())
    with pytest.raises(DiskFullError, match=rf"^{target}: no space left on device while saving; free space on "):
        write_file(target, "{}\n", force=True)
    assert target.read_text() == "{}" and [p.name for p in tmp_path.iterdir()] == ["report.json"]
    with pytest.raises(DiskFullError, match=r"engine: no space left on device while saving; .* it had written 5 "
                                            r"KB when the disk filled\) and rerun$"):
        with atomic_dir(tmp_path / "engine") as tmp:
            (tmp / "model.onnx").write_bytes(b"\0" * 5120)
            _enospc()


def test_the_command_line_names_a_full_disk_no_library_call_did(tmp_path, monkeypatch):
    """The last resort (commands/_group.py): an ENOSPC from any write is one line naming the file."""
    import click

    from prumux_deploy.commands._group import CommandGroup

    @click.group(cls=CommandGroup)
    def group():
        pass

    @group.command()
    @click.option("--resume", is_flag=True)
    def write(resume):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "scores.jsonl"))

    from click.testing import CliRunner

    result = CliRunner().invoke(group, ["write"])
    refused(result, 2, f"{tmp_path}/scores.jsonl: no space left on device while saving; free space on ")
    assert result.output.rstrip().endswith("and rerun with --resume")


# --- memory: the classifier ----------------------------------------------------------------------------

class PanicException(BaseException):
    """As pyo3 names a Rust panic (tokenizers' thread pool); a BaseException, not an Exception."""


ORT_BAD_ALLOC = "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Exception during initialization: std::bad_alloc"
ORT_LOAD_BAD_ALLOC = "[ONNXRuntimeError] : 1 : FAIL : Load model from /e/model.onnx failed:std::bad_alloc"
OPENVINO_BAD_ALLOC = ("Exception from src/inference/src/cpp/core.cpp:117:\nException from "
                      "src/inference/src/dev/plugin.cpp:54:\nstd::bad_alloc\n")
OPENVINO_INFER = ("Exception from src/inference/src/cpp/infer_request.cpp:224:\nException from "
                  "src/plugins/intel_cpu/src/node.cpp:823:\n[CPU] FullyConnected node with name 'Add_2118' Check 'ptr' "
                  "failed at src/plugins/intel_cpu/src/cpu_memory.cpp:257:\nFailed to allocate 2260992 bytes of memory\n")
TOKENIZERS_POOL = ("The global thread pool has not been initialized.: ThreadPoolBuildError { kind: IOError(Os { code: "
                   "11, kind: WouldBlock, message: \"Resource temporarily unavailable\" }) }")
MAP_FAILED = ("/venv/lib/python3.11/site-packages/tokenizers/tokenizers.abi3.so: failed to map segment from shared "
              "object")
ORT_BAD_GRAPH = "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from /e/model.onnx failed:Protobuf parsing failed."


@pytest.mark.parametrize("error, limited, expected", [
    (RuntimeError(ORT_BAD_ALLOC), False, True),
    (RuntimeError(ORT_LOAD_BAD_ALLOC), False, True),
    (RuntimeError(OPENVINO_BAD_ALLOC), False, True),
    (RuntimeError(OPENVINO_INFER), False, True),
    (MemoryError(), False, True),
    (OSError(errno.ENOMEM, os.strerror(errno.ENOMEM)), False, True),
    (PanicException(TOKENIZERS_POOL), True, True),
    (ImportError(MAP_FAILED), True, True),
    (RuntimeError("can't start new thread"), True, True),
    # without an address-space limit these have other causes (a process limit, a noexec mount)
    (PanicException(TOKENIZERS_POOL), False, False),
    (ImportError(MAP_FAILED), False, False),
    (RuntimeError(ORT_BAD_GRAPH), True, False),
    (RuntimeError("Exception from src/inference/src/cpp/core.cpp:117:\n[ERROR] Cannot read the model"), True, False),
    (EngineError("model.onnx: the graph holds 1e9 rows, more than memory"), True, False),
])
def test_memory_failures_are_told_from_damaged_files(error, limited, expected, monkeypatch):
    monkeypatch.setattr(resources, "address_space_limit", lambda: 800 << 20 if limited else None)
    assert resources.memory_failure(error) is expected


def test_the_memory_line_names_the_limit_the_failure_and_the_fix(monkeypatch):
    monkeypatch.setattr(resources, "address_space_limit", lambda: 800 << 20)
    line = resources.not_enough_memory("open /e/model.onnx with OpenVINO", RuntimeError(OPENVINO_BAD_ALLOC))
    assert line == ("not enough memory to open /e/model.onnx with OpenVINO (address-space limit 800 MB, ulimit -v; "
                    "std::bad_alloc); raise it to 2,048 MB or more (ulimit -v 2097152) or lift it (ulimit -v unlimited)")
    monkeypatch.setattr(resources, "address_space_limit", lambda: None)
    assert resources.not_enough_memory("run x", MemoryError()).endswith(
        "(no address-space limit; MemoryError); free memory (close other programs) or run it on a machine with more")


# --- memory: opening an engine -------------------------------------------------------------------------

def test_onnx_runtime_out_of_memory_is_not_a_damaged_engine(engine_dir, monkeypatch):
    """Was `ENGINE/model.onnx: ONNX Runtime cannot load it (... std::bad_alloc)`: the file blamed."""
    import onnxruntime as ort

    from prumux_deploy.runtime_onnxruntime import ort_session

    def session(path, *args, **kwargs):
        raise ort.capi.onnxruntime_pybind11_state.RuntimeException(ORT_BAD_ALLOC)

    monkeypatch.setattr(ort, "InferenceSession", session)
    monkeypatch.setattr(resources, "address_space_limit", lambda: 900 << 20)
    graph = engine_dir / "model.onnx"
    with pytest.raises(NotEnoughMemoryError, match=rf"^not enough memory to open {graph} with ONNX Runtime "
                                                   r"\(address-space limit 900 MB, ulimit -v; .*std::bad_alloc\); raise"):
        ort_session(graph)
    line = refused(run_cli("predict", engine_dir, "a fine film"), 2, "not enough memory to open")  # (an ONNX
    assert "cannot load it" not in line  # Runtime engine: export's default runtime)

    def bad_graph(path, *args, **kwargs):
        raise ort.capi.onnxruntime_pybind11_state.InvalidProtobuf(ORT_BAD_GRAPH)

    monkeypatch.setattr(ort, "InferenceSession", bad_graph)
    with pytest.raises(EngineError, match="ONNX Runtime cannot load it"):
        ort_session(graph)


def test_openvino_out_of_memory_is_not_a_damaged_engine(engine_dir, monkeypatch):
    """Was `ENGINE/model.onnx: OpenVINO cannot compile it (Exception from src/inference/src/cpp/core.cpp:117:)`;
    and short of the address space its read_model needs, it is not called at all (it segfaulted at 800 MB)."""
    openvino = pytest.importorskip("openvino")
    from prumux_deploy import runtime_openvino

    class Core:
        def read_model(self, path):
            raise RuntimeError(OPENVINO_BAD_ALLOC)

        def compile_model(self, model, device, config):
            return model

    monkeypatch.setattr(openvino, "Core", Core)
    graph = engine_dir / "model.onnx"
    with pytest.raises(NotEnoughMemoryError, match=rf"^not enough memory to open {graph} with OpenVINO \(.*std::bad_alloc"):
        runtime_openvino.compile_cpu(graph, "f32")
    monkeypatch.setattr(resources, "address_space_limit", lambda: resources.address_space_used() + (1 << 20))
    with pytest.raises(NotEnoughMemoryError, match=r"with OpenVINO \(address-space limit .*; 1 MB of it left, it needs "
                                                   r"about \d+ MB more\)"):
        runtime_openvino.compile_cpu(graph, "f32")


def test_a_rust_panic_for_want_of_threads_is_the_memory_line(monkeypatch):
    """pyo3's PanicException (tokenizers could not start its thread pool) used to escape as a traceback."""
    import click
    from click.testing import CliRunner

    from prumux_deploy.commands._group import CommandGroup

    @click.group(cls=CommandGroup)
    def group():
        pass

    @group.command()
    def tokenize():
        raise PanicException(TOKENIZERS_POOL)

    monkeypatch.setattr(resources, "address_space_limit", lambda: 1000 << 20)
    refused(CliRunner().invoke(group, ["tokenize"]), 2, "not enough memory to run group tokenize (address-space limit "
                                                        "1,000 MB, ulimit -v; The global thread pool")


# --- memory: the command line's start ------------------------------------------------------------------

def test_thread_pools_are_capped_only_under_a_tight_limit_and_never_over_the_user(monkeypatch):
    gb = 1 << 30
    assert resources.prepare_for_address_limit({}, limit=None) == {}
    assert resources.prepare_for_address_limit({}, limit=64 * gb, cores=16) == {}
    environ = {"OMP_NUM_THREADS": "3"}
    set_here = resources.prepare_for_address_limit(environ, limit=gb, cores=64)
    assert set_here == {"OPENBLAS_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "MKL_NUM_THREADS": "1"}
    assert environ["OMP_NUM_THREADS"] == "3"
    room = resources.LIBRARIES_NEED + resources.WORK_ROOM + 8 * resources.PER_THREAD
    assert resources.prepare_for_address_limit({}, limit=room, cores=64)["MKL_NUM_THREADS"] == "8"
    with pytest.raises(NotEnoughMemoryError, match=r"^the address-space limit \(ulimit -v\) is 600 MB, below the about "
                                                   r"900 MB prumux-deploy needs to load PyTorch"):
        resources.prepare_for_address_limit({}, limit=600 << 20)


def _limited(megabytes: int):
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (megabytes << 20, resource.RLIM_INFINITY))
    return limit


def _predict_under(megabytes: int, engine: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    cli = Path(sys.executable).with_name("prumux-deploy")
    return subprocess.run([str(cli), "predict", str(engine), "a gorgeous, witty film"], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=_limited(megabytes))


def _one_line_or_an_answer(done: subprocess.CompletedProcess):
    assert "Traceback" not in done.stderr, done.stderr
    if done.returncode == 0:
        assert "0." in done.stdout
    else:
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), done.stderr
        assert "memory" in lines[0] or "address-space limit" in lines[0], lines[0]


def test_predict_under_an_address_space_limit_too_low_to_load_is_one_line_at_once(engine_dir):
    """Measured here (2 cores, torch 2.13 CPU, onnxruntime 1.32, OpenVINO 2026.4), `prlimit --as` on `predict`
    of the shipped example's engine. Before: up to 600 MB a traceback (libtorch_cpu.so: failed to map segment,
    MemoryError); 850-900 MB hung in scipy's OpenBLAS start-up (blas_thread_init retrying a 32 MB mmap for ever,
    SIGTERM ignored); 950 MB "unexpected ImportError"; 1000 MB a Rust panic's 53-line traceback; ONNX Runtime
    engines answered from 1010 MB. OpenVINO engines hung from 1050 to 1200 MB and at 1000 MB blamed the file
    ("OpenVINO cannot compile it"), answering from 1300 MB. After: below 900 MB this line, in 0.1 s (from 770 to
    850 MB runs had sometimes answered and sometimes aborted in tokenizers' Rust allocator, where nothing can
    catch it); ONNX Runtime engines answer from there (every run of 15 from 860 to 950 MB), OpenVINO ones from
    1175 MB with one memory line below that (never a hang, a segfault or a traceback)."""
    done = _predict_under(600, engine_dir, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == ("error: the address-space limit (ulimit -v) is 600 MB, below the about 900 MB "
                                   "prumux-deploy needs to load PyTorch, ONNX Runtime and transformers and start; "
                                   "raise it to 2,048 MB or more (ulimit -v 2097152) or lift it (ulimit -v unlimited)")


@pytest.mark.parametrize("megabytes", [850, 920])
def test_predict_under_a_tight_address_space_limit_answers_or_says_memory(engine_dir, megabytes):
    """Where `predict` of this test's tiny ONNX Runtime engine hung (850 MB: killed after 120 s) or failed in
    an import (920 MB: "unexpected ImportError: ...tokenizers.abi3.so: failed to map segment"), it now ends at
    once with one line (850 MB: the limit refused up front) or answers (920 MB, every run here)."""
    _one_line_or_an_answer(_predict_under(megabytes, engine_dir))
