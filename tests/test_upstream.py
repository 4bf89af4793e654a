"""Importing upstream checkpoints: the fixtures the upstream code wrote (its logits are the ground truth),
directories the tests build in the upstream layout (checked against a transcription of the upstream
forward), and the refusals."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from prumux_deploy.checkpoint import load_checkpoint
from prumux_deploy.data import load_tokenizer
from prumux_deploy.engine import load_engine
from prumux_deploy.compact import compact
from prumux_deploy.upstream import fold_and_cut, read_upstream

import upstream_layout as ul

from conftest import refused, run_cli as run

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "upstream"
# (directory, reference form, expected logits file, --tokenizer)
FIXTURE_CASES = [
    ("cofi_sst2_s95", "compact", "expected_logits.npy", None),
    ("muxplm_sst2_N2", "compact", "expected_logits.npy", "."),
    ("prumux_sst2_N2", "compact", "expected_logits.npy", None),
    ("prumux_sst2_N2", "masked", "expected_logits_masked.npy", None),
    ("prumux_sst2_N2/best", "compact", "expected_logits.npy", None),
    ("prumux_sst2_N2/best", "masked", "expected_logits_masked.npy", None),
    ("prumux_sst2_N2/best/FT-lr2e-5", "compact", "expected_logits.npy", None),
    ("prumux_sst2_N2/best/FT-lr2e-5/best", "compact", "expected_logits.npy", None),
]


def needs_fixtures():
    if not FIXTURES.is_dir():
        pytest.skip(f"upstream fixtures not found at {FIXTURES} (the shared/ folder beside the checkout)")


def fixture_inputs(directory: Path):
    inp = json.loads((directory / "inputs.json").read_text())
    return tuple(np.array(inp[k], dtype=np.int64) for k in ("input_ids", "attention_mask", "token_type_ids"))


# --- the fixtures: upstream's own checkpoints and logits ------------------------------------------

@pytest.mark.parametrize("name,reference,expected,tokenizer", FIXTURE_CASES)
def test_fixture_imports_exports_and_reproduces_upstream_logits(tmp_path, name, reference, expected, tokenizer):
    needs_fixtures()
    src = FIXTURES / name
    args = ["import", src, tmp_path / "ckpt", "--reference", reference]
    if tokenizer:
        args += ["--tokenizer", FIXTURES / tokenizer]
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("imported ") and f"wrote {tmp_path / 'ckpt'}" in result.output
    want = np.load(src / expected)
    ids, mask, types = fixture_inputs(src)
    longest = int(mask.sum(1).max())
    # the imported tokenizer turns the fixture's texts into exactly the ids upstream's tokenizer gave
    texts = json.loads((src / "inputs.json").read_text())["texts"]
    encoded = load_tokenizer(tmp_path / "ckpt")(texts, padding="max_length", max_length=128, truncation=True)
    assert np.array_equal(np.array(encoded["input_ids"]), ids)
    for optimize in (False, True):
        engine_dir = tmp_path / f"engine-{optimize}"
        result = run("export", tmp_path / "ckpt", engine_dir, *(["--optimize"] if optimize else []))
        assert result.exit_code == 0, result.output
        engine = load_engine(engine_dir)
        padded_to_128 = engine(ids, mask, types if engine.uses_token_types else None)
        padded_to_longest = engine(ids[:, :longest], mask[:, :longest],
                                   types[:, :longest] if engine.uses_token_types else None)
        assert np.abs(padded_to_128 - want).max() <= 1e-4, (name, optimize)
        assert np.abs(padded_to_longest - want).max() <= 1e-4, (name, optimize)


def test_fixture_import_line_and_inspect_say_what_was_found(tmp_path):
    needs_fixtures()
    result = run("import", FIXTURES / "prumux_sst2_N2", tmp_path / "c")
    assert result.exit_code == 0, result.output
    line = result.output.strip().splitlines()[-1]
    for part in ("PruMUX stage 1", "N=2", "gaussian_hadamard mux", "index_pos demux (3 demux layers)",
                 "6 layers", "heads kept [2, 1, 0, 1, 2, 1]/2", "FFN kept [189, 130, 165, 106, 0, 143]/256",
                 "hidden kept 89/128", "reference compact", "['negative', 'positive']"):
        assert part in line, (part, line)
    inspected = run("inspect", tmp_path / "c")
    assert inspected.exit_code == 0
    assert f"imported from {(FIXTURES / 'prumux_sst2_N2').resolve()}" in inspected.output
    assert "reference compact" in inspected.output
    masked = run("import", FIXTURES / "prumux_sst2_N2", tmp_path / "m", "--reference", "masked")
    assert "masks keep heads [2, 1, 0, 1, 2, 1]/2" in masked.output and "reference masked" in masked.output
    assert (tmp_path / "m" / "masks.safetensors").is_file()
    cofi = run("import", FIXTURES / "cofi_sst2_s95", tmp_path / "cofi")
    assert "CoFi release" in cofi.output and "N=1, pooler head" in cofi.output
    assert "hidden kept 71/128" in cofi.output


def test_stage1_masked_and_compact_forms_differ_as_upstream_documents(tmp_path):
    """The two reference forms are both upstream's; they differ by about 1 logit on this fixture."""
    needs_fixtures()
    src = FIXTURES / "prumux_sst2_N2"
    compact_logits, masked_logits = np.load(src / "expected_logits.npy"), np.load(src / "expected_logits_masked.npy")
    assert 0.5 < np.abs(compact_logits - masked_logits).max() < 1.5
    ids, mask, types = (torch.from_numpy(a) for a in fixture_inputs(src))
    up = read_upstream(src)
    from prumux_deploy.upstream import to_model

    with torch.no_grad():
        masked = to_model(up, "masked")
        assert np.abs(masked(ids, mask, types).numpy() - masked_logits).max() <= 1e-5
        assert np.abs(compact(masked)(ids, mask, types).numpy() - masked_logits).max() <= 1e-5


