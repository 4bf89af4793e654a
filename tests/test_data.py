"""A user's own classification data and GLUE as `datasets` keeps it: every --data form, custom tasks end to
end, bad data, and the task metrics."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from prumux_deploy.data import custom_task, get_task, load_examples, read_labels
from prumux_deploy.errors import DataError
from prumux_deploy.metrics import task_metrics

from conftest import refused, run_cli

# an intent-classification toy: 3 labels, written as words, unsorted on purpose
ROWS = [("play some jazz", "music"), ("what is the weather", "weather"), ("turn the lights off", "home"),
        ("is it going to rain", "weather"), ("play the next song", "music"), ("dim the kitchen lights", "home"),
        ("how cold is it outside", "weather"), ("skip this track", "music"), ("lock the front door", "home"),
        ("will it snow tomorrow", "weather"), ("put on some rock", "music"), ("open the garage", "home")]
LABELS_SORTED = ["home", "music", "weather"]


def rows_dict(rows=ROWS, text="utterance", label="intent"):
    return {text: [r[0] for r in rows], label: [r[1] for r in rows]}


def write_split(path: Path, fmt: str, data: dict):
    import datasets

    ds = datasets.Dataset.from_dict(data)
    if fmt == "csv":
        ds.to_csv(str(path), index=False)
    elif fmt == "jsonl":
        ds.to_json(str(path), lines=True)
    elif fmt == "parquet":
        ds.to_parquet(str(path))
    elif fmt == "tsv":
        path.write_text("\t".join(data) + "\n" + "".join("\t".join(str(data[c][i]) for c in data) + "\n"
                                                       for i in range(len(next(iter(data.values()))))))
    return path


@pytest.fixture
def intents(tmp_path):
    """The same intent data in every --data form."""
    import datasets

    forms = {}
    for fmt in ("csv", "tsv", "jsonl", "parquet"):
        directory = tmp_path / fmt
        directory.mkdir()
        write_split(directory / f"train.{fmt}", fmt, rows_dict())
        write_split(directory / f"validation.{fmt}", fmt, rows_dict(ROWS[:6]))
        forms[fmt] = directory
    forms["file"] = tmp_path / "csv" / "train.csv"
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows_dict()),
                          "validation": datasets.Dataset.from_dict(rows_dict(ROWS[:6]))}).save_to_disk(str(saved))
    forms["save_to_disk"] = saved
    return forms


@pytest.mark.parametrize("form", ["csv", "tsv", "jsonl", "parquet", "save_to_disk", "file"])
def test_every_data_form_reads_the_same_examples(intents, form):
    task = read_labels(custom_task("utterance", None, "intent"), intents[form])
    assert list(task.label_names) == LABELS_SORTED  # read from the training split, sorted
    split = "train" if form == "file" else "dev"  # a file is the split asked for; dev finds validation.*
    ex = load_examples(task, intents[form], split)
    want = ROWS if form == "file" else ROWS[:6]
    assert ex.text_a == [r[0] for r in want] and ex.text_b is None
    assert ex.labels.tolist() == [LABELS_SORTED.index(r[1]) for r in want]


def test_numeric_labels_sort_numerically_and_class_labels_keep_their_order(tmp_path):
    import datasets

    write_split(tmp_path / "n.csv", "csv", {"text": [f"t{i}" for i in range(4)], "label": [10, 2, 10, 2]})
    assert read_labels(custom_task("text"), tmp_path / "n.csv").label_names == ("2", "10")
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["zeta", "alpha"])})
    datasets.Dataset.from_dict({"text": ["a", "b"], "label": [1, 0]}, features=features).save_to_disk(
        str(tmp_path / "cl"))
    task = read_labels(custom_task("text"), tmp_path / "cl")
    assert task.label_names == ("zeta", "alpha")
    assert load_examples(task, tmp_path / "cl", "train").labels.tolist() == [1, 0]


def test_glue_in_datasets_form_uses_its_column_names_and_class_labels(tmp_path):
    """nyu-mll/glue as save_to_disk or parquet: MNLI's premise/hypothesis, int labels."""
    data = {"premise": ["a man sleeps", "a dog runs"], "hypothesis": ["someone rests", "a cat sits"],
            "label": [0, 2], "idx": [0, 1]}
    write_split(tmp_path / "validation_matched.parquet", "parquet", data)
    ex = load_examples(get_task("mnli"), tmp_path, "dev")
    assert ex.text_a == data["premise"] and ex.text_b == data["hypothesis"] and ex.labels.tolist() == [0, 2]


