"""A live Triton Inference Server on loopback serving an exported engine, checked against the engine run
in-process and against `prumux-deploy predict --json`.

The server is the `tritonserver` binary bundled in the PyPI package nvidia-pytriton, which has only the
Python backend (no ONNX Runtime backend). So the model is served from the repository that
`write_triton_repository` writes: REPO/NAME/1/model.onnx is run with ONNX Runtime inside Triton's Python
backend, bound with REPO/NAME/config.pbtxt's inputs, outputs, max_batch_size, instance count and dynamic
batching, and the returned logits are mapped to labels with REPO/NAME/labels.txt.

pytriton's Python-backend stub for 3.11 links Debian's libpython3.11, so the server runs in its own venv,
.venv-triton/ at the repository root (or $PRUMUX_TRITON_VENV), made from Debian's /usr/bin/python3.11. The
test makes that venv (once; it is kept) when it is missing, without pip in it (`--without-pip`: Debian's
ensurepip, package python3.11-venv, is not needed), and installs the server's packages into it with the main
venv's own pip (`pip --python`, pip 22.3 or later). It needs network to PyPI once, and no apt; it skips with
what to install only where Debian's python3.11 or libpython3.11 is missing. By hand:

    /usr/bin/python3.11 -m venv --without-pip .venv-triton
    .venv/bin/python -m pip --python .venv-triton/bin/python install nvidia-pytriton==0.7.0 onnxruntime numpy

The client side needs `tritonclient[http]` in the main venv. Traffic goes to 127.0.0.1 only; the server is
always stopped (its process group killed) and every wait is bounded.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from prumux_deploy.cli import main
from prumux_deploy.data import load_tokenizer, tokenize
from prumux_deploy.engine import load_engine
from prumux_deploy.export.triton import LABELS_FILE, write_triton_repository

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
TRITON_VENV = Path(os.environ.get("PRUMUX_TRITON_VENV") or REPO_ROOT / ".venv-triton")
DEBIAN_PYTHON = Path("/usr/bin/python3.11")
LIBPYTHON = "libpython3.11.so.1.0"  # what pytriton's 3.11 stub links (Debian package libpython3.11)
TRITON_PACKAGES = ["nvidia-pytriton==0.7.0", "onnxruntime", "numpy"]  # 0.7.0: the version verified here
SETUP = (f"{DEBIAN_PYTHON} -m venv --without-pip {TRITON_VENV} && {sys.executable} -m pip --python "
         f"{TRITON_VENV}/bin/python install {' '.join(TRITON_PACKAGES)}")
VENV_TIMEOUT_S, PIP_TIMEOUT_S = 120, 900
READY_TIMEOUT_S, STOP_TIMEOUT_S, REQUEST_TIMEOUT_S = 120, 30, 30
MODEL = "sst2_live"
BATCH_SIZES = (1, 3, 5)  # the engine has N=2: none is a whole number of mux groups (padded inside the graph)
TEXTS = ["a gorgeous , witty film", "dull and tedious", "what a film ! " + "very " * 30 + "good",  # truncates
         "the plot was awful", "zebra unknownword"]
ATOL = 1e-5

# Imports in the Triton venv that the server script needs (protobuf + model_config_pb2 come with
# nvidia-pytriton's tritonclient[all]); prints the base prefix so a venv from another Python is caught.
PROBE = ("import sys, numpy, onnxruntime, pytriton.triton, google.protobuf.text_format; "
         "from tritonclient.grpc import model_config_pb2; print(sys.base_prefix)")

SERVER_PY = r'''
"""Serve REPO/NAME (written by prumux-deploy triton) with pytriton. The engine's 1/model.onnx runs with
ONNX Runtime in the Python backend, bound with config.pbtxt's tensors, max_batch_size, instances and dynamic
batching. --isolation shared: NAME is the engine; the requests of one execute are concatenated (what Triton's
ONNX Runtime backend does). --isolation request: NAME is the shipped isolation front (NAME/1/model.py), whose
answer_requests runs here with the engine call in-process instead of a BLS request to NAME_engine. Every
execute logs how many requests the dynamic batcher handed it."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from google.protobuf import text_format
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig
from tritonclient.grpc import model_config_pb2 as mc

