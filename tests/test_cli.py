import json
import shutil

import pytest

from conftest import refused, run_cli as run


def test_every_command_has_help():
    for cmd in ("init", "compact", "export", "validate", "inspect", "predict"):
        result = run(cmd, "--help")
        assert result.exit_code == 0 and "Usage:" in result.output, cmd


def test_help_shows_each_precisions_tolerance_once(monkeypatch):
    from prumux_deploy import compare
    from prumux_deploy.compare import Tolerance, describe_defaults

    assert describe_defaults("max_logit_error") == "1e-4 fp32, 5e-2 fp16, 1 int8, 1e-1 bf16"
    assert describe_defaults("max_accuracy_drop") == "0.01 at every precision"  # not "0.01 fp32, 0.01 fp16, ..."
    monkeypatch.setitem(compare.TOLERANCES, "int8", Tolerance(max_logit_error=1.0, max_accuracy_drop=0.02,
                                                              min_agreement=0.97))
    assert describe_defaults("max_accuracy_drop") == "0.01 fp32, 0.01 fp16, 0.02 int8, 0.01 bf16"


def test_init_then_inspect(tmp_path, bert_dir):
    result = run("init", tmp_path / "m", "--base", bert_dir, "--instances", 5, "--task", "sst2")
    assert result.exit_code == 0, result.output
    assert "N=5" in result.output and "['negative', 'positive']" in result.output
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["num_instances"] == 5 and config["task"] == "sst2"
    assert (tmp_path / "m" / "vocab.txt").is_file()
    result = run("inspect", tmp_path / "m")
    assert result.exit_code == 0
    assert "unpruned" in result.output and "sparsity 0.0%" in result.output


def test_init_errors(tmp_path, bert_dir):
    (tmp_path / "m").mkdir()
    refused(run("init", tmp_path / "m", "--base", bert_dir), 2, "already exists; pass --force")
    refused(run("init", tmp_path / "n", "--base", tmp_path / "none"), 2, "no config.json; --base must be a local BERT "
                                                                         "directory, or 'minilm' (the bundled")
    refused(run("init", tmp_path / "n", "--base", bert_dir, "--task", "nope"), 2, "unknown task 'nope'")
    assert not (tmp_path / "n").exists()


def test_compact_command(tmp_path, masked_checkpoint):
    result = run("compact", masked_checkpoint, tmp_path / "c", "--fp16")
    assert result.exit_code == 0, result.output
    assert "encoder sparsity" in result.output
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    assert config["layer_num_heads"] == [0, 3, 4, 4] and config["layer_intermediate_size"] == [64, 64, 5, 0]
    assert not (tmp_path / "c" / "masks.safetensors").exists()
    result = run("inspect", tmp_path / "c")
    assert "compact" in result.output and "0/4" in result.output


def test_export_command_and_its_main_error(tmp_path, masked_checkpoint):
    result = run("export", masked_checkpoint, tmp_path / "e")
    assert result.exit_code == 0, result.output
    assert "engine ready" in result.output and (tmp_path / "e" / "model.onnx").is_file()
    refused(run("export", tmp_path / "missing", tmp_path / "e2"), 2, "missing: no such directory")
    assert not (tmp_path / "e2").exists()


