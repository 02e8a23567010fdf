#!/usr/bin/env bash
# `llmem qa` generation throughput: pairs per minute with one chunk at a time against
# many in flight (continuous batching), and the prompt tokens the chunk prefix saved.
# usage: bench/qa_throughput.sh [CHUNKS (default 8)] [IN_FLIGHT (default 8)] [THREADS]
# env: LLMEM (binary, default target/release/llmem), MODEL (default the SmolLM2 file).
set -euo pipefail
chunks=${1:-8}
wide=${2:-8}
threads=${3:-$(nproc)}
bin=${LLMEM:-target/release/llmem}
model=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
text=testdata/eval/licenses.txt
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for n in 1 "$wide"; do
  "$bin" qa --json --model "$model" --max-chunks "$chunks" --max-in-flight "$n" \
    --threads "$threads" --chunk-tokens 256 --out "$dir/o$n.jsonl" "$text" > "$dir/r$n.json"
  python3 - "$dir/r$n.json" "$n" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))
r, s = v["report"], v["scheduler"]
print(f"in flight {sys.argv[2]:>3}: {r['pairs_generated']} pairs in {r['elapsed_s']:.1f} s = "
      f"{60 * r['pairs_generated'] / r['elapsed_s']:.1f} pairs/min ({r['records']} kept); "
      f"prompt tokens {s['prompt_tokens']}, from chunk prefixes {s['cached_tokens']} "
      f"({100 * s['cached_tokens'] / max(1, s['prompt_tokens']):.0f}%), peak running {s['peak_running']}")
PY
done
