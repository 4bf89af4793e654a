"""Training on a device, in mixed precision, and across processes (torchrun with gloo on the CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from prumux_deploy import load_checkpoint
from prumux_deploy.errors import PruMuxError
from prumux_deploy.devices import resolve_device
from prumux_deploy.train.distributed import Runtime, runtime
from prumux_deploy.train.stages import finetune

from conftest import refused, run_cli

CLI = str(Path(sys.executable).parent / "prumux-deploy")
NO_GPU = not torch.cuda.is_available()


def train_args(glue_dir, *extra):
    return ["--task", "sst2", "--data", glue_dir, "--instances", 2, "--batch-size", 8, "--lr", "1e-3",
            "--max-seq-length", 12, "--eval-every", 4, "--save-every", 3, "--seed", 0, "--device", "cpu", *extra]


def run_processes(nproc: int, *args, timeout=600, wait=True):
    """`prumux-deploy ARGS` as one plain process or under torchrun with `nproc` processes (gloo, loopback)."""
    cmd = [CLI, *map(str, args)]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "--no-python", *cmd]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if not wait:  # output to a file: an unread pipe would block the run once full
        log = open(Path(args[2]).parent / f"{Path(args[2]).name}.out", "w")
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def max_weight_difference(a: Path, b: Path) -> float:
    ma, mb = load_checkpoint(a), load_checkpoint(b)
    sa, sb = ma.state_dict(), mb.state_dict()
    assert sa.keys() == sb.keys()
    diffs = [(sa[k].float() - sb[k].float()).abs().max().item() for k in sa]
    for name in ma.masks:
        diffs.append((ma.masks[name] - mb.masks[name]).abs().max().item())
    return max(diffs)


# --- device and precision -----------------------------------------------------------------------------

def test_device_plumbing_on_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rt = runtime("cpu", "bf16")
    assert rt.device == torch.device("cpu") and rt.world_size == 1 and rt.is_main
    with rt.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with pytest.raises(PruMuxError, match="`device` 'tpu': choose auto, cpu or cuda"):
        resolve_device("tpu")
    with pytest.raises(PruMuxError, match="`precision` fp16 needs a CUDA device"):
        runtime("cpu", "fp16")
    # a global batch is cut micro-batch first, then by process: micro-batch m of every process count is the same rows
    batch = {"input_ids": torch.arange(16)[:, None], "position": torch.arange(16)}
    parts = [Runtime(torch.device("cpu"), rank=r, world_size=2).shard(batch, micro_steps=2) for r in (0, 1)]
    assert [p["position"].tolist() for p in parts[0]] == [[0, 1, 2, 3], [8, 9, 10, 11]]
    assert [p["position"].tolist() for p in parts[1]] == [[4, 5, 6, 7], [12, 13, 14, 15]]


@pytest.mark.skipif(not NO_GPU, reason="checks the refusal on a machine without a GPU")
def test_cuda_without_a_gpu_is_one_line(tmp_path, bert_dir, glue_dir):
    refused(run_cli("train", "finetune", tmp_path / "out", "--init", bert_dir, *train_args(glue_dir)[:-2],
                    "--device", "cuda"), 2, "--device cuda: no CUDA GPU is visible to PyTorch here")
    refused(run_cli("train", "finetune", tmp_path / "out", "--init", bert_dir, *train_args(glue_dir),
                    "--precision", "fp16"), 2, "--precision fp16 needs a CUDA device")
    result = run_cli("train", "finetune", tmp_path / "out", "--init", bert_dir, *train_args(glue_dir),
                     "--grad-accum", 0)
    assert result.exit_code == 2 and "Invalid value for '--grad-accum': 0 is not in the range x>=1" in result.output
    assert not (tmp_path / "out").exists()


def test_bf16_autocast_training_on_cpu(tmp_path, bert_dir, glue_dir):
    result = run_cli("train", "finetune", tmp_path / "bf16", "--init", bert_dir, *train_args(glue_dir),
                     "--precision", "bf16")
    assert result.exit_code == 0, result.output
    result = run_cli("train", "finetune", tmp_path / "fp32", "--init", bert_dir, *train_args(glue_dir))
    assert result.exit_code == 0, result.output
    bf16, fp32 = load_checkpoint(tmp_path / "bf16"), load_checkpoint(tmp_path / "fp32")
    diff = max_weight_difference(tmp_path / "bf16", tmp_path / "fp32")
    assert 0 < diff < 0.05  # the same run, rounded differently; weights stay fp32 in the checkpoint
    assert all(t.dtype == torch.float32 for t in bf16.state_dict().values())
    records = [json.loads(l) for l in (tmp_path / "bf16" / "train_log.jsonl").read_text().splitlines()]
    assert records[0]["args"]["precision"] == "bf16"
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records if r.get("event") == "eval")
    assert fp32.config == bf16.config


def test_grad_accumulation_takes_the_same_steps(tmp_path, bert_dir, glue_dir):
    run = run_cli
    assert run("train", "finetune", tmp_path / "a1", "--init", bert_dir, *train_args(glue_dir)).exit_code == 0
    result = run("train", "finetune", tmp_path / "a2", "--init", bert_dir, *train_args(glue_dir), "--grad-accum", 2)
    assert result.exit_code == 0, result.output
    assert max_weight_difference(tmp_path / "a1", tmp_path / "a2") < 1e-4


# --- torchrun: K processes take the same steps as one --------------------------------------------------

def test_two_processes_under_torchrun_equal_one_process_and_write_once(tmp_path, bert_dir, glue_dir):
    """warm-up (retrieval), fine-tune and prune (gates, layer alignment, Lagrangian), the whole pipeline."""
    common = ["--base", bert_dir, "--warmup-epochs", 1, "--epochs", 1, "--sparsity", 0.5, "--final-epochs", 0.5,
              *train_args(glue_dir)]
    one = run_processes(1, "train", "all", tmp_path / "one", *common)
    two = run_processes(2, "train", "all", tmp_path / "two", *common)
    for stage in ("warmup", "finetune", "pruned"):
        assert max_weight_difference(tmp_path / "one" / stage, tmp_path / "two" / stage) <= 1e-4, stage
        records = [json.loads(l) for l in (tmp_path / "two" / stage / "train_log.jsonl").read_text().splitlines()]
        starts = [r for r in records if r["event"] == "start"]
        assert starts and all(r["processes"] == 2 for r in starts)  # one writer: one start record per phase
        assert len(starts) == (2 if stage == "pruned" else 1)
    assert two.stderr.count("; wrote ") == one.stderr.count("; wrote ") == 3  # only rank 0 reports
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


def test_resume_under_torchrun_continues_where_it_stopped(tmp_path, bert_dir, glue_dir):
    """A 2-process run stopped (SIGTERM, as a preempted job) and resumed ends where an uninterrupted one does."""
    args = [*train_args(glue_dir), "--epochs", 100, "--save-every", 5, "--eval-every", 1000]
    run_processes(2, "train", "finetune", tmp_path / "straight", "--init", bert_dir, *args)
    proc = run_processes(2, "train", "finetune", tmp_path / "resumed", "--init", bert_dir, *args, wait=False)
    state = tmp_path / "resumed.run" / "train_state.pt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if state.is_file() and torch.load(state, weights_only=False)["step"] >= 10:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be interrupted; make it longer"
    os.killpg(proc.pid, signal.SIGTERM)  # as Ctrl-C or a preempted job: torchrun stops its workers
    proc.wait(timeout=120)
    stopped_at = torch.load(state, weights_only=False)["step"]
    assert 10 <= stopped_at < 100 * 8 and not (tmp_path / "resumed").exists()
    run_processes(2, "train", "finetune", tmp_path / "resumed", "--init", bert_dir, *args, "--resume")
    assert max_weight_difference(tmp_path / "straight", tmp_path / "resumed") <= 1e-6  # the same steps, resumed
    records = [json.loads(l) for l in (tmp_path / "resumed" / "train_log.jsonl").read_text().splitlines()]
    assert [r["resume"] for r in records if r["event"] == "start"] == [False, True]


def test_teacher_logits_are_shared_by_the_processes(tmp_path, bert_dir, glue_dir):
    """Distillation under torchrun: each process computes half of the teacher's logits; both see all."""
    finetune(bert_dir, tmp_path / "teacher", _args(glue_dir, instances=1), log=lambda m: None)
    common = ["--init", bert_dir, "--teacher", tmp_path / "teacher", *train_args(glue_dir)]
    run_processes(1, "train", "finetune", tmp_path / "one", *common)
    run_processes(2, "train", "finetune", tmp_path / "two", *common)
    assert max_weight_difference(tmp_path / "one", tmp_path / "two") <= 1e-4


