"""`export --precision int8 --data D`: dynamic or static int8, whichever is faster within 1 point of fp32.

Both quantize the optimized fp32 graph (export/optimize.py): dynamic quantization (int8 weights,
activations quantized per call) and static QDQ quantization (activation scales calibrated on task train
rows). Each candidate, and the fp32 graph, is run on the task's dev rows for accuracy and timed at the
engine's protocol shape (batch 32*N x max length, median of repeats), all in this one run; the fastest
candidate whose accuracy is at most `max_drop` below fp32's wins. If neither is, the more accurate one
is kept and the manifest says so. The manifest records every measurement and the choice.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from prumux_deploy.data import load_examples, load_tokenizer, resolve_task, tokenize
from prumux_deploy.timing import throughput

CALIBRATION_ROWS = 256
EVAL_ROWS = 1000
MAX_DROP = 0.01


def _batches(examples, tokenizer, batch: int, max_len: int, uses_token_types: bool):
    for s in range(0, len(examples), batch):
        feeds = tokenize(tokenizer, examples.text_a[s:s + batch],
                         examples.text_b[s:s + batch] if examples.text_b else None, max_length=max_len,
                         uses_token_types=uses_token_types)
        yield feeds


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _accuracy(session, feeds_list, labels) -> float:
    logits = np.concatenate([session.run(["logits"], f)[0] for f in feeds_list])
    return float((logits.argmax(1) == labels).mean())


def choose_int8(fp32_graph: Path, dst: Path, *, cfg, tokenizer_dir, data, max_len: int, log,
                data_config: str | None = None, max_drop: float = MAX_DROP) -> dict:
    """Quantize the optimized fp32 graph both ways, measure accuracy on up to EVAL_ROWS dev rows of `data` and
    samples/s at batch 32*N x max_len, and write the faster of those within `max_drop` (a fraction) of fp32
    accuracy to `dst` (the more accurate one when neither is). Returns the manifest's "quantization" entry.
    Raises DataError when `data` cannot be read for the model's task."""
    from .optimize import quantize_int8, quantize_static_int8

    task = resolve_task(None, config=cfg)
    tokenizer = load_tokenizer(tokenizer_dir)
    N = cfg.num_instances
    batch = 32 * N
    train = load_examples(task, data, "train", CALIBRATION_ROWS, skip_bad_rows=True, data_config=data_config)
    dev = load_examples(task, data, "dev", EVAL_ROWS, skip_bad_rows=True, data_config=data_config)
    calibration = list(_batches(train, tokenizer, batch, max_len, cfg.uses_token_types))
    dev_feeds = list(_batches(dev, tokenizer, batch, max_len, cfg.uses_token_types))
    rows = np.arange(batch) % len(dev)  # the protocol shape: batch x max length
    timing_feeds = tokenize(tokenizer, [dev.text_a[i] for i in rows], [dev.text_b[i] for i in rows] if dev.text_b
                            else None, max_length=max_len, pad_to_max=True, uses_token_types=cfg.uses_token_types)
    with tempfile.TemporaryDirectory() as tmp:
        graphs = {"dynamic": Path(tmp) / "dynamic.onnx", "static": Path(tmp) / "static.onnx"}
        log(f"int8: dynamic quantization, and static (QDQ) calibrated on {len(train)} train rows")
        quantized_ops = {"dynamic": quantize_int8(fp32_graph, graphs["dynamic"]),
                         "static": quantize_static_int8(fp32_graph, graphs["static"], calibration)}
        results = {}
        for name, path in {"fp32": fp32_graph, **graphs}.items():
            session = _session(path)
            accuracy = _accuracy(session, dev_feeds, dev.labels)
            speed = throughput(lambda: session.run(["logits"], timing_feeds), batch)["samples_per_s"]
            results[name] = {"accuracy": accuracy, "samples_per_s": speed}
        fp32 = results["fp32"]["accuracy"]
        qualified = [n for n in graphs if results[n]["accuracy"] >= fp32 - max_drop]
        if qualified:
            method = max(qualified, key=lambda n: results[n]["samples_per_s"])
            why = f"fastest within {max_drop * 100:g} point of fp32 accuracy"
        else:
            method = max(graphs, key=lambda n: results[n]["accuracy"])
            why = f"neither is within {max_drop * 100:g} point of fp32 accuracy; the more accurate one"
        shutil.copyfile(graphs[method], dst)
    log(f"int8: {method} ({why}): " + ", ".join(
        f"{n} {r['accuracy']:.2%} at {r['samples_per_s']:.1f}/s" for n, r in results.items()))
    return {"method": method, "reason": why, "measured": results, "calibration_rows": len(train),
            "eval_rows": len(dev), "timing_shape": [batch, max_len], "quantized_ops": quantized_ops[method]}
