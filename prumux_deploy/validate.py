"""`prumux-deploy validate`: prove an engine matches its PyTorch checkpoint on real GLUE data.

Engine and PyTorch model see the same batches (mux groups are consecutive rows, padding to the longest
row of each batch); we compare accuracy, prediction agreement and logit error, optionally throughput,
and turn each threshold into an explicit pass/fail check (Polygraphy-style), so CI can gate on the exit code.
On `device="cuda"` the PyTorch reference runs on the GPU and the engine on ONNX Runtime's CUDA provider
(or TensorRT); throughput there is timed with the inputs already on the device and a synchronisation
after every call, at the paper's protocol (batch 128*N, sequence 128). On a GPU both sides run fp32
MatMuls without TF32 unless `tf32` asks for it on both (then compare.TF32_TOLERANCE applies), and the
report says which arithmetic each side used ("arithmetic").
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from .progress import progress_bar

from .atomic import write_file
from .checkpoint import load_checkpoint
from .data import check_lengths, has_splits, load_examples, load_tokenizer, resolve_task, tokenize, warn_skipped
from .devices import check_tf32, device_info, resolve_device, synchronize, tf32_scope, torch_arithmetic
from .compare import TOLERANCES, compare_logits, tolerance_for
from .documents import dumps
from .engine import load_engine
from .errors import PruMuxError
from .metrics import metric_names, task_metrics
from .partners import DEFAULT_DRAWS, partner_sensitivity
from .reference import reference_logits
from .timing import end_to_end
from .timing import throughput as measure


@dataclass
class Thresholds:
    min_accuracy: float | None = None      # engine accuracy, fraction in [0, 1]
    max_accuracy_drop: float = TOLERANCES["fp32"].max_accuracy_drop  # PyTorch accuracy - engine accuracy
    min_agreement: float = TOLERANCES["fp32"].min_agreement          # fraction of identical predictions
    max_logit_error: float = TOLERANCES["fp32"].max_logit_error      # max |engine - PyTorch| over all logits
    min_speedup: float | None = None       # engine samples/s / PyTorch fp32 eager samples/s, same device
    max_flip_rate: float | None = None     # partner_flip_rate (prumux_deploy/partners.py), fraction

    @classmethod
    def for_engine(cls, engine_dir, tf32: bool = False, **given) -> "Thresholds":
        """Defaults by the engine's precision (compare.TOLERANCES, read from its manifest; with tf32, no tighter
        than compare.TF32_TOLERANCE); thresholds given explicitly win."""
        from .engine import read_manifest

        defaults = asdict(tolerance_for(read_manifest(engine_dir).get("precision", "fp32"), tf32))
        return cls(**{**defaults, **{k: v for k, v in given.items() if v is not None}})


def _check(name, value, op, threshold, fmt):
    passed = value >= threshold if op == ">=" else value <= threshold  # False for NaN: a NaN never passes
    return {"name": name, "value": value, "op": op, "threshold": threshold, "passed": bool(passed),
            "fmt": fmt}


@dataclass(frozen=True)
class ValidateOptions:
    """What `validate` is asked for besides the engine, the checkpoint and the data (run_validation's
    docstring says what each field does)."""

    split: str = "dev"
    limit: int | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)
    with_throughput: bool = False
    batch_size: int | None = None
    throughput_seq_len: int = 128
    progress: bool = True
    truncate: bool = True
    skip_bad_rows: bool = False
    device: str = "cpu"
    data_config: str | None = None
    columns: dict | None = None
    partners: int = 0
    partner_seed: int = 0
    tf32: bool = False


def run_validation(engine_dir, checkpoint, task_name: str | None, data_dir, options: ValidateOptions | None = None,
                   *, warn=lambda msg: print(msg, file=sys.stderr), **fields) -> dict:
    """Validate `engine_dir` against `checkpoint` on a task's split as `options` say; returns the report (see
    format_report).

    task_name: a GLUE task, "custom", or None for the checkpoint's own. data_dir: anything data.load_examples
    reads (data_config: a hub dataset's configuration). columns: a custom task's text / text_pair / label
    column names where they differ from the checkpoint's record.
    device: where the PyTorch reference runs and which engine backend runs ("cuda": ONNX Runtime's CUDA
    provider or TensorRT). with_throughput (implied by thresholds.min_speedup): also time engine and PyTorch
    eager on that device. batch_size: rows per batch (default 32*N; 128*N for throughput on a GPU);
    throughput_seq_len: the padded length timed, in tokens. truncate: cut inputs longer than the engine takes
    (counted, `warn` told) instead of refusing them; skip_bad_rows: drop (and count) malformed rows.
    partners: K > 0 (implied by thresholds.max_flip_rate, then 8) also runs every row with K seeded random
    partner draws and alone, and reports partner sensitivity (prumux_deploy/partners.py) under "partners".
    tf32 (device cuda only): fp32 MatMuls of both sides in TF32 (PyTorch's cuBLAS matmuls, ONNX Runtime's
    use_tf32; a TensorRT plan must have been built with it, export --tf32); off, both run full fp32.

    Returns the report: engine, checkpoint, task, split (None for a single data file or Dataset, read whole), data,
    examples, precision, num_instances, batch_size, skipped_rows, truncated_rows, device, arithmetic (what engine and PyTorch computed in);
    metrics (engine_accuracy, pytorch_accuracy, agreement
    and accuracy_drop as fractions, max_abs_logit_error and mean_abs_logit_error in logits, rows with NaN or
    Inf logits, the task's own metrics); thresholds; checks (name, value, op, threshold, passed); passed; and with
    throughput, samples/s of engine and PyTorch eager (compact), their ratio and end-to-end rates; with
    partners, the partner-sensitivity figures.
    Raises PruMuxError (one line) for unusable inputs; threshold failures are in the report (`passed`), not
    exceptions. options: a ValidateOptions, or its fields as keywords."""
    if options is None:
        options = ValidateOptions(**fields)
    elif fields:
        raise TypeError(f"give `options` or keyword options, not both ({', '.join(fields)})")
    split, limit, thresholds, batch_size = options.split, options.limit, options.thresholds, options.batch_size
    with_throughput, throughput_seq_len, progress = options.with_throughput, options.throughput_seq_len, options.progress
    truncate, skip_bad_rows, device, tf32 = options.truncate, options.skip_bad_rows, options.device, options.tf32
    data_config, columns, partners, partner_seed = (options.data_config, options.columns, options.partners,
                                                    options.partner_seed)
    dev = resolve_device(device)
    check_tf32(dev, tf32)
    engine = load_engine(engine_dir, device=dev.type, tf32=tf32, warn=lambda line: warn(f"warning: {line}"))
    if dev.type == "cuda" and engine.uses_tf32 != tf32:
        raise PruMuxError(_tf32_mismatch(engine))
    model = load_checkpoint(checkpoint).to(dev)
    def arithmetic():  # the PyTorch side's TF32 as asked, around every PyTorch call on the GPU
        return tf32_scope(dev, tf32)
    cfg = model.config
    columns = columns or {}
    task = resolve_task(task_name, columns.get("text"), columns.get("text_pair"), columns.get("label"), config=cfg)
    if engine.num_instances != cfg.num_instances:
        raise PruMuxError(f"engine has N={engine.num_instances} but checkpoint has N={cfg.num_instances}; "
                          "validate an engine against the checkpoint it was exported from")
    if cfg.num_labels != len(task.label_names):
        raise PruMuxError(f"checkpoint has {cfg.num_labels} labels but task {task.name} has "
                          f"{len(task.label_names)}; pass the `task` the model was trained for")
    if cfg.task and cfg.task != task.name:
        raise PruMuxError(f"checkpoint was made for task {cfg.task!r}, not {task.name!r}; pass `task` {cfg.task}")
    tokenizer = load_tokenizer(engine.dir)
    examples = load_examples(task, data_dir, split, limit, skip_bad_rows=skip_bad_rows, data_config=data_config)
    warn_skipped(examples, warn)
    N = cfg.num_instances
    if batch_size is not None and batch_size < 1:
        raise PruMuxError(f"`batch_size` must be at least 1, got {batch_size}")
    batch = batch_size or 32 * N
    max_len = engine.max_seq_length
    truncated = check_lengths(tokenizer, examples.text_a, examples.text_b, max_len, truncate, warn)

    eng_logits, pt_logits = [], []
    starts = range(0, len(examples), batch)
    for s in progress_bar(starts, desc="validate", unit="batch", disable=not progress):
        feeds = tokenize(tokenizer, examples.text_a[s:s + batch],
                         examples.text_b[s:s + batch] if examples.text_b else None,
                         max_length=max_len, uses_token_types=engine.uses_token_types)
        eng_logits.append(engine.run_feeds(feeds))
        with arithmetic():
            pt_logits.append(reference_logits(model, feeds, dev))
    eng, pt = np.concatenate(eng_logits), np.concatenate(pt_logits)
    labels = examples.labels
    c = compare_logits(eng, pt)
    metrics = {
        "engine_accuracy": float((eng.argmax(1) == labels).mean()),
        "pytorch_accuracy": float((pt.argmax(1) == labels).mean()),
        "agreement": c.agreement,
        "max_abs_logit_error": c.max_abs_error,
        "mean_abs_logit_error": c.mean_abs_error,
        # a NaN or Inf logit is never a prediction: counted, and any one fails the validation
        "non_finite_engine_rows": c.non_finite_engine,
        "non_finite_pytorch_rows": c.non_finite_reference,
    }
    metrics["accuracy_drop"] = metrics["pytorch_accuracy"] - metrics["engine_accuracy"]
    for who, logits in (("engine", eng), ("pytorch", pt)):  # the task's own metrics (GLUE's, or macro-F1)
        for name, value in task_metrics(task, logits.argmax(1), labels).items():
            if name != "accuracy":
                metrics[f"{who}_{name}"] = value

    checks = []
    if thresholds.min_accuracy is not None:
        checks.append(_check("engine accuracy", metrics["engine_accuracy"], ">=", thresholds.min_accuracy, "pct"))
    checks += [
        _check("rows with NaN/Inf logits", metrics["non_finite_engine_rows"] + metrics["non_finite_pytorch_rows"],
               "<=", 0, "count"),
        _check("accuracy drop vs PyTorch", metrics["accuracy_drop"], "<=", thresholds.max_accuracy_drop, "pct"),
        _check("prediction agreement", metrics["agreement"], ">=", thresholds.min_agreement, "pct"),
        _check("max |logit error|", metrics["max_abs_logit_error"], "<=", thresholds.max_logit_error, "sci"),
    ]
    if thresholds.max_flip_rate is not None and not partners:
        partners = DEFAULT_DRAWS
    sensitivity = None
    if partners:
        sensitivity = _partner_sensitivity(engine, tokenizer, examples, batch, partners, partner_seed, progress)
        if thresholds.max_flip_rate is not None:
            checks.append(_check("partner flip rate", sensitivity["partner_flip_rate"], "<=",
                                 thresholds.max_flip_rate, "pct"))
    with_throughput = with_throughput or thresholds.min_speedup is not None
    throughput = None
    if with_throughput:
        seq_len = min(throughput_seq_len, engine.max_seq_length)  # the paper pads to 128
        # the paper's protocol on a GPU (batch 128*N); the CPU default stays 32*N, what a 2-core machine holds
        tbatch = batch_size or (128 if dev.type == "cuda" else 32) * N
        with arithmetic():
            throughput = _throughput(engine, model, tokenizer, examples, tbatch, seq_len, dev)
        if thresholds.min_speedup is not None:
            checks.append(_check("speedup vs PyTorch eager", throughput["speedup_vs_eager"], ">=",
                                 thresholds.min_speedup, "x"))

    report = {
        "engine": str(engine_dir), "checkpoint": str(checkpoint), "task": task.name,
        "split": split if has_splits(data_dir) else None,  # a single file or Dataset is read whole
        "task_metrics": metric_names(task), "labels": list(task.label_names),
        "data": str(examples.source), "examples": len(examples),
        "precision": engine.manifest.get("precision", "fp32"), "skipped_rows": examples.skipped, "truncated_rows": truncated, "num_instances": N, "batch_size": batch,
        "metrics": metrics, "thresholds": asdict(thresholds), "checks": checks,
        "passed": all(c["passed"] for c in checks),
        "device": device_info(dev),
    }
    with arithmetic():
        report["arithmetic"] = {"engine": engine.arithmetic, "pytorch": torch_arithmetic(dev), "tf32": tf32}
    if throughput is not None:
        report["throughput"] = throughput
    if sensitivity is not None:
        report["partners"] = sensitivity
    return report


def _tf32_mismatch(engine) -> str:
    """Why a TensorRT plan's TF32 (fixed at build time) and the `tf32` asked of validate disagree."""
    if engine.uses_tf32:
        return (f"{engine.path}: this TensorRT plan runs fp32 layers in TF32 (built with --tf32, or before "
                "prumux-deploy cleared BuilderFlag.TF32); validate it with `tf32` (its own tolerance) or re-export it "
                "without --tf32")
    return (f"{engine.path}: this TensorRT plan was built without TF32; drop `tf32`, or re-export with --tf32 "
            "to validate TF32 arithmetic")


def _partner_sensitivity(engine, tokenizer, examples, batch, draws, seed, progress) -> dict:
    """partners.partner_sensitivity on the task rows: each order is tokenized and run in chunks of whole
    mux groups (batch rounded up to a multiple of N), padded to each chunk's longest row."""
    N = engine.num_instances
    chunk = -(-batch // N) * N
    bar = progress_bar(total=(draws + N) * len(examples), desc="partners", unit="row", disable=not progress)

    def run_rows(order):
        out = []
        for s in range(0, len(order), chunk):
            pick = order[s:s + chunk]
            feeds = tokenize(tokenizer, [examples.text_a[i] for i in pick],
                             [examples.text_b[i] for i in pick] if examples.text_b else None,
                             max_length=engine.max_seq_length, uses_token_types=engine.uses_token_types)
            out.append(engine.run_feeds(feeds))
            bar.update(len(pick))
        return np.concatenate(out)

    try:
        return partner_sensitivity(run_rows, np.asarray(examples.labels), N, draws, seed)
    finally:
        bar.close()


def _throughput(engine, model, tokenizer, examples, batch, seq_len, device=torch.device("cpu")) -> dict:
    """Samples/s at a fixed [batch, seq_len] shape (padded as in the paper), engine vs compact eager on the
    same device (and eager in the engine's precision for fp16 engines on a GPU); and the engine end to end
    (raw text -> tokenizer -> engine -> labels) on the task rows, with each batch padded to its longest row
    (what a server sees) and padded to seq_len."""
    from .compact import compact

    idx = np.arange(batch) % len(examples)
    feeds = tokenize(tokenizer, [examples.text_a[i] for i in idx],
                     [examples.text_b[i] for i in idx] if examples.text_b else None,
                     max_length=seq_len, pad_to_max=True, uses_token_types=engine.uses_token_types)
    eager = compact(model).to(device)
    inputs = [torch.from_numpy(feeds[k]).to(device) for k in feeds]

    def eager_run(dtype=None):
        def run():
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                eager(*inputs)
            synchronize(device)
        return run

    eng = measure(engine.timed_runner(feeds), batch)
    pt = measure(eager_run(), batch)
    same_precision = {}
    if device.type == "cuda" and engine.manifest.get("precision") == "fp16":
        half = measure(eager_run(torch.float16), batch)["samples_per_s"]
        same_precision = {"pytorch_eager_fp16_samples_per_s": half, "speedup_vs_eager_fp16": eng["samples_per_s"] / half}
    rows = min(len(examples), 4 * batch)

    def e2e(pad_to_max: bool) -> float:
        return end_to_end(engine.run_feeds, tokenizer, examples.text_a[:rows],
                          examples.text_b[:rows] if examples.text_b else None, batch, seq_len, pad_to_max,
                          engine.uses_token_types)

    return {"device": str(device), "batch": batch, "sequence": seq_len, "engine_samples_per_s": eng["samples_per_s"],
            "pytorch_eager_compact_samples_per_s": pt["samples_per_s"],
            "speedup_vs_eager": eng["samples_per_s"] / pt["samples_per_s"], "repeats": eng["repeats"],
            **same_precision,
            "end_to_end_rows": rows, "end_to_end_longest_samples_per_s": e2e(False),
            "end_to_end_fixed_samples_per_s": e2e(True),
            **_pipelined_end_to_end(engine, tokenizer, examples, batch, seq_len)}


def _pipelined_end_to_end(engine, tokenizer, examples, batch: int, seq_len: int) -> dict:
    """Text -> labels through scoring.score_rows (the tokenizer in a thread beside the engine, what `predict
    --input` runs) on all task rows, against the engine alone on the same batches already tokenized (each
    padded to its longest row): their ratio is the share of the engine's rate that reaches a user of text."""
    from .scoring import score_rows

    texts = list(zip(examples.text_a, examples.text_b)) if examples.text_b else list(examples.text_a)
    tokenized = [tokenize(tokenizer, examples.text_a[s:s + batch], examples.text_b[s:s + batch] if examples.text_b
                          else None, max_length=seq_len, uses_token_types=engine.uses_token_types)
                 for s in range(0, len(texts), batch)]

    def engine_only():
        for feeds in tokenized:
            engine.run_feeds(feeds)

    def pipelined():
        for _ in score_rows(engine, texts, batch_size=batch, tokenizer=tokenizer):
            pass

    alone = measure(engine_only, len(texts), warmup=1, repeats=3)["samples_per_s"]
    piped = measure(pipelined, len(texts), warmup=1, repeats=3)["samples_per_s"]
    return {"pipelined_rows": len(texts), "engine_only_longest_samples_per_s": alone,
            "end_to_end_pipelined_samples_per_s": piped, "end_to_end_share_of_engine": piped / alone}


def format_report(report: dict) -> str:
    def show(value, fmt):
        return {"pct": f"{value * 100:.2f}%", "x": f"{value:.2f}x", "count": f"{value:g}"}.get(fmt, f"{value:.2e}")

    m = report["metrics"]
    where = report["split"] or Path(report["data"]).name  # a single file or Dataset has no split
    lines = [f"{report['task']} {where}: {report['examples']} examples, N={report['num_instances']}",
             f"  accuracy  engine {m['engine_accuracy'] * 100:.2f}%   PyTorch {m['pytorch_accuracy'] * 100:.2f}%",
             *[f"  {name.replace('_', ' ')}  engine {m['engine_' + name] * 100:.2f}   PyTorch "
               f"{m['pytorch_' + name] * 100:.2f}" for name in report["task_metrics"][1:]],
             f"  logit error  max {m['max_abs_logit_error']:.2e}   mean {m['mean_abs_logit_error']:.2e}",
             *([f"  arithmetic  engine: {report['arithmetic']['engine']}; PyTorch: {report['arithmetic']['pytorch']}"]
               if "arithmetic" in report else []), ""]
    lines.append(f"  {'check':<26} {'value':>10}   {'threshold':>12}   result")
    for c in report["checks"]:
        lines.append(f"  {c['name']:<26} {show(c['value'], c['fmt']):>10}   "
                     f"{c['op'] + ' ' + show(c['threshold'], c['fmt']):>12}   {'PASS' if c['passed'] else 'FAIL'}")
    if "throughput" in report:
        t = report["throughput"]
        lines += ["", f"  throughput on {t['device']} at batch {t['batch']} x sequence {t['sequence']} (median of "
                      f"{t['repeats']}): engine {t['engine_samples_per_s']:.1f}/s, PyTorch eager (compact) "
                      f"{t['pytorch_eager_compact_samples_per_s']:.1f}/s, ratio {t['speedup_vs_eager']:.2f}x",
                  f"  end to end (text -> labels, {t['end_to_end_rows']} rows, batch {t['batch']}): "
                  f"{t['end_to_end_longest_samples_per_s']:.1f}/s padded to each batch's longest row, "
                  f"{t['end_to_end_fixed_samples_per_s']:.1f}/s padded to {t['sequence']}",
                  f"  pipelined (predict --input's path, {t['pipelined_rows']} rows): "
                  f"{t['end_to_end_pipelined_samples_per_s']:.1f}/s text -> labels against "
                  f"{t['engine_only_longest_samples_per_s']:.1f}/s for the engine alone on the same batches: "
                  f"{t['end_to_end_share_of_engine']:.0%} of the engine's rate"]
    if "partners" in report:
        p = report["partners"]
        auc = (f"{p['leakage_auc']:.3f} (0.5: none)" if p["leakage_auc"] is not None
               else "n/a (N=1)" if p["num_instances"] == 1 else "n/a (the partners' labels hold one class)")
        lines += ["", f"  partner sensitivity ({p['draws']} random partner draws, seed {p['seed']}, and each row "
                      f"alone): {p['partner_flip_rate'] * 100:.2f}% of rows change label with the partner, "
                      f"{p['lone_flip_rate'] * 100:.2f}% differ from their lone answer",
                  f"    accuracy over draws {p['accuracy_min'] * 100:.2f}%-{p['accuracy_max'] * 100:.2f}% (alone "
                  f"{p['accuracy_lone'] * 100:.2f}%), |margin shift| mean {p['margin_shift_mean']:.3f} max "
                  f"{p['margin_shift_max']:.3f} logits, partner-label leakage AUC {auc}"]
    lines += ["", "PASSED" if report["passed"] else "FAILED"]
    if _another_model(report):
        lines.append("  (logits this far apart usually mean --checkpoint is not the model the engine was exported "
                     "from: validate an engine against its own checkpoint)")
    return "\n".join(lines)


OTHER_MODEL_FACTOR = 100  # logits 100x past the tolerance: not arithmetic (fp16 is 5e-2 of 1e-4's 500x)


def _another_model(report: dict) -> bool:
    """Whether the logit error is so far past its tolerance that engine and checkpoint are likely two models."""
    check = next((c for c in report["checks"] if c["name"] == "max |logit error|"), None)
    return check is not None and not check["passed"] and check["value"] > OTHER_MODEL_FACTOR * check["threshold"]


def write_report(report: dict, path, force: bool = False) -> None:
    """Write the report as JSON, atomically; an existing file is replaced only with force."""
    write_file(path, dumps(report, indent=2) + "\n", force)
