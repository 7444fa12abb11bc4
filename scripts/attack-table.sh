#!/usr/bin/env bash
# Success rates of the standard attacks on the shipped model: FGSM and PGD-40 on the first
# LIMIT test images (default 1,000), C&W-L2 and DeepFool (slower) on the first OPT_LIMIT
# (default 200). Prints a markdown table (README's "Attacks" section comes from this). Usage:
#   scripts/attack-table.sh [MODEL_DIR] [LIMIT] [OPT_LIMIT]
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-models/default}
limit=${2:-1000}
opt_limit=${3:-200}
bin=target/release/pathguard
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
run() { # name, limit, args...
  local name=$1 n=$2; shift 2
  "$bin" attack --model "$model" --split test --limit "$n" --out "$out/$name" "$@" >/dev/null
}
for eps in 0.05 0.1 0.2 0.3; do
  run "fgsm-$eps" "$limit" --method fgsm --eps "$eps"
  compare=(); [ "$eps" = 0.1 ] && compare=(--compare-gates)
  run "pgd-$eps" "$limit" --method pgd --eps "$eps" --steps 40 --random-start "${compare[@]}"
done
run cw "$opt_limit" --method cw --steps 50 --search-steps 3
run deepfool "$opt_limit" --method deepfool
python3 - "$out" <<'PY'
import json, os, sys
root = sys.argv[1]
print("| attack | eps | images | accuracy under attack | success (of correctly classified) | mean L-inf | mean L2 | images/s |")
print("|---|---|---|---|---|---|---|---|")
def row(name):
    m = json.load(open(os.path.join(root, name, "manifest.json")))
    s = m["stats"]; p = m["parameters"]
    eps = "-" if m["method"] in ("cw", "deepfool") else p["eps"]
    label = m["method"] + (f" ({p['steps']} steps)" if p.get("steps", 1) > 1 else "")
    extra = ""
    if m.get("other_gate_gradient"):
        mode, o = m["other_gate_gradient"]
        extra = f" (with {mode} gate gradients: {o['success_rate_on_correct']:.3f})"
    print(f"| {label} | {eps} | {s['images']} | {s['adversarial_accuracy']:.3f} | {s['success_rate_on_correct']:.3f}{extra} | {s['mean_linf']:.3f} | {s['mean_l2']:.3f} | {s['images_per_second']:.0f} |")
    return s
first = None
for eps in ("0.05", "0.1", "0.2", "0.3"):
    s = row(f"fgsm-{eps}"); first = first or s
    row(f"pgd-{eps}")
row("cw"); row("deepfool")
print(f"\nClean accuracy on the first {first['images']} test images: {first['clean_accuracy']:.3f}.")
PY
