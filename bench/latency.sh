#!/usr/bin/env bash
# Single-image latency over gRPC: one client, one image per request, --max-delay-ms 0, the
# server and the client on this machine. Per configuration (execution, intra-op threads): the
# client's p50/p95/p99 and the server's stage histograms (from /metrics, warm-up excluded).
# Prints a Markdown table (about 2 minutes).
#
#   bench/latency.sh            (after `make build`)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/pathguard
[ -x "$BIN" ] || { echo "run 'make build' first" >&2; exit 1; }
ADDR=127.0.0.1:50091
METRICS=127.0.0.1:9191
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

echo "| execution | intra-op threads | client p50 ms | p95 ms | p99 ms | images/s | decode | queue | model p50 / p99 | detector p50 / p99 | encode |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for config in "dense default" "gated default" "dense 1" "gated 1"; do
  set -- $config
  threads=()
  [ "$2" = default ] || threads=(--intra-op-threads "$2")
  "$BIN" serve --device cpu --execution "$1" "${threads[@]}" --max-delay-ms 0 --addr $ADDR \
    --metrics-addr $METRICS --http-addr off >"$OUT/serve.log" 2>&1 &
  server=$!
  for _ in $(seq 100); do grep -q "serving" "$OUT/serve.log" && break; sleep 0.2; done
  "$BIN" load-test --server "http://$ADDR" --concurrency 1 --batch-size 1 --duration-s 30 --warmup-s 5 \
    --metrics $METRICS --json-out "$OUT/run.json" >/dev/null
  kill -INT $server; wait $server || true
  python3 - "$OUT/run.json" "$1" "$2" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s = r["stages"]
f = lambda k, q: s[k][q]
print(f"| {sys.argv[2]} | {sys.argv[3]} | {r['latency_ms_p50']:.1f} | {r['latency_ms_p95']:.1f} | {r['latency_ms_p99']:.1f} | "
      f"{r['images_per_second']:.0f} | {f('decode','p50_ms'):.2f} | {f('queue','p50_ms'):.2f} | "
      f"{f('model','p50_ms'):.2f} / {f('model','p99_ms'):.2f} | {f('detector','p50_ms'):.2f} / {f('detector','p99_ms'):.2f} | "
      f"{f('encode','p50_ms'):.2f} |")
PY
done
