#!/bin/bash
# The group-sparsity trade-off of issue 17 (make compaction-curve): models/default fine-tuned
# for 2 epochs on 20,000 training images at each group-sparsity weight (0 = the control: the
# same fine-tune without the term), then compacted (filters open for < 1% of the 60,000 training
# images dropped). Writes, per weight G, RUNS/gG (the fine-tuned model), RUNS/gG-compact (its
# compaction, with compaction.json) and OUT/gG.{train,compact}.log. Resumable: a finished step
# is skipped.
set -euo pipefail
BIN=${BIN:-target/release/pathguard}
OUT=${OUT:-reports/compaction-curve}
RUNS=${RUNS:-runs/compaction-curve}
WEIGHTS=${WEIGHTS:-0.5 0}
mkdir -p "$OUT" "$RUNS"
for G in $WEIGHTS; do
  if [ ! -f "$RUNS/g$G/config.json" ]; then
    echo "fine-tuning at group-sparsity weight $G"
    $BIN train --init models/default --epochs 2 --lr 1e-3 --lambda-group "$G" --limit 20000 --test-limit 2000 \
      --device cpu --out "$RUNS/g$G" 2>&1 | tee "$OUT/g$G.train.log"
  fi
  if [ ! -f "$RUNS/g$G-compact/compaction.json" ]; then
    echo "compacting the weight-$G model"
    $BIN compact --model "$RUNS/g$G" --out "$RUNS/g$G-compact" --min-usage 0.01 --device cpu 2>&1 | tee "$OUT/g$G.compact.log"
    cp "$RUNS/g$G-compact/compaction.json" "$OUT/g$G.compaction.json"
  fi
done
