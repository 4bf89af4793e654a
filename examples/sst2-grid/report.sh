#!/usr/bin/env bash
# Everything docs/results.md reports about the trained grid, from its checkpoints (examples/sst2-grid/train.sh):
# per point an fp32 (optimized) and an int8 engine, each validated on SST-2 dev against PyTorch (with partner
# sensitivity, --partners 8); one bench run over
# all points (pause any training first: it is timed); the Auto-PruMUX measurement CSV, its leave-one-out scores
# and the PruMUX / CoFi / DataMUX comparison. Points that have not finished training are left out.
# Usage (from the repository root): examples/sst2-grid/report.sh [RUNS_DIR] (default runs/grid).
set -eu
R=${1:-runs/grid}
D=${DATA:-../shared/data/glue/SST-2}
OUT=$R/report
mkdir -p "$OUT"
points=()
for p in "$R"/n*/finetune "$R"/n*/s*; do
  case "$p" in *.engine|*.int8|*.run|*.json) continue ;; esac  # what this script and training write beside
  [ -f "$p/config.json" ] && points+=("$p")
done
[ ${#points[@]} -gt 0 ] || { echo "no finished points under $R" >&2; exit 1; }
reports=()
for p in "${points[@]}"; do
  prumux-deploy export "$p" "$p.engine" --force
  # a failed check (exit 1) still writes its report, which records what failed: go on, and say so
  for e in engine int8; do
    # ONNX Runtime's int8, the engine this script's bench rows (onnxruntime-int8) time, so both figures agree
    if [ $e = int8 ]; then prumux-deploy export "$p" "$p.int8" --precision int8 --data "$D" --runtime onnxruntime --force; fi
    rc=0
    prumux-deploy validate "$p.$e" --checkpoint "$p" --data "$D" --partners 8 --report "$p.$e.report.json" --force || rc=$?
    if [ $rc -eq 1 ]; then echo "note: $p.$e did not pass validation; see $p.$e.report.json" >&2
    elif [ $rc -ne 0 ]; then exit $rc; fi
  done
  reports+=("$p.engine.report.json")
done
prumux-deploy auto collect "${reports[@]}" -o "$OUT/accuracy.csv" --force
checkpoints=(); for p in "${points[@]}"; do checkpoints+=(--checkpoint "$p"); done
prumux-deploy bench "${checkpoints[@]}" --backend torch --backend onnxruntime-opt --backend onnxruntime-int8 \
  --json "$OUT/bench.json" --csv "$OUT/bench.csv" --plot "$OUT/pareto.png" --accuracy "$OUT/accuracy.csv" --force \
  | tee "$OUT/bench.txt"
prumux-deploy auto collect "${reports[@]}" --bench "$OUT/bench.json" -o "$OUT/measurements.csv" --force
prumux-deploy auto cv "$OUT/measurements.csv" | tee "$OUT/cv.txt"
prumux-deploy auto compare "$OUT/measurements.csv" --depth 10 | tee "$OUT/compare.txt"
# the paper's range is 10 points; N>1 models trained on a CPU budget can sit much further down
prumux-deploy auto compare "$OUT/measurements.csv" --step 1 --depth 40 > "$OUT/compare-full.txt"
echo "written: $OUT"
