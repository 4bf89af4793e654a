"""One runner per backend bench can time, and one table of them.

Each backend is a record of BACKEND_TABLE: the runtime that runs it (capabilities.py), the precision it
computes in, the devices bench times it on, the engine graph it runs (written by export's own
pipeline.write_graph, so a row times the bytes `export` writes), and the sets it belongs to (the default rows,
--peers, "ours" at its precision). time_backend(name, ...) times one row: PyTorch eager or torch.compile
(time_torch_backend), or an engine graph with its runtime's runner (time_graph: ONNX Runtime on the CPU or
the CUDA provider, optionally as CUDA-graph replays; OpenVINO on the CPU; runners.py); every row gets the
same parity spot check against the fp32 PyTorch model. Adding a backend is one record here (and, for a new
runtime, its runner in runners.RUNNERS).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

from .compare import compare_logits
from .devices import resolve_device, synchronize, tf32_scope, torch_arithmetic
from .meters import PeakCudaMemory, PeakRSS
from .model import PruMuxModel
from .reference import reference_logits, timing_inputs
from .timing import throughput

NNCF = ("int8-nncf", "cpu", False)  # OpenVINO's int8 graph: NNCF on the plain graph (export/quantize.py)


@dataclass(frozen=True)
class Backend:
    """One row kind of bench. graph: (precision, device target, optimized) of the export graph it runs, as
    pipeline.write_graph takes them (NNCF: OpenVINO's int8), None for PyTorch rows."""

    name: str
    runtime: str                          # torch, onnxruntime or openvino (capabilities.RUNTIMES)
    precision: str                        # what it computes in: fp32, tf32, fp16, bf16, int8
    devices: tuple[str, ...]              # where bench times it
    graph: tuple | None = None
    compiled: bool = False                # torch.compile (inductor)
    cuda_graph: bool = False              # ONNX Runtime CUDA-graph replays at the timed shape
    default_on: tuple[str, ...] = ()      # devices whose default run includes it
    peer_on: tuple[str, ...] = ()         # devices where --peers times it
    ours_on: tuple[str, ...] = ()         # devices where it is "ours" at its precision (what export writes there)


CPU, GPU, BOTH = ("cpu",), ("cuda",), ("cpu", "cuda")
BACKEND_TABLE = (
    Backend("torch", "torch", "fp32", BOTH, default_on=BOTH, peer_on=BOTH),
    Backend("torch-tf32", "torch", "tf32", GPU, peer_on=GPU),
    Backend("torch-fp16", "torch", "fp16", GPU, default_on=GPU, peer_on=GPU),
    Backend("torch-bf16", "torch", "bf16", GPU, peer_on=GPU),
    # not in the defaults: compiling costs a minute or more per structure
    Backend("torch-compile", "torch", "fp32", BOTH, compiled=True, peer_on=BOTH),
    Backend("torch-compile-fp16", "torch", "fp16", GPU, compiled=True, peer_on=GPU),
    Backend("onnxruntime", "onnxruntime", "fp32", BOTH, ("fp32", "cpu", False), default_on=CPU),  # --no-optimize
    Backend("onnxruntime-opt", "onnxruntime", "fp32", BOTH, ("fp32", "cpu", True), default_on=CPU, peer_on=BOTH,
            ours_on=CPU),                                                        # export (--device cpu)
    Backend("onnxruntime-int8", "onnxruntime", "int8", CPU, ("int8", "cpu", True), default_on=CPU, peer_on=CPU,
            ours_on=CPU),                                                        # export --precision int8
    Backend("onnxruntime-gpu", "onnxruntime", "fp32", GPU, ("fp32", "cuda", True), default_on=GPU, peer_on=GPU,
            ours_on=GPU),                                                        # export --device cuda --precision fp32
    Backend("onnxruntime-gpu-fp16", "onnxruntime", "fp16", GPU, ("fp16", "cuda", True), default_on=GPU, peer_on=GPU,
            ours_on=GPU),                                                        # export --device cuda
    Backend("onnxruntime-gpu-fp16-cudagraph", "onnxruntime", "fp16", GPU, ("fp16", "cuda", True), cuda_graph=True,
            peer_on=GPU, ours_on=GPU),
    # OpenVINO (an optional extra): fp32 and bf16 on the graph export writes, int8 NNCF's on the plain one
    Backend("openvino", "openvino", "fp32", CPU, ("fp32", "cpu", True), peer_on=CPU, ours_on=CPU),
    Backend("openvino-bf16", "openvino", "bf16", CPU, ("fp32", "cpu", True), peer_on=CPU, ours_on=CPU),
    Backend("openvino-int8", "openvino", "int8", CPU, NNCF, peer_on=CPU, ours_on=CPU),
)
BACKENDS_BY_NAME = {b.name: b for b in BACKEND_TABLE}


def names(where: str, device: str) -> tuple[str, ...]:
    """The backends whose `where` ("devices", "default_on", "peer_on", "ours_on") holds `device`, in table order."""
    return tuple(b.name for b in BACKEND_TABLE if device in getattr(b, where))


def peer_group(backend: str, device: str) -> str:
    """The precision a --peers table groups a backend under: TF32 with fp32; on a GPU bf16 with fp16 (the
    half-precision rows), on the CPU bf16 and int8 each alone."""
    precision = BACKENDS_BY_NAME[backend].precision
    if precision == "tf32" or (precision == "fp16" and device == "cpu"):
        return "fp32"
    return "fp16" if precision == "bf16" and device == "cuda" else precision


ALL_BACKENDS = tuple(BACKENDS_BY_NAME)
BACKENDS, GPU_BACKENDS = names("default_on", "cpu"), names("default_on", "cuda")  # the defaults
PEER_BACKENDS, GPU_PEER_BACKENDS = names("peer_on", "cpu"), names("peer_on", "cuda")
CPU_ONLY_BACKENDS = tuple(b.name for b in BACKEND_TABLE if b.devices == CPU and b.runtime == "onnxruntime")
GPU_ONLY_BACKENDS = tuple(b.name for b in BACKEND_TABLE if b.devices == GPU)
OPENVINO_BACKENDS = {b.name: b.precision for b in BACKEND_TABLE if b.runtime == "openvino"}
ORT_BACKENDS = {b.name: b.graph for b in BACKEND_TABLE if b.runtime == "onnxruntime" and not b.cuda_graph}


def torch_device(cfg) -> torch.device:
    """Where the PyTorch rows (and the baseline) run: cfg.device resolved (devices.resolve_device: refused
    when it is not there). The one place bench places PyTorch work, so that the tests run a GPU run's PyTorch
    side on the CPU beside fake ONNX Runtime CUDA sessions."""
    return resolve_device(cfg.device)


def torch_arithmetic_scope(cfg):
    """The TF32 state cfg asks of PyTorch's fp32 matmuls on a GPU, explicitly (nothing on the CPU). Flags
    only: cfg.device is not resolved here (a spot check's scope needs no GPU to set them)."""
    return tf32_scope(torch.device(cfg.device), cfg.tf32)


def time_torch(model, ids, mask, cfg, tf32: bool | None = None, dtype: str = "fp32"):
    """PyTorch eager (or compiled) on cfg.device, inputs already there, synchronised after every call; its
    TF32 as cfg.tf32 asks on a GPU (or `tf32`, the torch-tf32 row). dtype: what the model's weights are in,
    for the report. Peak memory: host RSS on the CPU, PyTorch's GPU allocator on a GPU."""
    device = torch_device(cfg)
    ids, mask = ids.to(device), mask.to(device)

    def run():
        model(ids, mask)
        synchronize(device)

    meter = PeakCudaMemory() if device.type == "cuda" else PeakRSS()
    scope = torch_arithmetic_scope(cfg) if tf32 is None else tf32_scope(device, tf32)
    with torch.no_grad(), scope, meter as mem:
        result = throughput(run, ids.shape[0], cfg.warmup, cfg.repeats, cfg.min_seconds)
        result["arithmetic"] = torch_arithmetic(device, dtype)
    return result, mem.mib


def time_torch_backend(backend: str, model: PruMuxModel, ids, mask, cfg):
    """A PyTorch row: eager or torch.compile (inductor; its warm-up calls include compilation), in fp32, TF32
    (torch-tf32) or a half-precision copy of the model (torch-fp16 / torch-bf16 / torch-compile-fp16, weights
    and activations in that type: what a PyTorch user runs on a GPU)."""
    import copy

    dtype = {"torch-fp16": "fp16", "torch-bf16": "bf16", "torch-compile-fp16": "fp16"}.get(backend, "fp32")
    if dtype != "fp32":
        model = copy.deepcopy(model).to(torch.float16 if dtype == "fp16" else torch.bfloat16)
    if backend.startswith("torch-compile"):
        model = torch.compile(model)
    result, mem = time_torch(model, ids, mask, cfg, True if backend == "torch-tf32" else None, dtype)
    if dtype != "fp32":  # the spot check every row gets: its logits against the fp32 model's
        result["max_abs_logit_error"] = spot_check_torch(model, ids, mask)
    return result, mem


def write_graphs(model: PruMuxModel, cfg, backends, tmp: Path) -> dict[str, Path]:
    """{backend: graph file} for the requested backends, each graph written once by export's own function
    (pipeline.write_graph) at sequence cfg.seq: the bytes `export --max-seq-length cfg.seq` writes for that
    precision and device; OpenVINO's int8 is NNCF on the plain graph, calibrated on the timed rows, as export
    writes it (export/quantize.py)."""
    from prumux_deploy.export.pipeline import write_graph

    specs = {name: BACKENDS_BY_NAME[name].graph for name in backends if BACKENDS_BY_NAME[name].graph is not None}
    files = {}
    for spec in dict.fromkeys(specs.values()):
        if spec == NNCF:
            continue
        files[spec] = tmp / ("-".join(map(str, spec)) + ".onnx")
        write_graph(model, files[spec], cfg.seq, *spec)
    if NNCF in specs.values():
        from prumux_deploy.export.quantize import quantize_nncf

        plain = tmp / "plain.onnx"
        write_graph(model, plain, cfg.seq, "fp32", "cpu", False)
        ids, mask = timing_inputs(cfg.groups_per_batch * model.config.num_instances, cfg.seq, model.config.vocab_size,
                                 cfg.seed)
        files[NNCF] = tmp / "nncf.onnx"
        quantize_nncf(plain, files[NNCF], [{"input_ids": ids.numpy(), "attention_mask": mask.numpy()}])
    return {name: files[spec] for name, spec in specs.items()}


def time_backend(name: str, model: PruMuxModel, graphs: dict[str, Path], ids, mask, cfg):
    """Time one row of `name` (BACKEND_TABLE) on the model (and its graph from write_graphs): (result, peak MiB)."""
    backend = BACKENDS_BY_NAME[name]
    if backend.runtime == "torch":
        return time_torch_backend(name, model, ids, mask, cfg)
    precision = backend.precision if backend.runtime == "openvino" else backend.graph[0]
    return time_graph(backend.runtime, graphs[name], precision, model, ids, mask, cfg, backend.cuda_graph)


def spot_check_verdict(name: str, error: float | None, tf32: bool = False) -> dict:
    """A row's spot check judged like export's and validate's parity: its max |logit error| against the
    tolerance of the precision it computes in (compare.tolerance_for; TF32 rows and --tf32 runs take the TF32
    bound). {"spot_check": "pass" | "FAIL" | None (no check: the baseline), "spot_check_tolerance": bound};
    NaN never passes."""
    from .compare import tolerance_for

    precision = BACKENDS_BY_NAME[name].precision
    bound = tolerance_for("fp32" if precision == "tf32" else precision, tf32=tf32 or precision == "tf32")
    if error is None:
        return {"spot_check": None, "spot_check_tolerance": bound.max_logit_error}
    passed = error == error and error <= bound.max_logit_error
    return {"spot_check": "pass" if passed else "FAIL", "spot_check_tolerance": bound.max_logit_error}


def failed_spot_checks(rows: list[dict]) -> str | None:
    """One line naming every row whose spot check failed, or None."""
    bad = [r for r in rows if r.get("spot_check") == "FAIL"]
    if not bad:
        return None
    named = "; ".join(f"{r['name']} {r['backend']}: {r['max_abs_logit_error']:.1e} > {r['spot_check_tolerance']:g}"
                      for r in bad)
    return (f"spot check failed (max |logit error| against PyTorch fp32 above the precision's tolerance): {named}. "
            "Those rows computed something else than the model; their speed is not comparable")


def spot_check_torch(model, ids, mask) -> float:
    """A half-precision PyTorch row's spot check: its logits of the first 2N rows against fp32 (run here on the
    CPU from a float copy of the same weights, so the reference is the model's own fp32 function)."""
    import copy

    base = getattr(model, "_orig_mod", model)
    rows = 2 * base.config.num_instances
    device = next(base.parameters()).device
    feeds = {"input_ids": ids[:rows], "attention_mask": mask[:rows]}
    got = reference_logits(base, feeds, device)
    want = reference_logits(copy.deepcopy(base).float().cpu(), feeds)
    return compare_logits(got, want).max_abs_error


def spot_check(model: PruMuxModel, ids, mask, cfg, run_rows) -> float:
    """Max |logit error| of a backend against the PyTorch model on the first 2N timed rows: run_rows(rows) ->
    the backend's logits of ids[:rows] (a parity spot check on the inputs a row times)."""
    rows = 2 * model.config.num_instances
    with torch_arithmetic_scope(cfg):
        want = reference_logits(model, {"input_ids": ids[:rows], "attention_mask": mask[:rows]})
    return compare_logits(run_rows(rows), want).max_abs_error


def time_graph(runtime: str, path: Path, precision: str, model: PruMuxModel, ids, mask, cfg,
               cuda_graph: bool = False):
    """A graph row: `runtime`'s runner of `path` (runners.open_runner) on cfg.device at `precision`, with a
    parity spot check against the PyTorch model, then timed. ONNX Runtime on a GPU runs the CUDA provider
    with IO binding and cfg.tf32's use_tf32 (a session that did not get the CUDA provider is refused, never
    timed); cuda_graph times CUDA-graph replays of the graph fixed at the timed shape
    (runtime_onnxruntime.CudaGraphRunner), spot-checked at that shape. OpenVINO runs bf16 where the CPU has
    it, int8 (NNCF's QDQ graph) with its float layers at f32 (checked in check_config before any timing).
    Peak memory: host RSS on the CPU, not measured on a GPU (None)."""
    from .runners import open_runner

    device = torch.device(cfg.device).type
    options = {"tf32": cfg.tf32, "cuda_graph": cuda_graph} if runtime == "onnxruntime" else {}
    runner = open_runner(runtime, path, device=device, precision=precision, **options)
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    if cuda_graph:
        full = runner(feeds)  # the spot check's rows, from a replay of the whole timed batch
        error = spot_check(model, ids, mask, cfg, lambda rows: full[:rows])
    else:
        error = spot_check(model, ids, mask, cfg, lambda rows: runner({k: v[:rows] for k, v in feeds.items()}))
    timed = runner.timed(feeds)
    meter = contextlib.nullcontext() if device == "cuda" else PeakRSS()
    with meter as mem:
        result = throughput(timed, ids.shape[0], cfg.warmup, cfg.repeats, cfg.min_seconds)
    result["max_abs_logit_error"] = error
    result["arithmetic"] = runner.arithmetic
    return result, None if mem is None else mem.mib
