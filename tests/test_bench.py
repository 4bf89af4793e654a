import csv
import json

import pytest
from click.testing import CliRunner
from conftest import refused
from transformers import BertConfig

from prumux_deploy import create_model
from prumux_deploy.bench import BERT_BASE, plot, read_accuracies
from prumux_deploy.counts import bert_flops_per_sample, encoder_flops, encoder_params, prumux_flops_per_sample
from prumux_deploy.cli import main
from prumux_deploy.errors import PruMuxError
from prumux_deploy.compact import compact
from prumux_deploy.generate import cofi_like_structure, masks_for_structure
from prumux_deploy.model import PruMuxConfig
from prumux_deploy.structure import describe


def test_flop_counter_matches_a_hand_computation():
    # layer 0: 2 heads of dim 4 on H=8, FFN 16; layer 1: no attention, FFN 4; seq 3
    # layer 0 attention: QKV 2*3*8*8*3 = 1152, scores+context 2*3*3*8*2 = 288, out 2*3*8*8 = 384 -> 1824
    # layer 0 FFN: 2*3*8*16*2 = 1536;  layer 1 FFN: 2*3*8*4*2 = 384
    assert encoder_flops([2, 0], [16, 4], hidden=8, head_dim=4, seq=3) == 1824 + 1536 + 384
    cfg = PruMuxConfig(hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16,
                       num_instances=2, num_labels=3, layer_num_heads=[2, 0], layer_intermediate_size=[16, 4],
                       pruned_hidden_size=8)
    # demux per sample: 2*16*8 + 2*8*8 + 2*8*3 = 256 + 128 + 48 = 432; encoder shared by N=2 samples
    assert prumux_flops_per_sample(cfg, seq=3) == (1824 + 1536 + 384) / 2 + 432
    # the key_pool read-out runs the demux MLP at all 3 positions: 3 * (256 + 128) + 48 = 1200
    cfg.demux_kind = "key_pool"
    assert prumux_flops_per_sample(cfg, seq=3) == (1824 + 1536 + 384) / 2 + 1200


def test_bert_base_flops_are_the_known_figure():
    # BERT-base at sequence 128 is about 22.5 GFLOPs per sequence (11.2 G multiply-adds)
    assert bert_flops_per_sample(BERT_BASE, 128) == pytest.approx(22.5e9, rel=0.02)


@pytest.mark.parametrize("target", [0.6, 0.8, 0.9, 0.95])
def test_generator_hits_the_target_sparsity_within_one_point(target):
    cfg = PruMuxConfig(**{k: v for k, v in BERT_BASE.items()})
    heads, ffn = cofi_like_structure(cfg, target, seed=3)
    full = encoder_params([12] * 12, [3072] * 12, 768, 64)
    assert abs(1 - encoder_params(heads, ffn, 768, 64) / full - target) <= 0.01
    assert len(set(heads)) > 1 and len(set(ffn)) > 1  # layers differ, as in CoFi's models
    if target >= 0.9:
        assert 0 in heads  # some layers lose their attention entirely


def test_generated_masks_compact_to_the_generated_structure_and_counts_agree():
    bert = BertConfig(vocab_size=50, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                      intermediate_size=128, max_position_embeddings=32)
    model = create_model(bert, num_instances=2, num_labels=2)
    heads, ffn = cofi_like_structure(model.config, 0.7, seed=1)
    model.set_masks(masks_for_structure(model.config, heads, ffn, seed=1, fractional=True))
    small = compact(model)
    assert small.config.heads_per_layer == heads and small.config.ffn_per_layer == ffn
    assert small.num_encoder_params() == encoder_params(heads, ffn, 64, 16)
    assert abs(describe(small, model)["sparsity"] - 0.7) <= 0.01


