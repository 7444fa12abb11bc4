#!/usr/bin/env bash
# `make soak`: a real `pathguard serve` under honest clients alone (the quiet reference), then
# for SOAK_S seconds (default 600) under honest and hostile clients together (issue 13): every
# request that once killed, stalled or fooled the server, in a loop. Writes quiet.json,
# soak.json and soak.md to reports/soak and fails if the server stopped serving, an honest
# request failed, honest p99 more than doubled, or memory grew by 20 MB or more.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/pathguard
OUT=reports/soak
SOAK_S=${SOAK_S:-600}
QUIET_S=${QUIET_S:-90}
HONEST="--concurrency 2 --batch-size 1"
mkdir -p "$OUT"
work=$(mktemp -d)
"$BIN" serve --device cpu --addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 --model models/default \
  >"$work/out" 2>"$work/err" &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 600); do
  grep -q '^pathguard listening on' "$work/out" 2>/dev/null && break
  sleep 0.1
done
addr=$(sed -n 's/^pathguard listening on //p' "$work/out")
metrics=$(sed -n 's|^pathguard metrics on http://\(.*\)/metrics|\1|p' "$work/out")
[ -n "$addr" ] && [ -n "$metrics" ] || { echo "the server did not start"; cat "$work/err"; exit 1; }
# The model loads in the background; a first request waits for it.
for _ in $(seq 600); do
  "$BIN" load-test --server "http://$addr" --concurrency 1 --requests 1 --batch-size 1 2>/dev/null | grep -q 'errors: none' && break
  sleep 0.2
done

echo "== quiet: honest clients alone, ${QUIET_S} s"
"$BIN" load-test --server "http://$addr" $HONEST --duration-s "$QUIET_S" --warmup-s 10 \
  --metrics "$metrics" --json-out "$OUT/quiet.json"
echo "== soak: honest and hostile clients, ${SOAK_S} s"
"$BIN" load-test --server "http://$addr" $HONEST --hostile-clients 2 --duration-s "$SOAK_S" --warmup-s 30 \
  --metrics "$metrics" --json-out "$OUT/soak.json" | tee "$work/soak.txt"
kill -0 "$pid" || { echo "FAIL: the server died"; exit 1; }

python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
q = json.load(open(f"{out}/quiet.json"))
s = json.load(open(f"{out}/soak.json"))
growth = s["rss_mb_end"] - s["rss_mb_after_warmup"]
checks = [
    ("server SERVING at every health check", s["health_not_serving"] == 0),
    ("no honest request failed", not s["honest_errors"]),
    (f"honest p99 {s['latency_ms_p99']:.1f} ms within 2x of quiet {q['latency_ms_p99']:.1f} ms", s["latency_ms_p99"] <= 2 * q["latency_ms_p99"]),
    (f"memory growth after warm-up {growth:.1f} MB < 20 MB", growth < 20),
    (f"slowest health check {s['health_ms_max']:.1f} ms < 100 ms", s["health_ms_max"] < 100),
]
lines = [
    "# Soak: honest and hostile clients against one server (`make soak`)",
    "",
    f"{s['honest_clients']} honest clients sending {s['batch_size']}-image Screen requests back to back; "
    f"{s['hostile_clients']} hostile clients looping the requests of issue 13; {s['seconds']:.0f} s.",
    "",
    "| | quiet | soak |",
    "|---|---|---|",
    f"| honest requests answered | {q['honest_ok']} | {s['honest_ok']} |",
    f"| honest p50 / p95 / p99 (ms) | {q['latency_ms_p50']:.1f} / {q['latency_ms_p95']:.1f} / {q['latency_ms_p99']:.1f} | {s['latency_ms_p50']:.1f} / {s['latency_ms_p95']:.1f} / {s['latency_ms_p99']:.1f} |",
    f"| honest errors | {q['honest_errors'] or 'none'} | {s['honest_errors'] or 'none'} |",
    f"| health checks (max ms) | {q['health_checks']} ({q['health_ms_max']:.1f}) | {s['health_checks']} ({s['health_ms_max']:.1f}) |",
    f"| server RSS after warm-up / max / end (MB) | {q['rss_mb_after_warmup']:.1f} / {q['rss_mb_max']:.1f} / {q['rss_mb_end']:.1f} | {s['rss_mb_after_warmup']:.1f} / {s['rss_mb_max']:.1f} / {s['rss_mb_end']:.1f} |",
    "",
    "Hostile requests by answer:",
    "",
]
lines += [f"- {kind}: " + ", ".join(f"{code} x{n}" for code, n in codes.items()) for kind, codes in s["hostile"].items()]
lines += ["", "Checks:", ""] + [f"- {'PASS' if ok else 'FAIL'}: {name}" for name, ok in checks]
open(f"{out}/soak.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
sys.exit(0 if all(ok for _, ok in checks) else 1)
PY
