#!/usr/bin/env python3
"""Bounded load against an OpenAI-compatible server (llmem serve, llama-server, ...).

N concurrent clients each send streaming chat completions, one after another, for T
seconds; then every client finishes its current request and the script reports total
generated tokens per second, time to first token (p50, p99), errors and dropped streams
(a 200 stream that ends without a finish_reason and `[DONE]`), as text or JSON. The exit
status is 1 when any request failed or any stream was dropped.

    bench/serve_load.py --url http://127.0.0.1:8080 --clients 8 --seconds 30

Standard library only. Traffic goes to --url alone; the run stops by itself.
"""

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
import urllib.parse

PROMPTS = [
    "Write a short poem about the sea.",
    "Explain what a hash table is in two sentences.",
    "List five fruits and their colors.",
    "Tell me a fact about the moon.",
]


def one_request(url, key, max_tokens, prompt, timeout):
    """One streaming request: (ttft_s, tokens, error or None)."""
    u = urllib.parse.urlparse(url)
    conn_cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(u.hostname, u.port or (443 if u.scheme == "https" else 80), timeout=timeout)
    body = json.dumps(
        {
            "model": "any",
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": 0.7,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    t0 = time.monotonic()
    ttft, chunks, usage_tokens, finished, done = None, 0, None, False, False
    try:
        conn.request("POST", u.path.rstrip("/") + "/v1/chat/completions", body, headers)
        resp = conn.getresponse()
        if resp.status != 200:
            return None, 0, f"HTTP {resp.status}"
        for raw in resp:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            ev = json.loads(data)
            if ev.get("usage"):
                usage_tokens = ev["usage"].get("completion_tokens")
            for c in ev.get("choices") or []:
                if c.get("finish_reason"):
                    finished = True
                if (c.get("delta") or {}).get("content"):
                    if ttft is None:
                        ttft = time.monotonic() - t0
                    chunks += 1
    except Exception as e:  # noqa: BLE001 - any failure is counted as an error
        return ttft, chunks, type(e).__name__
    finally:
        conn.close()
    if not (finished and done):
        return ttft, chunks, "dropped stream"
    return ttft, usage_tokens if usage_tokens is not None else chunks, None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8080")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--api-key", default="")
    ap.add_argument("--timeout", type=float, default=120, help="seconds per request")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if not (1 <= a.clients <= 1024 and 0 < a.seconds <= 3600):
        sys.exit("--clients must be 1..1024 and --seconds 0..3600")
    deadline = time.monotonic() + a.seconds
    lock = threading.Lock()
    ttfts, errors, tokens, requests = [], {}, [0], [0]

    def client(i):
        n = 0
        while time.monotonic() < deadline:
            ttft, toks, err = one_request(a.url, a.api_key, a.max_tokens, PROMPTS[(i + n) % len(PROMPTS)], a.timeout)
            n += 1
            with lock:
                requests[0] += 1
                tokens[0] += toks
                if err:
                    errors[err] = errors.get(err, 0) + 1
                elif ttft is not None:
                    ttfts.append(ttft)

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(a.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    q = sorted(ttfts)

    def pct(p):
        return q[min(len(q) - 1, int(p / 100 * len(q)))] if q else None

    report = {
        "url": a.url,
        "clients": a.clients,
        "seconds": round(wall, 2),
        "requests": requests[0],
        "errors": sum(n for k, n in errors.items() if k != "dropped stream"),
        "dropped_streams": errors.get("dropped stream", 0),
        "error_kinds": errors,
        "generated_tokens": tokens[0],
        "tok_s": round(tokens[0] / wall, 1),
        "ttft_p50_s": pct(50),
        "ttft_p99_s": pct(99),
        "ttft_mean_s": statistics.fmean(q) if q else None,
    }
    if a.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"{a.clients} clients, {wall:.1f} s: {requests[0]} requests, {tokens[0]} tokens, "
            f"{report['tok_s']} tok/s; TTFT p50 {pct(50) or 0:.3f} s p99 {pct(99) or 0:.3f} s; "
            f"{report['errors']} errors, {report['dropped_streams']} dropped streams {errors or ''}"
        )
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
