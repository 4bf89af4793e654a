"""Training on tiny random models and tiny data: gates, sparsity formula, Lagrangian, distillation,
resumable stages, and a pruned checkpoint that exports with the spine's parity checks."""

import json
import math
import re

import pytest
import torch

from prumux_deploy import create_model, load_checkpoint, save_checkpoint
from prumux_deploy.errors import PruMuxError
from prumux_deploy.export.pipeline import export_checkpoint
from prumux_deploy.model import PruMuxConfig
from prumux_deploy.train import loop
from prumux_deploy.train.gates import CoFiGates, HardConcrete, expected_sparsity, lagrangian_term
from prumux_deploy.train.losses import (ContextHead, LayerAlignment, LayerReadout, contextual_distillation_loss,
                                        hidden_state_distillation, prediction_distillation)
from prumux_deploy.train.loop import TrainArgs
from prumux_deploy.train.stages import PruneArgs, finetune, prune, warmup

from conftest import masked_model, refused, run_cli


def test_hard_concrete_samples_lie_in_0_1_with_the_expected_l0():
    torch.manual_seed(0)
    gate = HardConcrete((5,))
    with torch.no_grad():
        gate.log_alpha.copy_(torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0]))
    samples = torch.stack([gate.sample() for _ in range(20000)])
    assert samples.min() >= 0 and samples.max() <= 1
    assert (samples == 0).any() and (samples == 1).any()  # the stretch makes exact 0s and 1s
    empirical_l0 = (samples > 0).float().mean(0)
    assert torch.allclose(empirical_l0, gate.prob_nonzero().detach(), atol=0.015)
    # closed form: P(z != 0) = sigmoid(log_alpha - beta * log(-l / r))
    want = torch.sigmoid(gate.log_alpha - (2 / 3) * math.log(0.1 / 1.1))
    assert torch.allclose(gate.prob_nonzero(), want)


def test_expected_sparsity_matches_a_hand_computation():
    cfg = PruMuxConfig(hidden_size=4, num_hidden_layers=2, num_attention_heads=2, intermediate_size=3)
    keep = {"head_z": torch.tensor([[1.0, 0.5], [0.0, 1.0]]), "head_layer_z": torch.tensor([1.0, 0.5]),
            "intermediate_z": torch.tensor([[1.0, 1.0, 0.0], [0.5, 0.5, 0.5]]), "mlp_z": torch.tensor([1.0, 1.0]),
            "hidden_z": torch.tensor([1.0, 1.0, 1.0, 0.0])}
    # D = 2; expected heads = 1.5 + 0.5 = 2.0; expected units = 2 + 1.5 = 3.5; expected hidden = 3
    # remaining = 4*D*3*2.0 + 2*3*3.5 = 48 + 21 = 69; total = 2*(4*4*4 + 2*4*3) = 176
    assert expected_sparsity(cfg, keep).item() == pytest.approx(1 - 69 / 176)
    assert expected_sparsity(cfg, {}).item() == pytest.approx(0.0)


def test_lagrangian_drives_expected_sparsity_to_the_target():
    torch.manual_seed(0)
    cfg = PruMuxConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64)
    gates = CoFiGates(cfg)
    lambdas = torch.zeros(2, requires_grad=True)
    opt_gates = torch.optim.AdamW(gates.parameters(), lr=0.05, weight_decay=0)
    opt_lambda = torch.optim.AdamW([lambdas], lr=0.05, weight_decay=0, maximize=True)
    target = 0.5
    for _ in range(300):
        loss = lagrangian_term(gates.expected_sparsity(), target, lambdas[0], lambdas[1])
        opt_gates.zero_grad()
        opt_lambda.zero_grad()
        loss.backward()
        opt_gates.step()
        opt_lambda.step()
    assert abs(gates.expected_sparsity().item() - target) < 0.02


def test_distillation_losses_vanish_for_identical_student_and_teacher():
    torch.manual_seed(0)
    logits = torch.randn(6, 3)
    assert prediction_distillation(logits, logits.clone()).item() == pytest.approx(0.0, abs=1e-7)
    assert prediction_distillation(logits, torch.randn(6, 3)).item() > 0
    hidden = [torch.randn(2, 5, 8) for _ in range(5)]
    align = LayerAlignment(8, 4)
    mask = torch.ones(2, 5)
    assert align(hidden, [h.clone() for h in hidden], mask).item() == pytest.approx(0.0, abs=1e-10)
    assert align(hidden, [h + 1 for h in hidden], mask).item() > 0


def test_deterministic_masks_keep_the_expected_number_with_fractional_scales():
    cfg = PruMuxConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=16)
    gates = CoFiGates(cfg)
    with torch.no_grad():
        gates.intermediate_z.log_alpha.copy_(torch.linspace(-6, 6, 32).view(2, 16))
    z = gates.deterministic()["intermediate_z"]
    expected = gates.intermediate_z.prob_nonzero().sum(-1).round()
    assert torch.equal((z > 0).sum(-1).float(), expected)
    kept = z[z > 0]
    assert (kept < 1).all() and (kept > 0).all()


def tiny_args(glue_dir, **kw):
    base = dict(task="sst2", data=str(glue_dir), instances=2, epochs=1.0, batch_size=8, lr=1e-3,
                max_seq_length=12, eval_every=4, save_every=3, seed=0)
    base.update(kw)
    return TrainArgs(**base)