def test_quick_bench_writes_csv_json_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    result = CliRunner().invoke(main, ["bench", "--quick", "--csv", str(tmp_path / "b.csv"), "--json",
                                       str(tmp_path / "b.json"), "--plot", str(tmp_path / "b.png")])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(tmp_path / "b.csv")))
    assert len(rows) == 1 + 2 * 2 * 4  # baseline + (N in 1,2) x (s in 0, 0.9) x 4 backends
    data = json.loads((tmp_path / "b.json").read_text())
    assert {r["backend"] for r in data["rows"]} == {"torch", "onnxruntime", "onnxruntime-opt", "onnxruntime-int8"}
    for r in data["rows"]:
        assert r["samples_per_s"] > 0 and r["flop_bound_speedup"] > 0
        assert r["bound_fraction"] == pytest.approx(r["speedup"] / r["flop_bound_speedup"])
        if r["backend"] in ("onnxruntime", "onnxruntime-opt"):
            assert r["max_abs_logit_error"] < 1e-3
        elif r["backend"] == "onnxruntime-int8":
            assert r["max_abs_logit_error"] < 0.5
        if r["backend"] != "torch":  # the fp32 PyTorch row is the reference itself
            assert (r["spot_check"], r["spot_check_tolerance"]) == ("pass", 1.0 if "int8" in r["backend"] else 1e-4)
    assert data["machine"]["cores"] >= 1
    for r in data["rows"] + [data["baseline"]]:  # every row beside the machine's GEMM rate on its own products
        assert r["gemm_gflops"] > 0
        assert r["achieved_gflops"] == pytest.approx(r["flops_per_sample"] * r["samples_per_s"] / 1e9)
        assert r["gemm_fraction"] == pytest.approx(r["achieved_gflops"] / r["gemm_gflops"])
    assert "of GEMM" in result.output
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"
    assert "speedup" in result.output and "baseline" in result.output

    # --from-json renders the saved run again without timing: the same table and CSV, and the accuracy panel
    (tmp_path / "acc.csv").write_text("N,sparsity,accuracy\n1,0,90\n1,0.9,85\n2,0,88\n2,0.9,84\n")
    again = CliRunner().invoke(main, ["bench", "--from-json", str(tmp_path / "b.json"), "--csv", str(tmp_path / "c.csv"),
                                      "--plot", str(tmp_path / "acc.png"), "--accuracy", str(tmp_path / "acc.csv")])
    assert again.exit_code == 0, again.output
    table = result.output[result.output.index("protocol ours"):result.output.index("plot:")]
    assert again.output.startswith(table)
    assert (tmp_path / "c.csv").read_text() == (tmp_path / "b.csv").read_text()
    assert (tmp_path / "acc.png").read_bytes()[:4] == b"\x89PNG"
    for extra, message in [(["--quick"], "--quick chooses what to time and does not apply"),
                           (["--instances", "1,2"], "--instances/-n chooses what to time"),
                           (["--no-gemm"], "--gemm/--no-gemm chooses what to time"),
                           (["--accuracy", str(tmp_path / "acc.csv")], "--accuracy only feeds the plot; add --plot"),
                           (["--json", str(tmp_path / "x.json")], "--json would only copy it"),
                           (["--plot", str(tmp_path / "x.png"), "--accuracy", str(tmp_path / "acc.csv"),
                             "--accuracy-backend", "torch-compile"],
                            "--accuracy-backend torch-compile is not in")]:
        refused(CliRunner().invoke(main, ["bench", "--from-json", str(tmp_path / "b.json"), *extra]), 2, message)
    refused(CliRunner().invoke(main, ["bench", "--from-json", str(tmp_path / "acc.csv")]), 2, "not a readable JSON file")
    again = CliRunner().invoke(main, ["bench", "--from-json", str(tmp_path / "b.json"), "--csv", str(tmp_path / "c.csv"),
                                      "--force"])
    assert again.exit_code == 0, again.output  # rendering options, --force included, are not timing options
    (tmp_path / "other.csv").write_text("N,sparsity,accuracy\n3,0.5,80\n")
    with pytest.raises(PruMuxError, match="no \\(N, sparsity\\) of the accuracy CSV was timed on onnxruntime-opt"):
        plot(data, tmp_path / "none.png", read_accuracies(tmp_path / "other.csv"))
    assert not (tmp_path / "none.png").exists()
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "x.json").exists()


