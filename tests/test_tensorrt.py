"""TensorRT: profile and flag handling everywhere; building and running engines on a GPU (marked gpu)."""

import pytest
from click.testing import CliRunner

from prumux_deploy.cli import main
from prumux_deploy.errors import PruMuxError
from prumux_deploy.export.tensorrt import ShapeProfile, TensorRTOptions


def test_default_profile_follows_the_paper_protocol():
    p = ShapeProfile().resolve(num_instances=5, max_positions=512)
    assert (p.min_batch, p.opt_batch, p.max_batch) == (1, 640, 640)
    assert (p.min_seq, p.opt_seq, p.max_seq) == (1, 128, 128)
    assert p.shapes() == ((1, 1), (640, 128), (640, 128))


def test_profile_rounds_batches_up_to_multiples_of_n():
    p = ShapeProfile(min_batch=3, opt_batch=30, max_batch=61, min_seq=8, opt_seq=32,
                     max_seq=64).resolve(num_instances=4, max_positions=64)
    assert (p.min_batch, p.opt_batch, p.max_batch) == (3, 32, 64)
    assert (p.min_seq, p.opt_seq, p.max_seq) == (8, 32, 64)


@pytest.mark.parametrize("kwargs, message", [
    (dict(min_batch=0), "1 <= `min_batch` <= `opt_batch` <= `max_batch`"),
    (dict(opt_batch=64, max_batch=32), "1 <= `min_batch` <= `opt_batch` <= `max_batch`"),
    (dict(min_seq=64, opt_seq=16, max_seq=128), "1 <= `min_seq` <= `opt_seq` <= `max_seq`"),
    (dict(max_seq=1024), "`max_seq` 1024 exceeds the model's position table (512)"),
])
def test_bad_profiles_are_refused(kwargs, message):
    with pytest.raises(PruMuxError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ShapeProfile(**kwargs).resolve(num_instances=2, max_positions=512)


def _has_gpu_and_tensorrt():
    try:
        import tensorrt  # noqa: F401
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


@pytest.mark.skipif(_has_gpu_and_tensorrt(), reason="checks the error shown where TensorRT or a GPU is missing")
def test_tensorrt_export_without_gpu_is_one_clear_line(tmp_path, masked_checkpoint):
    result = CliRunner().invoke(main, ["export", str(masked_checkpoint), str(tmp_path / "e"), "--format", "tensorrt"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "error: TensorRT engines need" in result.output
    assert "pip install 'prumux-deploy[gpu-cu13]'" in result.output or "NVIDIA GPU with CUDA" in result.output
    assert not (tmp_path / "e").exists()


def test_profile_flags_are_refused_for_onnx(tmp_path, masked_checkpoint):
    result = CliRunner().invoke(main, ["export", str(masked_checkpoint), str(tmp_path / "e"), "--max-batch", "8"])
    assert result.exit_code == 2 and ("error: the batch/sequence profile, --timing-cache and --version-compatible apply "
                                      "to TensorRT engines only (--format tensorrt)") in result.output


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_tensorrt_engine_matches_pytorch(tmp_path, masked_checkpoint):
    import numpy as np
    import torch

    from prumux_deploy import load_checkpoint
    from prumux_deploy.engine import load_engine
    from prumux_deploy.export.pipeline import export_checkpoint

    # fp32 means fp32: TF32 cleared at build, so the default fp32 tolerance (1e-4) holds on the GPU
    manifest = export_checkpoint(masked_checkpoint, tmp_path / "trt", fmt="tensorrt", log=lambda m: None,
                                 tensorrt=TensorRTOptions(ShapeProfile(max_batch=8, max_seq=16)))
    assert manifest["engine"]["kind"] == "tensorrt" and (tmp_path / "trt" / "model.plan").is_file()
    assert manifest["tensorrt"]["profile"]["max_batch"] == 8 and manifest["tensorrt"]["compute_capability"]
    assert manifest["tensorrt"]["tf32"] is False and manifest["parity"]["max_abs_logit_error"] <= 1e-4
    engine = load_engine(tmp_path / "trt")
    model = load_checkpoint(masked_checkpoint)
    ids = np.random.default_rng(0).integers(0, 100, size=(19, 12), dtype=np.int64)  # 19 > max_batch: chunked
    with torch.no_grad():
        want = model(torch.from_numpy(ids)).numpy()
    assert np.abs(engine(ids) - want).max() <= 1e-4
    assert engine(ids[:0]).shape == (0, 2)
    # a profile that does not start at batch 1: parity ran inside it, the manifest's length is the profile's
    manifest = export_checkpoint(masked_checkpoint, tmp_path / "trt4", fmt="tensorrt", tolerance=1e-3,
                                 log=lambda m: None, tensorrt=TensorRTOptions(ShapeProfile(min_batch=4, max_batch=8, max_seq=12)))
    assert manifest["max_seq_length"] == manifest["tensorrt"]["profile"]["max_seq"] == 12
    assert min(manifest["parity"]["batch_sizes"]) >= 4
    small = load_engine(tmp_path / "trt4")
    with torch.no_grad():
        want3 = model(torch.from_numpy(ids[:3])).numpy()  # row 2 fills its own mux group
    assert np.abs(small(ids[:3]) - want3).max() <= 1e-3  # 3 rows run as a chunk of 4 inside the profile


def test_chunks_stay_inside_the_profile_and_keep_mux_groups():
    from prumux_deploy.engine import profile_chunks

    chunks = [(list(idx), rows) for idx, rows in profile_chunks(11, min_batch=4, max_batch=8)]
    assert chunks == [(list(range(8)), 8), ([8, 9, 10, 10], 3)]  # the short tail repeats its last row
    assert [(list(i), r) for i, r in profile_chunks(2, 1, 8)] == [([0, 1], 2)]


def test_parity_inputs_stay_inside_a_profile():
    from prumux_deploy.reference import parity_inputs
    from prumux_deploy.model import PruMuxConfig

    cases, batches, lengths = parity_inputs(PruMuxConfig(num_instances=2), 64, min_batch=4, max_batch=8,
                                            min_len=16)
    assert batches == [4, 7] and lengths == [16, 32, 64]
    assert all(4 <= c["input_ids"].shape[0] <= 8 and 16 <= c["input_ids"].shape[1] <= 64 for c in cases)


def test_max_seq_length_and_max_seq_must_agree(tmp_path, masked_checkpoint):
    result = CliRunner().invoke(main, ["export", str(masked_checkpoint), str(tmp_path / "e"), "--format", "tensorrt",
                                       "--max-seq-length", "16", "--max-seq", "12"])
    assert result.exit_code == 2 and "--max-seq-length 16 and --max-seq 12 disagree" in result.output
