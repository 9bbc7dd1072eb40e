#!/usr/bin/env bash
# The CUDA path checked and timed in one lent-GPU sitting (issue 29): every step under a shared deadline; each
# step's rc, wall and --json line go to $OUT/summary.txt as it ends, its whole log into $OUT/logs.tar.gz at the end.
#   DEVICE=cuda DATA_TAR_DIR=.gpu/datasets OUT=... bash benchmarks/device/cuda_check.sh
# Dry run on a CPU (tiny settings): DEVICE=cpu QUICK=1 OUT=/tmp/o bash benchmarks/device/cuda_check.sh
# The lent machine has PyTorch but not MLflow/FastAPI/diffusers, so runs are untracked (--tracking-uri none) and
# imagefit runs from src/ (its pyproject pins a torch the machine does not have).
set -u
DEVICE=${DEVICE:-cuda}; QUICK=${QUICK:-0}; BUDGET=${BUDGET:-540}
START=$(date +%s)
LOG=/tmp/devlogs; mkdir -p "$LOG"
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
step() {  # step NAME CAP -- command...
    local name=$1 cap=$2; shift 3
    local t; t=$(left); (( t > cap )) && t=$cap
    if (( t < 10 )); then echo "== $name: skipped, $(left) s left" | tee -a "$OUT/summary.txt"; return; fi
    local s=$(date +%s.%N)
    timeout -k 5 "$t" "$@" > "$LOG/$name.log" 2>&1; local rc=$?
    local w; w=$(python3 -c "import time; print(f'{time.time() - $s:.1f}')")
    echo "== $name: rc=$rc wall=${w}s (cap ${t}s)" | tee -a "$OUT/summary.txt"
    grep '^{' "$LOG/$name.log" | tail -1 | cut -c1-1500 >> "$OUT/summary.txt"
    grep '^== ' "$LOG/$name.log" >> "$OUT/summary.txt"
}
{ date -u; nvidia-smi -L 2>/dev/null; python3 -c "import torch, torchvision; print(torch.__version__, torchvision.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"; nproc; } > "$OUT/summary.txt" 2>&1
source benchmarks/device/env.sh
run=(python3 -m imagefit train --data "$DATA" --device "$DEVICE" --tracking-uri none --progress lines --json)
if [ "$QUICK" = 1 ]; then quickc=(--rounds 1); few=(--per-class 40); small=(--per-class 40 --epochs 1); long=(--per-class 40 --epochs 2 --progressive-sizes 16,24); else quickc=(); few=(); small=(); long=(); fi
step fast 150 -- "${run[@]}" --recipe fast --out /tmp/runs/fast "${small[@]}"
step fast-fp16 60 -- "${run[@]}" --recipe fast --amp fp16 --epochs 2 --out /tmp/runs/fp16 "${few[@]}"
step deterministic 120 -- bash benchmarks/device/deterministic_check.sh
step resnet18 240 -- "${run[@]}" --recipe resnet18 --out /tmp/runs/r18 "${long[@]}"
step resnet34 400 -- "${run[@]}" --recipe resnet34 --out /tmp/runs/r34 "${long[@]}"
step compile 150 -- python3 benchmarks/probes/compile_step.py --device "$DEVICE" --model resnet18 --batch 128 "${quickc[@]}"
for r in /tmp/runs/*/; do n=$(basename "$r"); cp "$r/metrics.json" "$LOG/$n-metrics.json"; cp "$r/curves.png" "$LOG/$n-curves.png"; done 2>/dev/null
tar czf "$OUT/logs.tar.gz" -C "$LOG" .
echo "== total $(( $(date +%s) - START )) s" | tee -a "$OUT/summary.txt"