@pytest.mark.parametrize("content, message", [
    ({"utterance": ["a", "b"], "label": ["music", "home"]}, "no column 'intent' (columns: utterance, label); "
                                                            "name the right one with `label_column`"),
    ({"text": ["a", "b"], "intent": ["music", "home"]}, "no column 'utterance' (columns: text, intent); "
                                                        "name the right one with `text_column`"),
    ({"utterance": ["a", " "], "intent": ["music", "home"]}, "row 2: empty 'utterance'; fix the data or pass "
                                                             "`skip_bad_rows`"),
    ({"utterance": ["a", "b", "c"], "intent": ["music", "sports", "golf"]},
     "row 2: label 'sports' is not one of home, music, weather (2 bad rows in all); fix the data or give every "
     "label with `labels` or pass `skip_bad_rows`"),
])
def test_bad_data_is_one_line_naming_file_row_and_fix(tmp_path, content, message):
    file = write_split(tmp_path / "dev.csv", "csv", content)
    task = custom_task("utterance", None, "intent", LABELS_SORTED)
    with pytest.raises(DataError) as e:
        load_examples(task, file, "dev")
    assert str(e.value) == f"{file}: {message}"


@pytest.mark.parametrize("form", ["file", "split directory"])
def test_a_latin1_data_file_is_one_line_naming_its_line_and_byte(tmp_path, form):
    """A file saved in Latin-1 (the libraries raise DatasetGenerationError or ArrowInvalid around the
    UnicodeDecodeError): the file, its first undecodable line and byte, and the fix; was "cannot be read as a
    dataset (DatasetGenerationError: An error occurred while generating the dataset); check its format"."""
    folder = tmp_path / "d"
    folder.mkdir()
    file = folder / "dev.csv"
    file.write_bytes("utterance,intent\nplay jazz,music\ncafé lights on,home\n".encode("latin-1"))
    task = custom_task("utterance", None, "intent", LABELS_SORTED)
    with pytest.raises(DataError) as e:
        load_examples(task, file if form == "file" else folder, "dev")
    assert str(e.value) == (f"{file}:3: not valid UTF-8 (byte 0xE9 at byte 4 of the line); re-save the file as "
                            "UTF-8 (e.g. iconv -f latin1 -t utf-8)")


def test_an_unreadable_data_file_names_the_file_and_the_permission_not_its_format(tmp_path, monkeypatch):
    """The libraries wrap the OS error (datasets: DatasetGenerationError from a PermissionError); measured as an
    unprivileged user on a chmod 000 file, which root (these tests) cannot reproduce, so the wrapping is staged."""
    from prumux_deploy import data

    file = write_split(tmp_path / "dev.csv", "csv", rows_dict())

    def denied(path):
        try:
            raise PermissionError(13, "Permission denied", str(path))
        except PermissionError as e:
            raise RuntimeError("An error occurred while generating the dataset") from e

    monkeypatch.setattr(data, "_load_file", denied)
    with pytest.raises(DataError) as e:
        data.open_split(file, "dev")
    assert str(e.value) == (f"{file}: cannot be read (Permission denied); make it readable (chmod a+r) or run as a "
                            "user who may read it")


def test_a_latin1_json_lines_input_is_named_as_such_not_as_holding_no_object(tmp_path):
    from prumux_deploy.scoring.inputs import _jsonl_columns

    file = tmp_path / "in.jsonl"
    file.write_bytes('{"text": "café"}\n'.encode("latin-1"))
    with pytest.raises(DataError) as e:
        _jsonl_columns(file)
    assert str(e.value).startswith(f"{file}:1: not valid UTF-8 (byte 0xE9 at byte 14 of the line)")


