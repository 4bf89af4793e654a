"""`prumux-deploy bench`: PruMUX throughput against a dense BERT-base baseline, measured side by side.

Protocol (as in the paper): every input is padded to sequence 128, a PruMUX model gets batches of b*N
rows (b = 32 on CPU by default), the baseline gets batches of b rows; each backend is warmed up, then
timed over repeats, and we report the median. Everything is measured in one run on one machine, and
every number is reported next to its ratio to the baseline measured in that same run.

FLOPs are counted analytically (multiply-adds x 2) per sample at the measured sequence length, so the
FLOP-bound speedup (baseline FLOPs / PruMUX FLOPs per sample) says how fast a structure could be if
time followed FLOPs, and `bound_fraction` how much of that the engine achieves.
"""

from __future__ import annotations

import contextlib
import csv
import os
import platform
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from .progress import progress_bar

from . import backends
from .atomic import atomic_file, write_file
from .backends import (ALL_BACKENDS, BACKENDS, BACKENDS_BY_NAME, CPU_ONLY_BACKENDS, GPU_BACKENDS, GPU_ONLY_BACKENDS,
                       OPENVINO_BACKENDS, ORT_BACKENDS, names, peer_group,
                       spot_check_verdict, time_backend, time_torch, write_graphs)
from .meters import peak_memory_meaning
from .reference import timing_inputs
from .capabilities import why_not
from .checkpoint import create_model, load_checkpoint
from .counts import bert_flops_per_sample, prumux_flops_per_sample
from .devices import check_tf32, device_info
from .documents import dumps
from .errors import PruMuxError
from .generate import cofi_like_structure, masks_for_structure
from .model import PruMuxConfig, PruMuxModel
from .roofline import gemm_rate, int8_capable, model_gemms
from .structure import describe

BERT_BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=512)
QUICK_BASE = dict(vocab_size=1000, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                  intermediate_size=512, max_position_embeddings=128)


# --- the grid ------------------------------------------------------------------------------------

@dataclass
class BenchConfig:
    instances: list[int] = field(default_factory=lambda: [1, 2, 5, 10])
    sparsities: list[float] = field(default_factory=lambda: [0.0, 0.6, 0.8, 0.9, 0.95])
    backends: list[str] = field(default_factory=lambda: list(BACKENDS))
    groups_per_batch: int = 32    # b: a batch is b*N rows
    seq: int = 128
    warmup: int = 2
    repeats: int = 5
    min_seconds: float = 1.0
    seed: int = 0
    base: dict = field(default_factory=lambda: dict(BERT_BASE))
    checkpoints: list[str] = field(default_factory=list)
    structure: tuple[list[int], list[int]] | None = None  # heads and FFN widths per layer, instead of sparsities
    device: str = "cpu"           # cpu, or cuda: PyTorch on the GPU, ONNX Runtime's CUDA provider (IO binding)
    gemm: bool = True             # measure the machine's GEMM rate on each model's own products (roofline.py)
    protocol: str = "ours"        # ours: batches of 32*N (baseline 32); paper: 128*N (baseline 128), as the paper
    data: str | None = None       # with --checkpoint: also time text -> labels end to end on this data's dev rows
    task: str | None = None
    tf32: bool = False            # cuda: fp32 matmuls of PyTorch and ONNX Runtime's CUDA provider in TF32


    @classmethod
    def from_options(cls, quick: bool = False, protocol: str | None = None, device: str = "cpu",
                     structure: tuple[list[int], list[int]] | None = None, **given) -> "BenchConfig":
        """The run the command line describes: the defaults, then the protocol's batch (paper: 128*N rows, the
        GPU default; ours: 32*N, the CPU default), then `quick`'s one-minute shapes (a small base, N 1 and 2,
        s 0 and 0.9, short sequences), then every field given (None = not given). `structure` is checked
        against the base shape. Raises PruMuxError for a structure that does not fit it."""
        cfg = cls(device=device, protocol=protocol or ("paper" if device == "cuda" else "ours"))
        if device == "cuda":  # the GPU's own rows: eager and our GPU engines at fp32 and fp16 (int8 is for CPUs)
            cfg.backends = list(GPU_BACKENDS)
        if cfg.protocol == "paper":
            cfg.groups_per_batch = 128
        if quick:
            cfg.base, cfg.instances, cfg.sparsities = dict(QUICK_BASE), [1, 2], [0.0, 0.9]
            cfg.groups_per_batch, cfg.seq, cfg.warmup, cfg.repeats, cfg.min_seconds = 2, 32, 1, 2, 0.0
        for name, value in given.items():
            if value is not None and value != []:
                setattr(cfg, name, value)
        if structure is not None:
            cfg.structure = check_structure(structure, cfg.base)
        return cfg