def _args(glue_dir, **kw):
    from prumux_deploy.train.loop import TrainArgs

    base = dict(task="sst2", data=str(glue_dir), instances=2, epochs=1.0, batch_size=8, lr=1e-3,
                max_seq_length=12, eval_every=4, save_every=3, seed=0, device="cpu")
    base.update(kw)
    return TrainArgs(**base)


# --- validate and bench on a device, and the throughput gate ---------------------------------------------

def test_validate_min_speedup_gates_on_throughput(tmp_path, engine_dir, masked_checkpoint, sst2_dir):
    common = ["validate", engine_dir, "--checkpoint", masked_checkpoint, "--task", "sst2", "--data", sst2_dir,
              "--batch-size", 4]
    result = run_cli(*common, "--min-speedup", 0.01, "--report", tmp_path / "pass.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "pass.json").read_text())
    gate = [c for c in report["checks"] if c["name"] == "speedup vs PyTorch eager"]
    assert len(gate) == 1 and gate[0]["passed"] and gate[0]["threshold"] == 0.01
    assert gate[0]["value"] == report["throughput"]["speedup_vs_eager"] > 0  # --throughput is implied
    assert report["device"]["device"] == "cpu" and report["device"]["onnxruntime"]
    assert {"gpu", "driver", "cuda", "cudnn", "tensorrt"} <= set(report["device"])
    result = run_cli(*common, "--min-speedup", 1e6, "--report", tmp_path / "fail.json")
    assert result.exit_code == 1
    assert "speedup vs PyTorch eager" in result.output and "FAILED" in result.output
    failed = [c["name"] for c in json.loads((tmp_path / "fail.json").read_text())["checks"] if not c["passed"]]
    assert failed == ["speedup vs PyTorch eager"]
    assert run_cli(*common, "--min-speedup", 0).exit_code == 2  # a ratio must be positive


@pytest.mark.skipif(not NO_GPU, reason="checks the refusal on a machine without a GPU")
def test_validate_and_bench_on_cuda_without_a_gpu_are_one_line(tmp_path, engine_dir, masked_checkpoint, sst2_dir):
    refused(run_cli("validate", engine_dir, "--checkpoint", masked_checkpoint, "--task", "sst2", "--data", sst2_dir,
                    "--device", "cuda"), 2, "--device cuda: no CUDA GPU is visible to PyTorch here")
    refused(run_cli("bench", "--quick", "--device", "cuda"), 2, "--device cuda: no CUDA GPU is visible")


@pytest.mark.gpu
@pytest.mark.ort_cuda
def test_validate_on_cuda_times_the_engine_against_pytorch_on_the_gpu(tmp_path, engine_dir, masked_checkpoint,
                                                                     sst2_dir):
    result = run_cli("validate", engine_dir, "--checkpoint", masked_checkpoint, "--task", "sst2", "--data", sst2_dir,
                     "--device", "cuda", "--min-speedup", 0.01, "--report", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["device"]["gpu"] and report["throughput"]["device"].startswith("cuda")
    assert report["throughput"]["batch"] == 128 * 2  # the paper's protocol
    assert report["metrics"]["agreement"] == 1.0


@pytest.mark.gpu
def test_training_on_cuda_in_bf16(tmp_path, bert_dir, glue_dir):
    result = run_cli("train", "finetune", tmp_path / "gpu", "--init", bert_dir, *train_args(glue_dir)[:-2],
                     "--device", "cuda", "--precision", "bf16")
    assert result.exit_code == 0, result.output
    records = [json.loads(l) for l in (tmp_path / "gpu" / "train_log.jsonl").read_text().splitlines()]
    assert records[0]["args"]["device"] == "cuda" and records[0]["args"]["precision"] == "bf16"


@pytest.mark.gpu
def test_bench_on_cuda_times_pytorch_and_the_baseline_on_the_gpu(tmp_path):
    result = run_cli("bench", "--quick", "--device", "cuda", "--backend", "torch", "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.output
    bench = json.loads((tmp_path / "b.json").read_text())
    assert bench["protocol"]["device"].startswith("cuda") and bench["device"]["gpu"]
    assert bench["protocol"]["groups_per_batch"] == 2  # --quick's own batch wins over the GPU default
    assert all(r["samples_per_s"] > 0 for r in bench["rows"])


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs one GPU per process: needs 2 GPUs")
def test_two_gpus_under_torchrun_equal_one(tmp_path, bert_dir, glue_dir):
    common = [*train_args(glue_dir)[:-2], "--device", "cuda", "--init", bert_dir]
    run_processes(1, "train", "finetune", tmp_path / "one", *common)
    run_processes(2, "train", "finetune", tmp_path / "two", *common)
    assert max_weight_difference(tmp_path / "one", tmp_path / "two") <= 1e-4
