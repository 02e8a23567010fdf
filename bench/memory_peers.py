#!/usr/bin/env python3
"""memory_peers.py LLMEM [ROUNDS]: llmem's DRAM copy and triad beside the standard tools,
in interleaved rounds on the same machine (issue 6). Each round runs, in an order that
alternates between rounds:
  - `llmem bench memory --sizes 1G --reps 9 --ops copy,triad` on huge pages (its default
    on Linux) and again with `--base-pages` (median and best of 9, all threads and one);
  - stream_ref (STREAM's method, best and average of 9 passes; built from stream_ref.c
    beside this script), once on ordinary pages and once built with -DHUGE;
  - Debian's `mbw -n 10 256` (its best method's average, converted to STREAM's counting:
    copied bytes x 2, GB = 1e9).
Prints every round, then the medians over rounds, the same-round ratios (membench's median
against STREAM's best on the same kind of pages) and each figure's run-to-run spread
(largest and smallest round against the median of rounds), as JSON lines."""
import json, os, statistics, subprocess, sys

here = os.path.dirname(os.path.abspath(__file__))
llmem, rounds = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 5
src = os.path.join(here, "stream_ref.c")
refs = {"": "/tmp/llmem-stream-ref", "huge_": "/tmp/llmem-stream-ref-huge"}
for prefix, exe in refs.items():
    flags = ["-DHUGE"] if prefix else []
    subprocess.run(["gcc", "-O3", "-march=native", "-fopenmp", *flags, src, "-o", exe],
                   check=True)


def membench(base_pages):
    def run():
        cmd = [llmem, "bench", "memory", "--sizes", "1G", "--reps", "9", "--ops",
               "copy,triad", "--json", "--no-save"] + (["--base-pages"] if base_pages else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        pages = "base" if base_pages else "huge"
        r = {}
        for m in json.loads(out)["results"]:
            t = "all" if m["threads"] > 1 else "1"
            r[f"mb_{pages}_{m['op']}_{t}_median"] = m["gb_s"]
            r[f"mb_{pages}_{m['op']}_{t}_best"] = m["gb_s_max"]
        return r
    return run


def stream(prefix):
    def run():
        out = json.loads(subprocess.run([refs[prefix]], check=True, capture_output=True,
                                        text=True).stdout)
        pages = "huge" if prefix else "base"
        return {f"stream_{pages}_{k}": v for k, v in out.items() if k.endswith("gb_s")}
    return run


def mbw():
    out = subprocess.run(["mbw", "-n", "10", "256"], check=True, capture_output=True,
                         text=True).stdout
    best = max(float(l.split("Copy:")[1].split()[0]) for l in out.splitlines()
               if l.startswith("AVG"))
    return {"mbw_best_method_gb_s": best * 2 * 1024 * 1024 / 1e9}


rows = []
for k in range(rounds):
    parts = [membench(False), stream("huge_"), mbw, membench(True), stream("")]
    if k % 2:
        parts.reverse()
    row = {}
    for p in parts:
        row.update(p())
    rows.append(row)
    print(json.dumps({"round": k + 1, **row}), flush=True)
keys = rows[0].keys()
med = {k: statistics.median(r[k] for r in rows) for k in keys}
ratios = {}
for pages in ("huge", "base"):
    for op in ("copy", "triad"):
        per_round = [r[f"mb_{pages}_{op}_all_median"] / r[f"stream_{pages}_{op}_best_gb_s"]
                     for r in rows]
        ratios[f"{op}_{pages}_vs_stream_best"] = [round(x, 3) for x in per_round]
    ratios[f"copy_{pages}_vs_mbw"] = [
        round(r[f"mb_{pages}_copy_all_median"] / r["mbw_best_method_gb_s"], 3) for r in rows]
spread = {k: [round(min(r[k] for r in rows) / med[k] - 1, 3),
              round(max(r[k] for r in rows) / med[k] - 1, 3)] for k in keys}
print(json.dumps({"medians_over_rounds": med}))
print(json.dumps({"same_round_ratios": ratios}))
print(json.dumps({"run_to_run_spread": spread}))