def check_structure(structure: tuple[list[int], list[int]], base: dict) -> tuple[list[int], list[int]]:
    """(heads per layer, FFN width per layer), checked against the base shape."""
    heads, ffn = structure
    L, nh, inner = base["num_hidden_layers"], base["num_attention_heads"], base["intermediate_size"]
    if len(heads) != L or len(ffn) != L or not all(0 <= h <= nh for h in heads) or not all(0 <= f <= inner for f in ffn):
        raise PruMuxError(f"`structure` needs {L} head counts in 0..{nh} and {L} FFN widths in 0..{inner}, got "
                          f"{len(heads)} and {len(ffn)}")
    return list(heads), list(ffn)


def read_accuracies(path) -> dict[tuple[int, float], float]:
    """{(N, sparsity): accuracy} from a CSV with columns N,sparsity,accuracy (for the Pareto plot)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise PruMuxError(f"{path}: cannot be read ({e.strerror})") from None
    try:
        return {(int(r["N"]), float(r["sparsity"])): float(r["accuracy"]) for r in rows}
    except (KeyError, TypeError, ValueError) as e:
        raise PruMuxError(f"{path}: needs numeric columns N,sparsity,accuracy ({e})") from None


@contextlib.contextmanager
def all_cores():
    """PyTorch on every core while timing (its default is the physical cores), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def generated_model(base: dict, N: int, sparsity: float, seed: int, structure=None) -> PruMuxModel:
    """A compact PruMUX model with a CoFi-like structure at `sparsity` on the base shape (random weights), or
    with `structure` = (heads per layer, FFN width per layer) as given."""
    from transformers import BertConfig

    from .compact import compact

    model = create_model(BertConfig(**base), num_instances=N, num_labels=2, seed=seed)
    heads, ffn = structure or cofi_like_structure(model.config, sparsity, seed=seed)
    model.set_masks(masks_for_structure(model.config, heads, ffn, seed=seed))
    return compact(model)


def format_peers(result: dict) -> str:
    """Each structure's rows grouped by precision: at each precision ours (the fastest of the engines `export
    --runtime auto` chooses between there) and every peer as a ratio to it; the bf16 and int8 lines also as a
    ratio to ours at fp32. Each row's max logit error on its spot check."""
    on_gpu = str((result.get("protocol") or {}).get("device", "cpu")).startswith("cuda")
    device = "cuda" if on_gpu else "cpu"
    ours = set(names("ours_on", device))
    keeps = "what export --device cuda writes" if on_gpu else "what export --runtime auto keeps"
    lines = ["", f"peers, at each precision as a ratio to ours ({keeps} at that precision):"]
    for name in dict.fromkeys(r["name"] for r in result["rows"]):
        rows = [r for r in result["rows"] if r["name"] == name]
        by_precision = {}
        for r in rows:
            by_precision.setdefault(peer_group(r["backend"], device), []).append(r)
        fastest = {p: max((r for r in group if r["backend"] in ours), key=lambda r: r["samples_per_s"], default=None)
                   for p, group in by_precision.items()}
        if fastest.get("fp32") is None:
            continue
        lines.append(f"  {name}:")
        width = max([18] + [len(r["backend"]) for r in rows])
        for precision in ("fp32", "fp16", "bf16", "int8"):
            ours = fastest.get(precision)
            if ours is None:
                continue
            vs_fp32 = "" if precision == "fp32" else f" ({ours['samples_per_s'] / fastest['fp32']['samples_per_s']:.2f}x ours at fp32)"
            lines.append(f"    {precision}: ours = {ours['backend']} {ours['samples_per_s']:.1f}/s{vs_fp32}")
            for r in sorted(by_precision[precision], key=lambda r: -r["samples_per_s"]):
                error = r.get("max_abs_logit_error")
                shown = "" if error is None else f"   max |logit error| {error:.1e}" + (
                    " FAIL" if r.get("spot_check") == "FAIL" else "")
                roof = f"   {r['roofline_fraction']:5.1%} of roofline" if "roofline_fraction" in r else ""
                lines.append(f"      {r['backend']:<{width}} {r['samples_per_s']:>9.1f}/s  "
                             f"{r['samples_per_s'] / ours['samples_per_s']:5.2f}x{roof}{shown}")
    return "\n".join(lines)


