#!/usr/bin/env bash
# Issue 30's proof on ResNet18 at a fixed budget (RESULTS, "The proof on ResNet18 at a fixed budget"), on a lent GPU:
# five arms x two seeds of eight epochs, about 50 s a run on an H200, so the table fits one 10-minute call. The
# lent machine has no MLflow: the runs are untracked. speed.py writes its JSON after every run, so a call cut short
# still brings back the runs it finished.
#   run: DATA_TAR_DIR=.gpu/datasets bash benchmarks/device/fixed_budget_resnet18.sh   (carry .gpu)
set -u
source benchmarks/device/env.sh
base="resnet18@epochs=8;progressive_sizes=16,16,24,24"
timeout -k 5 "${LIMIT:-540}" python3 benchmarks/speed.py --data "$DATA" --anchors '' --seeds 2 --curve-tta none \
    --tracking-uri none --out "$OUT" --recipes "$base" "$base;ema=0.99" "$base;augment_policy=trivial" \
    "$base;cutmix=1.0" "$base;random_erasing=0.25" 2>&1 | grep -v "^epoch" | tee "$OUT/log.txt"