def test_stages_write_checkpoints_and_logs_and_the_pruned_one_exports(tmp_path, bert_dir, glue_dir):
    args = tiny_args(glue_dir)
    warmup(bert_dir, tmp_path / "warm", args, log=lambda m: None)
    finetune(tmp_path / "warm", tmp_path / "ft", args, log=lambda m: None)
    student, accuracy, actual = prune(tmp_path / "ft", tmp_path / "pruned", tiny_args(glue_dir, epochs=4.0),
                                      PruneArgs(sparsity=0.5, reg_lr=0.1, final_epochs=0.5), log=lambda m: None)
    model = load_checkpoint(tmp_path / "pruned")
    assert set(model.masks) == {"head_z", "head_layer_z", "intermediate_z", "mlp_z", "hidden_z"}
    kept = model.masks["intermediate_z"][model.masks["intermediate_z"] > 0]
    assert ((kept > 0) & (kept < 1)).any()  # fractional scales survive into the checkpoint
    records = [json.loads(l) for l in (tmp_path / "pruned" / "train_log.jsonl").read_text().splitlines()]
    evals = [r for r in records if r.get("event") == "eval" and r["stage"] == "prune"]
    assert evals and {"loss", "accuracy", "expected_sparsity", "actual_sparsity", "target"} <= set(evals[-1])
    assert records[-1]["event"] == "done" and records[-1]["actual_sparsity"] == pytest.approx(actual)
    assert actual > 0.05
    manifest = export_checkpoint(tmp_path / "pruned", tmp_path / "engine", log=lambda m: None)
    assert manifest["parity"]["max_abs_logit_error"] <= 1e-4
    assert manifest["structure"]["sparsity"] == pytest.approx(actual)


def test_soft_targets_are_the_teachers_logits_for_each_shuffled_row(tmp_path, bert_dir, glue_dir):
    finetune(bert_dir, tmp_path / "teacher", tiny_args(glue_dir, instances=1), log=lambda m: None)
    teacher = load_checkpoint(tmp_path / "teacher").eval()
    _, batches, _ = loop.load_task_data(tiny_args(glue_dir), teacher.tokenizer_dir, 2, with_eval=False)
    targets = loop.soft_targets(teacher, batches, batch_size=7)
    assert targets.shape == (len(batches.ids), 2)
    batch = batches.batch(5)  # a shuffled batch: its rows are neither consecutive nor sorted by length
    assert not torch.equal(batch["rows"], torch.arange(len(batch["rows"])) + batch["rows"][0])
    with torch.no_grad():
        want = teacher(**loop.model_inputs(batch))
    assert torch.allclose(targets[batch["rows"]], want, atol=1e-5)


def test_finetune_distils_from_a_teacher_of_another_n(tmp_path, bert_dir, glue_dir):
    finetune(bert_dir, tmp_path / "teacher", tiny_args(glue_dir, instances=1), log=lambda m: None)
    finetune(bert_dir, tmp_path / "student", tiny_args(glue_dir), log=lambda m: None,
             teacher_dir=tmp_path / "teacher")
    records = [json.loads(l) for l in (tmp_path / "student" / "train_log.jsonl").read_text().splitlines()]
    evals = [r for r in records if r.get("event") == "eval"]
    assert evals and all(r["kd"] > 0 and r["loss"] == pytest.approx(r["ce"] + r["kd"]) for r in evals)
    assert load_checkpoint(tmp_path / "student").config.num_instances == 2


def test_finetune_refuses_a_teacher_of_another_task(tmp_path, bert_dir, glue_dir):
    from click.testing import CliRunner

    from prumux_deploy.cli import main

    mnli_like = tmp_path / "three-labels"
    finetune(bert_dir, tmp_path / "teacher", tiny_args(glue_dir, instances=1), log=lambda m: None)
    model = load_checkpoint(tmp_path / "teacher")
    model.config.num_labels, model.config.id2label = 3, {0: "entailment", 1: "neutral", 2: "contradiction"}
    model.demux.classifier = torch.nn.Linear(model.demux.classifier.in_features, 3)
    save_checkpoint(model, mnli_like)
    result = CliRunner().invoke(main, ["train", "finetune", str(tmp_path / "o"), "--init", str(bert_dir),
                                       "--teacher", str(mnli_like), "--data", str(glue_dir)])
    assert result.exit_code == 2, result.output
    assert f"--teacher {mnli_like} predicts 3 labels, the student 2" in result.output
    assert not (tmp_path / "o").exists()
    result = CliRunner().invoke(main, ["train", "finetune", str(tmp_path / "o"), "--init", str(bert_dir),
                                       "--teacher", str(tmp_path / "missing"), "--data", str(glue_dir)])
    assert result.exit_code == 2 and "does not exist" in result.output and "Traceback" not in result.output


