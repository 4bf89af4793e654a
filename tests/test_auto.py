"""Auto-PruMUX: interpolation, clamping, missing cells, the speedup fit, LOO-CV, ranking, JSON, CLI."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import refused, run_cli

from prumux_deploy.auto import (AccuracySurface, AutoModel, Measurement, SpeedupModel, fit, loo_cv, plot,
                                read_measurements)
from prumux_deploy.cli import main
from prumux_deploy.errors import PruMuxError

NS = (1, 2, 4, 6, 8, 10)
SS = (0.0, 0.3, 0.6, 0.8, 0.9, 0.95)
COEF = (0.05, 0.9, 0.8, -0.05)  # log speedup = a + b log N + c log 1/(1-s) + d log N log 1/(1-s)


def bilinear_acc(n, s, top=90.0):
    """Bilinear in the accuracy model's coordinates, log N and s."""
    ln = math.log(n)
    return top - 1.5 * ln - 10.0 * s - 2.0 * ln * s


def parametric_speedup(n, s):
    ln, lp = math.log(n), -math.log1p(-s)
    return math.exp(COEF[0] + COEF[1] * ln + COEF[2] * lp + COEF[3] * ln * lp)


def synthetic_rows():
    """qqp: full grid with speedups; sst2: same grid, no speedups, another surface."""
    rows = []
    for n in NS:
        for s in SS:
            rows.append(Measurement("qqp", n, s, bilinear_acc(n, s), parametric_speedup(n, s)))
            rows.append(Measurement("sst2", n, s, bilinear_acc(n, s, top=93.0) - 0.3 * math.log(n), None))
    return rows


