#!/usr/bin/env bash
# The GPU checks in one run on a CUDA machine; BENCHMARKS.md "GPU" holds what it printed.
# Most wanted first, each step under its own time limit and all of them under BUDGET seconds
# (a step that would run past it is cut short or skipped), so a slow one cannot starve the rest:
# what libtorch sees; test-set evaluation on CUDA; forward and screening throughput beside
# PyTorch eager on the same GPU and weights (bench/python/peer_bench.py); one decoupled-training
# epoch on the 60,000 training images, ours and PyTorch's; the detector-aware attack report
# (adaptive-report) on 1,000 test images for models/robust, its detector hardened on such attacks
# (fit-detector --harden-rounds), a second robust model (seed 1) and models/default; PGD-40 beside
# torchattacks; a server on CUDA under gRPC load; `train --epochs 1`; evaluation on the CPUs.
#
#   bench/gpu.sh [BIN] [OUT]     BIN: target/release/pathguard, OUT: gpu-out
#
# Writes OUT/gpu.log (everything printed), OUT/reports.tar.gz (the adaptive reports),
# OUT/robust-hardened-detector.json and OUT/robust-seed1.tar.gz (the second robust model).
# DEVICE=cpu and SCALE=small run the same steps on a few images, to try the script here.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/pathguard}
OUT=${2:-gpu-out}
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
BUDGET=${BUDGET:-540}
WORK=$(mktemp -d)
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu.log") 2>&1

if [ "${SCALE:-full}" = small ]; then
  EVAL=500 FORWARD=512 TRAIN=512 PGD=64 ADAPTIVE=8 LOAD_S=3 ROBUST_EPOCHS=1 FIT=64
else
  EVAL=10000 FORWARD=10000 TRAIN=60000 PGD=1000 ADAPTIVE=1000 LOAD_S=15 ROBUST_EPOCHS=8 FIT=1000
fi

# run SECONDS COMMAND...: prints the command, its output, exit status and wall time; the
# limit shrinks to what is left of BUDGET, and the step is skipped when under 10 s are left.
run() {
  local limit=$1 left=$((BUDGET - SECONDS)) start=$EPOCHREALTIME rc
  shift
  if [ $left -lt 10 ]; then echo "skipped (budget spent): $*"; echo; return; fi
  [ $limit -gt $left ] && limit=$left
  echo "\$ $*"
  timeout "$limit" "$@"
  rc=$?
  awk -v a="$start" -v b="$EPOCHREALTIME" -v rc=$rc 'BEGIN { printf "(exit %d, %.1f s)\n\n", rc, b - a }'
}
ours() { run "$1" "$BIN" bench "${@:2}" --device "$DEVICE"; }
peer() { run "$1" "$PYTHON" bench/python/peer_bench.py models/default "${@:2}" --device "$DEVICE"; }
# adaptive MODEL NAME SECONDS: the report of make robust-report / make adaptive-report (100
# steps, L-inf 0.05/0.1/0.2) on ADAPTIVE test images, added to OUT/reports.tar.gz at once.
adaptive() {
  run "$3" "$BIN" adaptive-report --model "$1" --device "$DEVICE" --limit $ADAPTIVE --batch-size 1000 \
    --steps 100 --restarts 1 --targets 1 --eps 0.05,0.1,0.2 --l2-eps 0 --out "$WORK/$2"
  [ -d "$WORK/$2" ] && tar -czf "$OUT/reports.tar.gz" -C "$WORK" $(cd "$WORK" && ls -d adaptive-*)
}

echo "## machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
echo "cpus: $(nproc); python torch: $("$PYTHON" -c 'import torch; print(torch.__version__)' 2>&1)"
run 30 "$BIN" info --model models/default

echo "## evaluation ($EVAL test images)"
run 40 "$BIN" eval --model models/default --device "$DEVICE" --limit $EVAL --json
run 40 "$BIN" eval --model models/robust --device "$DEVICE" --limit $EVAL --json

