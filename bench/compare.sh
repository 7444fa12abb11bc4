#!/usr/bin/env bash
# pathguard side by side with the peers users would pick instead, on this machine, the same
# weights and the same images: PyTorch eager running the twin of our model
# (bench/python/pathguard_ref.py) and torchattacks on that twin. A and B runs alternate;
# figures are medians. Prints one Markdown table (about 5 minutes on 2 cores).
#
#   bench/compare.sh            (after `make build`; sets up torchattacks in bench/.peers)
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE_DIR=${CACHE_DIR:-$HOME/.cache/pathguard}
PYTHON=$CACHE_DIR/venv-torch-2.13.0/bin/python
PEERS=bench/.peers
BIN=target/release/pathguard
MODEL=models/default
[ -x "$PYTHON" ] && [ -x "$BIN" ] || { echo "run 'make build' first" >&2; exit 1; }

# torchattacks (and the scipy it imports) go into a directory of their own with --no-deps:
# installing them normally would upgrade torch in the shared virtualenv.
if [ ! -f "$PEERS/.installed" ]; then
  rm -rf "$PEERS"
  "$PYTHON" -m pip install --disable-pip-version-check --quiet --target "$PEERS" --no-deps \
    torchattacks==3.5.1 scipy==1.16.3 tqdm==4.67.1 requests==2.32.5
  touch "$PEERS/.installed"
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
compare "forward, batch 1, 256 images (peer: PyTorch eager)" 3 \
  "forward --batch 1 --images 256 --repeats 1" "forward --batch 1 --images 256 --repeats 1"
compare "forward, batch 128, 2,048 images (peer: PyTorch eager)" 3 \
  "forward --batch 128 --images 2048 --repeats 1" "forward --batch 128 --images 2048 --repeats 1"
compare "screen (forward + path + detector), batch 128 (peer: PyTorch eager plain forward)" 3 \
  "screen --batch 128 --images 2048 --repeats 1" "forward --batch 128 --images 2048 --repeats 1"
compare "FGSM eps 0.1, batch 128, 1,000 images (peer: torchattacks)" 3 \
  "fgsm --batch 128 --images 1000" "fgsm --batch 128 --images 1000"
FGSM_A=$(field success_rate_on_correct "$LAST_A"); FGSM_B=$(field success_rate_on_correct "$LAST_B")
compare "PGD-40 eps 0.1, batch 128, 1,000 images (peer: torchattacks), one run each" 1 \
  "pgd --batch 128 --images 1000" "pgd --batch 128 --images 1000"
PGD_A=$(field success_rate_on_correct "$LAST_A"); PGD_B=$(field success_rate_on_correct "$LAST_B")
echo
echo "| attack success on the correctly classified of the same 1,000 test images | pathguard | torchattacks |"
echo "|---|---|---|"
printf '| FGSM eps 0.1 | %.3f | %.3f |\n' "$FGSM_A" "$FGSM_B"
printf '| PGD-40 eps 0.1, random start | %.3f | %.3f |\n' "$PGD_A" "$PGD_B"
