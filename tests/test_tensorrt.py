"""TensorRT: profile and flag handling everywhere; building and running engines on a GPU (marked gpu)."""

import pytest
from click.testing import CliRunner

from prumux_deploy.cli import main
from prumux_deploy.errors import PruMuxError
from prumux_deploy.export.tensorrt import shape_profile


def test_default_profile_follows_the_paper_protocol():
    p = shape_profile(num_instances=5, max_positions=512)
    assert (p.min_batch, p.opt_batch, p.max_batch) == (1, 640, 640)
    assert (p.min_seq, p.opt_seq, p.max_seq) == (1, 128, 128)
    assert p.shapes() == ((1, 1), (640, 128), (640, 128))


def test_profile_rounds_batches_up_to_multiples_of_n():
    p = shape_profile(num_instances=4, max_positions=64, min_batch=3, opt_batch=30, max_batch=61,
                      min_seq=8, opt_seq=32, max_seq=64)
    assert (p.min_batch, p.opt_batch, p.max_batch) == (3, 32, 64)
    assert (p.min_seq, p.opt_seq, p.max_seq) == (8, 32, 64)


@pytest.mark.parametrize("kwargs, message", [
    (dict(min_batch=0), "1 <= --min-batch <= --opt-batch <= --max-batch"),
    (dict(opt_batch=64, max_batch=32), "1 <= --min-batch <= --opt-batch <= --max-batch"),
    (dict(min_seq=64, opt_seq=16, max_seq=128), "1 <= --min-seq <= --opt-seq <= --max-seq"),
    (dict(max_seq=1024), "--max-seq 1024 exceeds the model's position table (512)"),
])
def test_bad_profiles_are_refused(kwargs, message):
    with pytest.raises(PruMuxError, match=message.replace("(", r"\(").replace(")", r"\)")):
        shape_profile(num_instances=2, max_positions=512, **kwargs)


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
    assert "--format tensorrt needs" in result.output
    assert "pip install 'prumux-deploy[gpu]'" in result.output or "NVIDIA GPU" in result.output
    assert not (tmp_path / "e").exists()


def test_profile_flags_are_refused_for_onnx(tmp_path, masked_checkpoint):
    result = CliRunner().invoke(main, ["export", str(masked_checkpoint), str(tmp_path / "e"), "--max-batch", "8"])
    assert result.exit_code == 2 and "apply to --format tensorrt only" in result.output


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_tensorrt_engine_matches_pytorch(tmp_path, masked_checkpoint):
    import numpy as np
    import torch

    from prumux_deploy import load_checkpoint
    from prumux_deploy.engine import load_engine
    from prumux_deploy.export.pipeline import TensorRTOptions, export_checkpoint

    manifest = export_checkpoint(masked_checkpoint, tmp_path / "trt", fmt="tensorrt", tolerance=1e-3,
                                 log=lambda m: None, tensorrt=TensorRTOptions(max_batch=8, max_seq=16))
    assert manifest["engine"]["kind"] == "tensorrt" and (tmp_path / "trt" / "model.plan").is_file()
    assert manifest["tensorrt"]["profile"]["max_batch"] == 8 and manifest["tensorrt"]["compute_capability"]
    engine = load_engine(tmp_path / "trt")
    model = load_checkpoint(masked_checkpoint)
    ids = np.random.default_rng(0).integers(0, 100, size=(19, 12), dtype=np.int64)  # 19 > max_batch: chunked
    with torch.no_grad():
        want = model(torch.from_numpy(ids)).numpy()
    assert np.abs(engine(ids) - want).max() <= 1e-3
    assert engine(ids[:0]).shape == (0, 2)
