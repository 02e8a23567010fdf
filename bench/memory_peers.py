#!/usr/bin/env python3
"""memory_peers.py LLMEM [ROUNDS]: llmem's DRAM copy and triad beside the standard tools,
in interleaved rounds on the same machine (issue 6). Each round runs `llmem bench memory
--sizes 1G --reps 9` (median and best of 9, all threads and one), stream_ref (STREAM's
method, best and average of 9 passes; built from stream_ref.c beside this script) and
Debian's `mbw -n 10 256` (its best method's average, converted to STREAM's counting:
copied bytes × 2, GB = 1e9). Prints every round and the medians over rounds as JSON lines."""
import json, os, statistics, subprocess, sys

here = os.path.dirname(os.path.abspath(__file__))
llmem, rounds = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 5
ref = "/tmp/llmem-stream-ref"
subprocess.run(["gcc", "-O3", "-march=native", "-fopenmp", os.path.join(here, "stream_ref.c"),
                "-o", ref], check=True)


def membench():
    out = subprocess.run([llmem, "bench", "memory", "--sizes", "1G", "--reps", "9", "--json",
                          "--no-save"], check=True, capture_output=True, text=True).stdout
    r = {}
    for m in json.loads(out)["results"]:
        if m["op"] in ("copy", "triad"):
            t = "all" if m["threads"] > 1 else "1"
            r[f"{m['op']}_{t}_median"] = m["gb_s"]
            r[f"{m['op']}_{t}_best"] = m["gb_s_max"]
    return r


def stream():
    return json.loads(subprocess.run([ref], check=True, capture_output=True, text=True).stdout)


def mbw():
    out = subprocess.run(["mbw", "-n", "10", "256"], check=True, capture_output=True,
                         text=True).stdout
    best = max(float(l.split("Copy:")[1].split()[0]) for l in out.splitlines()
               if l.startswith("AVG"))
    return {"mbw_best_method_gb_s": best * 2 * 1024 * 1024 / 1e9}


rows = []
for k in range(rounds):
    parts = [membench, stream, mbw] if k % 2 == 0 else [mbw, stream, membench]
    row = {}
    for p in parts:
        row.update(p())
    rows.append(row)
    print(json.dumps({"round": k + 1, **row}))
keys = rows[0].keys()
med = {k: statistics.median(r[k] for r in rows if isinstance(r.get(k), (int, float)))
       for k in keys}
med["copy_vs_stream_best"] = med["copy_all_median"] / med["copy_best_gb_s"]
med["triad_vs_stream_best"] = med["triad_all_median"] / med["triad_best_gb_s"]
med["copy_vs_mbw"] = med["copy_all_median"] / med["mbw_best_method_gb_s"]
spread = lambda k: (max(r[k] for r in rows) - min(r[k] for r in rows)) / med[k]
med["copy_all_median_spread"] = spread("copy_all_median")
med["triad_all_median_spread"] = spread("triad_all_median")
print(json.dumps({"medians_over_rounds": med}))
