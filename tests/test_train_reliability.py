"""Training under interruption and against the wrong model, for every stage (warmup, pretrain, finetune, prune,
all): OUT is published whole (its train_log.jsonl with it) by one rename, and the line printed on interruption
is true whenever it comes; SIGHUP (a closed terminal) cleans up like Ctrl-C; a resume against another model
than the interrupted run's is one line naming both and the fix."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prumux_deploy import create_model, save_checkpoint
from prumux_deploy.train import loop

from conftest import WORDS, refused, run_cli, tiny_bert_config

STAGES = ["warmup", "pretrain", "finetune", "prune", "all"]


@pytest.fixture(scope="module")
def models(tmp_path_factory, bert_dir):
    """Start models: the tiny BERT's twin with other weights, one with 2 layers instead of 4, and two unpruned
    N=2 SST-2 checkpoints on the tiny BERT (prune's teachers)."""
    from transformers import BertModel

    root = tmp_path_factory.mktemp("starts")
    made = {"bert": bert_dir}
    for name, seed, layers in (("twin", 1, 4), ("shallow", 0, 2)):
        shutil.copytree(bert_dir, root / name)
        torch.manual_seed(seed)
        BertModel(tiny_bert_config(num_hidden_layers=layers)).save_pretrained(str(root / name))
        made[name] = root / name
    for name, seed in (("teacher", 0), ("other_teacher", 1)):
        model = create_model(bert_dir, num_instances=2, num_labels=2, seed=seed, task="sst2",
                             id2label={0: "negative", 1: "positive"}, max_seq_length=16)
        save_checkpoint(model, root / name)
        made[name] = root / name
    return made


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(f"the {a} {b} and {a}" for a, b in zip(WORDS, reversed(WORDS))) + "\n")
    return path


def argv(stage, out, glue_dir, corpus, start, *extra):
    """`train STAGE OUT` on tiny data: 3 steps per stage, a save after each."""
    tiny = ["--batch-size", 8, "--max-seq-length", 12, "--eval-every", 2, "--save-every", 1, "--device", "cpu",
            "--instances", 2]
    if stage == "pretrain":
        return ["train", "pretrain", out, "--corpus", corpus, "--base", start, "--steps", 3, *tiny, *extra]
    data = ["--data", glue_dir, "--max-train-samples", 24, "--lr", 1e-3, *tiny]
    if stage != "warmup":  # the warm-up has no held-out evaluation, so no evaluation options
        data += ["--max-eval-samples", 8]
    flag = {"warmup": "--base", "finetune": "--init", "prune": "--teacher", "all": "--base"}[stage]
    own = {"prune": ["--sparsity", 0.5], "all": ["--sparsity", 0.5, "--warmup-epochs", 1]}.get(stage, [])
    return ["train", stage, out, flag, start, *own, *data, *extra]


def start_of(stage, models):
    return models["teacher"] if stage == "prune" else models["bert"]


def first_output(stage, out: Path) -> Path:
    """The output a stage publishes first (`train all`: its warm-up)."""
    return out / "warmup" if stage == "all" else out


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name) if folder.exists() \
        else []


# --- 1. OUT is published whole, and the interruption line is true ------------------------------------------

@pytest.mark.parametrize("stage", STAGES)
def test_an_interrupt_while_the_log_is_copied_leaves_no_output(stage, tmp_path, glue_dir, corpus, models,
                                                             monkeypatch):
    """The log used to be copied into OUT after OUT was renamed into place: an interrupt there left OUT with a
    truncated log, and the line said no output was written."""
    out = tmp_path / "out"
    copyfile = shutil.copyfile

    def copy_half_then_interrupt(src, dst, *args, **kwargs):
        if Path(dst).name != "train_log.jsonl":
            return copyfile(src, dst, *args, **kwargs)
        Path(dst).write_bytes(Path(src).read_bytes()[:50])
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "copyfile", copy_half_then_interrupt)
    done = run_cli(*argv(stage, out, glue_dir, corpus, start_of(stage, models)))
    assert (done.exit_code, done.output.strip().splitlines()[-1]) == (130, "interrupted; no output was written"), \
        done.output
    published = first_output(stage, out)
    assert not published.exists() and temporaries(published.parent) == []
    monkeypatch.setattr(shutil, "copyfile", copyfile)
    # the run state is kept: --resume publishes OUT, whole
    done = run_cli(*argv(stage, out, glue_dir, corpus, start_of(stage, models), "--resume"))
    assert done.exit_code == 0, done.output
    assert (published / "train_log.jsonl").read_bytes() == (loop.run_dir(published) / "log.jsonl").read_bytes()


