#!/usr/bin/env bash
# The GPU half of docs/benchmarks.md in one call (about 6 minutes on an H200): every GPU peer against the
# engines `export --device cuda` writes, at the paper's protocol (batch 128*N, sequence 128) for the generated
# N=10 and N=2 structures at s=0.95, then the shipped example (timed, exported for the GPU and validated on
# SST-2 dev), and where ONNX Runtime puts each node of the GPU graph (CUDA graphs need every node on CUDA).
#   usage: bash examples/gpu/gpu_bench.sh OUT_DIR [SST2_DIR]      (--dry-run as the first argument: print only)
# Each step runs even when an earlier one failed; the exit status says whether all passed.
set -uo pipefail
dry=0; [ "${1:-}" = "--dry-run" ] && { dry=1; shift; }
out=${1:?usage: gpu_bench.sh [--dry-run] OUT_DIR [SST2_DIR]}; data=${2:-../shared/data/glue/SST-2}
mkdir -p "$out"; failed=0
step() {  # name, command...
  local name=$1; shift
  echo "== $name: $*"
  [ $dry = 1 ] && return 0
  local t0=$SECONDS
  "$@" > "$out/$name.log" 2>&1; local rc=$?
  tail -n 40 "$out/$name.log" | grep -v -E "UserWarning|warnings.warn|^\s*$" | tail -n 28
  echo "== $name: exit $rc in $((SECONDS - t0)) s"; [ $rc = 0 ] || failed=1
}
pd="python3 -m prumux_deploy.cli"
step peers $pd bench --device cuda --peers -n 10,2 -s 0.95 --repeats 3 --json "$out/peers.json"
step example $pd bench --device cuda --checkpoint examples/sst2-mux2 --backend torch --backend torch-fp16 \
  --backend torch-compile-fp16 --backend onnxruntime-opt --backend onnxruntime-gpu --backend onnxruntime-gpu-fp16 \
  --repeats 3 --json "$out/example.json"
step export $pd export examples/sst2-mux2 "$out/engine-gpu" --device cuda --force
step validate $pd validate "$out/engine-gpu" --checkpoint examples/sst2-mux2 --data "$data" --device cuda \
  --throughput --report "$out/validate.json" --force
step placement python3 - "$out/engine-gpu/model.onnx" <<'EOF'
import re, sys
import onnxruntime as ort
options = ort.SessionOptions(); options.log_severity_level = 0; options.log_verbosity_level = 1
ort.InferenceSession(sys.argv[1], options, providers=[("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"])
EOF
[ $dry = 1 ] || grep -E "placed on|Memcpy|assigned to" "$out/placement.log" | head -n 30 > "$out/placement.txt"
exit $failed
