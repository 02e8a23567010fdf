#!/usr/bin/env python3
"""peer_depth.py MODEL THREADS FLASH_ATTN(0|1) [KV_TYPE f16|q8_0|q4_0]: llama.cpp (through llama-cpp-python) decode speed
with 4,096 tokens already in the cache, the peer figure beside `llmem bench infer`'s
tg128 @ d4096: the same fixed prompt ids, then 128 single-token steps, median of 3 after a
warm-up; the cache is cut back to 4,096 tokens before each repetition. Prints JSON."""
import json, statistics, sys, time

from llama_cpp import Llama
model, threads, fa = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
kv = sys.argv[4] if len(sys.argv) > 4 else "f16"
ggml_type = {"f16": 1, "q4_0": 2, "q8_0": 8}[kv]  # ggml's type ids
llm = Llama(model_path=model, n_ctx=4096 + 256, n_batch=512, n_ubatch=512, n_threads=threads,
            n_threads_batch=threads, flash_attn=fa, type_k=ggml_type, type_v=ggml_type,
            verbose=False)
prompt = [(i * 7919) % 40000 + 100 for i in range(4096)]
llm.reset(); llm.eval(prompt)
def tg():
    llm.n_tokens = 4096
    t = time.perf_counter()
    for _ in range(128):
        llm.eval([3575])
    return 128 / (time.perf_counter() - t)
tg()
print(json.dumps({"tg128_d4096": statistics.median(tg() for _ in range(3)), "flash_attn": fa,
                  "kv_type": kv}))