def test_predict(engine_dir):
    result = run("predict", engine_dir, "a gorgeous , witty film", "dull", "--json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(l) for l in result.output.splitlines()]
    assert [r["text"] for r in rows] == ["a gorgeous , witty film", "dull"]
    for r in rows:
        assert r["label"] in ("negative", "positive")
        assert abs(sum(r["scores"].values()) - 1) < 1e-5 and r["score"] == max(r["scores"].values())
    table = run("predict", engine_dir, "great")
    assert table.output.split()[0] in ("negative", "positive")


def test_a_checkpoint_given_for_an_engine_is_named_with_the_export_it_needs(masked_checkpoint):
    refused(run("predict", masked_checkpoint, "great"), 2,
            f"{masked_checkpoint} is a checkpoint, not an engine; export it first (`prumux-deploy export "
            f"{masked_checkpoint} ENGINE_DIR`) and pass ENGINE_DIR")


def test_predict_errors(tmp_path, engine_dir):
    refused(run("predict", engine_dir, "fine", "--second", "x"), 2, "drop --second")
    refused(run("predict", tmp_path, "fine"), 2, "manifest.json: missing")
    copy = tmp_path / "edited"
    shutil.copytree(engine_dir, copy)
    with open(copy / "model.onnx", "ab") as f:
        f.write(b"junk")
    refused(run("predict", copy, "fine"), 2, "does not match manifest.json")


def test_inspect_engine(engine_dir):
    result = run("inspect", engine_dir)
    assert result.exit_code == 0
    assert "inputs ['input_ids', 'attention_mask']" in result.output and "hidden size 16/32" in result.output
    info = json.loads(run("inspect", engine_dir, "--json").output)
    assert [l["heads"] for l in info["layers"]] == [0, 3, 4, 4]


def test_validate_passes_and_writes_a_report(tmp_path, engine_dir, masked_checkpoint, sst2_dir):
    report = tmp_path / "r" / "report.json"
    result = run("validate", engine_dir, "--checkpoint", masked_checkpoint, "--task", "sst2", "--data", sst2_dir,
                 "--report", report, "--throughput", "--batch-size", 4)
    assert result.exit_code == 0, result.output
    assert "PASSED" in result.output and "prediction agreement" in result.output
    data = json.loads(report.read_text())
    assert data["passed"] is True and data["examples"] == 11
    assert data["metrics"]["agreement"] == 1.0
    assert data["metrics"]["max_abs_logit_error"] <= 1e-4
    assert data["metrics"]["engine_accuracy"] == data["metrics"]["pytorch_accuracy"]
    assert data["throughput"]["engine_samples_per_s"] > 0 and data["throughput"]["batch"] == 4
    assert data["throughput"]["end_to_end_rows"] == 11  # min(rows, 4 batches)
    assert data["throughput"]["end_to_end_longest_samples_per_s"] > 0
    assert "end to end (text -> labels, 11 rows, batch 4)" in result.output
    t = data["throughput"]
    assert t["pipelined_rows"] == 11 and t["end_to_end_pipelined_samples_per_s"] > 0
    assert t["end_to_end_share_of_engine"] == pytest.approx(t["end_to_end_pipelined_samples_per_s"]
                                                            / t["engine_only_longest_samples_per_s"])
    assert "pipelined (predict --input's path, 11 rows)" in result.output


def test_validate_fails_a_threshold_with_exit_1(tmp_path, engine_dir, masked_checkpoint, sst2_dir):
    report = tmp_path / "report.json"
    result = run("validate", engine_dir, "--checkpoint", masked_checkpoint, "--task", "sst2", "--data", sst2_dir,
                 "--min-accuracy", "1.0", "--report", report)
    assert result.exit_code == 1
    assert "FAIL" in result.output and "FAILED" in result.output
    data = json.loads(report.read_text())
    assert data["passed"] is False
    assert [c["name"] for c in data["checks"] if not c["passed"]] == ["engine accuracy"]
    assert "is not the model the engine was exported from" not in result.output  # a threshold, not another model


def test_validate_against_another_checkpoint_says_so(tmp_path, engine_dir, bert_dir, sst2_dir):
    from prumux_deploy import create_model, save_checkpoint

    other = create_model(bert_dir, num_instances=2, num_labels=2, seed=11, task="sst2",
                         id2label={0: "negative", 1: "positive"}, max_seq_length=16)
    save_checkpoint(other, tmp_path / "other")
    result = run("validate", engine_dir, "--checkpoint", tmp_path / "other", "--data", sst2_dir)
    assert result.exit_code == 1, result.output
    assert result.output.rstrip().endswith(
        "FAILED\n  (logits this far apart usually mean --checkpoint is not the model the engine was exported from: "
        "validate an engine against its own checkpoint)")


def test_validate_input_errors(tmp_path, engine_dir, masked_checkpoint, sst2_dir):
    args = ("validate", engine_dir, "--checkpoint", masked_checkpoint)
    refused(run(*args, "--task", "qnli", "--data", sst2_dir), 2, "made for task 'sst2'")
    refused(run(*args, "--task", "sst2", "--data", tmp_path / "nope"), 2, "no such file or directory")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "dev.tsv").write_text("text\tlabel\nfine\t1\n")
    refused(run(*args, "--task", "sst2", "--data", bad), 2, "no column 'sentence' (columns: text, label); sst2 reads "
            "the columns sentence, label; rename the data's columns to those (for a task of your own, train with "
            "--task custom and --text-column)")
    (bad / "dev.csv").write_text("text,label\nfine,1\n")  # a datasets form: the same words
    refused(run(*args, "--task", "sst2", "--data", bad / "dev.csv"), 2, "no column 'sentence' (columns: text, label); "
            "sst2 reads the columns sentence, label; rename the data's columns to those")
    (bad / "dev.tsv").write_text("sentence\tlabel\nfine\t7\n")
    refused(run(*args, "--task", "sst2", "--data", bad), 2, "dev.tsv:2: label '7' is not one of 0, 1")


