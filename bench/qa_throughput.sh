#!/usr/bin/env bash
# `llmem qa` generation throughput: pairs per minute with one chunk at a time against
# many in flight (continuous batching), and the prompt tokens the chunk prefix saved.
# usage: bench/qa_throughput.sh [CHUNKS (default 8)] [IN_FLIGHT (default 8)] [THREADS] [ROUNDS (default 1)]
# Each round runs one chunk at a time, then IN_FLIGHT at once: rounds alternate, so a
# loaded machine's drift falls on both alike.
# env: LLMEM (binary, default target/release/llmem), MODEL (default the SmolLM2 file).
set -euo pipefail
chunks=${1:-8}
wide=${2:-8}
threads=${3:-$(nproc)}
rounds=${4:-1}
bin=${LLMEM:-target/release/llmem}
model=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
text=testdata/eval/licenses.txt
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for round in $(seq 1 "$rounds"); do for n in 1 "$wide"; do
  rm -f "$dir/o$n.jsonl" "$dir/o$n.jsonl.journal"
  "$bin" qa --json --model "$model" --max-chunks "$chunks" --max-in-flight "$n" \
    --threads "$threads" --chunk-tokens 256 --out "$dir/o$n.jsonl" "$text" > "$dir/r$n.json"
  python3 - "$dir/r$n.json" "$n" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))
r, s = v["report"], v["scheduler"]
print(f"in flight {sys.argv[2]:>3}: {r['pairs_generated']} pairs in {r['elapsed_s']:.1f} s = "
      f"{60 * r['pairs_generated'] / r['elapsed_s']:.1f} pairs/min ({r['records']} kept); "
      f"prompt tokens {s['prompt_tokens']}, from chunk prefixes {s['cached_tokens']} "
      f"({100 * s['cached_tokens'] / max(1, s['prompt_tokens']):.0f}%), computed {s['computed_tokens']}, "
      f"generated {s['generated_tokens']}; {s['steps']} steps, {s['tokens_per_step']:.1f} tokens/step, "
      f"peak running {s['peak_running']}")
PY
done; done