repo, name, port, workspace = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
config = text_format.Parse((repo / name / "config.pbtxt").read_text(), mc.ModelConfig())
parameters = {k: v.string_value for k, v in config.parameters.items()}
front = None
if config.backend == "python" and "engine_model" in parameters:
    spec = importlib.util.spec_from_file_location("front", repo / name / "1" / "model.py")
    front = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(front)
    engine_name = parameters["engine_model"]
else:
    engine_name = name
engine_config = text_format.Parse((repo / engine_name / "config.pbtxt").read_text(), mc.ModelConfig())
if engine_config.platform != "onnxruntime_onnx" or engine_config.name != engine_name:
    sys.exit(f"{engine_name}/config.pbtxt: platform {engine_config.platform!r}, name {engine_config.name!r}")
DTYPES = {"TYPE_INT64": np.int64, "TYPE_INT32": np.int32, "TYPE_FP32": np.float32, "TYPE_FP16": np.float16}


def tensors(entries):
    return [Tensor(name=e.name, dtype=DTYPES[mc.DataType.Name(e.data_type)], shape=tuple(e.dims)) for e in entries]


options = ort.SessionOptions()
options.intra_op_num_threads = options.inter_op_num_threads = 1
options.log_severity_level = 3
session = ort.InferenceSession(str(repo / engine_name / "1" / "model.onnx"), options,
                               providers=["CPUExecutionProvider"])
input_names = [e.name for e in config.input]
output_names = [e.name for e in config.output]
if sorted(input_names) != sorted(i.name for i in session.get_inputs()):
    sys.exit(f"config.pbtxt inputs {input_names} != model.onnx inputs {[i.name for i in session.get_inputs()]}")


def run_engine(feeds):
    return session.run(["logits"], {n: feeds[n] for n in input_names})[0]


def infer(requests):
    print(f"execute: {len(requests)} requests", flush=True)
    feeds = [{n: np.asarray(r[n], dtype=np.int64) for n in input_names} for r in requests]
    if front is not None:
        answers = front.answer_requests(feeds, run_engine, int(parameters["num_instances"]),
                                        int(parameters["max_batch_size"]))
    else:  # the engine served directly: the requests' rows concatenated into one batch
        sizes = [len(f[input_names[0]]) for f in feeds]
        logits = run_engine({n: np.concatenate([f[n] for f in feeds]) for n in input_names})
        answers = np.split(logits, np.cumsum(sizes)[:-1])
    return [{output_names[0]: a} for a in answers]


batcher = DynamicBatcher()
if config.HasField("dynamic_batching"):
    batcher = DynamicBatcher(max_queue_delay_microseconds=config.dynamic_batching.max_queue_delay_microseconds,
                             preferred_batch_size=list(config.dynamic_batching.preferred_batch_size) or None)
instances = sum(g.count for g in config.instance_group) or 1
triton_config = TritonConfig(http_address="127.0.0.1", http_port=port, allow_grpc=False, allow_metrics=False,
                             allow_sagemaker=False, allow_vertex_ai=False, exit_timeout_secs=5)
with Triton(config=triton_config, workspace=workspace) as triton:
    triton.bind(model_name=name, infer_func=[infer] * instances, inputs=tensors(config.input),
                outputs=tensors(config.output), strict=True,
                config=ModelConfig(batching=config.max_batch_size > 0, max_batch_size=config.max_batch_size,
                                   batcher=batcher))
    print(f"bound {name}: max_batch_size {config.max_batch_size}, {instances} instance(s), "
          f"{'request isolation front' if front is not None else 'engine served directly'}", flush=True)
    triton.serve()
