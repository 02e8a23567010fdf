#!/usr/bin/env bash
# Prefill and decode speed against llama.cpp's llama-bench on the same file, same threads,
# in the same window: rounds alternate llmem and llama-bench so a loaded machine's drift
# falls on both alike; prints each side's median and the ratios (llmem / llama.cpp).
# usage: bench/infer_vs_llama_bench.sh MODEL.gguf [MODEL.gguf …]
# llama.cpp's threads spin while they wait, so on a loaded machine its figures collapse far
# more than llmem's: compare only in a quiet window (load average well under the CPUs).
# env: LLMEM (binary, default target/release/llmem), LLAMA_BENCH (default llama-bench on
#      PATH), THREADS (2), ROUNDS (3), PP (512), TG (128).
set -euo pipefail
bin=${LLMEM:-target/release/llmem}
peer=${LLAMA_BENCH:-llama-bench}
threads=${THREADS:-2}
rounds=${ROUNDS:-3}
pp=${PP:-512}
tg=${TG:-128}
[ $# -ge 1 ] || { sed -n 2,8p "$0"; exit 2; }
command -v "$peer" >/dev/null || { echo "llama-bench not found: set LLAMA_BENCH" >&2; exit 2; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cpuinfo() { grep -m1 "^$1[[:space:]]*:" /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'; }
echo "cpu: $(cpuinfo 'model name') (family $(cpuinfo 'cpu family') model $(cpuinfo model)), $(nproc) CPUs," \
  "flags: $(grep -m1 -o -w -E 'avx512_vnni|avx512bw|avx2|fma' /proc/cpuinfo | sort -u | tr '\n' ' ')"
printf '%-44s %10s %10s %6s %10s %10s %6s\n' model "llmem pp" "peer pp" ratio "llmem tg" "peer tg" ratio
for model in "$@"; do
  : > "$dir/l"; : > "$dir/p"
  for _ in $(seq 1 "$rounds"); do
    "$bin" bench infer --model "$model" --threads "$threads" --reps 1 --pp "$pp" --tg "$tg" \
      --depth 0 --no-save --json > "$dir/l1"
    python3 -c 'import json,sys; v=json.load(open(sys.argv[1])); print(v["pp"]["median"], v["tg"]["median"])' \
      "$dir/l1" >> "$dir/l"
    "$peer" -m "$model" -t "$threads" -p "$pp" -n "$tg" -r 1 -o json > "$dir/p1" 2>/dev/null
    python3 -c '
import json, sys
rows = json.load(open(sys.argv[1]))
pp = [r["avg_ts"] for r in rows if r["n_prompt"] > 0 and r["n_gen"] == 0]
tg = [r["avg_ts"] for r in rows if r["n_gen"] > 0 and r["n_prompt"] == 0]
print(pp[0], tg[0])' "$dir/p1" >> "$dir/p"
  done
  python3 - "$dir/l" "$dir/p" "$(basename "$model")" <<'PY'
import statistics, sys
def med(path, i):
    return statistics.median(float(l.split()[i]) for l in open(path) if l.strip())
lp, lt, pp, pt = med(sys.argv[1], 0), med(sys.argv[1], 1), med(sys.argv[2], 0), med(sys.argv[2], 1)
print(f"{sys.argv[3]:<44} {lp:10.1f} {pp:10.1f} {lp / pp:5.2f}x {lt:10.1f} {pt:10.1f} {lt / pt:5.2f}x")
PY
done
