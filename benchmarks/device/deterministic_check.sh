# --deterministic on a lent GPU: two runs each of a fast net and ResNet18 with the same seed must give bitwise-equal
# weights (the fast nets' max-pool once refused to run so there). Run from the repo root, carrying .gpu:
#   bash benchmarks/device/deterministic_check.sh        (DEVICE=cpu for a dry run)
set -u; source benchmarks/device/env.sh
for m in "fast-small --epochs 1" "resnet18 --epochs 1 --per-class 500"; do
  for r in a b; do timeout 60 python3 -m imagefit train --recipe $m --data "$DATA" --device ${DEVICE:-cuda} --tracking-uri none --progress lines --json --deterministic --seed 3 --out /tmp/runs/${m%% *}-$r > /tmp/${m%% *}-$r.log 2>&1; echo "${m%% *}-$r rc=$?"; tail -1 /tmp/${m%% *}-$r.log | cut -c1-300; done
done
python3 - <<'PY'
import hashlib, os
from safetensors.torch import load_file
def digest(run):
    p = f"{run}/bundle.safetensors"
    if not os.path.exists(p): return None
    w = load_file(p); return hashlib.sha256(b"".join(w[k].float().numpy().tobytes() for k in sorted(w))).hexdigest()[:16]
for m in ("fast-small", "resnet18"):
    a, b = digest(f"/tmp/runs/{m}-a"), digest(f"/tmp/runs/{m}-b"); print(f"== deterministic {m}: {a} {b} bitwise-equal {a is not None and a == b}")
PY
