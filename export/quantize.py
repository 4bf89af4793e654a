"""Precision choices proven on task data (`export --data D`): which int8 engine, and whether bf16 holds.

int8 (`--precision int8 --data D`) has up to three candidates, each measured in this one run:
- ONNX Runtime dynamic: int8 weights, activations quantized per call, on the optimized graph;
- ONNX Runtime static (QDQ): activation scales calibrated on task train rows, on the optimized graph;
- OpenVINO NNCF: NNCF's post-training quantization (its ONNX backend, transformer scheme with SmoothQuant
  and fast bias correction) of the plain exported graph, calibrated on the same train rows and run by
  OpenVINO at f32 for what stays float. The plain graph, because NNCF's patterns do not know ONNX
  Runtime's fused ops and leave them float (measured on the shipped example: 1649 samples/s against 2608
  on the plain graph). The file stays ONNX (QDQ), which OpenVINO reads and runs with its int8 kernels
  (measured: as fast as the same model saved as OpenVINO IR; docs/benchmarks.md).
Every candidate, and the fp32 engine, is run on the task's dev rows for accuracy and timed at the engine's
protocol shape (batch 32*N x max length, median of repeats); the fastest candidate whose accuracy is at most
`max_drop` (MAX_DROP, 1 point, unless given) below fp32's wins. If none is, the most accurate one is kept and the manifest says so.

bf16 (`--precision bf16 --data D`): the same dev rows through OpenVINO at f32 and at bf16; an accuracy drop
larger than `max_drop` refuses the export.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from prumux_deploy.data import load_examples, load_tokenizer, resolve_task, tokenize
from prumux_deploy.errors import DataError, ParityError
from prumux_deploy.timing import throughput

CALIBRATION_ROWS = 256
EVAL_ROWS = 1000
MAX_DROP = 0.01
INT8_RUNTIME = {"dynamic": "onnxruntime", "static": "onnxruntime", "nncf": "openvino"}


class TaskRows:
    """The task rows a precision choice is measured on, tokenized as the engine takes them: calibration
    batches (train rows), dev batches with their labels, and one protocol-shape batch for timing."""

    def __init__(self, cfg, tokenizer_dir, data, max_len: int, data_config: str | None = None,
                 calibration: bool = True):
        task = resolve_task(None, config=cfg)
        self.tokenizer = load_tokenizer(tokenizer_dir)
        self.cfg, self.max_len = cfg, max_len
        self.batch = 32 * cfg.num_instances
        self.train = None
        if calibration:
            try:
                self.train = load_examples(task, data, "train", CALIBRATION_ROWS, skip_bad_rows=True,
                                           data_config=data_config)
            except DataError as e:
                if "`split`" not in str(e):
                    raise
                # its fix names a `split`, which export has no option for
                raise DataError(f"{str(e).split('; ')[0]}; int8 with `data` calibrates on its train rows: give "
                                "`data` that has a train split") from None
        self.dev = load_examples(task, data, "dev", EVAL_ROWS, skip_bad_rows=True, data_config=data_config)
        self.calibration = list(self._batches(self.train)) if calibration else []
        self.dev_feeds = list(self._batches(self.dev))
        rows = np.arange(self.batch) % len(self.dev)  # the protocol shape: batch x max length
        self.timing_feeds = tokenize(self.tokenizer, [self.dev.text_a[i] for i in rows],
                                     [self.dev.text_b[i] for i in rows] if self.dev.text_b else None,
                                     max_length=max_len, pad_to_max=True, uses_token_types=cfg.uses_token_types)

    def _batches(self, examples):
        for s in range(0, len(examples), self.batch):
            yield tokenize(self.tokenizer, examples.text_a[s:s + self.batch],
                           examples.text_b[s:s + self.batch] if examples.text_b else None,
                           max_length=self.max_len, uses_token_types=self.cfg.uses_token_types)

    def measure(self, run) -> dict:
        """run(feeds) -> logits: dev accuracy (a fraction) and samples/s at the protocol shape."""
        logits = np.concatenate([run(f) for f in self.dev_feeds])
        accuracy = float((logits.argmax(1) == self.dev.labels).mean())
        return {"accuracy": accuracy,
                "samples_per_s": throughput(lambda: run(self.timing_feeds), self.batch)["samples_per_s"]}


def _onnxruntime_runner(path: Path):
    """feeds -> logits of `path` on ONNX Runtime's CPU provider; feeds may hold extra inputs."""
    from prumux_deploy.runners import open_runner

    return open_runner("onnxruntime", path)


def _openvino_runner(path: Path):
    """feeds -> logits of `path` on OpenVINO's CPU at f32 for what is not quantized (never its bf16 default)."""
    from prumux_deploy.runners import open_runner

    return open_runner("openvino", path, precision="fp32")