'''


# --- the Triton venv ------------------------------------------------------------------------------

def _venv_python() -> Path:
    return TRITON_VENV / "bin" / "python"


def _probe(python: Path) -> tuple[bool, str]:
    try:
        r = subprocess.run([str(python), "-c", PROBE], capture_output=True, text=True, timeout=120,
                           env=_clean_env())
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    last = (r.stdout.strip() or r.stderr.strip() or "no output").splitlines()[-1]
    return r.returncode == 0, last


def _last_line(text: str) -> str:
    lines = [l for l in (text or "").strip().splitlines() if l.strip()]
    return lines[-1][:200] if lines else "no output"


@pytest.fixture(scope="module")
def triton_python() -> Path:
    """The python of .venv-triton (made from Debian's python3.11 with nvidia-pytriton) or a skip."""
    python = _venv_python()
    if python.exists():
        ok, detail = _probe(python)
        if ok:
            return _debian_based(python, detail)
    else:
        _check_debian_python()
        _make_venv()
    _install(python)  # made just now, or made earlier but missing packages (an interrupted install)
    ok, detail = _probe(python)
    if not ok:
        pytest.skip(f"{TRITON_VENV} cannot import what the server needs ({detail}); run: {SETUP}")
    return _debian_based(python, detail)


def _check_debian_python():
    """Debian's python3.11 and the libpython3.11 its stub links: the two things only apt can provide."""
    if not DEBIAN_PYTHON.exists():
        pytest.skip(f"needs Debian's {DEBIAN_PYTHON} (pytriton's Python-backend stub links its libpython3.11): "
                    "apt-get install python3.11 libpython3.11")
    check = subprocess.run([str(DEBIAN_PYTHON), "-c", f"import ctypes; ctypes.CDLL({LIBPYTHON!r})"],
                           capture_output=True, timeout=60)
    if check.returncode != 0:
        pytest.skip(f"needs {LIBPYTHON}, which pytriton's Python-backend stub links: apt-get install libpython3.11")


def _make_venv():
    """The venv without pip: `venv --without-pip` needs no ensurepip (Debian's python3.11-venv); its packages
    come from the main venv's pip (_install)."""
    try:
        made = subprocess.run([str(DEBIAN_PYTHON), "-m", "venv", "--without-pip", str(TRITON_VENV)],
                              capture_output=True, text=True, timeout=VENV_TIMEOUT_S, env=_clean_env())
    except subprocess.TimeoutExpired:
        shutil.rmtree(TRITON_VENV, ignore_errors=True)
        pytest.skip(f"making {TRITON_VENV} took over {VENV_TIMEOUT_S} s; run: {SETUP}")
    if made.returncode != 0:
        shutil.rmtree(TRITON_VENV, ignore_errors=True)
        pytest.skip(f"{DEBIAN_PYTHON} -m venv --without-pip failed ({_last_line(made.stderr)}); run: {SETUP}")


def _install(python: Path):
    """pip install the server's packages into the Triton venv with this (the main) venv's pip: `pip --python`
    runs it against another interpreter, so the Triton venv needs no pip of its own."""
    try:
        pip = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                              "--disable-pip-version-check", *TRITON_PACKAGES], capture_output=True, text=True,
                             timeout=PIP_TIMEOUT_S, env=_clean_env())
    except subprocess.TimeoutExpired:
        pytest.skip(f"pip install {' '.join(TRITON_PACKAGES)} into {TRITON_VENV} took over {PIP_TIMEOUT_S} s "
                    f"(no network?); run: {SETUP}")
    if pip.returncode != 0:
        if "no such option: --python" in pip.stderr:
            pytest.skip(f"the main venv's pip is older than 22.3 (no --python): {sys.executable} -m pip install -U pip")
        pytest.skip(f"pip install {' '.join(TRITON_PACKAGES)} into {TRITON_VENV} failed (no network?): "
                    f"{_last_line(pip.stderr)}; run: {SETUP}")


def _debian_based(python: Path, base_prefix: str) -> Path:
    if Path(base_prefix).resolve() != Path("/usr"):
        pytest.skip(f"{TRITON_VENV} was made from a Python in {base_prefix}, not Debian's /usr/bin/python3.11 "
                    f"(pytriton's stub links Debian's libpython3.11); remove it and run: {SETUP}")
    return python


# --- the server -----------------------------------------------------------------------------------

def _clean_env() -> dict:
    """The environment for the Triton venv's python: nothing of the main venv, few threads."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONNOUSERSITE="1")
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(log: Path, lines: int = 25) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_ready(proc: subprocess.Popen, port: int, name: str, log: Path):
    """Poll /v2/models/NAME/ready on loopback (no proxies) until 200, the server exits, or the timeout."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    url = f"http://127.0.0.1:{port}/v2/models/{name}/ready"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the Triton server exited with {proc.returncode} before {name} was ready:\n{_tail(log)}")
        try:
            with opener.open(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    pytest.fail(f"{name} was not ready on 127.0.0.1:{port} within {READY_TIMEOUT_S} s:\n{_tail(log)}")


def _stop(proc: subprocess.Popen):
    """SIGINT to the server script (pytriton stops tritonserver and cleans up), then SIGKILL to whatever is
    left of its process group (tritonserver, Python-backend stubs)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # start_new_session: the group id is the script's pid
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pass


def _infer(client, name: str, feeds: dict) -> np.ndarray:
    import tritonclient.http as httpclient

    inputs = []
    for key, value in feeds.items():
        tensor = httpclient.InferInput(key, list(value.shape), "INT64")
        tensor.set_data_from_numpy(np.ascontiguousarray(value, dtype=np.int64))
        inputs.append(tensor)
    result = client.infer(name, inputs, outputs=[httpclient.InferRequestedOutput("logits")])
    return result.as_numpy("logits")


def _predict(engine_dir, texts) -> list[dict]:
    result = CliRunner().invoke(main, ["predict", str(engine_dir), *texts, "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert [r["text"] for r in rows] == list(texts), result.output
    return rows


# --- the server as a context ----------------------------------------------------------------------

@contextlib.contextmanager
def served(repo: Path, name: str, triton_python: Path, work: Path):
    """Start the server script on REPO/NAME; yields (port, log path); always stops it."""
    script = work / "serve.py"
    script.write_text(SERVER_PY)
    log = work / f"server-{name}.log"
    port = _free_port()
    workspace_root = Path(tempfile.mkdtemp(prefix="prumux-triton-"))  # short: pytriton puts IPC sockets there
    env = _clean_env()
    env["PYTRITON_HOME"] = str(workspace_root / "home")
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(triton_python), str(script), str(repo), name, str(port),
                                 str(workspace_root / "ws")], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=work, env=env, start_new_session=True)
    try:
        _wait_ready(proc, port, name, log)
        yield port, log
    finally:
        _stop(proc)
        shutil.rmtree(workspace_root, ignore_errors=True)
    assert proc.returncode is not None


def _client(port: int):
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(url=f"127.0.0.1:{port}", connection_timeout=10,
                                            network_timeout=REQUEST_TIMEOUT_S)


def _http_client_or_skip():
    try:  # without the [http] extra, tritonclient.http raises RuntimeError, not ImportError
        import tritonclient.http  # noqa: F401
    except (ImportError, RuntimeError):
        pytest.skip("needs tritonclient's HTTP client in this venv: pip install 'tritonclient[grpc,http]>=2.50'")


def requests_per_execute(log: Path) -> list[int]:
    """How many requests the dynamic batcher handed each execute, from the server's log."""
    return [int(m) for m in re.findall(r"^execute: (\d+) requests", log.read_text(errors="replace"), re.M)]


# --- a bounded concurrent load ----------------------------------------------------------------------

LOAD_SIZES = (1, 3, 2, 5, 1, 4, 3, 1)  # N=2: single rows, odd sizes, N+1, whole groups
LOAD_CLIENTS, LOAD_REQUESTS_PER_CLIENT, LOAD_DEADLINE_S = 4, 16, 120


def load_requests(tokenizer, count: int, seed: int, max_length: int, sizes=LOAD_SIZES, pairs: bool = False
                  ) -> list[dict]:
    """`count` requests {id, texts, feeds}: sizes cycling through `sizes`, texts (and second sentences for a
    pair engine) drawn (seeded) from TEXTS, token ids padded to max_length so that Triton may merge any of
    them into one batch."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        texts = [TEXTS[k] for k in rng.integers(0, len(TEXTS), sizes[i % len(sizes)])]
        second = [TEXTS[k] for k in rng.integers(0, len(TEXTS), len(texts))] if pairs else None
        feeds = tokenize(tokenizer, texts, second, max_length=max_length, pad_to_max=True, uses_token_types=pairs)
        out.append({"id": f"r{seed}-{i}", "texts": texts, "feeds": feeds})
    return out


def run_load(port: int, name: str, per_client: list[list[dict]], deadline_s: float = LOAD_DEADLINE_S) -> dict:
    """Every client (a thread with its own connection) sends its requests one after another, as fast as
    answers come; returns {request id: (logits, echoed id, latency s)} and the wall time. Bounded: each
    request has a timeout and the whole load a deadline."""
    import tritonclient.http as httpclient

    answers, lock = {}, threading.Lock()
    stop_at = time.monotonic() + deadline_s

    def client_loop(requests):
        client = _client(port)
        try:
            for r in requests:
                if time.monotonic() > stop_at:
                    return
                inputs = []
                for key, value in r["feeds"].items():
                    tensor = httpclient.InferInput(key, list(value.shape), "INT64")
                    tensor.set_data_from_numpy(value)
                    inputs.append(tensor)
                t0 = time.perf_counter()
                result = client.infer(name, inputs, request_id=r["id"],
                                      outputs=[httpclient.InferRequestedOutput("logits")])
                latency = time.perf_counter() - t0
                with lock:
                    assert r["id"] not in answers, f"request {r['id']} answered twice"
                    answers[r["id"]] = (result.as_numpy("logits"), result.get_response().get("id"), latency)
        finally:
            client.close()

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(len(per_client)) as pool:
        for future in [pool.submit(client_loop, reqs) for reqs in per_client]:
            future.result(timeout=deadline_s + REQUEST_TIMEOUT_S)
    return {"answers": answers, "wall_s": time.perf_counter() - t0}


def load_figures(load: dict, requests: list[dict]) -> dict:
    latencies = np.array([a[2] for a in load["answers"].values()])
    rows = sum(len(r["texts"]) for r in requests if r["id"] in load["answers"])
    return {"requests": len(load["answers"]), "requests_per_s": len(load["answers"]) / load["wall_s"],
            "rows_per_s": rows / load["wall_s"], "p50_ms": float(np.percentile(latencies, 50) * 1e3),
            "p99_ms": float(np.percentile(latencies, 99) * 1e3)}


# --- the tests ------------------------------------------------------------------------------------

@pytest.mark.parametrize("isolation", ["shared", "request"])
def test_live_triton_serves_the_repository_engine(tmp_path, engine_dir, triton_python, isolation):
    _http_client_or_skip()
    engine = load_engine(engine_dir)
    assert engine.num_instances == 2 and not engine.uses_token_types
    tokenizer = load_tokenizer(engine_dir)
    repo = tmp_path / "repo"
    model_dir = write_triton_repository(engine_dir, repo, MODEL, isolation=isolation)
    labels = (model_dir / LABELS_FILE).read_text().splitlines()
    assert labels == engine.labels

    with served(repo, MODEL, triton_python, tmp_path) as (port, log):
        client = _client(port)
        try:
            served_config = client.get_model_config(MODEL)
            assert served_config["max_batch_size"] == 2 * 32  # config.pbtxt's default, 32 * N
            assert [i["name"] for i in served_config["input"]] == ["input_ids", "attention_mask"]
            assert [o["name"] for o in served_config["output"]] == ["logits"]
            for size in BATCH_SIZES:
                texts = TEXTS[:size]
                feeds = tokenize(tokenizer, texts, max_length=engine.max_seq_length)
                got = _infer(client, MODEL, feeds)
                want = engine(feeds["input_ids"], feeds["attention_mask"])
                assert got.shape == (size, len(labels)) and got.dtype == np.float32
                np.testing.assert_allclose(got, want, rtol=0, atol=ATOL, err_msg=f"batch of {size}")

                probs = np.exp(got - got.max(1, keepdims=True))
                probs /= probs.sum(1, keepdims=True)
                for row, p, text in zip(_predict(engine_dir, texts), probs, texts):
                    assert row["label"] == labels[int(p.argmax())], (size, text, row)
                    np.testing.assert_allclose([row["scores"][l] for l in labels], p, rtol=0, atol=ATOL)
        finally:
            client.close()


@pytest.mark.parametrize("task", ["single", "pair"])
@pytest.mark.parametrize("isolation", ["shared", "request"])
def test_live_load_loses_nothing_and_request_isolation_is_bit_exact(tmp_path, request, triton_python,
                                                                     isolation, task):
    """4 concurrent clients x 16 mixed requests (1, 2, 3 = N+1, 4, 5 rows; sentence pairs for a pair engine),
    all padded to one length so the dynamic batcher may merge any of them. Every request is answered once,
    under its own id, with one row of logits per row sent; the batcher did merge requests (else nothing
    would be proven); and with request isolation every answer equals the engine run on that request alone,
    bit for bit."""
    _http_client_or_skip()
    engine_dir = request.getfixturevalue("engine_dir" if task == "single" else "pair_engine_dir")
    engine = load_engine(engine_dir)
    assert engine.uses_token_types == (task == "pair")
    tokenizer = load_tokenizer(engine_dir)
    repo = tmp_path / "repo"
    write_triton_repository(engine_dir, repo, MODEL, isolation=isolation)
    per_client = [load_requests(tokenizer, LOAD_REQUESTS_PER_CLIENT, seed, engine.max_seq_length,
                                pairs=task == "pair") for seed in range(LOAD_CLIENTS)]
    requests = [r for reqs in per_client for r in reqs]
    with served(repo, MODEL, triton_python, tmp_path) as (port, log):
        load = run_load(port, MODEL, per_client)
    merged = requests_per_execute(log)

    answers = load["answers"]
    assert sorted(answers) == sorted(r["id"] for r in requests)  # none lost, none duplicated
    differs = 0
    for r in requests:
        logits, echoed, _ = answers[r["id"]]
        assert echoed == r["id"]
        assert logits.shape == (len(r["texts"]), len(engine.labels)) and logits.dtype == np.float32
        alone = engine.run_feeds(r["feeds"])  # the request alone: its partial group filled with its own rows
        if isolation == "request":
            assert np.array_equal(logits, alone), (r["id"], np.abs(logits - alone).max())
        differs += not np.array_equal(logits, alone)
    assert max(merged) > 1, f"the dynamic batcher never merged requests ({merged[:20]}); the load proved nothing"
    print(f"{task} {isolation}: {len(requests)} requests, up to {max(merged)} per execute, {differs} answers differ "
          f"from the request alone; {load_figures(load, requests)}")


# --- the benchmark (not a test): python tests/test_triton_live.py ENGINE_DIR ------------------------

def benchmark(engine_dir: Path, clients: int = 4, per_client: int = 60) -> list[dict]:
    """Requests/s, rows/s and p50/p99 latency of both isolation modes for single-row and 4-row requests,
    one server at a time on loopback (1 model copy, ONNX Runtime on 1 thread)."""
    python = _venv_python()
    tokenizer = load_tokenizer(engine_dir)
    rows_out = []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        for isolation in ("shared", "request"):
            repo = work / isolation
            write_triton_repository(engine_dir, repo, MODEL, isolation=isolation)
            with served(repo, MODEL, python, work) as (port, log):
                for size in (1, 4):
                    load_per_client = [load_requests(tokenizer, per_client, 100 * size + c, 64, sizes=(size,))
                                       for c in range(clients)]
                    run_load(port, MODEL, [reqs[:4] for reqs in load_per_client])  # warm-up
                    load = run_load(port, MODEL, load_per_client, deadline_s=300)
                    figures = load_figures(load, [r for reqs in load_per_client for r in reqs])
                    rows_out.append({"isolation": isolation, "rows_per_request": size, **figures})
                    print(rows_out[-1], flush=True)
    return rows_out


if __name__ == "__main__":
    import sys

    benchmark(Path(sys.argv[1]))