def test_optimized_int8_export_records_fusions_and_validate_uses_int8_defaults(tmp_path, masked_checkpoint,
                                                                                sst2_dir):
    result = run("export", masked_checkpoint, tmp_path / "e8", "--precision", "int8")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "e8" / "manifest.json").read_text())
    assert manifest["precision"] == "int8" and manifest["optimized"] is True
    assert manifest["optimized_for"] == "cpu" and manifest["fused_ops"]["EmbedLayerNormalization"] == 2
    assert manifest["fused_ops"]["Attention"] == 3 and manifest["fused_ops"]["LayerNormalization"] == 7
    assert manifest["quantized_ops"]["MatMulInteger"] > 0
    assert manifest["quantization"] == {"method": "dynamic", "reason": "no task data to calibrate static quantization on"}
    assert manifest["parity"]["tolerance"] == 1.0
    report = tmp_path / "r.json"
    result = run("validate", tmp_path / "e8", "--checkpoint", masked_checkpoint, "--task", "sst2", "--data",
                 sst2_dir, "--report", report)
    data = json.loads(report.read_text())
    assert data["precision"] == "int8"
    assert data["thresholds"]["min_agreement"] == 0.97 and data["thresholds"]["max_logit_error"] == 1.0
    assert result.exit_code == (0 if data["passed"] else 1)


def test_int8_is_refused_for_tensorrt(tmp_path, masked_checkpoint):
    result = run("export", masked_checkpoint, tmp_path / "e", "--format", "tensorrt", "--precision", "int8")
    refused(result, 2, "ONNX Runtime options")


def test_int8_with_data_measures_dynamic_and_static_and_keeps_the_faster_accurate_one(tmp_path, masked_checkpoint,
                                                                                      sst2_dir):
    (sst2_dir / "train.tsv").write_text((sst2_dir / "dev.tsv").read_text())
    result = run("export", masked_checkpoint, tmp_path / "e8", "--precision", "int8", "--data", sst2_dir,
                 "--runtime", "onnxruntime")  # ONNX Runtime's two; auto adds OpenVINO's (tests/test_openvino.py)
    assert result.exit_code == 0, result.output
    q = json.loads((tmp_path / "e8" / "manifest.json").read_text())["quantization"]
    assert set(q["measured"]) == {"fp32", "dynamic", "static"} and q["calibration_rows"] == q["eval_rows"] == 11
    fp32 = q["measured"]["fp32"]["accuracy"]
    within = [m for m in ("dynamic", "static") if q["measured"][m]["accuracy"] >= fp32 - 0.01]
    if within:  # the rule, checked on the recorded measurements
        assert q["method"] == max(within, key=lambda m: q["measured"][m]["samples_per_s"])
    else:
        assert q["method"] == max(("dynamic", "static"), key=lambda m: q["measured"][m]["accuracy"])
    assert f"int8: {q['method']}" in result.output
    refused(run("export", masked_checkpoint, tmp_path / "e", "--data", sst2_dir), 2, "--data is for --precision int8")


def test_static_int8_graph_holds_qdq_around_the_matmuls(tmp_path, engine_dir):
    import numpy as np
    import onnx

    from prumux_deploy.export.optimize import op_counts, quantize_static_int8

    rng = np.random.default_rng(0)
    calibration = [{"input_ids": rng.integers(5, 100, (4, 8)), "attention_mask": np.ones((4, 8), dtype=np.int64)}
                   for _ in range(3)]
    counts = quantize_static_int8(engine_dir / "model.onnx", tmp_path / "s.onnx", calibration)
    assert counts["QuantizeLinear"] > 0 and counts["DequantizeLinear"] > counts["QuantizeLinear"]
    graph = onnx.load(str(tmp_path / "s.onnx")).graph
    int8 = {t.name: t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2}
    assert int8  # int8 weight matrices, each dequantized with one scale per output channel
    floats = {t.name: t for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in int8:
            assert list(floats[node.input[1]].dims) == [int8[node.input[0]].dims[1]]
    assert op_counts(tmp_path / "s.onnx")["MatMul"] > 0
