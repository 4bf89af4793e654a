"""Every output of every command is checked before any work: one that cannot be created where it is to go
(a parent that is a file, /proc, a read-only or full file system, a name too long, a directory we may not
write) is one `error: cannot write ...` line naming the path, the reason and the fix, exit 2, with nothing
printed before it and nothing created.

The writing options are found by walking the click command tree: every click.Path parameter is either an
output (OUTPUTS, with an invocation that would otherwise do its work) or an input (INPUTS), and every
command with --force writes at least one of OUTPUTS."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import click
import pytest


from conftest import SST2_ROWS, WORDS, commands, refused, run_cli


def path_parameters():
    for path, cmd in commands():
        for param in cmd.params:
            if isinstance(param.type, click.Path):
                yield path, param.name


TRAIN = ["--max-train-samples", 8, "--max-eval-samples", 4, "--batch-size", 4, "--max-seq-length", 16,
         "--device", "cpu"]

# (command, parameter) -> (output name, argv: what the command is given, the inputs `i` and the output `out`).
# With real inputs each would do its work (compaction, training, timing, validation) were the output writable.
OUTPUTS = {
    (("init",), "out"): ("model", lambda i, out: ["init", out, "--base", i.bert]),
    (("import",), "out"): ("imported", lambda i, out: ["import", i.bert, out]),
    (("compact",), "out"): ("compact", lambda i, out: ["compact", i.checkpoint, out]),
    (("export",), "out"): ("engine", lambda i, out: ["export", i.checkpoint, out]),
    (("export",), "timing_cache"): ("trt.cache", lambda i, out: ["export", i.checkpoint, i.scratch / "plan",
                                                                  "--format", "tensorrt", "--timing-cache", out]),
    (("triton",), "repo"): ("repo", lambda i, out: ["triton", i.engine, out, "--name", "m"]),
    (("validate",), "report"): ("report.json", lambda i, out: ["validate", i.engine, "--checkpoint", i.checkpoint,
                                                                "--data", i.glue, "--report", out]),
    (("predict",), "ids_out"): ("ids.txt", lambda i, out: ["predict", i.engine, "a witty film", "--ids-out", out]),
    (("predict",), "output"): ("scores.jsonl", lambda i, out: ["predict", i.engine, "--input", i.glue / "dev.tsv",
                                                                "--output", out]),
    (("bench",), "csv_path"): ("bench.csv", lambda i, out: ["bench", "--quick", "--csv", out]),
    (("bench",), "json_path"): ("bench.json", lambda i, out: ["bench", "--quick", "--json", out]),
    (("bench",), "plot_path"): ("bench.png", lambda i, out: ["bench", "--quick", "--plot", out]),
    (("auto", "fit"), "out"): ("auto.json", lambda i, out: ["auto", "fit", i.csv, "-o", out]),
    (("auto", "collect"), "out"): ("m.csv", lambda i, out: ["auto", "collect", i.report, "-o", out]),
    (("auto", "plot"), "out"): ("auto.png", lambda i, out: ["auto", "plot", i.model, "-o", out]),
    (("train", "warmup"), "out"): ("warm", lambda i, out: ["train", "warmup", out, "--base", i.bert, "--data",
                                                            i.glue, *TRAIN[:2], *TRAIN[4:]]),  # no evaluation
    (("train", "pretrain"), "out"): ("pre", lambda i, out: ["train", "pretrain", out, "--base", i.bert, "--corpus",
                                                             i.corpus, "--steps", 1, "--batch-size", 4,
                                                             "--max-seq-length", 16, "--device", "cpu"]),
    (("train", "finetune"), "out"): ("ft", lambda i, out: ["train", "finetune", out, "--init", i.bert, "--data",
                                                            i.glue, *TRAIN]),
    (("train", "prune"), "out"): ("pruned", lambda i, out: ["train", "prune", out, "--teacher", i.checkpoint,
                                                             "--sparsity", 0.5, "--data", i.glue, *TRAIN]),
    (("train", "all"), "out"): ("run", lambda i, out: ["train", "all", out, "--base", i.bert, "--data", i.glue,
                                                        "--warmup-epochs", 0.1, *TRAIN]),
}

INPUTS = {
    (("auto", "collect"), "reports"), (("auto", "collect"), "bench_json"), (("auto", "compare"), "csv_path"),
    (("auto", "cv"), "csv_path"), (("auto", "fit"), "csv_path"), (("auto", "plot"), "model_path"),
    (("auto", "predict"), "model_path"), (("bench",), "checkpoints"), (("bench",), "accuracy_csv"),
    (("bench",), "saved_json"), (("compact",), "checkpoint"), (("export",), "checkpoint"), (("import",), "src"),
    (("import",), "tokenizer"), (("inspect",), "path"), (("predict",), "engine_dir"), (("predict",), "input_path"),
    (("train", "all"), "init"),
    (("train", "all"), "finetune_teacher"), (("train", "finetune"), "teacher"), (("train", "pretrain"), "init"),
    (("train", "pretrain"), "mlm_head"), (("train", "prune"), "teacher"), (("triton",), "engine_dir"),
    (("validate",), "engine_dir"), (("validate",), "checkpoint"),
}

CASES = sorted(OUTPUTS)


def case_id(case):
    path, param = case
    return f"{' '.join(path)}:{param}"


def test_every_path_parameter_is_an_output_or_an_input():
    found = set(path_parameters())
    assert found - set(OUTPUTS) - INPUTS == set()  # a new path option: add it to OUTPUTS or INPUTS
    assert set(OUTPUTS) | INPUTS == found  # nothing listed that the commands no longer have
    writers = {path for path, cmd in commands() if any(p.name == "force" for p in cmd.params)}
    assert writers == {path for path, _ in OUTPUTS}


# --- the inputs, real (the command would work) or absent (the refusal must come before they are read) -----

@pytest.fixture(scope="module")
def inputs(tmp_path_factory, bert_dir, masked_checkpoint, engine_dir):
    from prumux_deploy.auto import fit, save_model

    root = tmp_path_factory.mktemp("inputs")
    glue = root / "SST-2"
    glue.mkdir()
    rows = SST2_ROWS * 4 + [(f"{w} {w}", k % 2) for k, w in enumerate(WORDS)]
    (glue / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{l}\n" for s, l in rows))
    (glue / "dev.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{l}\n" for s, l in SST2_ROWS))
    csv_path = root / "measurements.csv"
    csv_path.write_text("task,N,sparsity,accuracy,throughput\n" + "".join(
        f"sst2,{n},{s},{90 - 2 * n - 10 * s},{n * (1 + 4 * s)}\n" for n in (1, 2, 5) for s in (0.0, 0.5, 0.9)))
    save_model(fit(csv_path), root / "auto.json")
    report = root / "report.json"
    done = run_cli("validate", engine_dir, "--checkpoint", masked_checkpoint, "--data", glue, "--report", report)
    assert done.exit_code == 0, done.output
    (root / "corpus.txt").write_text("".join(f"{s}\n" for s, _ in SST2_ROWS))
    (root / "scratch").mkdir()
    return SimpleNamespace(bert=bert_dir, checkpoint=masked_checkpoint, engine=engine_dir, glue=glue, csv=csv_path,
                           model=root / "auto.json", report=report, corpus=root / "corpus.txt",
                           scratch=root / "scratch")


def absent(inputs, root):
    """The same names, none of which exists: a command that reads (or loads, or times) anything before
    checking its output is refused for the input instead."""
    return SimpleNamespace(**{name: root / "absent" / name for name in vars(inputs)})


# --- the kinds of unwritable location ------------------------------------------------------------------

def _mount_tmpfs(where: Path, options: str, request) -> str | None:
    """Mount a tmpfs at `where`, unmounted when the module's tests end; why not, or None when mounted."""
    if shutil.which("mount") is None:
        return "no mount command here"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        return f"cannot mount a tmpfs here ({done.stderr.strip()})"
    request.addfinalizer(lambda: subprocess.run(["umount", "-l", str(where)], capture_output=True))
    return None


