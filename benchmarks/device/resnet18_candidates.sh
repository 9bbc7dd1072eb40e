#!/usr/bin/env bash
# Issue 29 item 3 on a lent GPU: which change to the 30-epoch `resnet18` recipe could lift it from 91% to the 92%
# target, tried where a run takes two minutes, before one is spent on two CPU hours (the plan and its rule are in
# RESULTS, "ResNet18 towards 92%: candidates", written before any of these runs). Five arms x two seeds, as two
# waves of five runs side by side (at batch 128 one run leaves the GPU idle most of the time); each run's --json
# line goes to $OUT/candidates.txt the moment it ends, so a call cut short keeps what finished. Walls here are
# shared between the five and mean nothing: the CPU wall of each arm is predicted from its epoch sizes.
#   DATA_TAR_DIR=.gpu/datasets OUT=... bash benchmarks/device/resnet18_candidates.sh      (carry .gpu)
# Dry run on a CPU (tiny settings, a tiny data folder): DEVICE=cpu QUICK=1 DATA=/tmp/tiny OUT=/tmp/o bash ...
set -u
DEVICE=${DEVICE:-cuda}; QUICK=${QUICK:-0}; BUDGET=${BUDGET:-560}; SEEDS=${SEEDS:-"0 1"}
START=$(date +%s)
source benchmarks/device/env.sh
declare -A ARMS=(
  [control]=""
  [cutout8]="--cutout 8"
  [cutout16]="--cutout 16"
  [small24]="--progressive-sizes 24,24,24,24,24,24"
  [small24-cutout8]="--progressive-sizes 24,24,24,24,24,24 --cutout 8"
)
quick=(); [ "$QUICK" = 1 ] && quick=(--per-class 20 --epochs 2 --progressive-sizes 16)
{ date -u; nvidia-smi -L 2>/dev/null; nproc; } > "$OUT/candidates.txt" 2>&1
wave=0  # seconds the last wave took: the next starts only if as long is left
for seed in $SEEDS; do
  left=$(( BUDGET - ($(date +%s) - START) ))
  if (( left < wave + 30 )); then echo "== seed $seed: not started, ${left} s left" >> "$OUT/candidates.txt"; break; fi
  w0=$(date +%s)
  for arm in control cutout8 cutout16 small24 small24-cutout8; do
    (
      name=$arm-seed$seed; s=$(date +%s)
      # shellcheck disable=SC2086  # the arm's flags split on purpose
      timeout -k 5 "$left" python3 -m imagefit train --recipe resnet18 --data "$DATA" --device "$DEVICE" \
          --tracking-uri none --progress lines --json --threads 2 --seed "$seed" --out "/tmp/runs/$name" \
          ${ARMS[$arm]} "${quick[@]}" > "/tmp/runs-$name.log" 2>&1
      rc=$?
      echo "== $name: rc=$rc wall=$(( $(date +%s) - s ))s $(grep '^{' "/tmp/runs-$name.log" | tail -1 | cut -c1-400)" >> "$OUT/candidates.txt"
      cp "/tmp/runs-$name.log" "$OUT/$name.log" 2>/dev/null
    ) &
  done
  wait
  wave=$(( $(date +%s) - w0 ))
done
echo "== total $(( $(date +%s) - START )) s" >> "$OUT/candidates.txt"
