#!/usr/bin/env bash
# Issue 26's CPU ablation (docs/results.md): is multiplexed MLM pre-training a better use of CPU time than more
# retrieval warm-up? SST-2, N=2, MiniLM; both arms start from the grid's first warm-up (train.sh's N=2 command)
# and end with the grid's fine-tune, evaluated on the full dev set:
#   (a) the grid's recipe: a second retrieval warm-up, 2 epochs of 40,000 rows (2,500 steps)
#   (b) multiplexed MLM pre-training instead (`train pretrain`, upstream's objective: 15% masking, 0.9 MLM + 0.1
#       retrieval), on unlabelled in-domain text: the SST-2 train sentences without labels and the QNLI dev
#       questions and sentences (all of QNLI there is here), shuffled once. PRETRAIN_STEPS (default 1,620) is
#       sized so that (b) costs the CPU time of (a)'s second warm-up: one MLM step here costs 1.54 warm-up
#       steps (1.14 against 0.74 CPU seconds, measured back to back over 60 steps each; its rows are longer: the
#       QNLI sentences).
# Resumable: a finished stage is skipped, an interrupted one continues with --resume. Usage (from the repository
# root): examples/sst2-grid/pretrain_ablation.sh [RUNS_DIR] (default runs/pretrain-ablation). Stage lines (start,
# done, CPU seconds) go to RUNS_DIR/progress.log, training output to RUNS_DIR/train.log. At the end it exports
# both fine-tuned models, measures their partner sensitivity (validate --partners 8: RUNS_DIR/{a,b}/partners.json)
# and prints each arm's dev accuracy and flip rate; run again on a finished RUNS_DIR, it prints them again.
# The dev accuracy is also the last line of each fine-tune's log: tail -n1 RUNS_DIR/{a,b}/finetune/train_log.jsonl
set -u
R=${1:-runs/pretrain-ablation}
D=${DATA:-../shared/data/glue/SST-2}
Q=${QNLI:-../shared/data/glue/QNLI}
STEPS=${PRETRAIN_STEPS:-1620}
NICE=${NICE:-nice -n 10}
mkdir -p "$R/a" "$R/b"
C="--data $D --max-train-samples 20000 --eval-every 400 --save-every 100 --device cpu"
stage() {  # stage OUT CMD...: run unless OUT exists; resume when OUT.run exists; log the CPU seconds it took
  local out=$1; shift
  [ -f "$out/config.json" ] && return 0
  local resume=""; [ -d "$out.run" ] && resume="--resume"
  echo "$(date +%T) start $out $resume" >> "$R/progress.log"
  local t0; t0=$(awk '{print $14 + $15 + $16 + $17}' /proc/$$/stat)  # this shell's children's CPU ticks
  $NICE "$@" $resume >> "$R/train.log" 2>&1 || { echo "$(date +%T) FAILED $out" >> "$R/progress.log"; return 1; }
  local t1; t1=$(awk '{print $14 + $15 + $16 + $17}' /proc/$$/stat)
  echo "$(date +%T) done $out (cpu $(( (t1 - t0) / $(getconf CLK_TCK) )) s)" >> "$R/progress.log"
}
corpus() {  # one text per line: SST-2 train sentences (no labels), QNLI dev questions and sentences; shuffled
  [ -s "$R/corpus.txt" ] && return 0
  python - "$D/train.tsv" "$Q/dev.tsv" "$R/corpus.txt" <<'EOF'
import csv, random, sys
texts = []
for path, columns in ((sys.argv[1], ("sentence",)), (sys.argv[2], ("question", "sentence"))):
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            texts += [row[c].strip() for c in columns if row[c].strip()]
random.Random(0).shuffle(texts)
with open(sys.argv[3] + ".tmp", "w", encoding="utf-8") as f:
    f.write("".join(t.replace("\n", " ") + "\n" for t in texts))
import os; os.replace(sys.argv[3] + ".tmp", sys.argv[3])
print(f"{len(texts)} texts", file=sys.stderr)
EOF
}
# shared: the grid's first N=2 warm-up (examples/sst2-grid/train.sh)
stage $R/warmup prumux-deploy train warmup $R/warmup --base minilm --instances 2 --epochs 1 --lr 1e-4 $C || exit 1
# (a) the grid's second warm-up, then its fine-tune
stage $R/a/warmup2 prumux-deploy train warmup $R/a/warmup2 --base $R/warmup --instances 2 --epochs 2 --lr 1e-4 \
  $C --max-train-samples 40000 || exit 1
stage $R/a/finetune prumux-deploy train finetune $R/a/finetune --init $R/a/warmup2 --instances 2 --epochs 1.5 \
  --lr 1e-4 $C || exit 1
# (b) MLM pre-training on the unlabelled corpus instead of the second warm-up, then the same fine-tune
corpus || exit 1
stage $R/b/pretrain prumux-deploy train pretrain $R/b/pretrain --init $R/warmup --instances 2 --corpus $R/corpus.txt \
  --line-by-line --steps $STEPS --batch-size 32 --lr 1e-4 --max-seq-length 64 --eval-every 100 --save-every 100 \
  --device cpu || exit 1
stage $R/b/finetune prumux-deploy train finetune $R/b/finetune --init $R/b/pretrain --instances 2 --epochs 1.5 \
  --lr 1e-4 $C || exit 1
echo "$(date +%T) ablation trained" >> "$R/progress.log"
# partner sensitivity of both fine-tuned models (docs/results.md): an fp32 engine each, every dev row in 8 random
# groupings and alone
for arm in a b; do
  [ -f "$R/$arm/engine/manifest.json" ] || $NICE prumux-deploy export $R/$arm/finetune $R/$arm/engine --force \
    >> "$R/train.log" 2>&1 || exit 1
  [ -f "$R/$arm/partners.json" ] || $NICE prumux-deploy validate $R/$arm/engine --checkpoint $R/$arm/finetune \
    --task sst2 --data $D --partners 8 --report $R/$arm/partners.json >> "$R/train.log" 2>&1 || exit 1
done
echo "$(date +%T) ablation complete" >> "$R/progress.log"
for arm in a b; do
  python - "$R/$arm" "$arm" <<'EOF'
import json, sys
log = [json.loads(l) for l in open(sys.argv[1] + "/finetune/train_log.jsonl")]
final = [r for r in log if r.get("event") == "eval"][-1]
partners = json.load(open(sys.argv[1] + "/partners.json"))["partners"]
print(f"{sys.argv[2]}: dev accuracy {final['accuracy']:.2%} after {final['step']} fine-tuning steps; "
      f"partner flip rate {partners['partner_flip_rate']:.2%}")
EOF
done