def _fill(folder: Path):
    """Take every byte of `folder`'s file system with one file."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:  # ENOSPC: full
        pass
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def mounts(tmp_path_factory, request):
    """A read-only tmpfs and a full one (a filler file takes every byte), where this process may mount."""
    root = tmp_path_factory.mktemp("mounts")
    made, why = {}, {}
    for name, options in (("readonly", "ro,size=64k"), ("full", "size=64k")):
        reason = _mount_tmpfs(root / name, options, request)
        if reason:
            why[name] = reason
        else:
            made[name] = root / name
    if "full" in made:
        _fill(made["full"])
    return SimpleNamespace(made=made, why=why)


def where_to(kind: str, root: Path, mounts) -> tuple[Path, str]:
    """The folder outputs go to for this kind of unwritable location, and what the refusal must say."""
    if kind in ("readonly", "full"):
        if kind not in mounts.made:
            pytest.skip(mounts.why[kind])
        folder = mounts.made[kind]
        what = "is on a read-only file system" if kind == "readonly" else "is on a full file system"
        return folder / "sub", f"{folder} {what}"
    if kind == "proc":
        if not Path("/proc/self").is_dir():
            pytest.skip("no /proc here")
        return Path("/proc/prumux-outputs-test"), "/proc cannot hold new entries (No such file or directory)"
    if kind == "long name":
        return root / ("n" * 256), "has 256 characters, more than the"
    if kind == "broken link":
        (root / "gone").symlink_to(root / "missing")
        return root / "gone", f"{root / 'gone'} is a symbolic link to {root / 'missing'}, which does not exist"
    (root / "afile").write_text("a file, not a directory\n")
    parent = root / "afile" if kind == "file parent" else root / "afile" / "sub" / "deeper"
    return parent, f"{root / 'afile'} is a file, so nothing can be created inside it"


def snapshot(*roots: Path) -> list:
    """Every entry under `roots` with its size: what a refused command must leave as it was."""
    return sorted((str(p), p.is_dir(), 0 if p.is_dir() else p.lstat().st_size)
                  for root in roots if root.is_dir() for p in root.rglob("*"))


def assert_refused_first(result, out: Path, what: str):
    error = refused(result, 2, f"cannot write {out}")
    assert what in error, error
    assert "; " in error.split(what, 1)[1], error  # and the fix after it
    assert result.output.splitlines() == [error]  # nothing printed before: no compaction, loading or timing


KINDS = ["file parent", "file ancestor", "proc", "readonly", "full", "long name", "broken link"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_an_unwritable_output_is_one_line_before_any_work(case, kind, inputs, mounts, tmp_path):
    name, argv = OUTPUTS[case]
    folder, what = where_to(kind, tmp_path, mounts)
    out = folder / name
    watched = [tmp_path, *mounts.made.values()]
    before = snapshot(*watched)
    assert_refused_first(run_cli(*argv(inputs, out)), out, what)
    assert snapshot(*watched) == before  # nothing created, not even a parent
    if kind == "proc":
        assert not os.path.lexists(folder)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_the_refusal_comes_before_the_inputs_are_read(case, inputs, tmp_path):
    name, argv = OUTPUTS[case]
    (tmp_path / "afile").write_text("")
    out = tmp_path / "afile" / name
    assert_refused_first(run_cli(*argv(absent(inputs, tmp_path), out)), out, f"{tmp_path / 'afile'} is a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


# The child runs the commands without root's permission override (as root: setpriv drops CAP_DAC_OVERRIDE,
# so the mode bits of a 0555 directory hold) and prints their exit codes and outputs as JSON.
CHILD = """
import json, sys
from click.testing import CliRunner
from prumux_deploy.cli import main
try:
    open(sys.argv[1] + "/probe", "w")
    print(json.dumps("can write"))
