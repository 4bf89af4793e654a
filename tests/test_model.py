import pytest
import torch

from prumux_deploy import create_model
from prumux_deploy.compact import compact

from conftest import FFN, HEADS, HIDDEN, LAYERS, MAX_POS, VOCAB, masked_model, tiny_bert_config


def random_batch(B, S, seed=0, pad=True):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (B, S), generator=g)
    mask = torch.ones(B, S, dtype=torch.long)
    if pad and S > 1:
        lengths = torch.randint(1, S + 1, (B,), generator=g)
        mask = (torch.arange(S)[None] < lengths[:, None]).long()
    return ids, mask


@pytest.mark.parametrize("N", [1, 2, 5])
def test_compact_structure_follows_the_masks(N):
    model = compact(masked_model(N))
    cfg = model.config
    assert cfg.heads_per_layer == [0, HEADS - 1, HEADS, HEADS]
    assert cfg.ffn_per_layer == [FFN, FFN, 5, 0]
    assert cfg.model_dim == HIDDEN // 2
    assert model.layers[0].attn is None and model.layers[3].ffn is None
    assert model.mux.vectors.shape == (N, HIDDEN // 2)
    assert model.demux.keys.shape == (N, HIDDEN // 2)
    assert model.demux.dense1.weight.shape == (HIDDEN, HIDDEN)  # reads [key ; h_CLS] of width 2 * H/2
    assert model.layers[2].ffn.up.weight.shape == (5, HIDDEN // 2)
    assert model.masks == {}


@pytest.mark.parametrize("demux", ["key_cls", "key_pool"])
@pytest.mark.parametrize("N", [1, 2, 5])
@pytest.mark.parametrize("B", [1, 3, 7])
def test_masked_and_compact_logits_agree_at_every_length(N, B, demux):
    masked = masked_model(N, demux_kind=demux)
    small = compact(masked)
    for S in range(1, masked.config.max_seq_length + 1):
        ids, mask = random_batch(B, S, seed=S)
        with torch.no_grad():
            want, got = masked(ids, mask), small(ids, mask)
        assert got.shape == (B, 3)
        assert (want - got).abs().max().item() <= 1e-4, (N, B, S)


@pytest.mark.parametrize("demux", ["key_cls", "key_pool"])
@pytest.mark.parametrize("N", [1, 2, 5])
def test_padding_longer_does_not_change_logits(N, demux):
    model = masked_model(N, demux_kind=demux)
    ids, mask = random_batch(7, 9, seed=1)
    extra = torch.zeros(7, 6, dtype=torch.long)
    with torch.no_grad():
        short = model(ids, mask)
        long = model(torch.cat([ids, extra + 5], 1), torch.cat([mask, extra], 1))
        compact_long = compact(model)(torch.cat([ids, extra + 7], 1), torch.cat([mask, extra], 1))
    assert (short - long).abs().max().item() <= 1e-5
    assert (short - compact_long).abs().max().item() <= 1e-4


def test_a_sequence_past_the_position_table_is_a_model_error_masked_and_compact():
    from prumux_deploy.errors import ModelError

    model = masked_model(2)
    ids, mask = random_batch(4, MAX_POS + 1, seed=2)
    for m in (model, compact(model)):
        with pytest.raises(ModelError, match=f"sequence length {MAX_POS + 1} exceeds {MAX_POS}, this model's position "
                                             "table; truncate inputs to 16 tokens"):
            m(ids, mask)
    assert m(ids[:, :MAX_POS], mask[:, :MAX_POS]).shape == (4, 3)  # the whole table is fine


def test_batch_not_divisible_by_n_pads_with_the_last_row_and_drops_it():
    model = masked_model(5)
    ids, mask = random_batch(7, 8, seed=2, pad=False)
    padded_ids = torch.cat([ids, ids[-1:].expand(3, 8)])
    with torch.no_grad():
        got = model(ids, mask)
        full = model(padded_ids, torch.ones_like(padded_ids))
    assert got.shape == (7, 3)
    assert torch.equal(got, full[:7])


def test_instances_in_a_group_get_different_outputs_and_groups_are_independent():
    model = masked_model(2)
    ids, mask = random_batch(4, 8, seed=3, pad=False)
    with torch.no_grad():
        out = model(ids, mask)
        second_group_alone = model(ids[2:], mask[2:])
    assert not torch.allclose(out[0], out[1])
    assert torch.allclose(out[2:], second_group_alone, atol=1e-6)


def test_empty_batch_gives_empty_logits():
    for N in (1, 3):
        with torch.no_grad():
            out = masked_model(N)(torch.zeros(0, 5, dtype=torch.long))
        assert out.shape == (0, 3)


def test_forward_and_creation_are_deterministic():
    a, b = masked_model(2, seed=4), masked_model(2, seed=4)
    ids, mask = random_batch(5, 10)
    with torch.no_grad():
        assert torch.equal(a(ids, mask), b(ids, mask))
        assert torch.equal(a(ids, mask), a(ids, mask))
    assert torch.equal(a.mux.vectors, b.mux.vectors)
    # the mux vectors are row-normalised to unit RMS
    assert torch.allclose(a.mux.vectors.pow(2).mean(1), torch.ones(2), atol=1e-5)


def test_fully_gated_layer_passes_the_residual_stream_through():
    model = create_model(tiny_bert_config(), num_instances=1, num_labels=2)
    masks = {"head_layer_z": torch.tensor([0.0, 1, 1, 1]), "mlp_z": torch.tensor([0.0, 1, 1, 1])}
    model.set_masks(masks)
    skipped = create_model(tiny_bert_config(), num_instances=1, num_labels=2)
    skipped.load_state_dict(model.state_dict())
    skipped.layers[0].attn = skipped.layers[0].ffn = None
    ids, mask = random_batch(3, 6)
    with torch.no_grad():
        assert torch.allclose(model(ids, mask), skipped(ids, mask), atol=1e-6)


def test_compact_model_refuses_masks():
    small = compact(masked_model(2))
    with pytest.raises(ValueError, match="compact model carries no masks"):
        small.set_masks({"mlp_z": torch.ones(LAYERS)})


def test_bert_weights_load_into_the_encoder(bert_dir):
    """With unit mux vectors and N=1 our encoder's output (every position) equals Hugging Face BertModel's."""
    from transformers import BertModel

    ours = create_model(bert_dir, num_instances=1, num_labels=2)
    ours.mux.vectors.fill_(1.0)
    hf = BertModel.from_pretrained(str(bert_dir), local_files_only=True).eval()
    seen = {}
    ours.demux.register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))  # returns None: args unchanged
    ids, mask = random_batch(3, 10, seed=5)
    with torch.no_grad():
        ours(ids, mask)
        want = hf(input_ids=ids, attention_mask=mask).last_hidden_state
    assert seen["x"].shape == want.shape == (3, 10, HIDDEN)
    assert (seen["x"] - want).abs().max().item() < 1e-5
    assert MAX_POS == ours.config.max_position_embeddings


def test_pooled_demux_averages_each_instance_over_its_own_tokens():
    """key_pool: instance i's logits = classifier(mean over i's real tokens t of MLP([key_i ; h_t])),
    checked by hand against the encoder output, with the last group filled by repeating the last row."""
    model = masked_model(2, demux_kind="key_pool")
    ids, mask = random_batch(5, 9, seed=3)  # 5 rows: groups (0,1), (2,3), (4,4)
    seen = {}
    model.demux.register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    with torch.no_grad():
        logits = model(ids, mask)
        x, demux = seen["x"], model.demux  # x: [3, 9, H]
        keys = demux.keys * model.masks["hidden_z"]
        for row in range(5):
            g, i = divmod(row, 2) if row < 4 else (2, 0)
            tokens = mask[row].nonzero().flatten()
            features = torch.stack([demux.instance_features(keys[i], x[g, t]) for t in tokens]).mean(0)
            assert (demux.classifier(features) - logits[row]).abs().max().item() < 1e-5, row
    assert logits.shape == (5, 3)


def test_pooled_and_cls_demux_share_weights_and_differ_in_read_out():
    model = masked_model(2)
    ids, mask = random_batch(4, 8, seed=2)
    with torch.no_grad():
        cls = model(ids, mask)
        model.set_demux_kind("key_pool")
        pooled = model(ids, mask)
    assert model.config.demux_kind == "key_pool" and model.demux.pooled
    assert (cls - pooled).abs().max().item() > 1e-3
    with pytest.raises(ValueError, match="demux kind 'prefix' is unknown; expected one of key_cls, key_pool"):
        model.set_demux_kind("prefix")


def test_dropout_acts_only_in_training_mode():
    model = masked_model(2, demux_kind="key_pool")
    ids, mask = random_batch(4, 8, seed=4)
    with torch.no_grad():
        reference = model(ids, mask)
        model.set_dropout(0.3)
        assert model(ids, mask).equal(reference)  # eval mode: dropout is the identity
        model.train()
        torch.manual_seed(0)
        first = model(ids, mask)
        second = model(ids, mask)
        assert (first - second).abs().max().item() > 1e-3  # a fresh dropout draw each call
        model.set_dropout(0.0)
        assert (model(ids, mask) - reference).abs().max().item() < 1e-6
    sites = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(sites) == 1 + 2 * LAYERS + LAYERS + 1  # embeddings; attention probs + output; FFN output; demux


# --- instance vectors of new models (model.instance_vectors; issue 35's multiplexers) ----------------------------

def test_instance_vectors_keep_the_embeddings_scale_and_their_promised_structure():
    from prumux_deploy.model import instance_vectors

    H = 64
    for init in ("gaussian", "near_ones", "binary"):
        v = instance_vectors(init, 3, H, seed=0)
        assert v.shape == (3, H)
        assert torch.allclose((v * v).mean(1), torch.ones(3))  # unit RMS per instance
    binary = instance_vectors("binary", 3, H, 0)
    assert set(binary.unique().tolist()) == {-1.0, 1.0}
    near = instance_vectors("near_ones", 3, H, 0)
    assert (near > 0).float().mean() > 0.99 and (near - 1).abs().mean() < 0.35  # the basis kept, signs too
    part = instance_vectors("partition", 3, H, 0)
    assert set(part.unique().tolist()) == {0.0, 3.0}
    assert torch.equal((part > 0).sum(0), torch.ones(H, dtype=torch.long))  # every dim owned by one instance
    assert sorted((part > 0).sum(1).tolist()) == [21, 21, 22]
    assert torch.equal(instance_vectors("ones", 1, H, 0), torch.ones(1, H))


def test_partition_mux_passes_each_instance_its_own_dims_unscaled():
    model = create_model(tiny_bert_config(), num_instances=2, num_labels=2, mux_init="partition")
    x = torch.randn(4, 5, HIDDEN)  # [G*N, S, H]
    mixed = model.mux(x)  # [G, S, H]
    owner = model.mux.vectors.argmax(0)  # [H]
    want = torch.stack([x[0::2], x[1::2]])[owner, :, :, torch.arange(HIDDEN)].permute(1, 2, 0)
    assert torch.allclose(mixed, want)


def test_default_instance_vectors_are_unchanged_and_recorded():
    from prumux_deploy.model import instance_vectors

    two = create_model(tiny_bert_config(), num_instances=2, num_labels=2, seed=3)
    assert torch.equal(two.mux.vectors, instance_vectors("gaussian", 2, HIDDEN, 3))
    assert two.config.mux_init is None and two.config.mux_kind == "gaussian_hadamard"
    one = create_model(tiny_bert_config(), num_instances=1, num_labels=2)
    assert torch.equal(one.mux.vectors, torch.ones(1, HIDDEN))
    scrambled = create_model(tiny_bert_config(), num_instances=1, num_labels=2, mux_init="gaussian")
    assert torch.equal(scrambled.mux.vectors, instance_vectors("gaussian", 1, HIDDEN, 0))  # the diagnostic arm
    signs = create_model(tiny_bert_config(), num_instances=2, num_labels=2, mux_init="binary")
    assert signs.config.mux_kind == "binary_hadamard" and signs.config.mux_init == "binary"


def test_identical_instance_vectors_are_refused_for_several_instances():
    from prumux_deploy.errors import ModelError

    with pytest.raises(ModelError, match="mux_init 'ones' gives every instance the same vector, so N=2 instances "
                                         "could not be told apart; use it with N=1, or choose near_ones"):
        create_model(tiny_bert_config(), num_instances=2, num_labels=2, mux_init="ones")