def test_another_tasks_data_is_named_as_such_not_as_bad_rows(tmp_path):
    """QNLI's dev.tsv read as SST-2 (every label 'entailment' / 'not_entailment'): skipping bad rows would leave
    none, so the line says what the data looks like instead (was: "label 'entailment' is not one of 0, 1 (N bad
    rows in all); fix the file or pass --skip-bad-rows")."""
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\na question?\tentailment\nanother\tnot_entailment\n"
                                      "a third\tentailment\n")
    with pytest.raises(DataError) as e:
        load_examples(get_task("sst2"), tmp_path, "dev", skip_bad_rows=True)
    assert str(e.value) == (f"{tmp_path / 'dev.tsv'}: none of its 3 rows has a label of sst2 (0, 1; the first row "
                            "has 'entailment'): this looks like another task's data; give the sst2 data, or the "
                            "task of this data with `task`")
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\nfine\t1\nodd\tentailment\n")  # one bad row: a bad row
    with pytest.raises(DataError, match="dev.tsv:3: label 'entailment' is not one of 0, 1; fix the file"):
        load_examples(get_task("sst2"), tmp_path, "dev")


def test_skip_bad_rows_counts_and_an_empty_split_is_refused(tmp_path):
    file = write_split(tmp_path / "dev.csv", "csv", {"utterance": ["a", "", "c"], "intent": ["music", "home", "x"]})
    ex = load_examples(custom_task("utterance", None, "intent", LABELS_SORTED), file, "dev", skip_bad_rows=True)
    assert ex.text_a == ["a"] and ex.skipped == 2
    (tmp_path / "empty.csv").write_text("utterance,intent\n")
    with pytest.raises(DataError, match="empty.csv: no usable rows; the split is empty"):
        load_examples(custom_task("utterance", None, "intent", LABELS_SORTED), tmp_path / "empty.csv", "dev")
    (tmp_path / "only").mkdir()
    write_split(tmp_path / "only" / "train.csv", "csv", rows_dict())
    with pytest.raises(DataError, match=r"no 'dev' split \(it has train\); choose a `split` it has"):
        load_examples(custom_task("utterance", None, "intent", LABELS_SORTED), tmp_path / "only", "dev")