def test_a_failed_spot_check_fails_bench_after_its_reports(tmp_path, masked_checkpoint, monkeypatch):
    from prumux_deploy import backends
    from prumux_deploy.backends import failed_spot_checks, spot_check_verdict

    assert spot_check_verdict("onnxruntime-opt", 2e-4)["spot_check"] == "FAIL"
    assert spot_check_verdict("onnxruntime-int8", 0.9)["spot_check"] == "pass"
    assert spot_check_verdict("torch-tf32", 4e-2)["spot_check"] == "pass"  # TF32 takes fp16's bound
    assert spot_check_verdict("onnxruntime-opt", float("nan"))["spot_check"] == "FAIL"  # NaN never passes
    assert spot_check_verdict("torch", None)["spot_check"] is None
    monkeypatch.setattr(backends, "spot_check", lambda *args: 0.25)  # an engine that computes something else
    done = CliRunner().invoke(main, ["bench", "--checkpoint", str(masked_checkpoint), "--backend", "onnxruntime-opt",
                                     "--backend", "onnxruntime-int8", "--seq", "16", "--repeats", "1", "--no-gemm",
                                     "--json", str(tmp_path / "b.json")])
    assert done.exit_code == 1, done.output
    last = done.output.strip().splitlines()[-1]
    assert last.startswith("error: spot check failed (max |logit error| against PyTorch fp32 above the precision's "
                           "tolerance): ") and "onnxruntime-opt: 2.5e-01 > 0.0001" in last
    assert "onnxruntime-int8" not in last  # 0.25 is within int8's bound
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]  # the report is written first
    assert [r["spot_check"] for r in rows] == ["FAIL", "pass"]
    assert failed_spot_checks(rows[1:]) is None


def test_accuracy_panel_points_per_method_and_their_fronts():
    from prumux_deploy.bench import accuracy_points, pareto_front

    rows = [{"N": n, "sparsity": s, "backend": b, "speedup": sp} for n, s, b, sp in [
        (1, 0.0, "onnxruntime-opt", 8.0), (1, 0.6, "onnxruntime-opt", 20.0), (1, 0.9, "onnxruntime-opt", 60.0),
        (2, 0.0, "onnxruntime-opt", 17.0), (2, 0.6, "onnxruntime-opt", 41.0), (2, 0.9, "onnxruntime-opt", 125.0),
        (2, 0.9, "onnxruntime-int8", 220.0), (5, 0.9, "onnxruntime-opt", 340.0),
        (2, 0.9, "onnxruntime-opt", 110.0)]]  # a second checkpoint rounding to (2, 0.9): the faster one is kept
    accuracies = {(1, 0.0): 87.6, (1, 0.6): 80.2, (1, 0.9): 79.4, (2, 0.0): 74.8, (2, 0.6): 73.7, (2, 0.9): 67.4,
                  (5, 0.9): 68.0}
    points = accuracy_points({"rows": rows}, accuracies, "onnxruntime-opt")
    assert points == {"baseline": [(8.0, 87.6, 1, 0.0)], "CoFi": [(60.0, 79.4, 1, 0.9), (20.0, 80.2, 1, 0.6)],
                      "DataMUX": [(17.0, 74.8, 2, 0.0)],
                      "PruMUX": [(340.0, 68.0, 5, 0.9), (125.0, 67.4, 2, 0.9), (41.0, 73.7, 2, 0.6)]}
    # (2, 0.9) is slower and less accurate than (5, 0.9): off the front
    assert pareto_front(points["PruMUX"]) == [(340.0, 68.0, 5, 0.9), (41.0, 73.7, 2, 0.6)]
    assert pareto_front(points["CoFi"]) == points["CoFi"]