def write_csv(path, rows, header="task,N,sparsity,accuracy,throughput"):
    lines = [header] + [f"{r.task},{r.N},{r.sparsity!r},{r.accuracy!r},"
                        f"{'' if r.throughput is None else repr(r.throughput)}" for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------------------------ accuracy surface

SQUARE = [(1, 0.0, 90.0), (3, 0.0, 86.0), (1, 0.5, 80.0), (3, 0.5, 70.0)]


def test_interpolation_exact_at_grid_points_and_bilinear_between():
    f = AccuracySurface(SQUARE)
    for n, s, a in SQUARE:
        assert f(n, s) == a
    # in log N: N=sqrt(3) sits half-way between 1 and 3
    assert f(math.sqrt(3), 0.25) == pytest.approx((90 + 86 + 80 + 70) / 4, abs=1e-12)
    assert f(math.sqrt(3), 0.0) == pytest.approx(88.0, abs=1e-12)  # on an edge: linear
    # hand computation: tN = log 1.5 / log 3 = 0.36907, ts = 0.1 / 0.5 = 0.2
    # (1-tN)(1-ts)*90 + tN(1-ts)*86 + (1-tN)ts*80 + tN*ts*70 = 86.0808
    assert f(1.5, 0.1) == pytest.approx(86.0808, abs=1e-4)
    # bilinear: linear along each axis inside a cell, in its coordinate
    s = np.linspace(0, 0.5, 11)
    assert np.allclose(np.diff(f(np.full(11, 2.2), s), 2), 0, atol=1e-10)
    n = np.exp(np.linspace(0, math.log(3), 11))  # evenly spaced in log N
    assert np.allclose(np.diff(f(n, np.full(11, 0.3)), 2), 0, atol=1e-10)


def test_interpolation_on_a_larger_grid_matches_each_cell():
    pts = [(n, s, bilinear_acc(n, s) + (0.7 if (n, s) == (4, 0.8) else 0.0)) for n in NS for s in SS]
    f = AccuracySurface(pts)
    for n, s, a in pts:
        assert f(n, s) == a
    # (3, 0.7) lies in the cell N in [2, 4], s in [0.6, 0.8], whose corner (4, 0.8) carries +0.7, weighted
    # by its position in the cell: log(3/2) / log 2 along N and half-way along s
    t_n = math.log(1.5) / math.log(2)
    assert f(3, 0.7) == pytest.approx(bilinear_acc(3, 0.7) + t_n * 0.5 * 0.7, abs=1e-10)


def test_outside_the_grid_clamps_to_the_edge():
    f = AccuracySurface(SQUARE)
    assert f(20, 0.9) == 70.0            # beyond both: the far corner
    assert f(2, 0.99) == pytest.approx(80 - 10 * math.log(2) / math.log(3))  # beyond s: the s=0.5 edge at N=2
    assert f(10, 0.25) == pytest.approx(78.0)  # beyond N: the N=3 edge at s=0.25
    g = AccuracySurface([(2, 0.3, 85.0), (4, 0.3, 81.0), (2, 0.6, 80.0), (4, 0.6, 70.0)])
    assert g(1, 0.0) == 85.0             # below both


def test_missing_cells_are_filled_exactly_for_a_bilinear_surface():
    full = [(n, s, bilinear_acc(n, s)) for n in NS for s in SS]
    for hole in [(2, 0.6), (1, 0.0), (10, 0.95), (10, 0.0), (4, 0.0)]:  # interior, corners, edge
        f = AccuracySurface([p for p in full if (p[0], p[1]) != hole])
        assert f(*hole) == pytest.approx(bilinear_acc(*hole), abs=1e-9), hole
        assert not f.measured[list(f.Ns).index(hole[0]), list(f.ss).index(hole[1])]
    # scattered points (no shared row or column): nearest measured values, still exact where measured
    diag = [(1, 0.0, 90.0), (2, 0.6, 80.0), (5, 0.9, 70.0)]
    f = AccuracySurface(diag)
    for n, s, a in diag:
        assert f(n, s) == a
    assert f(1, 0.9) == pytest.approx((90.0 + 70.0) / 2)
    assert 0 <= f(5, 0.0) <= 100


def test_missing_cells_extrapolate_at_most_one_step():
    # two close points at N=1, 2 must not drag the N=10 cell along their slope (in log N: 92.7 - 1.5 * log2(10) = 87.7)
    f = AccuracySurface([(1, 0.0, 92.7), (2, 0.0, 91.2), (10, 0.9, 82.0)])
    assert f(10, 0.0) == pytest.approx((91.2 + 82.0) / 2)  # nearest along N and along s
    # one step (in log N) beyond two points is a straight line: (1, 0.5) from (2, 0.5) and (4, 0.5)
    g = AccuracySurface([(2, 0.5, 88.0), (4, 0.5, 85.0), (1, 0.0, 92.0), (2, 0.0, 91.0), (4, 0.0, 90.0)])
    assert g(1, 0.5) == pytest.approx(91.0)  # s direction: (1, 0) is alone, so N's line wins
    # further out the value is held: (1, 0.5) from (2, 0.5) and (3, 0.5) is log 2 / log 1.5 = 1.7 steps away
    h = AccuracySurface([(2, 0.5, 88.0), (3, 0.5, 85.0), (1, 0.0, 92.0), (2, 0.0, 91.0), (3, 0.0, 90.0)])
    assert h(1, 0.5) == pytest.approx((88.0 + 92.0) / 2)


def test_baseline_is_n1_s0_else_best():
    assert AccuracySurface(SQUARE).baseline == 90.0
    assert AccuracySurface([(2, 0.0, 84.0), (2, 0.5, 86.0), (5, 0.5, 80.0)]).baseline == 86.0


# ------------------------------------------------------------------------------------- speedup model


def test_speedup_fit_recovers_the_parametric_form_and_falls_back_with_few_points():
    pts = [(n, s, parametric_speedup(n, s)) for n in NS for s in SS]
    m = SpeedupModel.fit(pts, "qqp")
    assert np.allclose(m.coef, COEF, atol=1e-10) and len(m.terms) == 4
    assert m(3, 0.7) == pytest.approx(parametric_speedup(3, 0.7), rel=1e-10)
    two = SpeedupModel.fit([(1, 0.0, 1.0), (4, 0.0, 3.2)], "qqp")  # no sparsity variation: 2 terms
    assert two.terms == ["1", "log N"] and two(4, 0.0) == pytest.approx(3.2)
    one = SpeedupModel.fit([(2, 0.5, 3.0)], "qqp")
    assert one.terms == ["1"] and one(10, 0.9) == pytest.approx(3.0)


# ------------------------------------------------------------------------------------------- LOO-CV


def test_loo_cv_is_perfect_on_bilinear_accuracy_and_parametric_speedup():
    result = loo_cv(synthetic_rows())
    assert result["throughput_task"] == "qqp"
    assert result["tasks"]["qqp"] == {"n_accuracy": 36, "M_A": 1.0, "n_speedup": 36, "M_T": 1.0}
    assert result["tasks"]["sst2"] == {"n_accuracy": 36, "M_A": 1.0, "n_speedup": 0, "M_T": None}
    errors = [abs(p["predicted_accuracy"] - p["accuracy"]) for p in result["points"]]
    assert max(errors) < 1e-8


def test_loo_cv_counts_misses():
    rows = synthetic_rows()
    rows = [Measurement(r.task, r.N, r.sparsity, r.accuracy + (5.0 if (r.N, r.sparsity) == (2, 0.8) else 0.0),
                        r.throughput) for r in rows]
    result = loo_cv(rows)
    # the bumped point is mispredicted, and its neighbours' predictions drag the bump along
    assert result["tasks"]["qqp"]["M_A"] < 1.0
    assert result["tasks"]["qqp"]["M_T"] == 1.0


# ------------------------------------------------------------------------------------------- ranking


def test_rank_respects_the_budget_and_more_budget_never_slows_down():
    model = fit(synthetic_rows())
    best = []
    for task in ("qqp", "sst2"):
        baseline = model.baseline(task)
        assert baseline == bilinear_acc(1, 0.0, top=90.0 if task == "qqp" else 93.0)
        best_here = []
        for budget in (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 15.0, 40.0):
            found = model.rank(task, budget, top=5)
            assert found, budget
            for c in found:
                assert c.accuracy >= baseline - budget - 1e-9
                assert c.accuracy == pytest.approx(model.predict_accuracy(task, c.N, c.sparsity))
                assert c.speedup == pytest.approx(model.predict_speedup(c.N, c.sparsity))
                assert not c.extrapolated
            assert [c.speedup for c in found] == sorted((c.speedup for c in found), reverse=True)
            best_here.append(found[0].speedup)
        assert best_here == sorted(best_here)
        assert best_here[-1] > best_here[0]
        best.append(best_here)
    # untrained grid points are candidates too (N=3, 5 and s=0.1, 0.2, 0.4, 0.5, 0.7 were never trained)
    found = model.rank("qqp", 40.0, top=1000)
    assert any(not c.trained for c in found) and any(c.trained for c in found)
    assert {(c.N, round(c.sparsity, 2)) for c in found} >= {(3, 0.7), (8, 0.95), (10, 0.95)}
    assert found[0].N == 10 and found[0].sparsity == 0.95


def test_rank_with_zero_budget_keeps_only_baseline_quality():
    model = fit(synthetic_rows())
    found = model.rank("qqp", 0.0, top=10)
    assert [(c.N, c.sparsity) for c in found] == [(1, 0.0)]
    with pytest.raises(PruMuxError, match="budget"):
        model.rank("qqp", -1.0)
    with pytest.raises(PruMuxError, match="unknown task 'mnli'"):
        model.rank("mnli", 1.0)


def test_explicit_candidates_outside_the_grid_are_marked():
    model = fit([Measurement("t", n, s, bilinear_acc(n, s), parametric_speedup(n, s))
                 for n in (1, 2) for s in (0.0, 0.5)])
    found = model.rank("t", 50.0, top=10, candidates=[(2, 0.5), (4, 0.5)])
    assert [(c.N, c.extrapolated) for c in found] == [(4, True), (2, False)]
    assert all(c.N <= 2 and c.sparsity <= 0.5 for c in model.rank("t", 50.0, top=100))


# ------------------------------------------------------------------------------------- serialisation


def test_fit_json_round_trip(tmp_path):
    path = write_csv(tmp_path / "m.csv", synthetic_rows())
    model = fit(path)
    again = AutoModel.from_json(model.to_json())
    assert again.to_json() == model.to_json()
    assert again.tasks == ["qqp", "sst2"] and again.speedup.task == "qqp"
    n, s = np.meshgrid([1, 1.5, 3, 7, 10, 12], [0.0, 0.3, 0.85, 0.95])
    for task in model.tasks:
        assert np.array_equal(model.predict_accuracy(task, n, s), again.predict_accuracy(task, n, s))
    assert np.array_equal(model.predict_speedup(n, s), again.predict_speedup(n, s))
    assert again.rank("sst2", 3.0) == model.rank("sst2", 3.0)
    with pytest.raises(PruMuxError, match="not an Auto-PruMUX model"):
        AutoModel.from_json(json.dumps({"format": "other"}))
    with pytest.raises(PruMuxError, match="not valid JSON"):
        AutoModel.from_json("{")


# --------------------------------------------------------------------------------------------- reading


@pytest.mark.parametrize("text, message", [
    ("task,N,sparsity,accuracy\nqqp,1,0,90\n", "m.csv:1: missing column 'throughput'"),
    ("task,N,sparsity,accuracy,throughput\nqqp,1,0,90,1\nqqp,two,0,90,1\n", "m.csv:3: column 'N' must be a number"),
    ("task,N,sparsity,accuracy,throughput\nqqp,1,0,90,1\nqqp,2,0.5,x,\n", "m.csv:3: column 'accuracy'"),
    ("task,N,sparsity,accuracy,throughput\nqqp,1,0,90,1\n\nqqp,1,0.0,89,1\n",
     "m.csv:4: duplicate row for task qqp, N=1, sparsity=0 (first on line 2)"),
    ("task,N,sparsity,accuracy,throughput\nqqp,1,60,90,1\n", "m.csv:2: sparsity must be a fraction"),
    ("task,N,sparsity,accuracy,throughput\nqqp,1,0,0.9,1\n", "give accuracy in percent"),
    ("task,N,sparsity,accuracy,throughput\n", "no measurements"),
])
def test_bad_csv_is_one_line_naming_file_and_line(tmp_path, text, message):
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(PruMuxError) as e:
        read_measurements(tmp_path / "m.csv")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_read_measurements_parses_empty_throughput_and_extra_columns(tmp_path):
    (tmp_path / "m.csv").write_text("task, N ,sparsity,accuracy,throughput,note\n"
                                    "qqp,2,0.6,88.5,3.1,x\nsst2,2,0.6,90.25,,y\n")
    rows = read_measurements(tmp_path / "m.csv")
    assert rows[0] == Measurement("qqp", 2, 0.6, 88.5, 3.1, 2)
    assert rows[1].throughput is None and rows[1].line == 3


def test_plot_without_matplotlib_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(PruMuxError, match="auto plot needs matplotlib: pip install matplotlib"):
        plot(fit(synthetic_rows()), tmp_path / "p.png")


# ------------------------------------------------------------------------------------------------ CLI


def run(*args):
    return CliRunner().invoke(main, ["auto", *map(str, args)])


def test_cli_fit_predict_cv(tmp_path):
    csv_path = write_csv(tmp_path / "m.csv", synthetic_rows())
    for cmd in ("fit", "predict", "cv", "plot"):
        result = run(cmd, "--help")
        assert result.exit_code == 0 and "Usage:" in result.output, cmd

    result = run("fit", csv_path, "-o", tmp_path / "auto.json")
    assert result.exit_code == 0, result.output
    assert "2 task(s)" in result.output and "on qqp" in result.output
    assert json.loads((tmp_path / "auto.json").read_text())["format"] == "prumux-auto-model"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left
    result = run("fit", csv_path, "-o", tmp_path / "auto.json")
    assert result.exit_code == 2 and "pass --force" in result.output

    result = run("predict", tmp_path / "auto.json", "--task", "sst2", "--budget", "3.0", "--top", "3")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "baseline accuracy 93.00" in lines[0] and "accuracy >= 90.00" in lines[0]
    table = [l.split() for l in lines[2:]]
    assert [r[0] for r in table] == ["1", "2", "3"]
    model = fit(csv_path)
    best = model.rank("sst2", 3.0, top=3)
    for row, c in zip(table, best):
        assert (int(row[1]), float(row[2])) == (c.N, round(c.sparsity, 2))
        assert float(row[3]) >= 90.0 - 0.005
    result = run("predict", tmp_path / "auto.json", "--task", "sst2", "--budget", "3", "--json")
    assert json.loads(result.output)["candidates"][0]["N"] == best[0].N

    result = run("cv", csv_path)
    assert result.exit_code == 0, result.output
    rows = {l.split()[0]: l.split() for l in result.output.splitlines()[2:]}
    assert rows["qqp"] == ["qqp", "36", "1.000", "36", "1.000"]
    assert rows["sst2"] == ["sst2", "36", "1.000", "0", "-"]
    assert rows["all"][1:3] == ["72", "1.000"]
    result = run("cv", csv_path, "--json")
    assert json.loads(result.output)["tasks"]["qqp"]["M_T"] == 1.0


def test_cli_errors_are_one_line(tmp_path):
    (tmp_path / "bad.csv").write_text("task,N,sparsity,throughput\nqqp,1,0,1\n")
    result = run("fit", tmp_path / "bad.csv", "-o", tmp_path / "auto.json")
    assert result.exit_code == 2
    errors = [l for l in result.output.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "missing column 'accuracy'" in errors[0] and "Traceback" not in result.output
    assert not (tmp_path / "auto.json").exists()

    write_csv(tmp_path / "m.csv", synthetic_rows())
    run("fit", tmp_path / "m.csv", "-o", tmp_path / "auto.json")
    result = run("predict", tmp_path / "auto.json", "--task", "mnli")
    assert result.exit_code == 2 and "unknown task 'mnli'" in result.output
    result = run("fit", tmp_path / "m.csv", "-o", tmp_path / "x.json", "--throughput-task", "sst2")
    assert result.exit_code == 2 and "has no throughput measurements" in result.output


def test_throughput_only_rows_fit_the_speedup_model(tmp_path):
    from prumux_deploy.auto import fit, read_measurements

    csv_file = tmp_path / "m.csv"
    lines = ["task,N,sparsity,accuracy,throughput", "sst2,1,0,90,", "sst2,2,0,88,", "sst2,2,0.6,86,"]
    lines += [f"speed,{n},{s},,{n / (1 - s):.6f}" for n in (1, 2, 5) for s in (0.0, 0.5, 0.8)]
    csv_file.write_text("\n".join(lines) + "\n")
    rows = read_measurements(csv_file)
    assert sum(r.accuracy is None for r in rows) == 9
    model = fit(rows)
    assert model.tasks == ["sst2"]
    assert model.predict_speedup(5, 0.8) == pytest.approx(25.0, rel=1e-6)
    (tmp_path / "bad.csv").write_text("task,N,sparsity,accuracy,throughput\nsst2,1,0,,\n")
    with pytest.raises(PruMuxError, match="bad.csv:2: accuracy and throughput are both empty"):
        read_measurements(tmp_path / "bad.csv")


def test_compare_finds_the_fastest_point_of_each_method_per_threshold(tmp_path):
    from prumux_deploy.auto import compare_methods, top3_hits

    rows = [Measurement("sst2", 1, 0.0, 88.0, 10.0), Measurement("sst2", 1, 0.6, 87.0, 20.0),
            Measurement("sst2", 1, 0.9, 85.0, 40.0), Measurement("sst2", 2, 0.0, 86.9, 18.0),
            Measurement("sst2", 2, 0.6, 86.0, 45.0), Measurement("sst2", 2, 0.9, 84.6, 90.0)]
    result = compare_methods(rows, step=1.0, depth=4.0)
    by = {e["threshold"]: e for e in result["thresholds"]}
    assert sorted(by) == [84.0, 85.0, 86.0, 87.0, 88.0]
    assert by[88.0]["PruMUX"] is None and by[88.0]["CoFi"] is None and by[88.0]["DataMUX"] is None
    assert by[87.0]["CoFi"]["sparsity"] == 0.6 and by[87.0]["PruMUX"] is None and by[87.0]["DataMUX"] is None
    assert by[86.0]["PruMUX"]["throughput"] == 45.0 and by[86.0]["DataMUX"]["throughput"] == 18.0
    assert by[85.0]["CoFi"]["throughput"] == 40.0
    assert by[84.0]["PruMUX"]["throughput"] == 90.0  # 84.6 reaches 84
    hits = top3_hits(rows, budgets=[0.0, 2.0, 4.0])["sst2"]
    assert [e["best"] for e in hits["budgets"]] == [[1, 0.0], [2, 0.6], [2, 0.9]]
    assert all(e["hit"] for e in hits["budgets"]) and hits["hit_rate"] == 1.0  # a model fitted on every point
    # held out, (1, 0.6) is interpolated along N=1 between 88 (s=0) and 85 (s=0.9), two thirds of the way:
    # 86.0 < 87, so at budget 1 (threshold 87) the best point is not even a candidate; N=1, s=0 always is
    held = top3_hits(rows, budgets=[0.0, 1.0], held_out=True)["sst2"]["budgets"]
    assert [e["best"] for e in held] == [[1, 0.0], [1, 0.6]]
    assert held[0]["hit"] and held[0]["top"] == [[1, 0.0]]
    assert not held[1]["hit"] and held[1]["top"] == [[2, 0.0], [1, 0.0]]  # (2, 0) is predicted at 87.0
    csv = write_csv(tmp_path / "m.csv", rows)
    result = CliRunner().invoke(main, ["auto", "compare", str(csv), "--step", "1", "--depth", "4"])
    assert result.exit_code == 0, result.output
    assert "45.0 (N=2, s=0.6, 86.00)" in result.output
    # budgets follow the thresholds (0, 1, ..., 4): held out, the best point is missed at budget 1 (above) and 2,
    # where (2, 0.6) is interpolated along N=2 between 86.9 and 84.6 to 85.37 < 86
    assert "top 3 for 5 of 5 budgets (0 to 4 points) fitted on every point;" in result.output
    assert "sst2: for 3 of 5 ranked by leave-one-out predictions" in result.output
    with pytest.raises(PruMuxError, match="needs the N=1, s=0 point"):
        compare_methods(rows[1:])


# --- auto collect: the CSV from validate reports and a bench run over the same checkpoints ---------------------------

def test_collect_joins_validate_reports_and_bench_rows(tmp_path, engine_dir, masked_checkpoint, sst2_dir):
    from prumux_deploy.checkpoint import load_checkpoint
    from prumux_deploy.compact import compact
    from prumux_deploy.structure import describe

    report, bench_json, out = tmp_path / "report.json", tmp_path / "bench.json", tmp_path / "m.csv"
    assert run_cli("validate", engine_dir, "--checkpoint", masked_checkpoint, "--data", sst2_dir,
                   "--report", report, "--partners", 2).exit_code == 0
    done = run_cli("bench", "--checkpoint", masked_checkpoint, "--backend", "onnxruntime-opt", "--seq", 16, "-b", 2,
                   "--repeats", 2, "--no-gemm", "--json", bench_json)
    assert done.exit_code == 0, done.output
    sparsity = round(describe(compact(load_checkpoint(masked_checkpoint)))["sparsity"], 2)
    bench_row = json.loads(bench_json.read_text())["rows"][0]
    assert bench_row["name"] == str(masked_checkpoint) and bench_row["sparsity"] == sparsity > 0

    done = run_cli("auto", "collect", report, "--bench", bench_json, "-o", out)
    assert done.exit_code == 0, done.output
    assert f"wrote {out}: 1 rows (sst2), 1 with throughput" in done.output
    accuracy = 100 * json.loads(report.read_text())["metrics"]["engine_accuracy"]
    header, row = out.read_text().splitlines()
    assert header == "task,N,sparsity,accuracy,throughput,flip_rate"
    task, N, s, acc, speedup, flips = row.split(",")
    assert float(flips) == pytest.approx(100 * json.loads(report.read_text())["partners"]["partner_flip_rate"],
                                         abs=1e-4)
    assert (task, int(N), float(s)) == ("sst2", 2, sparsity)
    assert float(acc) == pytest.approx(accuracy, rel=1e-5)
    assert float(speedup) == pytest.approx(bench_row["speedup"], rel=1e-5)
    rows = read_measurements(out)  # what cv, fit and compare read
    assert [(r.task, r.N, r.sparsity) for r in rows] == [("sst2", 2, sparsity)]
    assert rows[0].flip_rate == pytest.approx(float(flips))

    # without --bench: accuracy only; bad input: one line each, and the CSV is left as it was
    assert run_cli("auto", "collect", report, "-o", tmp_path / "acc.csv").exit_code == 0
    assert (tmp_path / "acc.csv").read_text().splitlines()[1].split(",")[4] == ""  # no throughput
    before = out.read_text()
    refused(run_cli("auto", "collect", report, "-o", out), 2, "already exists")
    refused(run_cli("auto", "collect", report, report, "-o", out, "--force"), 2, "again (also")
    refused(run_cli("auto", "collect", report, "--bench", bench_json, "--backend", "torch", "-o", out, "--force"),
            2, "no torch rows (it timed onnxruntime-opt)")
    refused(run_cli("auto", "collect", bench_json, "-o", out, "--force"), 2, "not a validate report")
    refused(run_cli("auto", "collect", tmp_path / "nope.json", "-o", out, "--force"), 2, "no such file")
    assert out.read_text() == before