def test_a_hub_name_offline_is_one_line_naming_the_cache_and_the_file_forms(tmp_path, engine_dir, masked_checkpoint):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_DATASETS_CACHE=str(tmp_path / "cache"))
    result = subprocess.run([str(Path(sys.executable).parent / "prumux-deploy"), "validate", str(engine_dir),
                             "--checkpoint", str(masked_checkpoint), "--data", "nyu-mll/glue", "--data-config", "sst2"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    line = result.stderr.strip()
    assert line.startswith("error: hub dataset nyu-mll/glue (sst2) cannot be loaded here")
    assert f"only a copy in the local cache ({tmp_path / 'cache'}) works" in line
    assert "save_to_disk or to .parquet/.jsonl/.csv files" in line


def test_task_metrics_match_hand_computed_values():
    predictions, labels = np.array([1, 1, 0, 0, 1, 0]), np.array([1, 0, 0, 1, 1, 0])
    # TP=2 FP=1 FN=1 TN=2: F1 = 2*2/(2*2+1+1) = 2/3; MCC = (2*2-1*1)/sqrt(3*3*3*3) = 3/9 = 1/3
    qqp = task_metrics(get_task("qqp"), predictions, labels)
    assert qqp == {"accuracy": pytest.approx(4 / 6), "f1": pytest.approx(2 / 3)}
    cola = task_metrics(get_task("cola"), predictions, labels)
    assert cola == {"accuracy": pytest.approx(4 / 6), "matthews_corr": pytest.approx(1 / 3)}
    assert task_metrics(get_task("sst2"), predictions, labels) == {"accuracy": pytest.approx(4 / 6)}
    # macro-F1 over 3 classes: class 0: P=1/2 R=1 F=2/3; class 1: P=1 R=1/2 F=2/3; class 2: never seen, F=0
    custom = task_metrics(custom_task("t", labels=["a", "b", "c"]), np.array([0, 0, 1]), np.array([0, 1, 1]))
    assert custom["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    assert not math.isnan(custom["accuracy"])


def test_which_data_forms_have_splits(tmp_path, intents):
    """A single file and a save_to_disk Dataset are read whole; directories of split files and DatasetDicts are
    not (validate reports no split and warns about a --split given for the former)."""
    import datasets

    from prumux_deploy.data import has_splits

    datasets.Dataset.from_dict(rows_dict()).save_to_disk(str(tmp_path / "one"))
    assert not has_splits(intents["file"]) and not has_splits(tmp_path / "one")
    assert has_splits(intents["csv"]) and has_splits(intents["save_to_disk"])


def test_a_custom_three_label_task_trains_exports_validates_and_predicts(tmp_path, bert_dir, intents):
    data = intents["jsonl"]
    result = run_cli("train", "all", tmp_path / "run", "--base", bert_dir, "--task", "custom", "--data", data,
                     "--text-column", "utterance", "--label-column", "intent", "--instances", 2, "--batch-size", 4,
                     "--epochs", 2, "--warmup-epochs", 1, "--max-seq-length", 12, "--eval-every", 100,
                     "--device", "cpu")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "finetune" / "config.json").read_text())
    assert config["task"] == "custom" and config["id2label"] == {"0": "home", "1": "music", "2": "weather"}
    assert config["task_columns"] == {"text": "utterance", "text_pair": None, "label": "intent"}
    assert run_cli("export", tmp_path / "run" / "finetune", tmp_path / "engine").exit_code == 0
    # validate needs no more than the checkpoint: task, columns and labels come from it
    result = run_cli("validate", tmp_path / "engine", "--checkpoint", tmp_path / "run" / "finetune", "--data", data,
                     "--report", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["task"] == "custom" and report["task_metrics"] == ["accuracy", "macro_f1"]
    assert report["examples"] == 6 and "engine_macro_f1" in report["metrics"]
    assert report["metrics"]["engine_macro_f1"] == pytest.approx(report["metrics"]["pytorch_macro_f1"])
    assert "macro f1  engine" in result.output
    # a single file is read whole: no split in the report, its name in the summary, and a --split given is named
    assert report["split"] == "dev" and "custom dev: 6 examples, N=2" in result.output
    file = intents["file"]  # train.csv alone
    result = run_cli("validate", tmp_path / "engine", "--checkpoint", tmp_path / "run" / "finetune", "--data", file,
                     "--split", "dev", "--report", tmp_path / "f.json")
    assert result.exit_code == 0 and f"custom train.csv: {len(ROWS)} examples, N=2" in result.output
    assert (f"warning: --split dev does not apply to a single data file or dataset; all of {file} is read"
            in result.output)
    assert json.loads((tmp_path / "f.json").read_text())["split"] is None
    result = run_cli("predict", tmp_path / "engine", "play some jazz", "--json")
    assert json.loads(result.output)["label"] in LABELS_SORTED


def test_custom_task_refusals(tmp_path, bert_dir, intents):
    refused(run_cli("init", tmp_path / "m", "--base", bert_dir, "--task", "custom", "--text-column", "t"), 2,
            "--task custom needs --labels here (init reads no data)")
    refused(run_cli("train", "finetune", tmp_path / "f", "--init", bert_dir, "--task", "custom",
                    "--data", intents["csv"], "--device", "cpu"), 2, "--task custom needs --text-column")
    refused(run_cli("train", "finetune", tmp_path / "f", "--init", bert_dir, "--task", "sst2", "--text-column", "x",
                    "--data", intents["csv"], "--device", "cpu"), 2, "apply to --task custom; sst2 has its own columns")
    result = run_cli("init", tmp_path / "m", "--base", bert_dir, "--task", "custom", "--labels", "a")
    assert result.exit_code == 2 and "give at least two comma-separated labels" in result.output
    assert run_cli("init", tmp_path / "m", "--base", bert_dir, "--task", "custom", "--text-column", "utterance",
                   "--label-column", "intent", "--labels", "a,b").exit_code == 0
    assert json.loads((tmp_path / "m" / "config.json").read_text())["task_columns"]["label"] == "intent"