@pytest.mark.parametrize("stage", STAGES)
def test_an_interrupt_just_after_out_is_published_says_so(stage, tmp_path, glue_dir, corpus, models, monkeypatch):
    """An interrupt after OUT was published (here: while the stage prints its last line, `...; wrote OUT`): OUT
    is complete, with its log, and the line names it instead of claiming that nothing was written."""
    from prumux_deploy.commands import train as train_commands

    out = tmp_path / "out"
    published = first_output(stage, out)

    def interrupt_when_done(message):
        if message.endswith(f"; wrote {published}"):
            raise KeyboardInterrupt

    monkeypatch.setattr(train_commands, "_echo", interrupt_when_done)
    done = run_cli(*argv(stage, out, glue_dir, corpus, start_of(stage, models)))
    monkeypatch.undo()
    if stage == "all":
        line = refused(done, 130, f"interrupted after {published} had been written (complete); the later stages "
                                  "did not run: continue with --resume")
    else:
        line = refused(done, 130, f"interrupted after {out} had been written (complete); nothing else was left to do")
    assert "no output was written" not in done.output, line
    assert (published / "train_log.jsonl").read_bytes() == (loop.run_dir(published) / "log.jsonl").read_bytes()
    assert temporaries(published.parent) == []
    if stage == "all":  # the fix the line gives
        done = run_cli(*argv(stage, out, glue_dir, corpus, start_of(stage, models), "--resume"))
        assert done.exit_code == 0, done.output
        assert all((out / name / "train_log.jsonl").is_file() for name in ("warmup", "finetune", "pruned"))


def test_an_interrupt_while_exiting_after_a_written_output_says_so(tmp_path, glue_dir, models, capsys):
    """Once a command has succeeded, Ctrl-C, SIGTERM or SIGHUP while the interpreter exits used to print the
    line of an interruption before any output ("no output was written"; SIGTERM: a KeyboardInterrupt
    traceback), after `...; wrote OUT`."""

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        done = run_cli(*argv("finetune", tmp_path / "out", glue_dir, None, models["bert"]))
        assert done.exit_code == 0 and (tmp_path / "out" / "train_log.jsonl").is_file(), done.output
        handlers = {s: signal.getsignal(s) for s in before}
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
    assert len(set(handlers.values())) == 1, handlers  # Ctrl-C, `kill` and a closed terminal alike
    with pytest.raises(SystemExit) as stopped:
        handlers[signal.SIGHUP](signal.SIGHUP, None)
    assert stopped.value.code == 130
    assert capsys.readouterr().err == "interrupted while exiting; the command had finished\n"


# --- 2. SIGHUP (a closed terminal) cleans up like Ctrl-C -----------------------------------------------------

SLOW_SAVE = """
import sys, time
import prumux_deploy.checkpoint as checkpoint
save_file = checkpoint.save_file

def save_then_wait(*args, **kwargs):  # holds the run inside its temporary directory until it is signalled
    save_file(*args, **kwargs)
    print("saving", flush=True)
    time.sleep(300)

checkpoint.save_file = save_then_wait
from prumux_deploy.cli import main
main(sys.argv[1:], prog_name="prumux-deploy")
"""