def baseline(cfg: BenchConfig) -> dict:
    """Dense BERT (Hugging Face BertForSequenceClassification, random weights) in PyTorch eager."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(cfg.seed)
    model = BertForSequenceClassification(BertConfig(**cfg.base, num_labels=2)).eval().to(backends.torch_device(cfg))
    ids, mask = timing_inputs(cfg.groups_per_batch, cfg.seq, cfg.base["vocab_size"], cfg.seed)
    result, mem = time_torch(lambda a, b: model(input_ids=a, attention_mask=b).logits, ids, mask, cfg)
    row = {"name": "bert-base dense", "N": 1, "sparsity": 0.0, "backend": "torch",
           "samples_per_s": result["samples_per_s"], "batch": ids.shape[0],
           "flops_per_sample": bert_flops_per_sample(cfg.base, cfg.seq), "peak_mib": mem,
           "arithmetic": result["arithmetic"]}
    if cfg.gemm and cfg.device == "cpu":
        row.update(_efficiency(row, gemm_rate(model_gemms(PruMuxConfig(**cfg.base), cfg.groups_per_batch, cfg.seq))))
    return row


def _efficiency(row: dict, rate: float) -> dict:
    """Achieved GFLOP/s (FLOPs per sample x samples/s) and its fraction of the measured GEMM rate."""
    achieved = row["flops_per_sample"] * row["samples_per_s"] / 1e9
    return {"gemm_gflops": rate, "achieved_gflops": achieved, "gemm_fraction": achieved / rate}


def _structures(cfg: BenchConfig):
    for path in cfg.checkpoints:  # named by path (auto collect matches them); s: measured, to 0.01 like a grid
        from .compact import compact

        model = compact(load_checkpoint(path))
        yield str(path), model.config.num_instances, round(describe(model)["sparsity"], 2), model
    if cfg.checkpoints and cfg.structure is None:  # a given structure is timed beside them, in the same run
        return
    for N in cfg.instances:
        if cfg.structure is not None:
            model = generated_model(cfg.base, N, 0.0, cfg.seed, cfg.structure)
            yield f"N={N} given", N, round(describe(model)["sparsity"], 4), model
            continue
        for s in cfg.sparsities:
            yield f"N={N} s={s:g}", N, s, None


def check_config(cfg: BenchConfig) -> None:
    """Refuse what a run could only measure wrongly or not at all, before any work: TF32 on the CPU (there is
    none), OpenVINO rows on a GPU or without OpenVINO (bf16 without a bf16 CPU), and int8 rows on a GPU
    (dynamic quantization's DynamicQuantizeMatMul / QAttention are CPU kernels, so a "cuda" row would time
    the CPU)."""
    on_gpu = torch.device(cfg.device).type == "cuda"
    check_tf32(torch.device(cfg.device), cfg.tf32)
    unknown = [b for b in cfg.backends if b not in BACKENDS_BY_NAME]
    if unknown:
        raise PruMuxError(f"unknown backend {unknown[0]!r}; choose from {', '.join(ALL_BACKENDS)}")
    if on_gpu and set(cfg.backends) & set(OPENVINO_BACKENDS):
        raise PruMuxError(f"the openvino backends: {why_not('openvino', 'cuda')}; leave them out with `device` cuda")
    if set(cfg.backends) & set(OPENVINO_BACKENDS):
        from .runtime_openvino import check_bf16, require_openvino

        require_openvino()
        if "openvino-bf16" in cfg.backends:
            check_bf16()
        if "openvino-int8" in cfg.backends:
            from .runtime_openvino import require_nncf

            require_nncf("leave out the openvino-int8 backend; onnxruntime-int8 times ONNX Runtime's int8")
    gpu_only = [b for b in cfg.backends if b in GPU_ONLY_BACKENDS]
    if not on_gpu and gpu_only:
        raise PruMuxError(f"{', '.join(gpu_only)} time GPU arithmetic or GPU-target graphs; use `device` cuda, or leave "
                          "them out")
    if on_gpu and set(cfg.backends) & set(CPU_ONLY_BACKENDS):
        raise PruMuxError(f"onnxruntime-int8: {why_not('onnxruntime', 'cuda', 'int8')}; leave it out or bench it with "
                          "`device` cpu")


@all_cores()
def run_bench(cfg: BenchConfig, progress: bool = True) -> dict:
    """Time every structure of `cfg` (generated at each sparsity for each N, cfg.structure, or
    cfg.checkpoints) on each backend, side by side with the dense BERT-base baseline, in one run.

    Returns {"machine", "device", "protocol", "base_shape", "baseline", "rows"}: one row per structure and backend with
    samples_per_s (median over cfg.repeats timed runs of a batch of cfg.groups_per_batch*N rows at sequence
    cfg.seq), speedup over the baseline, flops_per_sample (FLOPs), flop_bound_speedup, bound_fraction,
    achieved GFLOP/s and its share of the GEMM rate measured here (roofline.py), peak_mib (resident memory
    growth, MiB), max_abs_logit_error of every row against PyTorch fp32 on its first 2N timed rows and that
    spot check's verdict (spot_check pass / FAIL at the precision's tolerance, backends.spot_check_verdict; the
    command exits 1 after its reports when one fails); with cfg.data, end-to-end text -> labels rates. Raises PruMuxError (a missing GPU or onnxruntime-gpu for cfg.device cuda) before any timing.
    PyTorch uses every core while it runs; the thread count is restored afterwards."""
    check_config(cfg)
    device = backends.torch_device(cfg)
    on_gpu = torch.device(cfg.device).type == "cuda"
    if on_gpu and any(BACKENDS_BY_NAME[b].runtime == "onnxruntime" for b in cfg.backends):
        from .engine import ort_providers

        ort_providers("cuda")  # refuse before minutes of work when onnxruntime-gpu is missing
    items = list(_structures(cfg))
    ceilings = None
    if on_gpu:  # the GPU roofline's two ceilings, measured at the start of this run
        from . import roofline

        ceilings = roofline.gpu_ceilings(device)
    bar = progress_bar(total=len(items) * len(cfg.backends) + 1, desc="bench", unit="run", disable=not progress)
    bar.set_postfix_str("baseline", refresh=False)
    base = baseline(cfg)
    bar.update(1)
    rows, rates = [], {}
    for name, N, s, model in items:
        model = model or generated_model(cfg.base, N, s, cfg.seed)
        info = describe(model)
        flops = prumux_flops_per_sample(model.config, cfg.seq)
        ids, mask = timing_inputs(cfg.groups_per_batch * N, cfg.seq, model.config.vocab_size, cfg.seed)
        with tempfile.TemporaryDirectory() as tmp:
            # graphs are exported from the CPU model; PyTorch then runs where the benchmark runs
            graphs = write_graphs(model, cfg, cfg.backends, Path(tmp))
            model = model.to(device)
            for backend in cfg.backends:
                bar.set_postfix_str(f"{name} {backend}", refresh=False)
                result, mem = time_backend(backend, model, graphs, ids, mask, cfg)
                rows.append(_row(name, N, s, info, backend, result, mem, ids.shape[0], flops, base))
                rows[-1].update(spot_check_verdict(backend, rows[-1]["max_abs_logit_error"], cfg.tf32))
                if ceilings is not None:
                    rows[-1].update(_roofline(rows[-1], model.config, cfg, ceilings))
                if cfg.data and backend in ORT_BACKENDS and getattr(model, "tokenizer_dir", None):
                    rows[-1].update(_end_to_end(graphs[backend], model, cfg))
                if cfg.gemm and not on_gpu and backend != "openvino-bf16":  # (no bf16 GEMM reference) the machine's rate on this model's dense shapes, same run
                    int8 = backend in ("onnxruntime-int8", "openvino-int8") and int8_capable()
                    dense = model.config.full_size()
                    key = (dumps(dense.to_dict(), sort_keys=True), int8)
                    if key not in rates:
                        rates[key] = gemm_rate(model_gemms(dense, cfg.groups_per_batch, cfg.seq), int8)
                    rows[-1].update(_efficiency(rows[-1], rates[key]), gemm_precision="int8" if int8 else "fp32")
                bar.update(1)
    bar.close()
    return {"machine": machine_info(), "device": device_info(device), "gpu_ceilings": ceilings,
            "protocol": {"seq": cfg.seq, "groups_per_batch": cfg.groups_per_batch, "device": cfg.device,
                         "warmup": cfg.warmup, "repeats": cfg.repeats, "statistic": "median",
                         "protocol": cfg.protocol, "tf32": cfg.tf32, "peak_memory": peak_memory_meaning("cuda" if on_gpu else "cpu")},
            "base_shape": cfg.base, "baseline": base, "rows": rows}


def _roofline(row: dict, model_cfg, cfg: BenchConfig, ceilings: dict) -> dict:
    """A GPU row against the roofline measured at the start of the run (roofline.gpu_roofline_ms): the floor of
    one batch (FLOPs at the fp16 GEMM rate, or the fewest bytes at the copy rate, fp16 activations for every
    row: the same floor for all, so fractions compare) and the fraction of it the row reaches."""
    from .roofline import activation_bytes, gpu_roofline_ms

    batch = row["batch"]
    floor_ms = gpu_roofline_ms(row["flops_per_sample"] * batch, activation_bytes(model_cfg, batch, cfg.seq, 2), ceilings)
    measured_ms = batch / row["samples_per_s"] * 1e3
    return {"roofline_ms": floor_ms, "batch_ms": measured_ms, "roofline_fraction": floor_ms / measured_ms}


def _end_to_end(graph: Path, model: PruMuxModel, cfg: BenchConfig) -> dict:
    """Raw text to labels through this graph on the data's first 4 batches of dev rows: the fast tokenizer
    batched, rows padded to each batch's longest versus to cfg.seq."""
    from .data import load_examples, load_tokenizer, resolve_task
    from .runners import open_runner
    from .timing import end_to_end

    batch = cfg.groups_per_batch * model.config.num_instances
    task = resolve_task(cfg.task, config=model.config)
    examples = load_examples(task, cfg.data, "dev", limit=4 * batch)
    tokenizer = load_tokenizer(model.tokenizer_dir)
    runner = open_runner("onnxruntime", graph)
    rates = {f"e2e_{kind}_samples_per_s": end_to_end(runner, tokenizer, examples.text_a, examples.text_b, batch,
                                                     cfg.seq, kind == "fixed", model.config.uses_token_types)
             for kind in ("longest", "fixed")}
    return {**rates, "e2e_rows": len(examples)}


