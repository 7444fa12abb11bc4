#!/bin/bash
# The group-sparsity trade-off of issue 17 (make compaction-curve): models/default fine-tuned
# for 2 epochs on 20,000 training images at each group-sparsity weight (default 0 0.25 0.5 1 2
# 4; 0 = the control: the same fine-tune without the term), then compacted (filters open for < 1% of the 60,000 training
# images dropped). Writes, per weight G, RUNS/gG (the fine-tuned model), RUNS/gG-compact (its
# compaction, with compaction.json) and OUT/gG.{train,compact}.log. Resumable: a finished step
# is skipped.
set -euo pipefail
BIN=${BIN:-target/release/pathguard}
OUT=${OUT:-reports/compaction-curve}
RUNS=${RUNS:-runs/compaction-curve}
WEIGHTS=${WEIGHTS:-0 0.25 0.5 1 2 4}
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
# The curve: one row per weight (table in OUT/curve.md) and dense conv MACs against test
# accuracy of the compact models (OUT/curve.svg), the shipped model as the reference point.
python3 - "$OUT" $WEIGHTS <<'PY'
import json, os, sys
out, weights = sys.argv[1], sys.argv[2:]
rows = []
for g in sorted(weights, key=float):
    path = os.path.join(out, f"g{g}.compaction.json")
    if os.path.exists(path):
        rows.append((float(g), json.load(open(path))))
lines = ["| group-sparsity weight | widths after compaction | dense conv MACs (x fewer than shipped) | parameters | test accuracy full / compact | exact inputs of 2,048 |",
         "|---|---|---|---|---|---|"]
full_macs = 65366784.0
for g, c in rows:
    f, k = c["full"], c["compacted"]
    lines.append(f"| {g:g} | {'-'.join(map(str, c['widths_after']))} | {k['dense_conv_macs']:.3g} ({full_macs / k['dense_conv_macs']:.2f}x) | "
                 f"{k['parameters']:,} | {f['test_accuracy']:.4f} / {k['test_accuracy']:.4f} | {c['exact_inputs']} |")
open(os.path.join(out, "curve.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
# SVG: x = dense conv MACs (millions), y = test accuracy; the shipped model (0.9300 at 65.4 M).
W, H, L, B = 640, 400, 70, 50
points = [(k["compacted"]["dense_conv_macs"] / 1e6, k["compacted"]["test_accuracy"], f"G={g:g}") for g, k in rows]
points.append((full_macs / 1e6, 0.9300, "shipped"))
xmax = 70.0
ys = [p[1] for p in points]
ylo, yhi = min(ys) - 0.01, max(ys) + 0.01
sx = lambda x: L + x / xmax * (W - L - 20)
sy = lambda y: H - B - (y - ylo) / (yhi - ylo) * (H - B - 30)
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<text x="{W/2}" y="18" text-anchor="middle" font-size="14">Compaction after group-sparsity fine-tunes (make compaction-curve)</text>',
       f'<line x1="{L}" y1="{H-B}" x2="{W-20}" y2="{H-B}" stroke="black"/><line x1="{L}" y1="{H-B}" x2="{L}" y2="30" stroke="black"/>',
       f'<text x="{W/2}" y="{H-12}" text-anchor="middle">dense conv MACs per image (millions)</text>',
       f'<text x="16" y="{H/2}" transform="rotate(-90 16 {H/2})" text-anchor="middle">test accuracy (10,000 images)</text>']
for t in range(0, 71, 10):
    svg.append(f'<text x="{sx(t)}" y="{H-B+16}" text-anchor="middle">{t}</text>')
steps = 5
for i in range(steps + 1):
    y = ylo + (yhi - ylo) * i / steps
    svg.append(f'<text x="{L-6}" y="{sy(y)+4}" text-anchor="end">{y:.3f}</text>')
svg.append(f'<line x1="{L}" y1="{sy(0.92)}" x2="{W-20}" y2="{sy(0.92)}" stroke="#c62828" stroke-dasharray="4 4"/>')
svg.append(f'<text x="{W-24}" y="{sy(0.92)-4}" text-anchor="end" fill="#c62828">1 point under the shipped model</text>')
svg.append(f'<line x1="{sx(full_macs / 2e6)}" y1="{H-B}" x2="{sx(full_macs / 2e6)}" y2="30" stroke="#2e7d32" stroke-dasharray="4 4"/>')
svg.append(f'<text x="{sx(full_macs / 2e6)-4}" y="42" text-anchor="end" fill="#2e7d32">2x fewer than shipped</text>')
for x, y, label in points:
    colour = "#1d2330" if label == "shipped" else "#1565c0"
    svg.append(f'<circle cx="{sx(x)}" cy="{sy(y)}" r="5" fill="{colour}"/><text x="{sx(x)+8}" y="{sy(y)-8}">{label}</text>')
svg.append("</svg>")
open(os.path.join(out, "curve.svg"), "w").write("\n".join(svg) + "\n")
PY
