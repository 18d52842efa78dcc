"""One llama.cpp run in its own process: load a GGUF with xllamacpp, optionally generate
greedily, print one JSON line, and leave with os._exit.

Run by test_llama_cpp.py. A process per run because destroying an xllamacpp Server inside
the test process once hung for good (main thread in a futex wait in the Server's
destructor, after 4 earlier servers had been created and destroyed fine); a process that
exits without running destructors cannot hang there, and the test keeps a time limit.

usage: llama_worker.py GGUF default|no-mmap N_TOKENS PROMPT   (N_TOKENS 0: load only)
"default" leaves llama.cpp's load mode as it is (mmap); the JSON says whether the GGUF
ended up mapped into the process (from /proc/self/maps).
"""

import json
import os
import sys
import time

import xllamacpp as xlc


def main():
    path, mode, n, prompt = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    p = xlc.CommonParams()
    p.model.path = path
    p.n_ctx = 256
    p.n_predict = max(n, 1)
    p.n_parallel = 1
    # One thread: deterministic, and ggml's spinning thread pool is very slow when the
    # machine's cores are already busy (seen here: 3 s/token with 2 threads on 2 busy cores,
    # 0.2 s/token with 1).
    p.cpuparams.n_threads = 1
    p.cpuparams_batch.n_threads = 1
    p.warmup = False
    if mode == "no-mmap":
        p.load_mode = xlc.llama_load_mode.LLAMA_LOAD_MODE_NONE
    elif mode != "default":
        raise SystemExit(f"unknown mode {mode}")
    t0 = time.perf_counter()
    server = xlc.Server(p)
    out = {"load_s": time.perf_counter() - t0, "xllamacpp": xlc.__version__}
    real = os.path.realpath(path)
    with open("/proc/self/maps") as f:
        out["mapped"] = any(line.rstrip("\n").endswith(" " + real) for line in f)
    if n > 0:
        t1 = time.perf_counter()
        r = server.handle_completions(
            {
                "prompt": prompt,
                "max_tokens": n,
                "temperature": 0.0,
                "top_k": 1,
                "seed": 1,
                "ignore_eos": True,
                "cache_prompt": False,
                "logprobs": 1,
            }
        )
        out["generate_s"] = time.perf_counter() - t1
        if "error" in r:
            out["error"] = r
        else:
            choice = r["choices"][0]
            content = choice["logprobs"]["content"]
            out["text"] = choice["text"]
            out["ids"] = [t["id"] for t in content]
            out["logprobs"] = [t["logprob"] for t in content]
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