@all_cores()
def run_latency(cfg: BenchConfig, progress: bool = True) -> dict:
    """Serving latency of the optimized fp32 (and int8, when asked) engines: p50 / p90 / p99 per call for
    single requests and batches of N and 4N rows at sequence cfg.seq, one call at a time. A lone request
    still runs a whole mux group (the graph fills it with copies), so it costs what a batch of N costs."""
    from .runners import open_runner
    from .timing import latency

    backends = [b for b in cfg.backends if b in ("onnxruntime-opt", "onnxruntime-int8")] or ["onnxruntime-opt"]
    items = list(_structures(cfg))
    rows = []
    for name, N, s, model in progress_bar(items, desc="latency", disable=not progress):
        model = model or generated_model(cfg.base, N, s, cfg.seed)
        with tempfile.TemporaryDirectory() as tmp:
            graphs = write_graphs(model, cfg, backends, Path(tmp))
            for backend in backends:
                runner = open_runner("onnxruntime", graphs[backend], precision=BACKENDS_BY_NAME[backend].graph[0])
                for batch in sorted({1, N, 4 * N}):
                    ids, mask = timing_inputs(batch, cfg.seq, model.config.vocab_size, cfg.seed)
                    result = latency(runner.timed({"input_ids": ids.numpy(), "attention_mask": mask.numpy()}))
                    rows.append({"name": name, "N": N, "sparsity": s, "backend": backend, "batch": batch,
                                 "seq": cfg.seq, **result, "per_row_p50_ms": result["p50_ms"] / batch})
    return {"machine": machine_info(), "protocol": {"seq": cfg.seq, "statistic": "percentiles of single calls",
                                                    "protocol": "latency"}, "latency": rows}


