"""examples/gpu/acceptance.sh, the one-command GPU acceptance run: its dry run here, and a real run on a
machine without a GPU, where every step must say why it did not run and none may claim to have passed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]
STEPS = ["pytest-gpu", "train-bf16", "train-fp16", "example-onnx-cuda", "example-tensorrt-fp32",
         "example-tensorrt-fp16", "upstream-onnx-cuda", "upstream-tensorrt-fp32", "bench-quick", "bench-paper"]


def _acceptance(out: Path, *args) -> dict:
    done = subprocess.run(["bash", str(REPO / "examples" / "gpu" / "acceptance.sh"), "--out", str(out), *args],
                          capture_output=True, text=True, timeout=120, env={"PYTHON": sys.executable,
                                                                           "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"report: {out / 'report.json'}" in done.stdout
    return json.loads((out / "report.json").read_text())


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def test_the_dry_run_plans_every_step_and_runs_none(tmp_path):
    out = tmp_path / "acc"
    report = _acceptance(out, "--dry-run")
    assert report["format"] == "prumux-gpu-acceptance" and report["dry_run"] is True
    assert [s["name"] for s in report["steps"]] == STEPS
    assert report["summary"] == {"passed": 0, "failed": 0, "not run": len(STEPS)}
    env = report["environment"]
    assert {"gpu", "driver", "driver_cuda", "torch", "torch_cuda", "onnxruntime", "onnxruntime_providers",
            "tensorrt", "python"} <= set(env)
    steps = {s["name"]: s for s in report["steps"]}
    assert all(s["reason"].startswith("dry run") and s["seconds"] == 0 for s in steps.values())
    validate = steps["example-tensorrt-fp32"]["commands"][-1]
    assert validate[3:5] == ["validate", str(out / "example" / "trt")]
    assert " --device cuda --throughput --min-speedup 1 " in " ".join(validate)
    assert steps["example-tensorrt-fp32"]["commands"][0][3:7] == ["export", str(REPO / "examples" / "sst2-mux2"),
                                                                 str(out / "example" / "trt"), "--format"]
    assert " --device cuda --quick " in " ".join(steps["bench-quick"]["commands"][0])
    assert " --device cuda --protocol paper " in " ".join(steps["bench-paper"]["commands"][0])
    assert " --device cuda --precision fp16 " in " ".join(steps["train-fp16"]["commands"][0])
    assert steps["pytest-gpu"]["commands"][0][1:6] == ["-m", "pytest", "-q", "-rs", "-m"]
    try:
        import tensorrt  # noqa: F401
    except ImportError:  # what is not installed is named as the reason, for each step that needs it
        assert "tensorrt is not installed" in steps["example-tensorrt-fp32"]["reason"]
        assert report["missing"]["tensorrt"] == "tensorrt is not installed"


@pytest.mark.skipif(_has_gpu(), reason="checks the run on a machine without a GPU")
def test_without_a_gpu_nothing_runs_and_nothing_passes(tmp_path):
    report = _acceptance(tmp_path / "acc", "--budget", "60")
    assert report["dry_run"] is False and report["summary"]["passed"] == 0 and report["summary"]["failed"] == 0
    for step in report["steps"]:
        assert step["status"] == "not run"
        assert "no CUDA GPU visible to PyTorch" in step["reason"], step