def test_resume_continues_bit_for_bit(tmp_path, bert_dir, glue_dir, monkeypatch):
    args = tiny_args(glue_dir, epochs=1.0)
    finetune(bert_dir, tmp_path / "straight", args, log=lambda m: None)

    original = loop.RunState.save

    def save_then_die(self, step, objects):
        original(self, step, objects)
        if step == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop.RunState, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        finetune(bert_dir, tmp_path / "resumed", args, log=lambda m: None)
    assert not (tmp_path / "resumed").exists()
    monkeypatch.setattr(loop.RunState, "save", original)
    finetune(bert_dir, tmp_path / "resumed", args, resume=True, log=lambda m: None)
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "resumed")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_train_cli_refuses_bad_flags(tmp_path, glue_dir):
    from click.testing import CliRunner

    from prumux_deploy.cli import main

    result = CliRunner().invoke(main, ["train", "prune", str(tmp_path / "o"), "--teacher", str(tmp_path),
                                       "--sparsity", "1.5", "--data", str(glue_dir)])
    assert result.exit_code == 2 and "Invalid value for '--sparsity' / '-s': 1.5 is not in the range 0.0<=x<1.0" in result.output
    result = CliRunner().invoke(main, ["train", "prune", str(tmp_path / "o"), "--teacher", str(tmp_path),
                                       "--sparsity", "0", "--data", str(glue_dir)])
    assert result.exit_code == 2 and "--sparsity must be in (0, 1), got 0.0" in result.output
    result = CliRunner().invoke(main, ["train", "finetune", str(tmp_path / "o"), "--batch-size", "1",
                                       "--instances", "2", "--data", str(glue_dir)])
    assert result.exit_code == 2 and "--batch-size 1 is smaller than N=2" in result.output
    result = CliRunner().invoke(main, ["train", "finetune", str(tmp_path / "o"), "--dropout", "1",
                                       "--data", str(glue_dir)])
    assert result.exit_code == 2 and "Invalid value for '--dropout': 1.0 is not in the range 0.0<=x<1.0" in result.output
    refused(run_cli("train", "finetune", tmp_path / "o", "--init", tmp_path / "nope", "--data", glue_dir), 2,
            f"{tmp_path / 'nope'}: no config.json, so neither a checkpoint nor a BERT directory; give a checkpoint "
            "(what train or init writes), a local BERT directory, or 'minilm'")
    assert not (tmp_path / "o").exists()


def test_training_refuses_bad_rows_unless_told_to_skip_them_and_names_a_single_file(tmp_path, bert_dir, glue_dir):
    """An unknown label or an empty text in the training data is one line naming the row and --skip-bad-rows
    (before, training dropped such rows silently); with --skip-bad-rows they are counted in a warning. One data
    file is both the training and the evaluation split: said, since the accuracy is then on training rows."""
    rows = (glue_dir / "train.tsv").read_text().splitlines()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.tsv").write_text("\n".join(rows[:3] + ["a film\tmaybe", "\t1"] + rows[3:40]) + "\n")
    (bad / "dev.tsv").write_text((glue_dir / "dev.tsv").read_text())

    def tune(out, data, *extra):
        return run_cli("train", "finetune", tmp_path / out, "--init", bert_dir, "--data", data, "--batch-size", 8,
                       "--max-seq-length", 12, "--epochs", 0.2, "--eval-every", 50, *extra)

    refused(tune("o", bad), 2, f"{bad / 'train.tsv'}:4: label 'maybe' is not one of 0, 1 (2 bad rows in all); fix "
                               "the file or pass --skip-bad-rows")
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.run").exists()
    skipped = tune("s", bad, "--skip-bad-rows")
    assert skipped.exit_code == 0, skipped.output
    assert f"warning: skipped 2 bad rows of {bad / 'train.tsv'}" in skipped.output
    assert "no splits" not in skipped.output
    single = tune("one", glue_dir / "train.tsv")
    assert single.exit_code == 0, single.output
    assert (f"warning: {glue_dir / 'train.tsv'} is one data file (or dataset) with no splits, so training and "
            "evaluation both read all of it and the accuracy reported is on training rows; give a directory with "
            "train and dev files for a held-out score") in single.output
    warm = run_cli("train", "warmup", tmp_path / "w", "--base", bert_dir, "--data", glue_dir / "train.tsv",
                   "--batch-size", 8, "--max-seq-length", 12, "--epochs", 0.2)
    assert warm.exit_code == 0 and "no splits" not in warm.output, warm.output  # warm-up evaluates nothing
    refused(run_cli("train", "warmup", tmp_path / "w2", "--eval-split", "dev", "--data", glue_dir), 2,
            "--eval-split: this stage evaluates nothing (it has no held-out split to read); leave the option out")
    assert "--max-eval-samples" not in run_cli("train", "warmup", "--help").output


def test_the_progress_bar_shows_the_last_evaluation_beside_the_loss(tmp_path, bert_dir, glue_dir):
    result = run_cli("train", "finetune", tmp_path / "o", "--init", bert_dir, "--data", glue_dir, "--batch-size", 8,
                     "--max-seq-length", 12, "--max-train-samples", 24, "--eval-every", 1)
    assert result.exit_code == 0, result.output
    log = [json.loads(line) for line in (tmp_path / "o" / "train_log.jsonl").read_text().splitlines()]
    evals = [r["accuracy"] for r in log if r.get("event") == "eval"]
    bar = [line for line in result.output.splitlines() if line.startswith("finetune: 100%")][-1]
    assert re.search(r"loss=[0-9.]+, accuracy=([0-9.]+)\]$", bar), bar
    assert float(re.search(r"accuracy=([0-9.]+)", bar).group(1)) == pytest.approx(evals[-2], abs=1e-3)  # step 2's