echo "## forward and screening throughput, pathguard (tch) then PyTorch eager on the twin"
for batch in 1 128 1024; do
  images=$FORWARD
  [ $batch = 1 ] && images=$((FORWARD / 10))
  ours 30 forward --execution dense --batch $batch --images $images --repeats 3
  peer 30 forward --batch $batch --images $images --repeats 3
done
ours 30 screen --execution dense --batch 128 --images $FORWARD --repeats 3
ours 30 screen --execution dense --batch 1024 --images $FORWARD --repeats 3

echo "## one training epoch ($TRAIN training images, batch 128), pathguard then PyTorch eager"
ours 60 train --images $TRAIN --repeats 1
peer 60 train --images $TRAIN --repeats 1

echo "## detector-aware attacks on $ADAPTIVE test images"
adaptive models/robust adaptive-robust 150

echo "## models/robust's detector hardened on detector-aware attacks (2 rounds at eps 0.1), then the same attacks"
mkdir -p "$WORK/robust-hardened"
cp models/robust/model.safetensors models/robust/config.json "$WORK/robust-hardened/"
run 200 "$BIN" fit-detector --model "$WORK/robust-hardened" --device "$DEVICE" --limit $FIT --eps 0.05,0.1,0.2 \
  --methods fgsm,pgd,pgd-early-stop --seed 0 --harden-rounds 2 --harden-eps 0.1 --harden-steps 100 --batch-size 1000
if [ -f "$WORK/robust-hardened/detector.json" ]; then
  cp "$WORK/robust-hardened/detector.json" "$OUT/robust-hardened-detector.json"
  adaptive "$WORK/robust-hardened" adaptive-robust-hardened 150
fi

echo "## a second robust model, seed 1 (ROBUST_ARGS and ROBUST_DETECTOR_ARGS of the Makefile), under the same attacks"
run 200 "$BIN" train --device "$DEVICE" --out "$WORK/robust-seed1" --limit $TRAIN --init models/default --epochs $ROBUST_EPOCHS \
  --hard-gate-epochs 1 --lr 1e-3 --adversarial n-fgsm --adv-eps 0.1 --adv-eps-warmup-epochs 2 --adv-eval-images 500 --seed 1
run 120 "$BIN" fit-detector --model "$WORK/robust-seed1" --device "$DEVICE" --limit $FIT --eps 0.05,0.1,0.2 \
  --methods fgsm,pgd,pgd-early-stop --seed 1
[ -f "$WORK/robust-seed1/detector.json" ] && adaptive "$WORK/robust-seed1" adaptive-robust-seed1 150
tar -czf "$OUT/robust-seed1.tar.gz" -C "$WORK" --exclude '*checkpoint*' robust-seed1 2>/dev/null

adaptive models/default adaptive-default 120

echo "## PGD-40, eps 0.1, batch 128 ($PGD test images), pathguard then torchattacks"
ours 40 pgd --batch 128 --images $PGD
peer 40 pgd --batch 128 --images $PGD

echo "## a server on $DEVICE under gRPC load ($LOAD_S s per setting)"
"$BIN" serve --model models/default --device "$DEVICE" --addr 127.0.0.1:50551 --metrics-addr off --http-addr off &
server=$!
for _ in $(seq 30); do
  "$BIN" load-test --server http://127.0.0.1:50551 --requests 1 --concurrency 1 --batch-size 1 >/dev/null 2>&1 && break
  sleep 1
done
run $((LOAD_S + 20)) "$BIN" load-test --server http://127.0.0.1:50551 --concurrency 1 --batch-size 1 --duration-s $LOAD_S --warmup-s 2
run $((LOAD_S + 20)) "$BIN" load-test --server http://127.0.0.1:50551 --concurrency 16 --batch-size 64 --duration-s $LOAD_S --warmup-s 2
kill $server; wait $server 2>/dev/null

echo "## the train command, one epoch; evaluation on the machine's CPUs for scale"
run 90 "$BIN" train --device "$DEVICE" --epochs 1 --limit $TRAIN --out "$WORK/train"
run 60 "$BIN" eval --model models/default --device cpu --limit $EVAL --json
ours 40 execution --batches 1,128 --images $((FORWARD / 10)) --repeats 1
echo "done in $SECONDS s"