except PermissionError:
    print(json.dumps([(r.exit_code, r.output) for r in (CliRunner().invoke(main, a) for a in json.load(sys.stdin))]))
"""


def test_a_directory_we_may_not_write_is_refused_for_every_output(inputs, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: mode bits cannot be made to hold here")
        prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]
    outs = [locked / "sub" / OUTPUTS[case][0] if k % 2 else locked / OUTPUTS[case][0]
            for k, case in enumerate(CASES)]
    argvs = [[str(a) for a in OUTPUTS[case][1](inputs, out)] for case, out in zip(CASES, outs)]
    locked.chmod(0o555)
    try:
        done = subprocess.run([*prefix, sys.executable, "-c", CHILD, str(locked)], input=json.dumps(argvs),
                              capture_output=True, text=True, timeout=300)
    finally:
        locked.chmod(0o755)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.splitlines()[-1])
    if results == "can write":
        pytest.skip("this process writes into a 0555 directory even without CAP_DAC_OVERRIDE")
    what = f"{locked} does not let this process create entries (Permission denied)"
    for case, out, (code, output) in zip(CASES, outs, results):
        assert code == 2 and output.splitlines() == [output.splitlines()[0]], (case, output)
        assert output.startswith(f"error: cannot write {out}"), (case, output)  # train all: OUT/warmup
        assert f": {what}; choose a location you can write" in output, (case, output)
    assert list(locked.iterdir()) == []
