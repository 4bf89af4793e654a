"""Property-based tests: random CoFi structures, N, batch sizes and lengths.

Masked, compact and ONNX Runtime logits must agree within 1e-4, and padding must not change logits."""

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prumux_deploy import create_model, save_checkpoint
from prumux_deploy.compact import compact

from conftest import tiny_bert_config

L, HEADS, HIDDEN, FFN, MAX_LEN, VOCAB = 3, 4, 32, 24, 16, 120


@st.composite
def structures(draw):
    def scales(n, keep):  # `keep` entries kept with fractional scales, the rest 0
        z = torch.zeros(n)
        idx = draw(st.permutations(range(n)))[:keep]
        for i in idx:
            z[i] = draw(st.floats(0.3, 1.5))
        return z

    masks = {
        "head_z": torch.stack([scales(HEADS, draw(st.integers(0, HEADS))) for _ in range(L)]),
        "intermediate_z": torch.stack([scales(FFN, draw(st.integers(0, FFN))) for _ in range(L)]),
        "hidden_z": scales(HIDDEN, draw(st.integers(1, HIDDEN))),
        "head_layer_z": torch.tensor([draw(st.sampled_from([0.0, 0.7, 1.0, 1.3])) for _ in range(L)]),
        "mlp_z": torch.tensor([draw(st.sampled_from([0.0, 0.6, 1.0, 1.2])) for _ in range(L)]),
    }
    N = draw(st.integers(1, 10))
    batch = draw(st.integers(1, 17))
    length = draw(st.integers(1, MAX_LEN))
    seed = draw(st.integers(0, 2**16))
    return masks, N, batch, length, seed


def build(masks, N, seed):
    cfg = tiny_bert_config(num_hidden_layers=L, intermediate_size=FFN)
    model = create_model(cfg, num_instances=N, num_labels=3, seed=seed, max_seq_length=MAX_LEN)
    model.set_masks(masks)
    return model


def inputs(batch, length, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (batch, length), generator=g)
    real = torch.randint(1, length + 1, (batch,), generator=g)
    return ids, (torch.arange(length)[None] < real[:, None]).long()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(structures())
def test_masked_and_compact_agree_and_padding_is_invisible(case):
    masks, N, batch, length, seed = case
    model = build(masks, N, seed)
    small = compact(model)
    ids, mask = inputs(batch, length, seed)
    pad = torch.zeros(batch, 5, dtype=torch.long)
    with torch.no_grad():
        want = model(ids, mask)
        assert want.shape == (batch, 3)
        assert (small(ids, mask) - want).abs().max().item() <= 1e-4
        padded = small(torch.cat([ids, pad + 3], 1), torch.cat([mask, pad], 1))
    assert (padded - want).abs().max().item() <= 1e-4


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                               HealthCheck.function_scoped_fixture])
@given(structures())
def test_onnx_runtime_agrees_with_the_masked_model(tmp_path_factory, case):
    from prumux_deploy.engine import load_engine
    from prumux_deploy.export.pipeline import export_checkpoint

    masks, N, batch, length, seed = case
    model = build(masks, N, seed)
    root = tmp_path_factory.mktemp("prop")
    save_checkpoint(model, root / "ckpt")
    export_checkpoint(root / "ckpt", root / "engine", log=lambda m: None)
    engine = load_engine(root / "engine")
    ids, mask = inputs(batch, length, seed)
    with torch.no_grad():
        want = model(ids, mask).numpy()
    got = engine(ids.numpy(), mask.numpy())
    assert got.shape == (batch, 3)
    assert np.abs(got - want).max() <= 1e-4