def quantize_nncf(src: Path, dst: Path, calibration: list[dict]) -> dict[str, int]:
    """NNCF post-training int8 quantization of the plain exported ONNX graph `src` into QDQ form at `dst`:
    8-bit weights (per channel) and activations with scales from `calibration` (feeds dicts), NNCF's
    transformer scheme (nncf.ModelType.TRANSFORMER: SmoothQuant, then fast bias correction). For OpenVINO,
    which turns each Q/DQ pair into an int8 kernel. Returns the counts of quantization ops."""
    import nncf
    import onnx

    nncf.set_log_level(logging.ERROR)  # its INFO lines would interleave with export's progress
    model = onnx.load(str(src))
    names = [i.name for i in model.graph.input]
    dataset = nncf.Dataset(calibration, lambda feeds: {n: feeds[n] for n in names})
    with contextlib.redirect_stdout(sys.stderr):  # its progress bars go with our progress, not to stdout
        quantized = nncf.quantize(model, dataset, model_type=nncf.ModelType.TRANSFORMER,
                                  subset_size=sum(len(f["input_ids"]) for f in calibration))
    onnx.save(quantized, str(dst))
    counts: dict[str, int] = {}
    for node in quantized.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def choose_int8(plain_graph: Path, optimized_graph: Path | None, dst: Path, *, rows: TaskRows, runtimes, log,
                max_drop: float | None = None) -> dict:
    """Quantize for each runtime in `runtimes` ("onnxruntime": dynamic and static on `optimized_graph`;
    "openvino": NNCF on `plain_graph`), measure every candidate and the fp32 engine on `rows` (accuracy on
    the dev rows, samples/s at batch 32*N x max length) and write the fastest within `max_drop` (a fraction)
    of fp32 accuracy to `dst` (the most accurate one when none is). Returns the manifest's "quantization"
    entry: method, runtime, reason, measured {name: {accuracy, samples_per_s}}, rows, shape and the chosen
    graph's quantized_ops."""
    from .optimize import quantize_int8, quantize_static_int8

    max_drop = MAX_DROP if max_drop is None else max_drop
    fp32_graph = optimized_graph or plain_graph
    fp32_run = _onnxruntime_runner if optimized_graph is not None else _openvino_runner
    with tempfile.TemporaryDirectory() as tmp:
        graphs, quantized_ops = {}, {}
        if "onnxruntime" in runtimes:
            log(f"int8: ONNX Runtime dynamic quantization, and static (QDQ) calibrated on {len(rows.train)} train rows")
            graphs["dynamic"], graphs["static"] = Path(tmp) / "dynamic.onnx", Path(tmp) / "static.onnx"
            quantized_ops["dynamic"] = quantize_int8(optimized_graph, graphs["dynamic"])
            quantized_ops["static"] = quantize_static_int8(optimized_graph, graphs["static"], rows.calibration)
        if "openvino" in runtimes:
            log(f"int8: OpenVINO NNCF post-training quantization calibrated on {len(rows.train)} train rows")
            graphs["nncf"] = Path(tmp) / "nncf.onnx"
            quantized_ops["nncf"] = quantize_nncf(plain_graph, graphs["nncf"], rows.calibration)
        results = {"fp32": rows.measure(fp32_run(fp32_graph))}
        for name, path in graphs.items():
            run = _openvino_runner(path) if INT8_RUNTIME[name] == "openvino" else _onnxruntime_runner(path)
            results[name] = rows.measure(run)
        fp32 = results["fp32"]["accuracy"]
        qualified = [n for n in graphs if results[n]["accuracy"] >= fp32 - max_drop]
        if qualified:
            method = max(qualified, key=lambda n: results[n]["samples_per_s"])
            why = f"fastest within {max_drop * 100:g} point of fp32 accuracy"
        else:
            method = max(graphs, key=lambda n: results[n]["accuracy"])
            why = f"none is within {max_drop * 100:g} point of fp32 accuracy; the most accurate one"
        shutil.copyfile(graphs[method], dst)
    log(f"int8: {method} ({INT8_RUNTIME[method]}; {why}): " + ", ".join(
        f"{n} {r['accuracy']:.2%} at {r['samples_per_s']:.1f}/s" for n, r in results.items()))
    return {"method": method, "runtime": INT8_RUNTIME[method], "reason": why, "measured": results,
            "calibration_rows": len(rows.train), "eval_rows": len(rows.dev),
            "timing_shape": [rows.batch, rows.max_len], "quantized_ops": quantized_ops[method]}


def check_bf16_accuracy(graph: Path, rows: TaskRows, out, log, max_drop: float | None = None) -> dict:
    """Run the dev rows through OpenVINO at f32 and at bf16 on `graph`; returns the manifest's "validation"
    entry ({measured: {fp32, bf16: {accuracy, samples_per_s}}, eval_rows, max_drop}). Raises ParityError
    (nothing written to `out`) when bf16's accuracy is more than `max_drop` below fp32's."""
    max_drop = MAX_DROP if max_drop is None else max_drop
    from prumux_deploy.runners import open_runner

    measured = {p: rows.measure(open_runner("openvino", graph, precision=p)) for p in ("fp32", "bf16")}
    drop = measured["fp32"]["accuracy"] - measured["bf16"]["accuracy"]
    log(f"bf16 on {len(rows.dev)} dev rows: {measured['bf16']['accuracy']:.2%} at {measured['bf16']['samples_per_s']:.1f}/s"
        f" (fp32 {measured['fp32']['accuracy']:.2%} at {measured['fp32']['samples_per_s']:.1f}/s)")
    if drop > max_drop:
        raise ParityError(f"bf16 loses {drop * 100:.2f} points of dev accuracy ({measured['bf16']['accuracy']:.2%} "
                          f"against fp32's {measured['fp32']['accuracy']:.2%}), more than {max_drop * 100:g}; "
                          f"export --precision fp32 (or int8 --data); nothing was written to {out}")
    return {"measured": measured, "eval_rows": len(rows.dev), "max_drop": max_drop}
