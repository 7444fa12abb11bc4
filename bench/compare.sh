#!/usr/bin/env bash
# pathguard side by side with the peers users would pick instead, on this machine, the same
# weights and the same images: PyTorch eager running the twin of our model
# (bench/python/pathguard_ref.py), torchattacks on that twin, and the Adversarial Robustness
# Toolbox's BinaryActivationDetector on it. A and B runs alternate; figures are medians.
# Prints Markdown tables (about 12 minutes on 2 cores).
#
#   bench/compare.sh            (after `make build`; sets up the peers in bench/.peers)
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE_DIR=${CACHE_DIR:-$HOME/.cache/pathguard}
PYTHON=$CACHE_DIR/venv-torch-2.13.0/bin/python
PEERS=bench/.peers
BIN=target/release/pathguard
MODEL=models/default
[ -x "$PYTHON" ] && [ -x "$BIN" ] || { echo "run 'make build' first" >&2; exit 1; }

# torchattacks, ART and what they import go into a directory of their own with --no-deps:
# installing them normally would upgrade torch in the shared virtualenv.
if [ ! -f "$PEERS/.installed-v2" ]; then
  rm -rf "$PEERS"
  "$PYTHON" -m pip install --disable-pip-version-check --quiet --target "$PEERS" --no-deps \
    torchattacks==3.5.1 scipy==1.16.3 tqdm==4.67.1 requests==2.32.5 \
    adversarial-robustness-toolbox==1.20.1 scikit-learn==1.7.2 joblib==1.5.2 \
    threadpoolctl==3.6.0 six==1.17.0 packaging==25.0
  touch "$PEERS/.installed-v2"
fi
export PYTHONPATH=$PWD/$PEERS
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