def _name_width(rows) -> int:
    """Width of the structure column: checkpoint rows are named by their path."""
    return max([15] + [len(r["name"]) for r in rows])


def format_latency(result: dict) -> str:
    w = _name_width(result["latency"])
    lines = [f"{'structure':<{w}} {'backend':<17} {'batch':>5} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
             f"{'ms/row':>8}"]
    for r in result["latency"]:
        lines.append(f"{r['name']:<{w}} {r['backend']:<17} {r['batch']:>5} {r['p50_ms']:>8.2f} {r['p90_ms']:>8.2f} "
                     f"{r['p99_ms']:>8.2f} {r['per_row_p50_ms']:>8.2f}")
    m = result["machine"]
    lines += ["", f"sequence {result['protocol']['seq']}; machine: {m['cpu']} ({m['cores']} cores), onnxruntime "
                  f"{m['onnxruntime']}; a batch of 1 runs a whole mux group of N rows (copies fill it)"]
    return "\n".join(lines)


def _row(name, N, s, info, backend, result, mem, batch, flops, base) -> dict:
    bound = base["flops_per_sample"] / flops
    speedup = result["samples_per_s"] / base["samples_per_s"]
    return {"name": name, "N": N, "sparsity": s, "actual_sparsity": round(info["sparsity"], 4),
            "backend": backend, "samples_per_s": result["samples_per_s"], "batch": batch, "speedup": speedup,
            "flops_per_sample": flops, "flop_bound_speedup": bound, "bound_fraction": speedup / bound,
            "peak_mib": mem, "repeats": result["repeats"], "max_abs_logit_error": result.get("max_abs_logit_error"),
            "arithmetic": result.get("arithmetic"),
            "heads": [l["heads"] for l in info["layers"]], "ffn": [l["ffn"] for l in info["layers"]]}