def test_finetune_can_switch_the_demux_read_out_and_train_with_dropout(tmp_path, bert_dir, glue_dir):
    warmup(bert_dir, tmp_path / "warm", tiny_args(glue_dir), log=lambda m: None)
    assert load_checkpoint(tmp_path / "warm").config.demux_kind == "key_cls"
    finetune(tmp_path / "warm", tmp_path / "ft", tiny_args(glue_dir, demux="key_pool", dropout=0.1),
             log=lambda m: None)
    model = load_checkpoint(tmp_path / "ft")
    assert model.config.demux_kind == "key_pool" and model.demux.pooled
    assert "dropout" not in json.loads((tmp_path / "ft" / "config.json").read_text())  # training-only
    assert all(m.p == 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    manifest = export_checkpoint(tmp_path / "ft", tmp_path / "engine", log=lambda m: None)
    assert manifest["parity"]["max_abs_logit_error"] <= 1e-4


def test_train_all_is_a_library_function(tmp_path, bert_dir, glue_dir):
    from prumux_deploy.train.stages import PipelineArgs, train_all

    last = train_all(bert_dir, tmp_path / "run", tiny_args(glue_dir), PruneArgs(sparsity=0.5),
                     PipelineArgs(warmup_epochs=0.5, prune_epochs=0.5), log=lambda m: None)
    assert last == tmp_path / "run" / "pruned"
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.is_dir() and "." not in p.name) == [
        "finetune", "pruned", "warmup"]
    assert load_checkpoint(last).masks  # the pruned, masked model
    with pytest.raises(PruMuxError, match="`warmup_teacher`"):  # a stage's errors in the pipeline's terms
        train_all(bert_dir, tmp_path / "other", tiny_args(glue_dir), PruneArgs(sparsity=0.0),
                  PipelineArgs(warmup_teacher=str(tmp_path / "run" / "warmup")), log=lambda m: None)


def test_new_models_take_the_mux_and_checkpoints_keep_theirs(tmp_path, bert_dir, glue_dir):
    finetune(bert_dir, tmp_path / "ft", tiny_args(glue_dir, mux="partition"), log=lambda m: None)
    model = load_checkpoint(tmp_path / "ft")
    assert model.config.mux_init == "partition" and set(model.mux.vectors.unique().tolist()) == {0.0, 2.0}
    finetune(tmp_path / "ft", tmp_path / "again", tiny_args(glue_dir, mux="partition"), log=lambda m: None)
    with pytest.raises(PruMuxError, match="already has partition instance vectors; --mux gaussian applies to new "
                                          "models only"):
        finetune(tmp_path / "ft", tmp_path / "other", tiny_args(glue_dir, mux="gaussian"), log=lambda m: None)
    assert not (tmp_path / "other").exists()
    manifest = export_checkpoint(tmp_path / "ft", tmp_path / "engine", log=lambda m: None)
    assert manifest["parity"]["max_abs_logit_error"] <= 1e-4


def test_learned_instance_vectors_train_and_export(tmp_path, bert_dir, glue_dir):
    from prumux_deploy.model import instance_vectors

    finetune(bert_dir, tmp_path / "ft", tiny_args(glue_dir, mux="near_ones", learn_mux=True), log=lambda m: None)
    model = load_checkpoint(tmp_path / "ft")
    start = instance_vectors("near_ones", 2, model.config.model_dim, 0)
    assert model.config.mux_learned and (model.mux.vectors - start).abs().max() > 1e-2  # they moved, at 100x lr
    manifest = export_checkpoint(tmp_path / "ft", tmp_path / "engine", log=lambda m: None)
    assert manifest["parity"]["max_abs_logit_error"] <= 1e-4
    finetune(bert_dir, tmp_path / "fixed", tiny_args(glue_dir), log=lambda m: None)
    with pytest.raises(PruMuxError, match="has fixed instance vectors; --learn-mux applies to new models only"):
        finetune(tmp_path / "fixed", tmp_path / "x", tiny_args(glue_dir, learn_mux=True), log=lambda m: None)


def test_upstream_plumbing_options_shape_new_models_export_and_are_refused_on_checkpoints(tmp_path, bert_dir,
                                                                                           glue_dir):
    """--second-embedding-pass and --demux-key-std (issue 35's upstream plumbing): a new model takes them, the
    engine matches it at 1e-4, and a checkpoint that already has its own is refused in one line."""
    args = tiny_args(glue_dir, second_embedding_pass=True, demux_key_std=1.0)
    finetune(bert_dir, tmp_path / "ft", args, log=lambda m: None)
    model = load_checkpoint(tmp_path / "ft")
    assert model.config.second_embedding_pass
    assert 0.7 < model.demux.keys.std().item() < 1.3  # N(0, 1) keys, against 0.02 by default (after 9 steps)
    plain = []
    model.encode(torch.tensor([[101, 7, 8, 102], [101, 9, 102, 0]]), hidden_states=plain)
    model.config.second_embedding_pass = False
    once = []
    model.encode(torch.tensor([[101, 7, 8, 102], [101, 9, 102, 0]]), hidden_states=once)
    assert not torch.allclose(plain[0], once[0])  # the mixed embeddings went through the LayerNorm again
    manifest = export_checkpoint(tmp_path / "ft", tmp_path / "engine", log=lambda m: None)
    assert manifest["parity"]["max_abs_logit_error"] <= 1e-4
    finetune(bert_dir, tmp_path / "plain", tiny_args(glue_dir), log=lambda m: None)
    with pytest.raises(PruMuxError, match="runs one embedding pass; --second-embedding-pass applies to new models"):
        finetune(tmp_path / "plain", tmp_path / "x", tiny_args(glue_dir, second_embedding_pass=True),
                 log=lambda m: None)
    with pytest.raises(PruMuxError, match="has trained demux keys; --demux-key-std applies to new models only"):
        finetune(tmp_path / "plain", tmp_path / "x", tiny_args(glue_dir, demux_key_std=1.0), log=lambda m: None)
    assert not (tmp_path / "x").exists()


