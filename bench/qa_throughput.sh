#!/usr/bin/env bash
# `llmem qa` generation throughput: pairs per minute with one chunk at a time against
# many in flight (continuous batching), and the prompt tokens the chunk prefix saved.
# Three modes: "seq" is one request at a time, no batching at all (--max-in-flight 1
# --max-sequences 1: a chunk's questions and judges one after the other); "1" is one chunk
# at a time (--max-in-flight 1), its questions (and then their judges) side by side;
# then IN_FLIGHT chunks at once.
# With perf on PATH each run also reports its CPU seconds (and instructions where the
# machine counts them): on a loaded machine wall-clock rates drift, CPU time much less.
# usage: bench/qa_throughput.sh [CHUNKS (default 8)] [IN_FLIGHT (default 32)] [THREADS] [ROUNDS (default 1)]
# Each round runs the three modes in turn: rounds alternate, so a loaded machine's drift
# falls on all alike.
# env: LLMEM (binary, default target/release/llmem), MODEL (default the SmolLM2 file),
# PROMPTS (a prompt file; default the built-in prompts), MODES (default "seq 1 IN_FLIGHT":
# which modes each round runs), PHASES=1 (time the engine's steps by phase: `qa --phases`).
set -euo pipefail
chunks=${1:-8}
wide=${2:-32}
threads=${3:-$(nproc)}
rounds=${4:-1}
bin=${LLMEM:-target/release/llmem}
model=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
text=testdata/eval/licenses.txt
pf=()
if [ -n "${PROMPTS:-}" ]; then pf=(--prompt-file "$PROMPTS"); fi
if [ -n "${PHASES:-}" ]; then pf+=(--phases); fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for round in $(seq 1 "$rounds"); do for n in ${MODES:-seq 1 $wide}; do
  rm -f "$dir/o$n.jsonl" "$dir/o$n.jsonl.journal"
  prof=()
  if command -v perf > /dev/null; then prof=(perf stat -x, -e instructions,task-clock -o "$dir/p$n"); fi
  mode=(--max-in-flight "$n")
  if [ "$n" = seq ]; then mode=(--max-in-flight 1 --max-sequences 1); fi
  "${prof[@]}" "$bin" qa --json --model "$model" --max-chunks "$chunks" "${mode[@]}" "${pf[@]}" \
    --threads "$threads" --chunk-tokens 256 --out "$dir/o$n.jsonl" "$text" > "$dir/r$n.json"
  python3 - "$dir/r$n.json" "$n" "$dir/p$n" <<'PY'
import json, os, sys
v = json.load(open(sys.argv[1]))
r, s = v["report"], v["scheduler"]
pairs, chunks = r["pairs_generated"], max(1, r["chunks_written"])
print(f"in flight {sys.argv[2]:>3}: {pairs} pairs in {r['elapsed_s']:.1f} s = "
      f"{60 * pairs / r['elapsed_s']:.1f} pairs/min ({r['records']} kept); "
      f"per chunk: prompt tokens {s['prompt_tokens'] / chunks:.0f}, from prefixes "
      f"{s['cached_tokens'] / chunks:.0f} ({100 * s['cached_tokens'] / max(1, s['prompt_tokens']):.0f}%), "
      f"computed {s['computed_tokens'] / chunks:.0f}, generated {s['generated_tokens'] / chunks:.0f}; "
      f"{s['steps']} steps, {s['tokens_per_step']:.1f} tokens/step, peak running {s['peak_running']}")
b = s.get("steps_by_tokens")
if b:
    print("               steps of at least N tokens: " + ", ".join(
        f"{c['min_tokens']}: {c['steps']} in {c['seconds']:.1f} s "
        f"(+{c.get('after_seconds', 0):.1f} s sampling)" for c in b))
    for c in b:
        ph = c.get("phases_ms")
        if ph and c["steps"]:
            print(f"               {c['min_tokens']:>3}+ ms by phase: " + ", ".join(
                f"{k} {v:.0f}" for k, v in sorted(ph.items(), key=lambda kv: -kv[1]) if v >= 1))
if os.path.exists(sys.argv[3]):
    f = {}
    for line in open(sys.argv[3]):
        p = line.strip().split(",")
        if len(p) > 2 and p[0].replace(".", "").isdigit():
            f[p[2].split(":")[0]] = float(p[0])
    cpu = f.get("task-clock", 0) / 1000
    ins = f.get("instructions", 0)
    if cpu > 0:
        per = f"; {ins / 1e9 / max(1, pairs):.1f} G instructions per pair" if ins > 0 else ""
        print(f"               {cpu:.1f} CPU s = {60 * pairs / cpu:.1f} pairs per CPU-minute{per}")
PY
done; done