def machine_info() -> dict:
    import onnxruntime
    import transformers

    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "transformers": transformers.__version__, "torch_threads": torch.get_num_threads()}


CSV_FIELDS = ["name", "N", "sparsity", "actual_sparsity", "backend", "samples_per_s", "batch", "speedup",
              "flops_per_sample", "flop_bound_speedup", "bound_fraction", "peak_mib", "max_abs_logit_error"]


def write_outputs(result: dict, csv_path=None, json_path=None, force: bool = False):
    """Write the result as JSON and/or its rows as CSV, each atomically (replacing a file only with force)."""
    if json_path:
        write_file(json_path, dumps(result, indent=2) + "\n", force)
    if csv_path:
        import io

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        base = result["baseline"]
        writer.writerow({**base, "speedup": 1.0, "flop_bound_speedup": 1.0, "bound_fraction": 1.0})
        for row in result["rows"]:
            writer.writerow(row)
        write_file(csv_path, buf.getvalue(), force)


def _mib(value) -> str:
    return "-" if value is None else f"{value:.0f}"  # None: not measured (ONNX Runtime on a GPU)


IMPLAUSIBLE_OF_BOUND = 10.0  # a row 10x past its FLOP bound: the baseline was slowed (measured: at most 2.4x here)


def format_table(result: dict) -> str:
    base = result["baseline"]
    proto = result["protocol"]
    w = _name_width([base] + result["rows"])
    lines = [f"protocol {proto.get('protocol', 'ours')}: batches of {proto['groups_per_batch']}*N rows x sequence "
             f"{proto['seq']}; baseline: {base['name']} eager, {base['samples_per_s']:.1f} samples/s at batch "
             f"{base['batch']}, {base['flops_per_sample'] / 1e9:.1f} GFLOP/sample", "",
             f"{'structure':<{w}} {'backend':<17} {'samples/s':>10} {'speedup':>8} {'FLOP bound':>10} "
             f"{'of bound':>8} {'GFLOP/s':>8} {'of GEMM':>8} {'peak MiB':>9}"]
    for r in [base] + result["rows"]:
        gemm = (f"{r['achieved_gflops']:>8.1f} {r['gemm_fraction']:>8.0%}" if "gemm_fraction" in r
                else f"{'-':>8} {'-':>8}")
        speedup = r["samples_per_s"] / base["samples_per_s"]
        bound = base["flops_per_sample"] / r["flops_per_sample"]
        lines.append(f"{r['name']:<{w}} {r['backend']:<17} {r['samples_per_s']:>10.1f} {speedup:>7.1f}x "
                     f"{bound:>9.1f}x {speedup / bound:>8.0%} {gemm} {_mib(r.get('peak_mib')):>9}")
        if "e2e_longest_samples_per_s" in r:
            lines.append(f"{'':<{w}} {'  text -> labels':<17} {r['e2e_longest_samples_per_s']:>10.1f} (padded to each "
                         f"batch's longest row), {r['e2e_fixed_samples_per_s']:.1f} (padded to {proto['seq']})")
    implausible = [r["name"] + " " + r["backend"] for r in result["rows"]
                   if r["samples_per_s"] / base["samples_per_s"] > IMPLAUSIBLE_OF_BOUND * base["flops_per_sample"]
                   / r["flops_per_sample"]]
    if implausible:
        lines += ["", f"warning: {', '.join(implausible)} ran over {IMPLAUSIBLE_OF_BOUND:.0f}x faster than the "
                      "FLOP bound allows, so the baseline was probably slowed by other work on this machine; rerun "
                      "the comparison on a quiet one"]
    m = result["machine"]
    lines += ["", f"machine: {m['cpu']} ({m['cores']} cores), torch {m['torch']}, onnxruntime {m['onnxruntime']}; "
                  "median of timed repeats after warm-up; GFLOP/s achieved, and its share of ONNX Runtime's own "
                  "GEMM rate on the same products (fp32, int8 for int8 rows), measured in the same run"]
    if str(proto.get("device", "cpu")).startswith("cuda"):
        gpu = (result.get("device") or {}).get("gpu")
        lines.append(f"GPU: {gpu}; fp32 matmuls with TF32 {'on (--tf32)' if proto.get('tf32') else 'off'} on every "
                     f"row; peak MiB: {proto.get('peak_memory', peak_memory_meaning('cuda'))}")
    return "\n".join(lines)


