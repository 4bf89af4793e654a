"""The GPU acceptance run: one command that, on a machine with one NVIDIA GPU, proves the GPU paths and
writes one JSON report. Run it as `bash examples/gpu/acceptance.sh [--out DIR] [--dry-run]` from the
repository root (README, GPU; docs/benchmarks.md, GPU).

Steps, in order (each with its own time limit, all of them within --budget seconds, 480 by default):
    environment   GPU, driver and its CUDA version (nvidia-smi), torch / CUDA, ONNX Runtime and its providers,
                  TensorRT; what is missing decides which steps cannot run
    pytest-gpu    pytest -m gpu (the tests that need a GPU; they skip with a reason what they cannot run)
    train-bf16 / train-fp16
                  a few fine-tuning steps of the shipped example on CUDA under autocast (fp16 with GradScaler)
    example-*     the shipped example (examples/sst2-mux2) exported for the GPU (ONNX on ONNX Runtime's CUDA
                  provider; TensorRT fp32 and fp16) and validated with validate --device cuda --throughput
                  --min-speedup 1 on SST-2 dev
    upstream-*    an imported upstream fixture (the PruMUX stage-2 fixture in shared/), the same way
    bench-quick   bench --device cuda --quick
    bench-paper   bench --device cuda at the paper's protocol (batch 128*N, sequence 128) for N 2 and 10 at
                  s 0.95 against BERT-base eager on the same GPU

A step whose prerequisite is missing (no GPU, no onnxruntime-gpu, no tensorrt, no fixture, no time left) is
reported as "not run" with the reason, never as passed. --dry-run runs nothing but the environment probe
and writes the report with every step's command and why it would or would not run (the CPU tests run it).
Exit status: 0 when no step failed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "sst2-mux2"
# the shared data beside the checkout (../shared, as the docs use it), or inside it where a machine has it there
SHARED = next((d for d in (REPO.parent / "shared", REPO / "shared") if d.is_dir()), REPO.parent / "shared")
REPORT_FORMAT, REPORT_VERSION = "prumux-gpu-acceptance", 1
# what the README's quick start and docs/benchmarks.md validate on, when this machine has it
GLUE_SST2 = SHARED / "data" / "glue" / "SST-2"
UPSTREAM_FIXTURE = SHARED / "fixtures" / "upstream" / "prumux_sst2_N2" / "best" / "FT-lr2e-5"
TINY_SST2 = [("a gorgeous , witty film", 1), ("dull and tedious", 0), ("very good fun", 1), ("the plot was awful", 0),
             ("lovely", 1), ("boring boring boring", 0), ("great movie", 1), ("not good", 0)] * 8


@dataclass
class Step:
    name: str
    what: str
    commands: list[list[str]]
    needs: list[str]                      # prerequisites: gpu, onnxruntime-gpu, tensorrt, fixture
    timeout_s: int
    check: object = None                  # (step, outputs) -> dict of results, or raises AssertionError
    status: str = "not run"
    reason: str = ""
    seconds: float = 0.0
    results: dict = field(default_factory=dict)
    output_tail: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "what": self.what, "commands": self.commands, "needs": self.needs,
                "status": self.status, "reason": self.reason, "seconds": round(self.seconds, 1),
                "results": self.results, "output_tail": self.output_tail}


# --- the environment -----------------------------------------------------------------------------------

def _run_quiet(cmd: list[str], timeout: int = 30) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def nvidia_smi() -> dict:
    """GPU name, driver version and the driver's CUDA version (the newest CUDA it runs: what decides between
    the gpu-cu12 and gpu-cu13 extras), from nvidia-smi; Nones where it is absent."""
    info = {"nvidia_smi": shutil.which("nvidia-smi"), "gpu": None, "driver": None, "driver_cuda": None,
            "memory_mib": None}
    if not info["nvidia_smi"]:
        return info
    query = _run_quiet(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader,nounits"])
    if query:
        name, driver, memory = [v.strip() for v in query.splitlines()[0].split(",")][:3]
        info.update(gpu=name, driver=driver, memory_mib=int(float(memory)))
    header = _run_quiet(["nvidia-smi"]) or ""
    found = re.search(r"CUDA Version:\s*([0-9.]+)", header)
    info["driver_cuda"] = found.group(1) if found else None
    return info


def environment() -> dict:
    env = {"python": platform.python_version(), "platform": platform.platform(), **nvidia_smi(),
           "torch": None, "torch_cuda": None, "cuda_available": False, "onnxruntime": None,
           "onnxruntime_providers": [], "tensorrt": None, "prumux_deploy": None}
    try:
        import torch

        env.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
        if env["cuda_available"]:
            env["torch_gpu"] = torch.cuda.get_device_name(0)
            env["bf16_supported"] = torch.cuda.is_bf16_supported()
    except Exception as e:  # noqa: BLE001 (a broken torch is a fact to report, not a crash)
        env["torch_error"] = str(e)[:200]
    try:
        import onnxruntime

        env.update(onnxruntime=onnxruntime.__version__, onnxruntime_providers=onnxruntime.get_available_providers())
    except Exception as e:  # noqa: BLE001
        env["onnxruntime_error"] = str(e)[:200]
    if importlib.util.find_spec("tensorrt") is not None:
        try:
            import tensorrt

            env["tensorrt"] = tensorrt.__version__
        except Exception as e:  # noqa: BLE001
            env["tensorrt_error"] = str(e)[:200]
    try:
        from importlib.metadata import version

        env["prumux_deploy"] = version("prumux-deploy")
    except Exception:  # noqa: BLE001
        pass
    return env


def missing_reasons(env: dict, fixture: Path) -> dict[str, str | None]:
    """For each prerequisite, why it is missing (None when present)."""
    return {
        "gpu": None if env["cuda_available"] else "no CUDA GPU visible to PyTorch (torch.cuda.is_available() is False)",
        "onnxruntime-gpu": None if "CUDAExecutionProvider" in env["onnxruntime_providers"] else
        "onnxruntime-gpu is not installed (ONNX Runtime lists no CUDAExecutionProvider)",
        "tensorrt": None if env["tensorrt"] else "tensorrt is not installed",
        "fixture": None if (fixture / "config.json").is_file() else f"upstream fixture {fixture} is not on this machine",
        "prumux-deploy": None if env["prumux_deploy"] else "prumux-deploy is not installed (pip install -e .)",
    }


# --- the steps -------------------------------------------------------------------------------------------

def cli(*args) -> list[str]:
    return [sys.executable, "-m", "prumux_deploy.cli", *[str(a) for a in args]]


def _validate(engine: Path, checkpoint: Path, data: Path, report: Path, *extra) -> list[str]:
    return cli("validate", engine, "--checkpoint", checkpoint, "--data", data, "--device", "cuda", "--throughput",
               "--min-speedup", "1", "--report", report, "--force", *extra)


def _validation_results(report: Path) -> dict:
    r = json.loads(report.read_text())
    t = r.get("throughput", {})
    return {"passed": r["passed"], "engine_accuracy": r["metrics"]["engine_accuracy"],
            "pytorch_accuracy": r["metrics"]["pytorch_accuracy"],
            "max_abs_logit_error": r["metrics"]["max_abs_logit_error"], "arithmetic": r.get("arithmetic"),
            "batch": t.get("batch"), "engine_samples_per_s": t.get("engine_samples_per_s"),
            "pytorch_eager_samples_per_s": t.get("pytorch_eager_compact_samples_per_s"),
            "speedup_vs_eager": t.get("speedup_vs_eager")}


def _train_results(out: Path) -> dict:
    losses = []
    for line in (out / "train_log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            losses.append(record["loss"])
    assert losses and all(math.isfinite(v) for v in losses), f"losses {losses[:5]} are not all finite"
    return {"steps_logged": len(losses), "first_loss": losses[0], "last_loss": losses[-1]}


def _pytest_results(output: str) -> dict:
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error|deselected)", output)}
    skips = re.findall(r"SKIPPED \[\d+\] [^:]+:\d+: (.*)", output)
    assert counts.get("passed", 0) > 0, f"no gpu test passed ({counts}; skipped: {sorted(set(skips))[:3]})"
    return {"counts": counts, "skip_reasons": sorted(set(skips))}


def _bench_results(path: Path) -> dict:
    r = json.loads(path.read_text())
    return {"gpu": r["device"].get("gpu"), "baseline_samples_per_s": r["baseline"]["samples_per_s"],
            "baseline_batch": r["baseline"]["batch"], "tf32": r["protocol"].get("tf32"),
            "rows": [{k: row.get(k) for k in ("name", "backend", "batch", "samples_per_s", "speedup",
                                              "flop_bound_speedup", "max_abs_logit_error", "peak_mib")}
                     for row in r["rows"]]}


def plan(out: Path, data: Path, fixture: Path, have_ort_gpu: bool) -> list[Step]:
    ex, up = out / "example", out / "upstream"
    ort_backends = ["--backend", "onnxruntime", "--backend", "onnxruntime-opt"] if have_ort_gpu else []
    steps = [
        Step("pytest-gpu", "the tests marked gpu", [[sys.executable, "-m", "pytest", "-q", "-rs", "-m", "gpu",
                                                     "-p", "no:cacheprovider", str(REPO / "tests")]],
             ["gpu"], 240, lambda s, outs: _pytest_results(outs[-1])),
    ]
    for precision in ("bf16", "fp16"):
        run = out / f"train-{precision}"
        steps.append(Step(
            f"train-{precision}", f"fine-tuning steps of the shipped example on CUDA, autocast {precision}"
                                  + (" with GradScaler" if precision == "fp16" else ""),
            [cli("train", "finetune", run, "--init", EXAMPLE, "--data", data, "--device", "cuda", "--precision",
                 precision, "--max-train-samples", 64, "--max-eval-samples", 16, "--batch-size", 16,
                 "--max-seq-length", 64, "--eval-every", 1000, "--save-every", 1000, "--force")],
            ["gpu"], 120, lambda s, outs, run=run: _train_results(run)))
    steps += [
        Step("example-onnx-cuda", "shipped example: ONNX engine on ONNX Runtime's CUDA provider, validated on the GPU",
             [cli("export", EXAMPLE, ex / "onnx", "--force"),
              _validate(ex / "onnx", EXAMPLE, data, ex / "onnx-report.json")],
             ["gpu", "onnxruntime-gpu"], 150, lambda s, outs: _validation_results(ex / "onnx-report.json")),
        Step("example-tensorrt-fp32", "shipped example: TensorRT fp32 plan (TF32 cleared), validated on the GPU",
             [cli("export", EXAMPLE, ex / "trt", "--format", "tensorrt", "--force"),
              _validate(ex / "trt", EXAMPLE, data, ex / "trt-report.json")],
             ["gpu", "tensorrt"], 240, lambda s, outs: _validation_results(ex / "trt-report.json")),
        Step("example-tensorrt-fp16", "shipped example: TensorRT plan from the fp16 graph, validated on the GPU",
             [cli("export", EXAMPLE, ex / "trt16", "--format", "tensorrt", "--precision", "fp16", "--force"),
              _validate(ex / "trt16", EXAMPLE, data, ex / "trt16-report.json")],
             ["gpu", "tensorrt"], 240, lambda s, outs: _validation_results(ex / "trt16-report.json")),
        Step("upstream-onnx-cuda", "imported upstream PruMUX stage-2 fixture: ONNX engine on the CUDA provider",
             [cli("import", fixture, up / "ckpt", "--force"), cli("export", up / "ckpt", up / "onnx", "--force"),
              _validate(up / "onnx", up / "ckpt", data, up / "onnx-report.json", "--task", "sst2")],
             ["gpu", "onnxruntime-gpu", "fixture"], 150,
             lambda s, outs: _validation_results(up / "onnx-report.json")),
        Step("upstream-tensorrt-fp32", "imported upstream PruMUX stage-2 fixture: TensorRT fp32 plan",
             [cli("import", fixture, up / "ckpt", "--force"),
              cli("export", up / "ckpt", up / "trt", "--format", "tensorrt", "--force"),
              _validate(up / "trt", up / "ckpt", data, up / "trt-report.json", "--task", "sst2")],
             ["gpu", "tensorrt", "fixture"], 240, lambda s, outs: _validation_results(up / "trt-report.json")),
        Step("bench-quick", "bench --device cuda --quick",
             [cli("bench", "--device", "cuda", "--quick", "--backend", "torch", *ort_backends,
                  "--json", out / "bench-quick.json", "--force")],
             ["gpu"], 120, lambda s, outs: _bench_results(out / "bench-quick.json")),
        Step("bench-paper", "bench --device cuda at the paper's protocol (batch 128*N, sequence 128) against "
                            "BERT-base eager on the same GPU, N 2 and 10 at s 0.95",
             [cli("bench", "--device", "cuda", "--protocol", "paper", "--backend", "torch", *ort_backends,
                  "--instances", "2,10", "--sparsities", "0.95", "--json", out / "bench-paper.json", "--force")],
             ["gpu"], 180, lambda s, outs: _bench_results(out / "bench-paper.json")),
    ]
    return steps


# --- running -------------------------------------------------------------------------------------------------

def tiny_sst2(directory: Path) -> Path:
    """An SST-2-shaped train/dev pair for machines without the GLUE copy (the report says it was used)."""
    directory.mkdir(parents=True, exist_ok=True)
    text = "sentence\tlabel\n" + "".join(f"{s}\t{l}\n" for s, l in TINY_SST2)
    for split in ("train", "dev"):
        (directory / f"{split}.tsv").write_text(text)
    return directory


def run_step(step: Step, deadline: float) -> None:
    outputs, start = [], time.monotonic()
    try:
        for command in step.commands:
            left = deadline - time.monotonic()
            if left < 10:
                step.status, step.reason = "not run", "the run's time budget was spent"
                return
            done = subprocess.run(command, capture_output=True, text=True, timeout=min(step.timeout_s, left),
                                  cwd=REPO)
            outputs.append(done.stdout + done.stderr)
            if done.returncode != 0:
                step.status = "failed"
                step.reason = f"exit {done.returncode}: {' '.join(command[2:5])} ..."
                return
        step.results = step.check(step, outputs) if step.check else {}
        step.status = "passed"
    except subprocess.TimeoutExpired:
        step.status, step.reason = "failed", f"timed out after {step.timeout_s} s"
    except (AssertionError, KeyError, ValueError, OSError) as e:
        step.status, step.reason = "failed", f"check failed: {e}"[:300]
    finally:
        step.seconds = time.monotonic() - start
        step.output_tail = "\n".join(outputs)[-2000:]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "gpu-acceptance",
                        help="Where engines, reports and the acceptance report (report.json) go.")
    parser.add_argument("--dry-run", action="store_true",
                        help="Probe the environment and write the report with every step's command and whether it "
                             "would run; run nothing else.")
    parser.add_argument("--budget", type=int, default=480, help="Seconds for all steps together (default 480).")
    parser.add_argument("--data", type=Path, default=None,
                        help="SST-2 directory (train.tsv, dev.tsv) [default: shared/data/glue/SST-2, else a tiny "
                             "generated one].")
    parser.add_argument("--fixture", type=Path, default=UPSTREAM_FIXTURE, help="The upstream checkpoint to import.")
    args = parser.parse_args(argv)

    started = time.monotonic()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    missing = missing_reasons(env, args.fixture)
    data = args.data or (GLUE_SST2 if (GLUE_SST2 / "dev.tsv").is_file() else None)
    data_note = f"{data}" if data else "generated tiny SST-2 (no GLUE copy on this machine): accuracy means little"
    data = data or (out / "tiny-sst2" if args.dry_run else tiny_sst2(out / "tiny-sst2"))
    steps = plan(out, data, args.fixture, missing["onnxruntime-gpu"] is None)
    deadline = started + args.budget
    for step in steps:
        reasons = [missing[n] for n in ["prumux-deploy", *step.needs] if missing.get(n)]
        if args.dry_run:
            step.reason = "; ".join(["dry run", *reasons])
            continue
        if reasons:
            step.reason = "; ".join(reasons)
            continue
        run_step(step, deadline)
        print(f"{step.name}: {step.status}{' (' + step.reason + ')' if step.reason else ''} [{step.seconds:.0f} s]",
              file=sys.stderr)
    summary = {s: sum(step.status == s for step in steps) for s in ("passed", "failed", "not run")}
    report = {"format": REPORT_FORMAT, "format_version": REPORT_VERSION, "dry_run": args.dry_run,
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "elapsed_s": round(time.monotonic() - started, 1),
              "budget_s": args.budget, "environment": env, "missing": {k: v for k, v in missing.items() if v},
              "data": data_note, "steps": [s.to_dict() for s in steps], "summary": summary}
    report_path = out / "report.json"
    tmp = report_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, report_path)  # a half-written report never replaces a whole one
    print(f"report: {report_path} ({summary['passed']} passed, {summary['failed']} failed, "
          f"{summary['not run']} not run)")
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
