import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from prumux_deploy import load_checkpoint, save_checkpoint
from prumux_deploy.checkpoint import FORMAT_VERSION
from prumux_deploy.errors import CheckpointError
from prumux_deploy.compact import compact

from conftest import HIDDEN, LAYERS, masked_model


def logits(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 100, (5, 9), generator=g)
    with torch.no_grad():
        return model(ids, torch.ones_like(ids))


def test_masked_checkpoint_round_trip(tmp_path):
    model = masked_model(2)
    save_checkpoint(model, tmp_path / "ckpt")
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == ["config.json", "masks.safetensors", "model.safetensors"]
    masks = load_file(str(tmp_path / "ckpt" / "masks.safetensors"))
    assert sorted(masks) == ["head_layer_z", "head_z", "hidden_z", "intermediate_z", "mlp_z"]
    assert all(t.dtype == torch.float32 for t in masks.values())
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["format"] == "prumux-checkpoint" and config["format_version"] == FORMAT_VERSION
    assert config["num_instances"] == 2 and config["layer_num_heads"] is None
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert torch.equal(logits(model), logits(loaded))


def test_compact_checkpoint_round_trip_and_fp16(tmp_path):
    small = compact(masked_model(5))
    save_checkpoint(small, tmp_path / "c32")
    save_checkpoint(small, tmp_path / "c16", dtype=torch.float16)
    config = json.loads((tmp_path / "c32" / "config.json").read_text())
    assert config["layer_num_heads"] == [0, 3, 4, 4] and config["pruned_hidden_size"] == HIDDEN // 2
    assert torch.equal(logits(small), logits(load_checkpoint(tmp_path / "c32")))
    half = load_checkpoint(tmp_path / "c16")
    assert (tmp_path / "c16" / "model.safetensors").stat().st_size < 0.6 * (
        tmp_path / "c32" / "model.safetensors").stat().st_size
    assert (logits(small) - logits(half)).abs().max().item() < 5e-2


@pytest.mark.parametrize("old, new", [("index", "key_cls"), ("index_pool", "key_pool")])
def test_demux_kinds_written_before_the_rename_still_load(tmp_path, old, new):
    """0.1 called our read-outs index / index_pool; upstream's `index` is another demux, so ours were renamed."""
    model = masked_model(2, demux_kind=new)
    save_checkpoint(model, tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    added_since = ("num_hidden_demux_layers", "legacy_demuxing", "second_embedding_pass", "attend_to_padding",
                   "mux_cls_token_id", "ignore_token_type_ids", "mask_convention", "demux_key_size",
                   "pre_mux_hidden_keep", "imported_from")
    config = {k: v for k, v in config.items() if k not in added_since}  # a config as 0.1 wrote it
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({**config, "demux_kind": old}))
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.config.demux_kind == new and loaded.config.mask_convention == "prumux"
    assert torch.equal(logits(model), logits(loaded))


def test_save_refuses_an_existing_directory_without_force(tmp_path):
    model = masked_model(1)
    save_checkpoint(model, tmp_path / "ckpt")
    with pytest.raises(Exception, match="already exists; pass `force`"):
        save_checkpoint(model, tmp_path / "ckpt")
    save_checkpoint(model, tmp_path / "ckpt", force=True)
    assert load_checkpoint(tmp_path / "ckpt").config.num_instances == 1


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "ckpt"
    save_checkpoint(masked_model(2), path)
    return path


def _rewrite(path, name, tensors):
    """Write tensors as another producer would: file and its checksum in config.json agree."""
    from prumux_deploy.engine import sha256_file

    save_file(tensors, str(path / name))
    cfg = json.loads((path / "config.json").read_text())
    cfg["files"][name] = sha256_file(path / name)
    (path / "config.json").write_text(json.dumps(cfg))


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("change, message", [
    ({"format_version": 99}, "format_version 99 is not supported"),
    ({"format": "something-else"}, "format is 'something-else'"),
    ({"id2label": {"0": "a"}}, "id2label has 1 labels but num_labels is 3"),
    ({"max_seq_length": 4096}, "max_seq_length 4096 exceeds the position table"),
    ({"demux_kind": "prefix"}, "demux_kind 'prefix' is unknown; expected one of key_cls, key_pool, index_pos, pooler"),
    ({"mux_kind": "binary"}, "mux_kind 'binary' is unknown; expected one of gaussian_hadamard"),
])
def test_bad_config_is_refused_with_its_reason(saved, change, message):
    _edit_config(saved, **change)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(saved)


def test_missing_files_are_named(saved, tmp_path):
    with pytest.raises(CheckpointError, match="nowhere: no such directory; a checkpoint is a directory with "):
        load_checkpoint(tmp_path / "nowhere")
    (tmp_path / "a-file").write_text("weights?")
    with pytest.raises(CheckpointError, match="a-file: not a directory; a checkpoint is a directory with "):
        load_checkpoint(tmp_path / "a-file")
    (saved / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors: missing"):
        load_checkpoint(saved)
    (saved / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json: missing"):
        load_checkpoint(saved)


def test_bad_masks_are_refused(saved):
    masks = load_file(str(saved / "masks.safetensors"))
    _rewrite(saved, "masks.safetensors", {**masks, "head_z": torch.ones(LAYERS, 7)})
    with pytest.raises(CheckpointError, match=r"head_z has shape \[4, 7\], expected \[4, 4\]"):
        load_checkpoint(saved)
    _rewrite(saved, "masks.safetensors", {**masks, "hidden_z": torch.zeros(HIDDEN)})
    with pytest.raises(CheckpointError, match="hidden_z prunes every hidden dim"):
        load_checkpoint(saved)
    _rewrite(saved, "masks.safetensors", {**masks, "mlp_z": torch.ones(LAYERS, dtype=torch.float16)})
    with pytest.raises(CheckpointError, match="mlp_z is torch.float16, masks must be float32"):
        load_checkpoint(saved)


def test_bad_weights_are_refused(saved):
    weights = load_file(str(saved / "model.safetensors"))
    broken = dict(weights)
    broken["layers.1.ffn.up.weight"] = broken["layers.1.ffn.up.weight"].clone()
    broken["layers.1.ffn.up.weight"][0, 0] = float("nan")
    _rewrite(saved, "model.safetensors", broken)
    with pytest.raises(CheckpointError, match="layers.1.ffn.up.weight holds NaN or Inf"):
        load_checkpoint(saved)
    broken = dict(weights, **{"demux.keys": torch.zeros(3, HIDDEN)})
    _rewrite(saved, "model.safetensors", broken)
    with pytest.raises(CheckpointError, match=r"demux.keys has shape \[3, 32\], expected \[2, 32\]"):
        load_checkpoint(saved)
    _edit_config(saved, files={})  # a hand-made checkpoint without checksums: the reader still refuses junk
    (saved / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(saved)


@pytest.mark.parametrize("name", ["model.safetensors", "masks.safetensors"])
def test_a_flipped_byte_anywhere_in_the_weights_is_caught(saved, name):
    data = bytearray((saved / name).read_bytes())
    data[-3] ^= 0x01  # inside the last tensor's data: still a loadable file, silently different weights
    (saved / name).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{name}: sha256 does not match config.json"):
        load_checkpoint(saved)


def test_outputs_get_umask_permissions_not_private_temp_ones(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        save_checkpoint(masked_model(1), tmp_path / "ckpt")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "ckpt").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "ckpt" / "model.safetensors").stat().st_mode) == 0o644
