"""`prumux-deploy bench`: throughput (or serving latency) of PruMUX structures and engines, side by side."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import PruMuxError
from ..options import COUNT, SEED, force_option, number_list


def _structure(ctx, param, text):
    """'2,2,1:324,61,138' -> ([2, 2, 1], [324, 61, 138]); checked against the base shape by BenchConfig."""
    if text is None:
        return None
    try:
        heads, ffn = ([int(v) for v in part.split(",")] for part in text.split(":"))
    except ValueError:
        raise click.BadParameter(f"expected HEADS:FFN, comma-separated integers per layer, got {text!r}") from None
    return heads, ffn


def _from_json(ctx, saved, csv_path, plot_path, accuracies, accuracy_backend, force):
    """bench --from-json: the table, --csv and --plot of a saved run; refuses options that choose what to time."""
    from click.core import ParameterSource

    from ..bench import format_table, plot, write_outputs
    from ..documents import read_bench_result

    timing = [p for p in ctx.command.params if p.name not in _RENDER_OPTIONS
              and ctx.get_parameter_source(p.name) is not ParameterSource.DEFAULT]
    if timing:
        name = "/".join(timing[0].opts + timing[0].secondary_opts)
        raise PruMuxError(f"--from-json renders a saved run; {name} chooses what to time and does not apply "
                          "(drop it, or time a new run without --from-json)")
    result = read_bench_result(saved)
    timed = sorted({r.get("backend") for r in result["rows"]})
    if accuracies and accuracy_backend not in timed:
        raise PruMuxError(f"--accuracy-backend {accuracy_backend} is not in {saved}; choose one of {', '.join(timed)}")
    click.echo(format_table(result))
    write_outputs(result, csv_path, None, force)
    if plot_path:
        plot(result, plot_path, accuracies, force, accuracy_backend)
        click.echo(f"plot: {plot_path}")


_RENDER_OPTIONS = {"saved_json", "csv_path", "json_path", "plot_path", "accuracy_csv", "accuracy_backend", "force"}


@click.command()
@click.option("--instances", "-n", callback=number_list(int, 1), default=None,
              help="Comma-separated N values (default 1,2,5,10).")
@click.option("--sparsities", "-s", callback=number_list(float, 0.0, 1.0), default=None,
              help="Comma-separated sparsities (default 0,0.6,0.8,0.9,0.95).")
@click.option("--backend", "backends", multiple=True,
              type=click.Choice(["torch", "torch-compile", "onnxruntime", "onnxruntime-opt", "onnxruntime-int8",
                                 "openvino", "openvino-bf16", "openvino-int8", "torch-tf32", "torch-fp16",
                                 "torch-bf16", "torch-compile-fp16", "onnxruntime-gpu", "onnxruntime-gpu-fp16",
                                 "onnxruntime-gpu-fp16-cudagraph"]),
              help="Backends to time, repeatable (default on the CPU: torch and the three ONNX Runtime ones; with "
                   "--device cuda: torch, torch-fp16, onnxruntime-gpu and onnxruntime-gpu-fp16): PyTorch eager, "
                   "torch.compile, plain ONNX Runtime, with the transformer optimizer, optimized + int8, "
                   "OpenVINO on the optimized graph in fp32 or bf16, and OpenVINO int8 (NNCF, calibrated on the "
                   "timed rows: a speed figure; export --data measures accuracy) (the openvino extra); on a GPU "
                   "also PyTorch eager in TF32, fp16 and bf16, torch.compile in fp16, and the engines `export "
                   "--device cuda` writes in fp32 and fp16, the fp16 one also as CUDA-graph replays of its graph fixed at "
                   "the timed shape (onnxruntime-gpu-fp16-cudagraph).")
@click.option("--peers", is_flag=True,
              help="Time the same model in every runtime a user could pick and print them by precision, each as a "
                   "ratio to ours at that precision. CPU: PyTorch eager, torch.compile, ONNX Runtime, OpenVINO fp32 "
                   "and bf16 where the CPU has it, ONNX Runtime and OpenVINO int8; ours is what `export --runtime "
                   "auto` keeps (fp32: the faster of ONNX Runtime and OpenVINO; int8: the faster int8), with bf16's "
                   "and int8's ratio to ours at fp32. --device cuda: PyTorch eager in fp32, TF32, fp16 and bf16, "
                   "torch.compile in fp32 and fp16, the CPU-tuned graph, and ours (`export --device cuda`, fp32 and "
                   "fp16), each row also as a fraction of the GPU roofline measured at the start of the run.")
@click.option("--checkpoint", "checkpoints", multiple=True, type=click.Path(path_type=Path),
              help="Time these trained checkpoints instead of generated structures (with --structure: beside "
                   "that structure, in the same run).")
@click.option("--structure", callback=_structure, default=None, metavar="HEADS:FFN",
              help="Time this structure on the base shape instead of generated sparsities: heads per layer and FFN "
                   "width per layer, e.g. CoFi's s=0.95 average 2,2,1,2,1,1,0,0,2,1,1,1:324,61,138,29,112,29,22,164,"
                   "99,61,87,138.")
@click.option("-b", "--groups-per-batch", type=COUNT, default=None, help="b: batches hold b*N rows (default 32; 128 with --device cuda, as in the paper).")
@click.option("--seq", type=COUNT, default=None, help="Padded sequence length (default 128).")
@click.option("--repeats", type=COUNT, default=None, help="Timed repeats per measurement (median; default 5).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the generated structures and weights.")
@click.option("--quick", is_flag=True, help="One-minute smoke run: a small base shape and a 2x2 grid.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="cuda: PyTorch and the baseline on the GPU, ONNX Runtime on its CUDA provider (IO binding), the "
                   "paper's batch of 128*N by default; fp32 matmuls without TF32 unless --tf32, onnxruntime-int8 "
                   "left out (CPU kernels), peak MiB from PyTorch's GPU allocator (not measured for ONNX Runtime).")
@click.option("--tf32", is_flag=True,
              help="--device cuda: run every row's fp32 matmuls (PyTorch, the baseline, ONNX Runtime's use_tf32) in "
                   "TF32; recorded in the result.")
@click.option("--protocol", type=click.Choice(["ours", "paper"]), default=None,
              help="Batch protocol: ours (batches of 32*N rows, the baseline 32; the CPU default) or paper (128*N, "
                   "the baseline 128: the paper's batch; the GPU default). -b overrides both.")
@click.option("--latency", is_flag=True,
              help="Serving latency instead of throughput: p50/p90/p99 per call for batches of 1, N and 4N rows "
                   "on the optimized engine (and int8 with --backend onnxruntime-int8).")
@click.option("--data", default=None,
              help="With --checkpoint: also time text -> labels end to end on this data's dev rows (any --data form "
                   "validate takes), padded to each batch's longest row and to --seq.")
@click.option("--task", default=None, help="The --data task when it is not the checkpoint's.")
@click.option("--gemm/--no-gemm", default=True, show_default=True,
              help="Measure ONNX Runtime's GEMM rate on each model's own matrix products and report every row's "
                   "achieved GFLOP/s as a fraction of it.")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), default=None, help="Write rows as CSV.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write everything as JSON.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), default=None,
              help="Write a PNG: speedup heatmaps and, with --accuracy, accuracy against speedup per method.")
@click.option("--accuracy", "accuracy_csv", type=click.Path(path_type=Path), default=None,
              help="CSV with columns N,sparsity,accuracy (e.g. `auto collect`'s) for the plot's accuracy panel: "
                   "each method's points (PruMUX, CoFi alone, DataMUX alone) and Pareto front, as the paper's "
                   "Figure 3.")
@click.option("--accuracy-backend", default="onnxruntime-opt", show_default=True,
              type=click.Choice(["torch", "torch-compile", "onnxruntime", "onnxruntime-opt", "onnxruntime-int8"]),
              help="Whose speedups the accuracy panel plots: the engine the --accuracy numbers were measured on.")
@click.option("--from-json", "saved_json", type=click.Path(path_type=Path), default=None,
              help="Time nothing: print the table of a run saved with --json and write its --csv / --plot (e.g. "
                   "to plot it with --accuracy later). The options that choose what to time do not apply.")
@force_option("--csv, --json and --plot files that exist")
def bench(instances, sparsities, backends, peers, checkpoints, structure, groups_per_batch, seq, repeats, seed, quick, device,
          tf32, protocol, latency, data, task, gemm, csv_path, json_path, plot_path, accuracy_csv, accuracy_backend,
          saved_json, force):
    """Throughput of PruMUX structures vs a dense BERT-base baseline, measured side by side in one run.

    Structures are CoFi-like and generated at each target sparsity on the BERT-base shape (see
    prumux_deploy/generate.py), or taken from --checkpoint. Reports samples/s, speedup, FLOPs per sample,
    the FLOP-bound speedup and the fraction of it achieved, and peak memory.
    """
    from ..atomic import check_file_target
    from ..bench import BenchConfig, format_table, plot, read_accuracies, run_bench, write_outputs

    if saved_json and json_path:
        raise PruMuxError("--from-json reads a saved run and --json would only copy it; drop --json")
    if accuracy_csv and not plot_path:
        raise PruMuxError("--accuracy only feeds the plot; add --plot FILE.png")
    for path in (csv_path, json_path, plot_path):
        if path:
            check_file_target(path, force)  # refuse before minutes of timing
    accuracies = read_accuracies(accuracy_csv) if accuracy_csv else None
    if saved_json:
        _from_json(click.get_current_context(), saved_json, csv_path, plot_path, accuracies, accuracy_backend,
                   force)
        return
    if peers and backends:
        raise PruMuxError("--peers chooses the backends itself; drop --backend")
    if peers and latency:
        raise PruMuxError("--peers compares throughput; drop --latency (or time latency without --peers)")
    if peers and device == "cuda":
        from ..backends import GPU_PEER_BACKENDS

        backends = list(GPU_PEER_BACKENDS)
    elif peers:
        from ..backends import PEER_BACKENDS
        from ..runtime_openvino import cpu_has_bf16, nncf_available, require_openvino


        require_openvino()
        backends = [b for b in PEER_BACKENDS if (b != "openvino-bf16" or cpu_has_bf16())
                    and (b != "openvino-int8" or nncf_available())]
    if data and not checkpoints:
        raise PruMuxError("--data times trained checkpoints end to end: give them with --checkpoint")
    if latency and (csv_path or plot_path):
        raise PruMuxError("--csv and --plot describe throughput runs; with --latency use --json")
    cfg = BenchConfig.from_options(quick=quick, protocol=protocol, device=device, structure=structure, seed=seed,
                                   checkpoints=[str(c) for c in checkpoints], data=data, task=task, gemm=gemm,
                                   instances=instances, sparsities=sparsities, backends=list(backends),
                                   groups_per_batch=groups_per_batch, seq=seq, repeats=repeats, tf32=tf32)
    if accuracies and accuracy_backend not in cfg.backends:
        raise PruMuxError(f"--accuracy-backend {accuracy_backend} is not timed in this run; add --backend "
                          f"{accuracy_backend} or choose one of {', '.join(cfg.backends)}")
    if latency:
        from ..bench import format_latency, run_latency

        result = run_latency(cfg)
        click.echo(format_latency(result))
        write_outputs(result, None, json_path, force)
        return
    result = run_bench(cfg)
    click.echo(format_table(result))
    if peers:
        from ..bench import format_peers

        click.echo(format_peers(result))
    write_outputs(result, csv_path, json_path, force)
    if plot_path:
        plot(result, plot_path, accuracies, force, accuracy_backend)
        click.echo(f"plot: {plot_path}")
    from ..backends import failed_spot_checks
    from ..errors import ParityError

    failed = failed_spot_checks(result["rows"])
    if failed:  # after the reports: they show which rows failed and by how much
        raise ParityError(failed)
