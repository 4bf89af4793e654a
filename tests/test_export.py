import json

import numpy as np
import onnx
import pytest
import torch

from prumux_deploy import save_checkpoint
from prumux_deploy.compare import Comparison
from prumux_deploy.engine import load_engine, sha256_file
from prumux_deploy.errors import EngineError, ParityError, PruMuxError
from prumux_deploy.export import pipeline
from prumux_deploy.export.pipeline import export_checkpoint

from conftest import VOCAB, masked_model


def quiet(msg):
    pass


def feeds_for(B, S, seed, token_types=False):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, size=(B, S), dtype=np.int64)
    mask = (np.arange(S)[None] < rng.integers(1, S + 1, size=B)[:, None]).astype(np.int64)
    feeds = {"input_ids": ids, "attention_mask": mask}
    if token_types:
        feeds["token_type_ids"] = (np.arange(S)[None] >= S // 2).repeat(B, 0).astype(np.int64)
    return feeds


@pytest.mark.parametrize("N", [1, 2, 5])
def test_onnx_engine_matches_masked_and_compact_pytorch(tmp_path, N):
    model = masked_model(N)
    save_checkpoint(model, tmp_path / "ckpt")
    manifest = export_checkpoint(tmp_path / "ckpt", tmp_path / "engine", log=quiet)
    engine = load_engine(tmp_path / "engine")
    from prumux_deploy.compact import compact

    small = compact(model)
    for B in (0, 1, 3, 7):
        for S in range(1, model.config.max_seq_length + 1):
            feeds = feeds_for(B, S, seed=B * 100 + S)
            got = engine.run_feeds(feeds)
            with torch.no_grad():
                want = model(*(torch.from_numpy(v) for v in feeds.values())).numpy()
                want_compact = small(*(torch.from_numpy(v) for v in feeds.values())).numpy()
            assert got.shape == (B, 3)
            if B:
                assert np.abs(got - want).max() <= 1e-4
                assert np.abs(got - want_compact).max() <= 1e-4
    assert manifest["parity"]["max_abs_logit_error"] <= 1e-4
    assert manifest["num_instances"] == N


def test_manifest_describes_the_engine(engine_dir):
    manifest = json.loads((engine_dir / "manifest.json").read_text())
    assert manifest["engine"]["sha256"] == sha256_file(engine_dir / "model.onnx")
    assert manifest["inputs"] == [{"name": "input_ids", "dtype": "int64", "dims": ["batch", "sequence"]},
                                  {"name": "attention_mask", "dtype": "int64", "dims": ["batch", "sequence"]}]
    assert manifest["outputs"] == [{"name": "logits", "dtype": "float32", "dims": ["batch", 2]}]
    assert manifest["labels"] == {"0": "negative", "1": "positive"}
    assert manifest["max_seq_length"] == 16
    assert [l["heads"] for l in manifest["structure"]["layers"]] == [0, 3, 4, 4]
    assert [l["ffn"] for l in manifest["structure"]["layers"]] == [64, 64, 5, 0]
    assert manifest["structure"]["params_total"] < manifest["structure"]["params_total_before"]
    assert 0 < manifest["structure"]["sparsity"] < 1
    assert set(manifest["versions"]) >= {"torch", "onnx", "onnxruntime", "prumux_deploy"}
    graph = onnx.load(str(engine_dir / "model.onnx")).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input]
    assert dims == [["batch", "sequence"], ["batch", "sequence"]]
    assert [d.dim_param or d.dim_value for d in graph.output[0].type.tensor_type.shape.dim] == ["batch", 2]
    assert (engine_dir / "vocab.txt").is_file()


def test_export_is_byte_identical_on_repeat(tmp_path, masked_checkpoint, engine_dir):
    export_checkpoint(masked_checkpoint, tmp_path / "again", log=quiet)
    assert (tmp_path / "again" / "model.onnx").read_bytes() == (engine_dir / "model.onnx").read_bytes()


def test_pair_task_engine_takes_token_type_ids(tmp_path):
    model = masked_model(2, num_labels=2, task="qnli")
    save_checkpoint(model, tmp_path / "ckpt")
    manifest = export_checkpoint(tmp_path / "ckpt", tmp_path / "engine", log=quiet)
    assert [i["name"] for i in manifest["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    engine = load_engine(tmp_path / "engine")
    feeds = feeds_for(3, 9, seed=1, token_types=True)
    with torch.no_grad():
        want = model(*(torch.from_numpy(v) for v in feeds.values())).numpy()
    assert np.abs(engine.run_feeds(feeds) - want).max() <= 1e-4


def test_parity_failure_writes_nothing(tmp_path, masked_checkpoint, monkeypatch):
    off = Comparison(rows=8, max_abs_error=0.5, mean_abs_error=0.1, agreement=1.0, non_finite_engine=0,
                     non_finite_reference=0)
    monkeypatch.setattr(pipeline, "parity", lambda *a, **k: off)
    with pytest.raises(ParityError, match=r"engine logits differ from PyTorch by 0.5 > 0.0001; nothing was written"):
        export_checkpoint(masked_checkpoint, tmp_path / "engine", log=quiet)
    assert list(tmp_path.iterdir()) == []


def test_existing_target_is_refused_before_work(tmp_path, masked_checkpoint):
    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "keep.txt").write_text("mine")
    with pytest.raises(PruMuxError, match="is a directory this command did not write"):
        export_checkpoint(masked_checkpoint, tmp_path / "engine", log=quiet)
    assert (tmp_path / "engine" / "keep.txt").read_text() == "mine"


def test_tampered_engine_is_refused(tmp_path, engine_dir):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(engine_dir, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(EngineError, match="does not match manifest.json"):
        load_engine(copy)


def test_engine_refuses_sequences_longer_than_the_position_table(engine_dir):
    engine = load_engine(engine_dir)
    with pytest.raises(EngineError, match="sequence length 25 exceeds the engine's position table"):
        engine(np.ones((2, 25), dtype=np.int64))


def test_pooled_demux_exports_with_parity_plain_and_optimized(tmp_path):
    """key_pool reads every position through attention_mask: the graph must keep that exact, optimized too."""
    model = masked_model(2, demux_kind="key_pool")
    save_checkpoint(model, tmp_path / "ckpt")
    for optimize in (False, True):
        out = tmp_path / f"engine-{optimize}"
        manifest = export_checkpoint(tmp_path / "ckpt", out, optimize=optimize, log=quiet)
        engine = load_engine(out)
        for B, S in ((0, 5), (1, 1), (3, 16), (7, 9)):
            feeds = feeds_for(B, S, seed=B + S)
            got = engine.run_feeds(feeds)
            with torch.no_grad():
                want = model(*(torch.from_numpy(v) for v in feeds.values())).numpy()
            assert got.shape == (B, 3)
            if B:
                assert np.abs(got - want).max() <= 1e-4, (optimize, B, S)
        assert manifest["parity"]["max_abs_logit_error"] <= 1e-4
