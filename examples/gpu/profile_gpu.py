"""Where a PruMUX engine's GPU time goes: every variant of one generated structure timed side by side, and the
kernels of the slowest ones listed by torch.profiler (CUDA activity records every kernel in the process,
ONNX Runtime's included).

    python3 examples/gpu/profile_gpu.py --out DIR [--points 10:0.95,2:0.95] [--compile]

Variants: PyTorch eager fp32 / fp16 (the model in half precision) / fp16 with FFN widths padded to a
multiple of 64 (zero units: the same function); torch.compile fp16 (--compile); ONNX Runtime's CUDA provider on
the GPU-optimized fp32 and fp16 graphs, with and without CUDA graphs. Paper protocol: batch 128*N, sequence 128.
Writes DIR/profile.json and DIR/kernels-*.txt; prints a short table last. On a machine without a GPU it runs
the same code on the CPU with a tiny base (--device cpu, a dry run of the script itself).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch


def median_ms(fn, device, warmup=5, iters=30) -> float:
    """Median time of fn() in ms: CUDA events on a GPU (roofline.cuda_median_ms), the wall clock on the CPU."""
    if device == "cuda":
        from prumux_deploy.roofline import cuda_median_ms

        return cuda_median_ms(fn, warmup, iters)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def kernel_table(fn, device, rows=25) -> str:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    for _ in range(3):
        fn()
    with profile(activities=activities) as prof:
        for _ in range(5):
            fn()
        if device == "cuda":
            torch.cuda.synchronize()
    key = "cuda_time_total" if device == "cuda" else "cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=90)


def pad_ffn(model, multiple: int):
    """The same model with every FFN width rounded up to `multiple` (extra units: zero weights and bias in,
    zero weights out, so gelu(0) * 0 adds nothing)."""
    import copy

    model = copy.deepcopy(model)
    for layer in model.layers:
        ffn = layer.ffn
        if ffn is None:
            continue
        width = ffn.up.out_features
        padded = -(-width // multiple) * multiple
        if padded == width:
            continue
        up = torch.nn.Linear(ffn.up.in_features, padded).to(ffn.up.weight)
        down = torch.nn.Linear(padded, ffn.down.out_features).to(ffn.down.weight)
        with torch.no_grad():
            up.weight.zero_(), up.bias.zero_(), down.weight.zero_()
            up.weight[:width] = ffn.up.weight
            up.bias[:width] = ffn.up.bias
            down.weight[:, :width] = ffn.down.weight
            down.bias.copy_(ffn.down.bias)
        ffn.up, ffn.down = up, down
    return model


def ort_runner(path, feeds, device, cuda_graph=False):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if device == "cuda":
        cuda = {"use_tf32": "0"}
        if cuda_graph:
            cuda["enable_cuda_graph"] = "1"
        providers = [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(path), options, providers=providers)
    if device != "cuda":
        return lambda: session.run(["logits"], feeds), session
    binding = session.io_binding()
    staged = {n: ort.OrtValue.ortvalue_from_numpy(v, "cuda", 0) for n, v in feeds.items()}
    for n, v in staged.items():
        binding.bind_ortvalue_input(n, v)
    out = ort.OrtValue.ortvalue_from_shape_and_type([next(iter(feeds.values())).shape[0], 2], np.float32, "cuda", 0)
    binding.bind_ortvalue_output("logits", out)

    def run():
        session.run_with_iobinding(binding)
        return staged, out

    return run, session


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--points", default="10:0.95,2:0.95")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--groups", type=int, default=None, help="groups per batch (default 128 on cuda, 2 on cpu)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from prumux_deploy.reference import timing_inputs
    from prumux_deploy.bench import BERT_BASE, QUICK_BASE, generated_model
    from prumux_deploy.export.onnx import export_onnx
    from prumux_deploy.export.optimize import convert_fp16, optimize_onnx
    from prumux_deploy.export.pipeline import write_graph

    device = args.device
    base = BERT_BASE if device == "cuda" else QUICK_BASE
    groups = args.groups or (128 if device == "cuda" else 2)
    seq = 128 if device == "cuda" else 32
    report = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "points": []}
    if device == "cuda":  # the two ceilings of the roofline, measured here (as bench does)
        from prumux_deploy.roofline import gpu_ceilings

        report.update(gpu_ceilings())
    lines = []
    for point in args.points.split(","):
        N, s = int(point.split(":")[0]), float(point.split(":")[1])
        rows = groups * N
        cpu_model = generated_model(base, N, s, 0).eval()
        ids, mask = timing_inputs(rows, seq, cpu_model.config.vocab_size, 0)
        feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
        entry = {"N": N, "s": s, "rows": rows, "seq": seq, "ms": {}, "errors": {},
                 "heads": cpu_model.config.heads_per_layer, "ffn": cpu_model.config.ffn_per_layer}
        tmp = Path(tempfile.mkdtemp())
        raw, g32, g16 = tmp / "raw.onnx", tmp / "gpu32.onnx", tmp / "gpu16-norms32.onnx"
        t32, t16 = tmp / "target32.onnx", tmp / "target16.onnx"
        t0 = time.time()
        export_onnx(cpu_model, raw, max_seq_length=seq)
        entry["fused_fp32"] = optimize_onnx(raw, g32, for_gpu=True)
        entry["fused_fp16"] = convert_fp16(g32, g16)  # the CPU fp16 form: normalisations in fp32, Casts around
        write_graph(cpu_model, t32, seq, "fp32", "cuda")  # what export --device cuda writes
        write_graph(cpu_model, t16, seq, "fp16", "cuda")
        fixed = tmp / "target16-fixed.onnx"  # the same graph with batch and sequence fixed: can CUDA graphs run it?
        import onnx
        from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_dim_param_fixed

        proto = onnx.load(str(t16))
        make_dim_param_fixed(proto.graph, "batch", rows)
        make_dim_param_fixed(proto.graph, "sequence", seq)
        fix_output_shapes(proto)
        onnx.save(proto, str(fixed))
        entry["export_s"] = time.time() - t0
        with torch.no_grad():
            want = cpu_model(ids[: 4 * N], mask[: 4 * N]).numpy()
        dev_ids, dev_mask = ids.to(device), mask.to(device)
        variants = {}
        m32 = cpu_model.to(device)
        variants["torch fp32"] = (lambda m: lambda: m(dev_ids, dev_mask))(m32)
        if device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False
            m16 = pad = None
            import copy

            m16 = copy.deepcopy(m32).half()
            variants["torch fp16"] = lambda: m16(dev_ids, dev_mask)
            pad = pad_ffn(m16, 64)
            variants["torch fp16 ffn%64"] = lambda: pad(dev_ids, dev_mask)
            if args.compile:
                t0 = time.time()
                comp = torch.compile(m16)
                with torch.no_grad():
                    comp(dev_ids, dev_mask)
                entry["compile_s"] = time.time() - t0
                variants["torch.compile fp16"] = lambda: comp(dev_ids, dev_mask)
        graphs = (("ort fp32 gpu-graph", g32), ("ort fp16 norms32", g16), ("ours fp32 (export --device cuda)", t32),
                  ("ours fp16 (export --device cuda)", t16))
        for name, graph in graphs + (("ours fp16 fixed shape", fixed),):
            for cg in ((False, True) if device == "cuda" and "fixed" in name else (False,)):
                label = name + (" cuda-graph" if cg else "")
                try:
                    run, session = ort_runner(graph, feeds, device, cg)
                    run()
                    variants[label] = run
                except Exception as e:  # noqa: BLE001 - an exploration: record and go on
                    entry["errors"][label] = f"{type(e).__name__}: {str(e)[:400]}"
        for label, fn in variants.items():
            try:
                with torch.no_grad():
                    entry["ms"][label] = median_ms(fn, device)
            except Exception as e:  # noqa: BLE001
                entry["errors"][label] = f"{type(e).__name__}: {str(e)[:400]}"
                traceback.print_exc()
        # parity of the fp16 padded model against fp32 (the padding must not change the function)
        if device == "cuda":
            with torch.no_grad():
                a = m16(dev_ids[: 4 * N], dev_mask[: 4 * N]).float().cpu().numpy()
                b = pad(dev_ids[: 4 * N], dev_mask[: 4 * N]).float().cpu().numpy()
            entry["pad_vs_fp16_max_err"] = float(np.abs(a - b).max())
            entry["fp16_vs_fp32_max_err"] = float(np.abs(a - want).max())
        profiled = [k for k in ("torch fp16", "ours fp16 (export --device cuda)", "ort fp16 norms32",
                                "torch.compile fp16")
                    if k in variants and k in entry["ms"]]
        for label in profiled if not report["points"] else []:  # the first point's kernels only
            try:
                with torch.no_grad():
                    table = kernel_table(variants[label], device)
                slug = "".join(c if c.isalnum() else "_" for c in label).strip("_")
                (out / f"kernels-N{N}-{slug}.txt").write_text(table)
            except Exception as e:  # noqa: BLE001
                entry["errors"]["profile " + label] = f"{type(e).__name__}: {str(e)[:300]}"
        report["points"].append(entry)
        for label, ms in entry["ms"].items():
            lines.append(f"N={N} s={s}  {label:<34} {ms:8.3f} ms  {rows / ms * 1e3:12,.0f}/s")
        for label, err in entry["errors"].items():
            lines.append(f"N={N} s={s}  {label:<26} ERROR {err[:300]}")
        del variants, m32
        if device == "cuda":
            torch.cuda.empty_cache()
        (out / "profile.json").write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps({k: v for k, v in report.items() if k != "points"}))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
