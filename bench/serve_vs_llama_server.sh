#!/usr/bin/env bash
# `llmem serve` against llama.cpp's `llama-server` in the same run: the same model, threads,
# slots (-np N -cb), per-request context and prompts, N streaming clients for T seconds each
# (bench/serve_load.py), then the ratios: generated tok/s, TTFT p50 and p99, errors.
# usage: bench/serve_vs_llama_server.sh MODEL [CLIENTS (32)] [SECONDS (600)] [THREADS (2)]
# env: LLMEM (binary, default target/release/llmem), LLAMA_SERVER (default: llama-server on
# PATH), CTX (context per request, default 512), MAX_TOKENS (default 64).
set -euo pipefail
model=${1:?usage: $0 MODEL [CLIENTS] [SECONDS] [THREADS]}
clients=${2:-32}
secs=${3:-600}
threads=${4:-2}
ctx=${CTX:-512}
max_tokens=${MAX_TOKENS:-64}
bin=${LLMEM:-target/release/llmem}
peer=${LLAMA_SERVER:-llama-server}
here=$(cd "$(dirname "$0")" && pwd)
dir=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT

wait_ready() { # URL
  for _ in $(seq 600); do
    curl -fs "$1/health" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "server at $1 never became ready" >&2
  return 1
}

load() { # NAME URL
  python3 "$here/serve_load.py" --url "$2" --clients "$clients" --seconds "$secs" \
    --max-tokens "$max_tokens" --json > "$dir/$1.json" || true
  python3 - "$dir/$1.json" "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]:>12}: {r['tok_s']} tok/s, TTFT p50 {r['ttft_p50_s'] or 0:.3f} s "
      f"p99 {r['ttft_p99_s'] or 0:.3f} s, {r['requests']} requests, {r['errors']} errors, "
      f"{r['dropped_streams']} dropped streams")
PY
}

port=$((20000 + RANDOM % 20000))
"$bin" serve --model "$model" --port "$port" --threads "$threads" --parallel "$clients" \
  --ctx "$ctx" --queue $((4 * clients)) > "$dir/llmem.log" 2>&1 &
pid=$!
wait_ready "http://127.0.0.1:$port"
load llmem "http://127.0.0.1:$port"
kill "$pid"; wait "$pid" 2>/dev/null || true; pid=

port=$((port + 1))
"$peer" -m "$model" --port "$port" -t "$threads" -tb "$threads" -np "$clients" -cb \
  -c $((ctx * clients)) > "$dir/peer.log" 2>&1 &
pid=$!
wait_ready "http://127.0.0.1:$port"
load llama-server "http://127.0.0.1:$port"
kill "$pid"; wait "$pid" 2>/dev/null || true; pid=

python3 - "$dir/llmem.json" "$dir/llama-server.json" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
def ratio(x, y):
    return f"{x / y:.2f}x" if x and y else "n/a"
print(f"tok/s llmem/llama-server {ratio(a['tok_s'], b['tok_s'])}; "
      f"TTFT p50 {ratio(a['ttft_p50_s'], b['ttft_p50_s'])}, p99 {ratio(a['ttft_p99_s'], b['ttft_p99_s'])} "
      f"(below 1 is faster)")
PY