def test_mask_padding_makes_logits_independent_of_the_fixed_length(tmp_path):
    needs_fixtures()
    src = FIXTURES / "prumux_sst2_N2/best/FT-lr2e-5"
    assert run("import", src, tmp_path / "m", "--mask-padding").exit_code == 0
    model = load_checkpoint(tmp_path / "m")
    assert not model.config.attend_to_padding
    ids, mask, types = (torch.from_numpy(a) for a in fixture_inputs(src))
    longest = int(mask.sum(1).max())
    with torch.no_grad():
        full, short = model(ids, mask), model(ids[:, :longest], mask[:, :longest])
    assert (full - short).abs().max().item() < 1e-5
    upstream = np.load(src / "expected_logits.npy")
    assert np.abs(full.numpy() - upstream).max() > 1e-3  # a different model: logits change, as documented
    assert run("export", tmp_path / "m", tmp_path / "e").exit_code == 0
    assert load_engine(tmp_path / "e").manifest["fixed_length"] is None


# --- directories the tests build in the upstream layout ----------------------------------------------

def random_rows(B, S, seed, with_pair=False):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(104, ul.VOCAB, (B, S), generator=g)
    ids[:, 0] = 101
    lengths = torch.randint(3, S + 1, (B,), generator=g)
    mask = (torch.arange(S)[None] < lengths[:, None]).long()
    ids = ids * mask
    types = ((torch.arange(S)[None] >= lengths[:, None] // 2) & mask.bool()).long() if with_pair else torch.zeros_like(ids)
    return ids, mask, types


def pad_to(t, length):
    return torch.nn.functional.pad(t, (0, length - t.shape[1]))


CASES = {
    # name: (N, task, labels, heads kept, FFN kept, hidden kept, dead-heads-live layers, config extras, mux)
    "n2-qnli-one-head-dead-heads": (2, "qnli", 2, [1, 3, 0, 4], [40, 0, 64, 7], 20, (3,), {}, "gaussian_hadamard"),
    "n5-binary": (5, "sst2", 2, [4, 2, 1, 0], [64, 10, 0, 30], 32, (), {}, "binary_hadamard"),
    "n10-legacy-demux": (10, "mnli", 3, [2, 0, 3, 1], [5, 64, 20, 0], 24, (), {"legacy_demuxing": True},
                         "gaussian_hadamard"),
    "n3-four-demux-layers": (3, "sst2", 2, [4, 4, 2, 1], [64, 32, 16, 8], 28, (), {"num_hidden_demux_layers": 4},
                             "gaussian_hadamard"),
}


def build_stage1(tmp_path, case):
    N, task, C, heads, ffn, hidden, dead, extra, mux = CASES[case]
    cfg = ul.mux_config(N, task, C, **extra)
    cfg["muxing_variant"] = mux
    weights = ul.full_weights(N, C, demux_layers=cfg["num_hidden_demux_layers"], mux=mux, seed=len(case))
    zs = ul.soft_masks(heads, ffn, hidden, dead, seed=N)
    return ul.write_dir(tmp_path / "run", weights, cfg, zs), weights, cfg, zs


@pytest.mark.parametrize("case", sorted(CASES))
def test_built_stage1_both_forms_match_the_upstream_forward(tmp_path, case):
    src, weights, cfg, zs = build_stage1(tmp_path, case)
    N, pair = cfg["num_instances"], cfg["finetuning_task"] in ("qnli", "mnli")
    L = 24
    ids, mask, types = random_rows(2 * N, 11, seed=N, with_pair=pair)
    compact_weights = fold_and_cut(read_upstream(src))
    for reference, w, z in (("masked", weights, zs), ("compact", compact_weights, None)):
        out = tmp_path / reference
        result = run("import", src, out, "--reference", reference, "--max-seq-length", L)
        assert result.exit_code == 0, result.output
        want = ul.upstream_forward(w, cfg, pad_to(ids, L), pad_to(mask, L), pad_to(types, L), z)
        model = load_checkpoint(out)
        with torch.no_grad():
            got = model(ids, mask, types)  # padded to 11 only: the model pads to L itself
            got_compact = compact(model)(ids, mask, types)
        assert (got - want).abs().max().item() < 1e-4, (case, reference)
        assert (got_compact - want).abs().max().item() < 1e-4, (case, reference)
    # the masked form's exact compaction keeps a dead-heads-live-gate layer as one zero-output head
    if CASES[case][6]:
        layer = CASES[case][6][0]
        assert compact(load_checkpoint(tmp_path / "masked")).config.heads_per_layer[layer] == 1
        assert load_checkpoint(tmp_path / "compact").config.heads_per_layer[layer] == 0


@pytest.mark.parametrize("case", ["n2-qnli-one-head-dead-heads", "n10-legacy-demux"])
def test_built_stage2_and_muxplm_export_to_engines_that_match_upstream(tmp_path, case):
    src, weights, cfg, zs = build_stage1(tmp_path, case)
    N, pair = cfg["num_instances"], cfg["finetuning_task"] in ("qnli", "mnli")
    stage2 = ul.write_dir(tmp_path / "run" / "best" / "FT-lr2e-5", fold_and_cut(read_upstream(src)), cfg)
    muxplm = ul.write_dir(tmp_path / "muxplm", weights, cfg, tokenizer=False)
    ids, mask, types = random_rows(3 * N - 1, 9, seed=7, with_pair=pair)  # a partial last mux group
    L = 20
    for name, directory, w, extra in (("stage2", stage2, fold_and_cut(read_upstream(src)), []),
                                      ("muxplm", muxplm, weights, ["--tokenizer", src])):
        result = run("import", directory, tmp_path / f"{name}-ckpt", "--max-seq-length", L, *extra)
        assert result.exit_code == 0, result.output
        assert ("PruMUX stage 2" if name == "stage2" else "MUX-PLMs task checkpoint") in result.output
        result = run("export", tmp_path / f"{name}-ckpt", tmp_path / f"{name}-engine", "--optimize")
        assert result.exit_code == 0, result.output
        engine = load_engine(tmp_path / f"{name}-engine")
        assert engine.uses_token_types == pair  # pair tasks keep the input; the multiplexed model ignores it
        # a partial last group: we repeat the last row (upstream draws random rows); the oracle gets the same rows
        full = torch.cat([ids, ids[-1:].repeat(N * 3 - ids.shape[0], 1)])
        fmask, ftypes = (torch.cat([t, t[-1:].repeat(N * 3 - t.shape[0], 1)]) for t in (mask, types))
        want = ul.upstream_forward(w, cfg, pad_to(full, L), pad_to(fmask, L), pad_to(ftypes, L))[: ids.shape[0]]
        got = engine(ids.numpy(), mask.numpy(), types.numpy() if pair else None)
        assert np.abs(got - want.numpy()).max() < 1e-4, name


def test_built_cofi_pair_classifier_uses_mask_and_token_types(tmp_path):
    weights = ul.full_weights(1, 2, pooler=True, seed=5)
    zs = ul.soft_masks([2, 0, 4, 1], [30, 64, 0, 9], 20, seed=5)
    cfg = ul.cofi_config("mrpc", 2)
    from prumux_deploy.upstream import Upstream

    # a CoFi release: the fold and cut of a pruning run (PruMUX's copy of CoFi's, without mux and demux)
    release = fold_and_cut(Upstream(tmp_path, "prumux_stage1", cfg, weights, zs))
    src = ul.write_dir(tmp_path / "cofi", release, cfg)
    result = run("import", src, tmp_path / "ckpt")
    assert result.exit_code == 0, result.output
    assert "heads kept [2, 0, 4, 1]/4" in result.output and "task mrpc" in result.output
    ids, mask, types = random_rows(5, 13, seed=3, with_pair=True)
    want = ul.upstream_forward(release, cfg, ids, mask, types)
    assert run("export", tmp_path / "ckpt", tmp_path / "engine").exit_code == 0
    engine = load_engine(tmp_path / "engine")
    assert engine.input_names == ["input_ids", "attention_mask", "token_type_ids"]
    assert np.abs(engine(ids.numpy(), mask.numpy(), types.numpy()) - want.numpy()).max() < 1e-4
    zeroed = engine(ids.numpy(), mask.numpy(), np.zeros_like(types.numpy()))
    assert np.abs(zeroed - want.numpy()).max() > 1e-4  # token types matter for N=1


def test_imported_muxplm_checkpoint_trains_with_prune(tmp_path, sst2_dir):
    """A MUX-BERT checkpoint is a starting point: `train prune` runs PruMUX pruning from it."""
    src, weights, cfg, _ = build_stage1(tmp_path, "n5-binary")
    muxplm = ul.write_dir(tmp_path / "muxplm", weights, cfg)
    assert run("import", muxplm, tmp_path / "mux", "--max-seq-length", 16).exit_code == 0
    (sst2_dir / "train.tsv").write_text((sst2_dir / "dev.tsv").read_text())
    result = run("train", "prune", tmp_path / "pruned", "--teacher", tmp_path / "mux", "--data", sst2_dir,
                 "--instances", 5, "--batch-size", 10, "--epochs", 2, "--final-epochs", 1, "--sparsity", 0.5,
                 "--eval-every", 100, "--max-seq-length", 16)
    assert result.exit_code == 0, result.output
    pruned = load_checkpoint(tmp_path / "pruned")
    assert pruned.masks and pruned.config.mask_convention == "cofi" and pruned.config.second_embedding_pass
    assert run("export", tmp_path / "pruned", tmp_path / "engine").exit_code == 0
    result = run("train", "finetune", tmp_path / "ft", "--init", tmp_path / "mux", "--data", sst2_dir,
                 "--instances", 5, "--batch-size", 10, "--epochs", 1, "--eval-every", 100, "--max-seq-length", 16)
    assert result.exit_code == 0, result.output
    tuned = load_checkpoint(tmp_path / "ft")
    assert tuned.config.demux_kind == "index_pos" and tuned.config.attend_to_padding
    assert not torch.equal(tuned.demux.classifier.weight, load_checkpoint(tmp_path / "mux").demux.classifier.weight)


# --- refusals: one line, exit 2, nothing written --------------------------------------------------------

def _stage1(tmp_path, **config_changes):
    src, weights, cfg, zs = build_stage1(tmp_path, "n5-binary")
    cfg.update(config_changes)
    (src / "config.json").write_text(json.dumps(cfg))
    return src


class Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


@pytest.mark.parametrize("change,message", [
    ({"muxing_variant": "random_ortho"}, "muxing_variant 'random_ortho' is a known upstream variant not supported yet"),
    ({"muxing_variant": "gaussian_attention"}, "muxing_variant 'gaussian_attention' is a known upstream variant"),
    ({"demuxing_variant": "index"}, "demuxing_variant 'index' (the prefix-token demux"),
    ({"demuxing_variant": "mlp"}, "demuxing_variant 'mlp' (the per-instance MLP demux) is not supported yet"),
    ({"hidden_act": "relu"}, "hidden_act 'relu' is not supported"),
    ({"model_type": "roberta"}, "model_type 'roberta'; only BERT encoders can be imported"),
])
def test_unsupported_variants_are_refused_by_name(tmp_path, change, message):
    src = _stage1(tmp_path, **change)
    refused(run("import", src, tmp_path / "out"), 2, message)
    assert not (tmp_path / "out").exists()


def test_pickled_objects_are_never_unpickled(tmp_path, capfd):
    src = _stage1(tmp_path)
    zs = torch.load(src / "zs.pt", weights_only=True)
    torch.save({**zs, "hidden_z": Evil()}, src / "zs.pt")
    refused(run("import", src, tmp_path / "out"), 2, "zs.pt: holds pickled Python objects (print), not only tensors")
    weights = torch.load(src / "pytorch_model.bin", weights_only=True)
    torch.save(zs, src / "zs.pt")
    torch.save({**weights, "classifier.weight": Evil()}, src / "pytorch_model.bin")
    refused(run("import", src, tmp_path / "out"), 2, "pytorch_model.bin: holds pickled Python objects (print)")
    with open(src / "pytorch_model.bin", "wb") as f:  # a plain pickle (not torch.save's format) is refused too
        pickle.dump({"classifier.weight": Evil()}, f)
    refused(run("import", src, tmp_path / "out"), 2, "pytorch_model.bin: cannot be read as a file of tensors")
    torch.save({**weights, "classifier.bias": [1, 2]}, src / "pytorch_model.bin")
    refused(run("import", src, tmp_path / "out"), 2, "entry 'classifier.bias' is a list, not a tensor")
    assert "unpickled!" not in capfd.readouterr().out
    assert not (tmp_path / "out").exists()
    # the pickled upstream classes beside the weights are never opened
    (src / "l0_module.pt").write_bytes(b"not even a pickle")
    (src / "model_args.bin").write_bytes(b"not even a pickle")
    torch.save(weights, src / "pytorch_model.bin")
    assert run("import", src, tmp_path / "out").exit_code == 0


def test_an_upstream_checkpoint_where_ours_goes_and_an_engine_given_to_import_are_named(tmp_path, engine_dir):
    src, _, _, _ = build_stage1(tmp_path, "n5-binary")
    for command in (["inspect", src], ["export", src, tmp_path / "engine"], ["compact", src, tmp_path / "small"]):
        refused(run(*command), 2, f"{src} is an upstream or Hugging Face checkpoint, not a prumux-deploy one; "
                                  f"convert it with `prumux-deploy import {src} OUT` and use OUT")
    refused(run("import", engine_dir, tmp_path / "out"), 2,
            f"{engine_dir} is an engine directory (manifest.json), not an upstream checkpoint; import reads what the "
            "research code wrote (config.json + pytorch_model.bin)")
    assert not any((tmp_path / name).exists() for name in ("engine", "small", "out"))


def test_mask_padding_on_an_n1_cofi_model_is_refused(tmp_path):
    from prumux_deploy.upstream import Upstream

    weights = ul.full_weights(1, 2, pooler=True, seed=5)
    release = fold_and_cut(Upstream(tmp_path, "prumux_stage1", ul.cofi_config("sst2", 2), weights,
                                    ul.soft_masks([2, 0, 4, 1], [30, 64, 0, 9], 20, seed=5)))
    src = ul.write_dir(tmp_path / "cofi", release, ul.cofi_config("sst2", 2))
    refused(run("import", src, tmp_path / "out", "--mask-padding"), 2,
            f"{src}: --mask-padding applies to multiplexed upstream models, which attend to padding; this N=1 model "
            "masks it already, so leave the option out")
    assert not (tmp_path / "out").exists()


def test_compact_into_its_own_checkpoint_is_refused(tmp_path, masked_checkpoint):
    import shutil

    shutil.copytree(masked_checkpoint, tmp_path / "ckpt")
    before = (tmp_path / "ckpt" / "model.safetensors").read_bytes()
    refused(run("compact", tmp_path / "ckpt", tmp_path / "ckpt", "--force"), 2,
            f"{tmp_path / 'ckpt'} is CHECKPOINT itself; write the compact model to another directory")
    assert (tmp_path / "ckpt" / "model.safetensors").read_bytes() == before


def test_missing_tokenizer_and_other_bad_sources(tmp_path):
    src, weights, cfg, _ = build_stage1(tmp_path, "n5-binary")
    bare = ul.write_dir(tmp_path / "bare", weights, cfg, tokenizer=False)
    refused(run("import", bare, tmp_path / "out"), 2, "no tokenizer files (vocab.txt / tokenizer.json) here; "
                                                       "pass --tokenizer DIR")
    refused(run("import", bare, tmp_path / "out", "--tokenizer", tmp_path), 2, "--tokenizer")
    refused(run("import", bare, tmp_path / "out", "--tokenizer", src / "vocab.txt"), 2,
            f"--tokenizer {src / 'vocab.txt'}: a file; give the directory that holds the tokenizer files")
    refused(run("import", bare, tmp_path / "out", "--reference", "masked", "--tokenizer", src), 2,
            "--reference masked applies to PruMUX stage-1 runs")
    refused(run("import", tmp_path / "nope", tmp_path / "out"), 2, "not a directory")
    torch.save(None, src / "zs.pt")
    refused(run("import", src, tmp_path / "out"), 2, "zs.pt: holds None")
    (src / "pytorch_model.bin").write_bytes(b"\x00" * 10)
    refused(run("import", src, tmp_path / "out"), 2, "cannot be read")
    assert not (tmp_path / "out").exists()
    assert run("import", bare, tmp_path / "out", "--max-seq-length", 0).exit_code == 2
    refused(run("import", bare, tmp_path / "out", "--max-seq-length", 41, "--tokenizer", src), 2,
            "--max-seq-length 41 must be between 1 and the position table (40)")
    small = dict(cfg, vocab_size=100)
    ul.write_dir(tmp_path / "small", {**weights, "bert.embeddings.word_embeddings.weight":
                                      weights["bert.embeddings.word_embeddings.weight"][:100]}, small)
    refused(run("import", tmp_path / "small", tmp_path / "out"), 2,
            "has 120 ids but the model's embedding table has 100")
    assert not (tmp_path / "out").exists()


def test_fixed_length_engines_refuse_longer_rows_and_other_lengths(tmp_path):
    src, weights, cfg, _ = build_stage1(tmp_path, "n5-binary")
    muxplm = ul.write_dir(tmp_path / "muxplm", weights, cfg)
    assert run("import", muxplm, tmp_path / "m", "--max-seq-length", 12).exit_code == 0
    refused(run("export", tmp_path / "m", tmp_path / "e", "--max-seq-length", 10), 2,
            "attends to padding up to exactly 12 tokens")
    assert run("export", tmp_path / "m", tmp_path / "e").exit_code == 0
    engine = load_engine(tmp_path / "e")
    assert engine.manifest["fixed_length"] == 12
    from prumux_deploy.errors import EngineError

    with pytest.raises(EngineError, match="sequence length 13 exceeds 12, the fixed length this engine attends over"):
        engine(np.ones((5, 13), dtype=np.int64))


def test_imported_model_goes_through_every_command(tmp_path, sst2_dir):
    """validate, predict, triton and bench take an imported checkpoint and its engine as they are."""
    needs_fixtures()
    src = FIXTURES / "prumux_sst2_N2/best/FT-lr2e-5"
    assert run("import", src, tmp_path / "ckpt").exit_code == 0
    assert run("export", tmp_path / "ckpt", tmp_path / "engine", "--optimize").exit_code == 0
    result = run("predict", tmp_path / "engine", "a charming film", "dull", "--json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert [r["text"] for r in rows] == ["a charming film", "dull"]
    assert all(r["label"] in ("negative", "positive") for r in rows)
    result = run("validate", tmp_path / "engine", "--checkpoint", tmp_path / "ckpt", "--task", "sst2",
                 "--data", sst2_dir, "--report", tmp_path / "report.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"] and report["metrics"]["agreement"] == 1.0
    result = run("triton", tmp_path / "engine", tmp_path / "repo", "--name", "sst2")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "repo" / "sst2" / "config.pbtxt").is_file()
    result = run("bench", "--checkpoint", tmp_path / "ckpt", "--backend", "torch", "--backend", "onnxruntime-opt",
                 "--quick", "--json", tmp_path / "bench.json")
    assert result.exit_code == 0, result.output
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert [r["backend"] for r in bench["rows"]] == ["torch", "onnxruntime-opt"]
    assert bench["rows"][1]["max_abs_logit_error"] < 1e-4