def test_keep_best_writes_the_best_evaluations_weights(tmp_path, bert_dir, glue_dir, monkeypatch):
    """With keep_best the checkpoint holds the weights of the evaluation that scored best (here the second of
    three, scripted), not the last step's; without it, the last step's."""
    from prumux_deploy.train import stages

    scripted = iter([0.5, 0.9, 0.6, 0.55])  # evaluations at steps 4 and 8, the end (9), then the final check
    seen = []

    def fake_evaluate(model, batches, masks=None, rt=None):
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(scripted)

    monkeypatch.setattr(stages, "evaluate", fake_evaluate)
    logs = []
    _, accuracy = finetune(bert_dir, tmp_path / "best", tiny_args(glue_dir), log=logs.append, keep_best=True)
    assert accuracy == 0.9 and "(the best evaluation's weights, step 8)" in logs[-1]
    kept = load_checkpoint(tmp_path / "best").state_dict()
    assert all(torch.equal(kept[k], seen[1][k]) for k in kept)
    assert not all(torch.equal(kept[k], seen[-1][k]) for k in kept)
    scripted = iter([0.5, 0.9, 0.6, 0.55])
    monkeypatch.setattr(stages, "evaluate", lambda *a, **k: next(scripted))
    _, accuracy = finetune(bert_dir, tmp_path / "last", tiny_args(glue_dir), log=lambda m: None)
    assert accuracy == 0.55


@pytest.mark.parametrize("target", [0.3, 0.6, 0.9])
def test_deterministic_masks_sized_to_the_target_compact_to_it(target):
    from prumux_deploy import create_model
    from prumux_deploy.compact import compact
    from prumux_deploy.structure import describe

    from conftest import tiny_bert_config

    torch.manual_seed(1)
    model = create_model(tiny_bert_config(hidden_size=64, intermediate_size=128), num_instances=2, num_labels=2)
    gates = CoFiGates(model.config)
    with torch.no_grad():  # a gate state whose expected sparsity is far from the target
        for gate in gates.groups().values():
            gate.log_alpha.normal_(1.0, 2.0)
    masks = gates.deterministic(target=target)
    assert abs(gates.mask_sparsity(masks) - target) <= 0.01
    model.set_masks(masks)
    assert abs(describe(compact(model), model)["sparsity"] - target) <= 0.02


def test_target_sizing_reopens_the_best_closed_blocks_when_open_ones_cannot_reach_it():
    """Measured on SST-2: the learned block gates alone removed 64.2% for a 60% target, every open block full.
    The sizing re-opens closed blocks, best gate score first, until heads and units can meet the target."""
    from conftest import tiny_bert_config
    from prumux_deploy import create_model

    model = create_model(tiny_bert_config(hidden_size=64, intermediate_size=128), num_instances=2, num_labels=2)
    gates = CoFiGates(model.config)
    assert model.config.num_hidden_layers == 4
    with torch.no_grad():
        for gate in gates.groups().values():
            gate.log_alpha.fill_(8.0)  # every head, unit and hidden dim kept
        gates.head_layer_z.log_alpha.copy_(torch.tensor([8.0, -3.0, -4.0, -5.0]))
        gates.mlp_z.log_alpha.copy_(torch.tensor([8.0, -3.5, -4.5, -6.0]))
    learned = gates.deterministic()
    assert learned["head_layer_z"].tolist() == [1, 0, 0, 0] and learned["mlp_z"].tolist() == [1, 0, 0, 0]
    assert gates.mask_sparsity(learned) == pytest.approx(0.75)  # 6 of 8 equal-sized blocks closed
    masks = gates.deterministic(target=0.3)
    assert abs(gates.mask_sparsity(masks) - 0.3) <= 0.01
    # 0.3 needs at least 4 blocks back (6/8 -> 2/8 closed, then heads/units trimmed); best scores first
    assert masks["head_layer_z"].tolist() == [1, 1, 1, 0] and masks["mlp_z"].tolist() == [1, 1, 1, 0]