def accuracy_points(result: dict, accuracies: dict, backend: str) -> dict[str, list[tuple[float, float, int, float]]]:
    """{method: [(speedup, accuracy, N, s), ...] fastest first} for the points of `accuracies` ({(N, s): %})
    that `backend` timed in `result`; methods as in the paper's Figure 3 (auto.method_of)."""
    from .auto import method_of

    speedups = {}  # the fastest row per (N, s): two checkpoints may round to the same point
    for r in result["rows"]:
        key = (r["N"], r["sparsity"])
        if r["backend"] == backend and key in accuracies:
            speedups[key] = max(speedups.get(key, 0.0), r["speedup"])
    points = {}
    for key, speedup in speedups.items():
        points.setdefault(method_of(*key), []).append((speedup, accuracies[key], *key))
    return {m: sorted(p, reverse=True) for m, p in points.items()}


def pareto_front(points):
    """The points no faster point is as accurate as: [(speedup, accuracy, ...), ...] given fastest first."""
    front, top = [], -np.inf
    for p in points:
        if p[1] > top:
            front.append(p)
            top = p[1]
    return front


def draw_methods(ax, points: dict, backend: str):
    """The paper's Figure 3 on one axis: accuracy against speedup, each method's points and Pareto front."""
    colors = {"baseline": "black", "CoFi": "tab:orange", "DataMUX": "tab:green", "PruMUX": "tab:blue"}
    for method, pts in points.items():
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=colors[method], label=method)
        front = pareto_front(pts)
        # between two front points only the faster one's accuracy is available; the slower one's is reached
        # only at its own speed: a staircase
        ax.plot([p[0] for p in front], [p[1] for p in front], color=colors[method], drawstyle="steps-post")
        for sp, acc, n, s in pts:
            ax.annotate(f"N={n} s={s:g}", (sp, acc), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel(f"speedup over BERT-base ({backend})")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("accuracy vs speedup per method")
    ax.legend()


def plot(result: dict, path, accuracies: dict | None = None, force: bool = False,
         accuracy_backend: str = "onnxruntime-opt"):
    """Speedup heatmap over (N, s) per backend; with accuracies ({(N, s): %}), accuracy against
    `accuracy_backend`'s speedup per method (PruMUX, CoFi, DataMUX: the paper's Figure 3) with each
    method's Pareto front. Raises PruMuxError when matplotlib is missing or no accuracy point was timed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PruMuxError("plotting needs matplotlib: pip install 'prumux-deploy[plot]'") from None
    points = accuracy_points(result, accuracies, accuracy_backend) if accuracies else None
    if accuracies and not points:
        raise PruMuxError(f"no (N, sparsity) of the accuracy CSV was timed on {accuracy_backend}; choose another "
                          "--accuracy-backend or time the checkpoints it was measured on (--checkpoint); the saved "
                          "--json can be plotted again with --from-json")
    rows = [r for r in result["rows"] if r["sparsity"] is not None]
    backends = sorted({r["backend"] for r in rows})
    Ns = sorted({r["N"] for r in rows})
    Ss = sorted({r["sparsity"] for r in rows})
    panels = len(backends) + (1 if accuracies else 0)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), squeeze=False)
    for ax, backend in zip(axes[0], backends):
        grid = np.full((len(Ns), len(Ss)), np.nan)
        for r in rows:
            if r["backend"] == backend:
                grid[Ns.index(r["N"]), Ss.index(r["sparsity"])] = r["speedup"]
        im = ax.imshow(grid, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(Ss)), [f"{s:g}" for s in Ss])
        ax.set_yticks(range(len(Ns)), [str(n) for n in Ns])
        ax.set_xlabel("sparsity s")
        ax.set_ylabel("instances N")
        ax.set_title(f"speedup over BERT-base ({backend})")
        for i in range(len(Ns)):
            for j in range(len(Ss)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.1f}x", ha="center", va="center", color="white", fontsize=8)
        fig.colorbar(im, ax=ax)
    if accuracies:
        draw_methods(axes[0][-1], points, accuracy_backend)
    fig.tight_layout()
    try:
        with atomic_file(path, force) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
    finally:
        plt.close(fig)