@pytest.mark.parametrize("stage", STAGES)
def test_sighup_during_the_save_removes_the_temporary_directory_and_the_lock(stage, tmp_path, glue_dir, corpus,
                                                                            models):
    """SIGHUP used to kill the run where it stood (its default action), leaving `.OUT.tmp-*` behind."""
    out = tmp_path / "out"
    published = first_output(stage, out)
    args = [str(a) for a in argv(stage, out, glue_dir, corpus, start_of(stage, models))]
    child = subprocess.Popen([sys.executable, "-c", SLOW_SAVE, *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "saving", child.communicate(timeout=60)[1]
        assert temporaries(published.parent), "the save is not inside its temporary directory"
        assert (loop.run_dir(published) / loop.LOCK_FILE).is_file()
        child.send_signal(signal.SIGHUP)
        _, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert (child.returncode, err.strip().splitlines()[-1]) == (130, "interrupted; no output was written"), err
    assert "Traceback" not in err
    assert not published.exists() and temporaries(published.parent) == []
    assert not (loop.run_dir(published) / loop.LOCK_FILE).exists()
    loop.RunLock(loop.run_dir(published)).acquire().release()  # nobody holds it


def test_closing_the_terminal_stops_the_run_cleanly(tmp_path, glue_dir, corpus, models):
    """A real closed terminal: the run's controlling terminal (a pseudo-terminal) goes away, the kernel sends
    SIGHUP, and every later write to the terminal fails (EIO); the run still cleans up and exits 130."""
    import fcntl
    import pty
    import termios

    out = tmp_path / "out"
    args = [str(a) for a in argv("finetune", out, glue_dir, corpus, models["bert"])]
    terminal, child_side = pty.openpty()

    def own_terminal():
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    child = subprocess.Popen([sys.executable, "-c", SLOW_SAVE, *args], stdin=child_side, stdout=child_side,
                             stderr=child_side, preexec_fn=own_terminal)
    os.close(child_side)
    try:
        shown = b""
        while b"saving" not in shown:
            chunk = os.read(terminal, 4096)
            assert chunk, shown.decode(errors="replace")
            shown += chunk
        assert temporaries(tmp_path)
        os.close(terminal)  # the window closes
        child.wait(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130  # not 1 (the interruption line failing to reach the closed terminal)
    assert not out.exists() and temporaries(tmp_path) == []
    assert not (loop.run_dir(out) / loop.LOCK_FILE).exists()


# --- 3. resuming against another model ----------------------------------------------------------------------

def interrupt_after_first_save(monkeypatch):
    original = loop.RunState.save

    def save_then_interrupt(self, step, objects):
        original(self, step, objects)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop.RunState, "save", save_then_interrupt)
    return original


def interrupted_run(stage, out, glue_dir, corpus, start, monkeypatch):
    original = interrupt_after_first_save(monkeypatch)
    done = run_cli(*argv(stage, out, glue_dir, corpus, start))
    monkeypatch.setattr(loop.RunState, "save", original)
    assert done.exit_code == 130, done.output
    return loop.run_dir(first_output(stage, out))


OTHER_START = {"warmup": "shallow", "pretrain": "shallow", "finetune": "shallow", "prune": "other_teacher",
               "all": "shallow"}
FLAG = {"warmup": "--base", "pretrain": "--base", "finetune": "--init", "prune": "--teacher", "all": "--base"}
ABOUT = {"bert": "BERT, 4 layers, hidden 32", "shallow": "BERT, 2 layers, hidden 32",
         "twin": "BERT, 4 layers, hidden 32", "teacher": "N=2, 4 layers, hidden 32",
         "other_teacher": "N=2, 4 layers, hidden 32"}


@pytest.mark.parametrize("stage", STAGES)
def test_resume_against_another_model_is_one_line_naming_both(stage, tmp_path, glue_dir, corpus, models,
                                                              monkeypatch):
    """It used to be `unexpected RuntimeError: Error(s) in loading state_dict ... size mismatch` (or, for a model
    of the same shape, a silent resume that mixed two models' settings)."""
    out = tmp_path / "out"
    start = "teacher" if stage == "prune" else "bert"
    run_path = interrupted_run(stage, out, glue_dir, corpus, models[start], monkeypatch)
    state = (run_path / "train_state.pt").read_bytes()
    flag = FLAG[stage]
    others = [OTHER_START[stage]] + (["twin"] if stage == "finetune" else [])
    for other in others:
        line = refused(run_cli(*argv(stage, out, glue_dir, corpus, models[other], "--resume")), 2,
                       f"{run_path} was started with {flag} {os.path.realpath(models[start])} ({ABOUT[start]}); "
                       f"this run's {flag} is {os.path.realpath(models[other])} ({ABOUT[other]}); resume with the "
                       f"interrupted run's {flag}, or delete {run_path} to start the stage over")
        assert line.count("error:") == 1
        assert (run_path / "train_state.pt").read_bytes() == state and not first_output(stage, out).exists()
    done = run_cli(*argv(stage, out, glue_dir, corpus, models[start], "--resume"))
    assert done.exit_code == 0, done.output


def test_a_start_model_changed_since_the_interruption_is_named(tmp_path, glue_dir, corpus, models, monkeypatch):
    start = tmp_path / "start"
    shutil.copytree(models["bert"], start)
    run_path = interrupted_run("finetune", tmp_path / "out", glue_dir, corpus, start, monkeypatch)
    shutil.copytree(models["shallow"], start, dirs_exist_ok=True)  # re-trained in place, with 2 layers
    refused(run_cli(*argv("finetune", tmp_path / "out", glue_dir, corpus, start, "--resume")), 2,
            f"{run_path} was started with --init {os.path.realpath(start)} (BERT, 4 layers, hidden 32), which has "
            f"changed since (now BERT, 2 layers, hidden 32); resume with the interrupted run's --init, or delete "
            f"{run_path} to start the stage over")


def test_pretrain_from_a_checkpoint_then_from_a_base_is_named(tmp_path, glue_dir, corpus, models, monkeypatch):
    run_path = interrupted_run("pretrain", tmp_path / "out", glue_dir, corpus, models["bert"], monkeypatch)
    argv_init = argv("pretrain", tmp_path / "out", glue_dir, corpus, models["bert"], "--resume")
    argv_init[argv_init.index("--base"):argv_init.index("--base") + 2] = ["--init", models["teacher"]]
    refused(run_cli(*argv_init), 2, f"{run_path} was started with --base {os.path.realpath(models['bert'])} (BERT, "
                                    "4 layers, hidden 32); this run's --base is none; resume with the interrupted "
                                    "run's --base")


def test_a_state_of_other_shapes_without_a_recorded_model_is_one_line(tmp_path, glue_dir, corpus, models,
                                                                      monkeypatch):
    """A state saved before the start model was recorded (or copied from another run): its tensors are checked
    against this run's before any is restored."""
    out = tmp_path / "out"
    run_path = interrupted_run("finetune", out, glue_dir, corpus, models["bert"], monkeypatch)
    state = torch.load(run_path / "train_state.pt", weights_only=True)
    del state["options"]["init"]
    torch.save(state, run_path / "train_state.pt")
    line = refused(run_cli(*argv("finetune", out, glue_dir, corpus, models["shallow"], "--resume")), 2,
                   f"{run_path / 'train_state.pt'}: its model has layers.2.")
    assert line.endswith(f"which this run's has not; it was saved by a run of another model: resume with the "
                         f"interrupted run's options, or delete {run_path} to start the stage over"), line
    assert not out.exists()