def test_model_gemms_are_the_products_encoder_flops_counts():
    from prumux_deploy.roofline import model_gemms

    cfg = PruMuxConfig(hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16,
                       num_instances=2, layer_num_heads=[2, 0], layer_intermediate_size=[16, 4], pruned_hidden_size=8)
    gemms = model_gemms(cfg, groups=1, seq=3)
    assert sum(g.flops * n for g, n in gemms.items()) == encoder_flops([2, 0], [16, 4], hidden=8, head_dim=4, seq=3)


def test_latency_reports_percentiles_for_single_requests_and_batches(tmp_path, masked_checkpoint):
    result = CliRunner().invoke(main, ["bench", "--latency", "--checkpoint", str(masked_checkpoint), "--seq", "16",
                                       "--json", str(tmp_path / "l.json")])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "l.json").read_text())["latency"]
    assert [(r["backend"], r["batch"]) for r in rows] == [  # 1, N, 4N with N=2, optimized fp32 and int8
        (b, n) for b in ("onnxruntime-opt", "onnxruntime-int8") for n in (1, 2, 8)]
    for r in rows:
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] and r["calls"] >= 50
        assert r["per_row_p50_ms"] == pytest.approx(r["p50_ms"] / r["batch"])
    assert "p99 ms" in result.output and "a batch of 1 runs a whole mux group" in result.output
    refused = CliRunner().invoke(main, ["bench", "--latency", "--quick", "--csv", str(tmp_path / "x.csv")])
    assert refused.exit_code == 2 and "with --latency use --json" in refused.output


def test_end_to_end_rows_and_the_paper_protocol(tmp_path, masked_checkpoint, sst2_dir):
    result = CliRunner().invoke(main, ["bench", "--checkpoint", str(masked_checkpoint), "--data", str(sst2_dir),
                                       "--backend", "onnxruntime-opt", "--seq", "16", "-b", "2", "--repeats", "2",
                                       "--protocol", "paper", "--json", str(tmp_path / "b.json")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["protocol"]["protocol"] == "paper" and data["protocol"]["groups_per_batch"] == 2  # -b wins
    row = data["rows"][0]
    assert row["e2e_rows"] == 11 and row["e2e_longest_samples_per_s"] > 0 and row["e2e_fixed_samples_per_s"] > 0
    assert "text -> labels" in result.output and "protocol paper" in result.output
    refused = CliRunner().invoke(main, ["bench", "--quick", "--data", str(sst2_dir)])
    assert refused.exit_code == 2 and "give them with --checkpoint" in refused.output


def test_peers_are_grouped_by_precision_each_against_ours_at_that_precision():
    from prumux_deploy.bench import format_peers

    rates = {"torch": 100.0, "torch-compile": 300.0, "onnxruntime-opt": 400.0, "openvino": 500.0,
             "openvino-bf16": 900.0, "onnxruntime-int8": 1000.0, "openvino-int8": 800.0}
    rows = [{"name": "m", "backend": b, "samples_per_s": r, "max_abs_logit_error": None if "torch" in b else 1e-3}
            for b, r in rates.items()]
    text = format_peers({"rows": rows}).splitlines()
    assert text[2:] == [
        "  m:",
        "    fp32: ours = openvino 500.0/s",
        "      openvino               500.0/s   1.00x   max |logit error| 1.0e-03",
        "      onnxruntime-opt        400.0/s   0.80x   max |logit error| 1.0e-03",
        "      torch-compile          300.0/s   0.60x",
        "      torch                  100.0/s   0.20x",
        "    bf16: ours = openvino-bf16 900.0/s (1.80x ours at fp32)",
        "      openvino-bf16          900.0/s   1.00x   max |logit error| 1.0e-03",
        "    int8: ours = onnxruntime-int8 1000.0/s (2.00x ours at fp32)",  # the faster int8 runtime is ours
        "      onnxruntime-int8      1000.0/s   1.00x   max |logit error| 1.0e-03",
        "      openvino-int8          800.0/s   0.80x   max |logit error| 1.0e-03",
    ]