ours() { "$BIN" bench "$@" --model "$MODEL"; }
peer() { "$PYTHON" bench/python/peer_bench.py "$MODEL" "$@"; }
field() { "$PYTHON" -c "import json,sys; print(json.loads(sys.argv[1])['$1'])" "$2"; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# compare NAME RUNS "our args" "peer args": alternate A/B RUNS times, medians of images/s.
compare() {
  local name=$1 runs=$2 a_args=$3 b_args=$4 a=() b=() a_json b_json
  for _ in $(seq "$runs"); do
    a_json=$(ours $a_args); a+=("$(field images_per_second "$a_json")")
    b_json=$(peer $b_args); b+=("$(field images_per_second "$b_json")")
  done
  local am bm
  am=$(median "${a[@]}"); bm=$(median "${b[@]}")
  printf '| %s | %.1f | %.1f | %.2f |\n' "$name" "$am" "$bm" "$("$PYTHON" -c "print($am / $bm)")"
  LAST_A=$a_json; LAST_B=$b_json
}

echo "machine: $(nproc) cores, $(uname -m), torch threads OMP_NUM_THREADS=$OMP_NUM_THREADS; model $(sha256sum $MODEL/model.safetensors | cut -c1-12)"
echo
echo "| workload (images/s) | pathguard (tch) | peer | ratio pathguard / peer |"
echo "|---|---|---|---|"
# Batch 1 gets 7 runs: our speed there depends on the process's address-space layout
# (see BENCHMARKS.md), so single runs land in one of two modes.
compare "forward, batch 1, 256 images (peer: PyTorch eager), median of 7" 7 \
  "forward --execution dense --batch 1 --images 256 --repeats 1" "forward --batch 1 --images 256 --repeats 1"
compare "gated forward (only the path's filters), batch 1, 256 images (peer: PyTorch eager dense), median of 7" 7 \
  "forward --execution gated --batch 1 --images 256 --repeats 1" "forward --batch 1 --images 256 --repeats 1"
compare "forward, batch 128, 2,048 images (peer: PyTorch eager)" 3 \
  "forward --execution dense --batch 128 --images 2048 --repeats 1" "forward --batch 128 --images 2048 --repeats 1"
compare "screen (forward + path + detector), batch 128 (peer: PyTorch eager plain forward)" 3 \
  "screen --execution dense --batch 128 --images 2048 --repeats 1" "forward --batch 128 --images 2048 --repeats 1"
compare "FGSM eps 0.1, batch 128, 1,000 images (peer: torchattacks)" 3 \
  "fgsm --batch 128 --images 1000" "fgsm --batch 128 --images 1000"
FGSM_A=$(field success_rate_on_correct "$LAST_A"); FGSM_B=$(field success_rate_on_correct "$LAST_B")
# PGD-40 is slow: the 1,000 images are split into three runs per side (alternating), the
# speed is the median of the three and the success rate is pooled over all 1,000.
pgd_a=() pgd_b=() pgd_counts=(0 0 0 0)
for part in 0 1 2; do
  skip=$((part * 334)); count=$((part == 2 ? 332 : 334))
  a_json=$(ours pgd --batch 128 --images $count --skip $skip); pgd_a+=("$(field images_per_second "$a_json")")
  b_json=$(peer pgd --batch 128 --images $count --skip $skip); pgd_b+=("$(field images_per_second "$b_json")")
  pgd_counts=($((pgd_counts[0] + $(field fooled "$a_json"))) $((pgd_counts[1] + $(field correct "$a_json"))) \
    $((pgd_counts[2] + $(field fooled "$b_json"))) $((pgd_counts[3] + $(field correct "$b_json"))))
done
am=$(median "${pgd_a[@]}"); bm=$(median "${pgd_b[@]}")
printf '| %s | %.1f | %.1f | %.2f |\n' "PGD-40 eps 0.1, batch 128, 1,000 images in three runs (peer: torchattacks)" \
  "$am" "$bm" "$("$PYTHON" -c "print($am / $bm)")"
PGD_A=$("$PYTHON" -c "print(${pgd_counts[0]} / ${pgd_counts[1]})"); PGD_B=$("$PYTHON" -c "print(${pgd_counts[2]} / ${pgd_counts[3]})")
compare "one decoupled-training epoch (4 losses, AdamW), batch 128, 2,048 training images (peer: PyTorch eager)" 3 \
  "train --batch 128 --images 2048 --repeats 1" "train --batch 128 --images 2048 --repeats 1"
echo
echo "| attack success on the correctly classified of the same 1,000 test images | pathguard | torchattacks |"
echo "|---|---|---|"
printf '| FGSM eps 0.1 | %.3f | %.3f |\n' "$FGSM_A" "$FGSM_B"
printf '| PGD-40 eps 0.1, random start | %.3f | %.3f |\n' "$PGD_A" "$PGD_B"

# Detection: our detector and ART's, fitted on the same clean and attacked training images
# and scored on the same test images (ours writes every image it used; ART reads them).
DETECT=$(mktemp -d)
trap 'rm -rf "$DETECT"' EXIT
OURS=$(ours detect --train-images 800 --images 500 --out "$DETECT/images")
THEIRS=$(peer detect --dir "$DETECT/images")
echo
"$PYTHON" - "$OURS" "$THEIRS" <<'PY'
import json, sys
ours, theirs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"Detection AUROC: fitted on {ours['train_clean']} clean + {ours['train_adversarial']} fooled training images "
      f"(FGSM, PGD-40, early-stopped PGD-40, eps 0.1); ART's layer chosen on held-out training rows: "
      f"block {theirs['layer']} {theirs['layer_shape']}")
print()
print("| test attack (clean / fooled test images) | pathguard path detector | ART BinaryActivationDetector | difference |")
print("|---|---|---|---|")
for a, b in zip(ours["test"], theirs["test"]):
    print(f"| {a['attack']} ({a['clean']} / {a['adversarial']}) | {a['auroc']:.4f} | {b['auroc']:.4f} | {a['auroc'] - b['auroc']:+.4f} |")
PY
