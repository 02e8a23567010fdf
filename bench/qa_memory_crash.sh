#!/usr/bin/env bash
# `llmem qa` at scale, by hand (the suite runs the same checks on small corpora):
#   1. peak RSS of a --no-generate run over a 1 MB corpus and over a SIZE_MB corpus
#      (default 100; give 1024 for the issue's 1 GB), and the documents pool's peak;
#   2. crash safety: KILLS runs (default 20) each killed with kill -9 at a random moment
#      and resumed, then the same with SIGINT; the final output must equal, as a set of
#      lines, one uninterrupted run's, with no record id twice.
# usage: bench/qa_memory_crash.sh [SIZE_MB] [KILLS]
# env: LLMEM (binary, default target/release/llmem), MODEL (default the SmolLM2 file).
set -euo pipefail
size=${1:-100}
kills=${2:-20}
bin=${LLMEM:-target/release/llmem}
model=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

# A corpus of `$1` MiB of distinct sentences (seeded), paragraphs of five.
corpus() {
  awk -v bytes=$(( $1 * 1048576 )) -v seed="$2" 'BEGIN {
    srand(seed)
    n = split("license software copy source code rights holder terms permission distribute modify work notice warranty patent user program condition derivative grant party law version file binary free public general contributor agreement", w, " ")
    total = 0; c = 0
    while (total < bytes) {
      c++; s = "Clause " c ": The"
      for (i = 0; i < 12; i++) s = s " " w[int(rand() * n) + 1]
      s = s ". "; if (c % 5 == 0) s = s "\n\n"
      printf "%s", s; total += length(s)
    }
  }' > "$3"
}

# Peak RSS (KiB) of one --no-generate run; the report goes to $3.
peak() {
  /usr/bin/time -f %M "$bin" qa --json --model "$model" --no-generate --documents 2MiB \
    --out "$2" "$1" 2> "$dir/time" > "$3"
  tail -1 "$dir/time"
}

echo "== peak RSS, --no-generate"
corpus 1 1 "$dir/small.txt"
corpus "$size" 2 "$dir/large.txt"
t0=$(date +%s.%N)
small=$(peak "$dir/small.txt" "$dir/small.jsonl" "$dir/small.json")
t1=$(date +%s.%N)
large=$(peak "$dir/large.txt" "$dir/large.jsonl" "$dir/large.json")
t2=$(date +%s.%N)
for s in small large; do
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[2], 'chunks', r['report']['chunks'], 'documents peak', r['documents_peak_bytes'], 'of', r['documents_limit_bytes'], 'own peak RSS', r.get('peak_rss_bytes'))" "$dir/$s.json" "$s"
done
echo "1 MB: ${small} KiB in $(echo "$t1 - $t0" | bc) s; ${size} MB: ${large} KiB in $(echo "$t2 - $t1" | bc) s; ratio $(echo "scale=3; $large / $small" | bc)"

echo "== crash safety: $kills x kill -9, then $kills x SIGINT, each resumed"
corpus 8 3 "$dir/crash.txt"
args=(--model "$model" --no-generate --chunk-tokens 64 --overlap 8)
s0=$(date +%s%N)
"$bin" qa "${args[@]}" --out "$dir/whole.jsonl" "$dir/crash.txt" > /dev/null
took_ms=$(( ($(date +%s%N) - s0) / 1000000 ))
sort "$dir/whole.jsonl" > "$dir/whole.sorted"
for sig in KILL INT; do
  out="$dir/run-$sig.jsonl"
  stopped=0
  for i in $(seq 1 "$kills"); do
    "$bin" qa "${args[@]}" --out "$out" "$dir/crash.txt" > /dev/null 2>&1 &
    pid=$!
    sleep "$(awk -v m="$took_ms" -v s=$((i * 7919)) 'BEGIN { srand(s); printf "%.3f", (100 + rand() * m) / 1000 }')"
    if kill -s "$sig" "$pid" 2> /dev/null; then stopped=$((stopped + 1)); fi
    wait "$pid" || true
  done
  "$bin" qa "${args[@]}" --out "$out" "$dir/crash.txt" > /dev/null
  dups=$(python3 -c "import json,sys,collections; c=collections.Counter(json.loads(l)['id'] for l in open(sys.argv[1])); print(sum(1 for v in c.values() if v > 1))" "$out")
  if cmp -s <(sort "$out") "$dir/whole.sorted" && [ "$dups" = 0 ]; then
    echo "SIG$sig: $stopped of $kills runs stopped, final output equals the uninterrupted run ($(wc -l < "$out") records, no duplicates)"
  else
    echo "SIG$sig: MISMATCH after $stopped stops ($dups duplicate ids)"; exit 1
  fi
done