def test_contextual_distillation_is_relative_to_the_targets_and_learnable():
    """The loss is the error relative to the teacher's mean square (a zero head scores exactly 1), and a
    multiplexed student learns to reproduce an unmultiplexed teacher's per-token states of each instance."""
    torch.manual_seed(0)
    teacher = masked_model(1, seed=1)
    teacher.set_masks(None)
    student = masked_model(2, seed=2)
    student.set_masks(None)
    head = ContextHead(student.config.hidden_size, teacher.config.hidden_size)
    ids = torch.randint(5, 100, (8, 10))
    mask = (torch.arange(10)[None] < torch.tensor([10, 3, 7, 10, 1, 5, 9, 6])[:, None]).long()
    torch.nn.init.zeros_(head.proj.weight)
    torch.nn.init.zeros_(head.proj.bias)
    assert contextual_distillation_loss(student, teacher, head, ids, mask).item() == pytest.approx(1.0)
    opt = torch.optim.Adam(list(student.parameters()) + list(head.parameters()), lr=3e-3)
    for _ in range(150):
        loss = contextual_distillation_loss(student, teacher, head, ids, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1


def test_hidden_state_distillation_is_relative_per_layer_and_learnable():
    """Each layer's error is relative to the teacher's mean square at that layer (a zero readout scores exactly
    1), and a multiplexed student with its readouts learns every layer's state of each instance alone."""
    torch.manual_seed(0)
    teacher = masked_model(1, seed=1)
    teacher.set_masks(None)
    student = masked_model(2, seed=2)
    student.set_masks(None)
    L, H = student.config.num_hidden_layers, student.config.hidden_size
    readout = LayerReadout(L, 2, H, teacher.config.hidden_size)
    ids = torch.randint(5, 100, (8, 10))
    mask = (torch.arange(10)[None] < torch.tensor([10, 3, 7, 10, 1, 5, 9, 6])[:, None]).long()
    with torch.no_grad():
        wanted = []
        teacher.encode(ids, mask, hidden_states=wanted)
    assert len(wanted) == L + 1 and wanted[1].shape == (8, 10, teacher.config.hidden_size)

    def loss():
        mixed = []
        student(ids, mask, hidden_states=mixed)
        assert len(mixed) == L + 1 and mixed[1].shape == (4, 10, H)  # G = B / N groups
        return hidden_state_distillation(readout, mixed, wanted, mask)

    for layer in readout.outer:
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    assert loss().item() == pytest.approx(1.0)
    opt = torch.optim.Adam(list(student.parameters()) + list(readout.parameters()), lr=3e-3)
    for _ in range(300):
        value = loss()
        opt.zero_grad()
        value.backward()
        opt.step()
    assert value.item() < 0.1


def test_finetune_with_hidden_distillation_logs_it_and_refuses_what_it_cannot_match(
        tmp_path, bert_dir, glue_dir):
    finetune(bert_dir, tmp_path / "teacher", tiny_args(glue_dir, instances=1), log=lambda m: None)
    finetune(bert_dir, tmp_path / "student", tiny_args(glue_dir), log=lambda m: None,
             teacher_dir=tmp_path / "teacher", hidden_distill=0.5)
    records = [json.loads(l) for l in (tmp_path / "student" / "train_log.jsonl").read_text().splitlines()]
    evals = [r for r in records if r.get("event") == "eval"]
    assert evals and all(0 < r["hidden"] < 2 and r["loss"] == pytest.approx(r["ce"] + r["kd"] + 0.5 * r["hidden"],
                                                                             rel=1e-4) for r in evals)
    # the readouts are training-only: the checkpoint holds the same tensors as one trained without them
    plain = load_checkpoint(tmp_path / "teacher").state_dict().keys()
    assert not any("readout" in k for k in load_checkpoint(tmp_path / "student").state_dict())
    assert len(load_checkpoint(tmp_path / "student").state_dict()) >= len(plain)
    # a weight without a teacher, and a multiplexed teacher, are refused before any training
    refused(run_cli("train", "finetune", tmp_path / "o", "--init", bert_dir, "--hidden-distill", 1,
                    "--data", glue_dir, "--max-seq-length", 12), 2,
            "--hidden-distill 1.0 needs a --teacher (an N=1 checkpoint of the same depth); give one, or set the "
            "weight to 0")
    refused(run_cli("train", "finetune", tmp_path / "o", "--init", bert_dir, "--hidden-distill", 1,
                    "--teacher", tmp_path / "student", "--data", glue_dir, "--max-seq-length", 12), 2,
            f"--teacher {tmp_path / 'student'} is multiplexed (N=2); hidden-state distillation needs an "
            "unmultiplexed (N=1) teacher")
    assert not (tmp_path / "o").exists()


def test_retrieval_from_the_classification_pass_equals_the_warmups_retrieval_loss(bert_dir):
    """Fine-tuning's auxiliary retrieval reads the encoder output of the classification forward: the same value
    as the warm-up's retrieval_loss, which runs its own encoder pass, on the same rows and instance choices."""
    from prumux_deploy import create_model
    from prumux_deploy.train.losses import retrieval_choice, retrieval_from_encoder_output, retrieval_loss

    model = create_model(bert_dir, num_instances=2, max_seq_length=12).eval()
    ids = torch.tensor([[101, 7, 8, 9, 102], [101, 11, 102, 0, 0], [101, 12, 13, 102, 0], [101, 14, 102, 0, 0]])
    mask = (ids != 0).long()
    choice = retrieval_choice(2, 5, 2, seed=0, step=3)
    hidden = []
    logits = model(ids, mask, hidden_states=hidden)
    assert logits.shape == (4, 2) and len(hidden) == model.config.num_hidden_layers + 1
    one_pass = retrieval_from_encoder_output(model, hidden[-1], ids, mask, choice)
    assert one_pass.item() == pytest.approx(retrieval_loss(model, ids, mask, choice).item(), rel=1e-6)
    assert one_pass.item() > 1.0  # an untrained decoder over the vocabulary: far from zero


def test_finetune_keeps_token_retrieval_when_weighted(tmp_path, bert_dir, glue_dir):
    """--retrieval-weight W adds W times token retrieval to the fine-tuning loss: logged beside the
    cross-entropy, and trained (the retrieval loss of the result is lower than without it)."""
    from prumux_deploy.train.losses import retrieval_choice, retrieval_loss

    args = tiny_args(glue_dir, epochs=3.0)
    finetune(bert_dir, tmp_path / "with", args, log=lambda m: None, retrieval_weight=2.0)
    records = [json.loads(l) for l in (tmp_path / "with" / "train_log.jsonl").read_text().splitlines()]
    evals = [r for r in records if r.get("event") == "eval"]
    assert evals and all(r["retrieval"] > 0 and r["loss"] == pytest.approx(r["ce"] + 2.0 * r["retrieval"], rel=1e-4)
                         for r in evals)
    start = next(r for r in records if r.get("event") == "start")
    assert start["options"]["retrieval_weight"] == 2.0
    finetune(bert_dir, tmp_path / "without", args, log=lambda m: None)

    from transformers import AutoTokenizer

    sentences = [l.split("\t")[0] for l in (glue_dir / "train.tsv").read_text().splitlines()[1:17]]
    encoded = AutoTokenizer.from_pretrained(str(bert_dir))(sentences, padding=True, return_tensors="pt")
    ids, mask = encoded["input_ids"], encoded["attention_mask"]  # the training sentences: [16, S]
    choice = retrieval_choice(8, ids.shape[1], 2, seed=1, step=0)
    with torch.no_grad():
        trained, plain = (retrieval_loss(load_checkpoint(tmp_path / d).eval(), ids, mask, choice).item()
                          for d in ("with", "without"))
    assert trained < plain - 0.2, (trained, plain)  # measured: 4.35 against 4.84 nats
    refused(run_cli("train", "finetune", tmp_path / "o", "--init", bert_dir, "--retrieval-weight", -1,
                    "--data", glue_dir), 2, "--retrieval-weight")
    assert not (tmp_path / "o").exists()


def test_retrieval_is_refused_where_it_cannot_run_and_so_is_data_smaller_than_a_batch(
        tmp_path, bert_dir, glue_dir, masked_checkpoint):
    """A compact model with pruned hidden dims has a word embedding narrower than the demux features, so the tied
    decoder cannot read them: one line, for finetune --retrieval-weight and for warmup. Training data with fewer
    rows than one batch would make a step of partial mux groups: one line naming --batch-size."""
    from prumux_deploy.compact import compact

    small = compact(load_checkpoint(masked_checkpoint))
    assert small.config.embedding_dim == 16 and small.config.hidden_size == 32
    save_checkpoint(small, tmp_path / "compact")
    fix = "set `retrieval_weight` to 0, or start from an unpruned key_cls, key_pool or index_pos model"
    with pytest.raises(PruMuxError, match="its hidden dims are pruned \\(16 of 32\\), so the token decoder tied to "
                                          "the word embeddings does not fit the demux; " + re.escape(fix)):
        finetune(tmp_path / "compact", tmp_path / "o", tiny_args(glue_dir), log=lambda m: None, retrieval_weight=0.1)
    with pytest.raises(PruMuxError, match="hidden dims are pruned .* warm up an unpruned key_cls"):
        warmup(tmp_path / "compact", tmp_path / "o", tiny_args(glue_dir), log=lambda m: None)
    assert not (tmp_path / "o").exists()
    refused(run_cli("train", "finetune", tmp_path / "o", "--init", bert_dir, "--data", glue_dir, "--max-seq-length",
                    12, "--max-train-samples", 15, "--retrieval-weight", 0.1), 2,
            "the training data has 15 rows, fewer than one batch (--batch-size 32); give a --batch-size of at most "
            "15, or more rows")
    assert not (tmp_path / "o").exists()


def test_every_retrieving_stage_refuses_a_pooler_read_out_in_one_line(tmp_path, bert_dir, glue_dir):
    """An imported N=1 CoFi model reads out through BERT's pooler: there is no per-instance token demux for the
    warm-up's, fine-tuning's or pre-training's retrieval (or pre-training's MLM) to run through."""
    import dataclasses

    from prumux_deploy.model import PruMuxModel
    from prumux_deploy.train.corpus import CorpusArgs
    from prumux_deploy.train.stages import PretrainArgs, pretrain

    start = create_model(bert_dir, num_instances=1, num_labels=2, seed=0, task="sst2", max_seq_length=16)
    save_checkpoint(PruMuxModel(dataclasses.replace(start.config, demux_kind="pooler")), tmp_path / "cofi",
                    tokenizer_dir=bert_dir)
    args = tiny_args(glue_dir, instances=1)
    no_demux = re.escape(f"{tmp_path / 'cofi'}: its pooler read-out has no per-instance token demux to ")
    with pytest.raises(PruMuxError, match=no_demux + "retrieve tokens through; warm up an unpruned key_cls"):
        warmup(tmp_path / "cofi", tmp_path / "o", args, log=lambda m: None)
    with pytest.raises(PruMuxError, match=no_demux + "retrieve tokens through; set `retrieval_weight` to 0"):
        finetune(tmp_path / "cofi", tmp_path / "o", args, log=lambda m: None, retrieval_weight=0.1)
    (tmp_path / "corpus.txt").write_text("a very lovely plot\n" * 20)
    with pytest.raises(PruMuxError, match=no_demux + "predict masked tokens through; start from a key_cls, key_pool "
                                                     "or index_pos model$"):
        pretrain(tmp_path / "cofi", tmp_path / "o", args, CorpusArgs(str(tmp_path / "corpus.txt")),
                 PretrainArgs(steps=1), log=lambda m: None)
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.run").exists()


def test_step_choices_slice_the_global_draw_by_each_rows_position():
    """Micro-batches (any split of the global batch into whole mux groups) retrieve exactly the global draw."""
    from prumux_deploy.train.losses import StepChoices, retrieval_choice

    choices = StepChoices(num_instances=2, seed=4)
    drawn = choices.draw(torch.zeros(8, 5, dtype=torch.long), step=7)  # 8 rows = 4 groups of N=2
    assert drawn.shape == (4, 5) and torch.equal(drawn, retrieval_choice(4, 5, 2, seed=4, step=7))
    second_half = choices.of({"position": torch.tensor([4, 5, 6, 7])})
    assert torch.equal(second_half, drawn[2:])
    parts = [choices.of({"position": torch.tensor(p)}) for p in ([0, 1], [2, 3], [4, 5, 6, 7])]
    assert torch.equal(torch.cat(parts), drawn)
    assert not torch.equal(choices.draw(torch.zeros(8, 5), step=8), drawn)  # a new step, a new draw


def test_contextual_warmup_logs_both_losses_and_refuses_a_multiplexed_teacher(tmp_path, bert_dir, glue_dir):
    args = tiny_args(glue_dir)
    warmup(bert_dir, tmp_path / "warm", args, log=lambda m: None, teacher_dir=bert_dir)
    records = [json.loads(l) for l in (tmp_path / "warm" / "train_log.jsonl").read_text().splitlines()]
    evals = [r for r in records if r.get("event") == "eval"]
    assert evals and all(r["loss"] == pytest.approx(r["retrieval"] + r["context"]) for r in evals)
    assert load_checkpoint(tmp_path / "warm").config.num_instances == 2
    with pytest.raises(PruMuxError, match=r"`teacher` .*warm is multiplexed \(N=2\); give an unmultiplexed \(N=1\) encoder"):
        warmup(bert_dir, tmp_path / "again", args, log=lambda m: None, teacher_dir=tmp_path / "warm")
    assert not (tmp_path / "again").exists()
    # `train all` has two teachers: the error names the one given (--warmup-teacher), not the stage's --teacher
    refused(run_cli("train", "all", tmp_path / "all", "--base", bert_dir, "--warmup-teacher", tmp_path / "warm",
                    "--data", glue_dir, "--max-seq-length", 12), 2,
            "--warmup-teacher " + str(tmp_path / "warm") + " is multiplexed (N=2)")
    assert not (tmp_path / "all").exists()
    tiny = ["--data", glue_dir, "--max-seq-length", 12, "--batch-size", 8, "--max-train-samples", 16]
    weighted = run_cli("train", "warmup", tmp_path / "half", "--base", bert_dir, "--teacher", bert_dir,
                       "--context-weight", 0.5, *tiny)
    assert weighted.exit_code == 0, weighted.output
    records = [json.loads(l) for l in (tmp_path / "half" / "train_log.jsonl").read_text().splitlines()]
    assert records[0]["options"]["context_weight"] == 0.5
    assert all(r["loss"] == pytest.approx(r["retrieval"] + 0.5 * r["context"]) for r in records if "context" in r)
    refused(run_cli("train", "warmup", tmp_path / "lone", "--base", bert_dir, "--context-weight", 0.5, *tiny), 2,
            "--context-weight weighs the contextual loss, which needs --teacher; give a --teacher or leave "
            "--context-weight out")


class _Planted:
    """A pickle that runs code when unpickled: it creates a marker file (what a hostile OUT.run would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_resume_never_unpickles_a_planted_train_state(tmp_path, bert_dir, glue_dir):
    """OUT.run/train_state.pt may come from someone else: it is read as tensors and plain values only."""
    args = tiny_args(glue_dir, epochs=1.0)
    run_dir = loop.run_dir(tmp_path / "out")
    run_dir.mkdir(parents=True)
    marker = tmp_path / "marker"
    torch.save({"stage": "finetune", "step": 1, "payload": _Planted(marker)}, run_dir / "train_state.pt")
    with pytest.raises(PruMuxError, match=r"train_state.pt: holds objects other than tensors and plain values .*"
                                          r"refusing to unpickle it. Start the stage again without `resume`"):
        finetune(bert_dir, tmp_path / "out", args, resume=True, log=lambda m: None)
    assert not marker.exists() and not (tmp_path / "out").exists()
    (run_dir / "train_state.pt").write_bytes(b"not a zip archive")
    with pytest.raises(PruMuxError, match="train_state.pt: cannot be read as a train state .*the file is damaged"):
        finetune(bert_dir, tmp_path / "out", args, resume=True, log=lambda m: None)
