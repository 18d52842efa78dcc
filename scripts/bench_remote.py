#!/usr/bin/env python3
"""Client side of the `remote` benchmark (scripts/bench.sh --only remote).

Talks plain HTTP to an anonymous S3 server (s3s-fs started without keys) with the
standard library only, so the bench venv needs nothing new and no signing cost skews the
download contender.

  put DIR URL               PUT every file under DIR to URL/<relative path>
  download URL DIR LIST WL  the parallel-download contender: HEAD every path of LIST (one
                            per line, relative), then ranged GETs of PART bytes, INFLIGHT in
                            flight over all files, into DIR; then the workload WL on the copy
  read DIR LIST             read every listed file fully (8 MiB read()s), like cat
  st DIR LIST               safetensors.torch load_file + clone() of every listed file

Every timed command prints one JSON line: seconds (wall, after imports), cpu_s (this
process, user+sys, over the same span), bytes (original bytes loaded); download adds
fetch_s, the download alone. Env: DCFS_BENCH_PART (bytes, default 8 MiB),
DCFS_BENCH_INFLIGHT (default 8).
"""
import http.client
import json
import os
import queue
import sys
import threading
import time
import urllib.parse

PART = int(os.environ.get("DCFS_BENCH_PART", 8 << 20))
INFLIGHT = int(os.environ.get("DCFS_BENCH_INFLIGHT", 8))


def cpu():
    t = os.times()
    return t.user + t.system


def conn(url):
    u = urllib.parse.urlsplit(url)
    return http.client.HTTPConnection(u.hostname, u.port or 80, timeout=60), u.path.rstrip("/")


def paths(listfile):
    with open(listfile) as f:
        return [p for p in (line.rstrip("\n") for line in f) if p]


def quote(p):
    return urllib.parse.quote(p, safe="/")


def put(src, url):
    c, base = conn(url)
    n = 0
    for d, _, fs in sorted(os.walk(src)):
        for name in sorted(fs):
            p = os.path.join(d, name)
            rel = os.path.relpath(p, src)
            with open(p, "rb") as f:
                body = f.read()
            c.request("PUT", f"{base}/{quote(rel)}", body=body, headers={"Content-Length": str(len(body))})
            r = c.getresponse()
            r.read()
            if r.status != 200:
                sys.exit(f"PUT {rel}: HTTP {r.status}")
            n += len(body)
    print(json.dumps({"bytes": n}))


def worker(url, q, errs):
    c, base = conn(url)
    while True:
        job = q.get()
        if job is None:
            return
        rel, fd, off, n = job
        try:
            c.request("GET", f"{base}/{quote(rel)}", headers={"Range": f"bytes={off}-{off + n - 1}"})
            r = c.getresponse()
            body = r.read()
            if r.status != 206 or len(body) != n:
                raise OSError(f"GET {rel} {off}+{n}: HTTP {r.status}, {len(body)} bytes")
            os.pwrite(fd, body, off)
        except Exception as e:  # noqa: BLE001 - reported, then the run fails
            errs.append(str(e))
            c.close()
            c, base = conn(url)


def download(url, dst, rels):
    """Fetches rels from url into dst; returns the bytes fetched."""
    # sizes: one HEAD per file, spread over the same connections as the data
    sizes, errs = {}, []
    hq, lock = queue.Queue(), threading.Lock()
    for rel in rels:
        hq.put(rel)

    def head():
        c, base = conn(url)
        while True:
            try:
                rel = hq.get_nowait()
            except queue.Empty:
                return
            c.request("HEAD", f"{base}/{quote(rel)}")
            r = c.getresponse()
            r.read()
            with lock:
                if r.status == 200:
                    sizes[rel] = int(r.getheader("Content-Length"))
                else:
                    errs.append(f"HEAD {rel}: HTTP {r.status}")

    hs = [threading.Thread(target=head) for _ in range(min(INFLIGHT, len(rels)))]
    for t in hs:
        t.start()
    for t in hs:
        t.join()
    if errs:
        sys.exit("download failed: " + "; ".join(errs[:3]))
    q, fds = queue.Queue(maxsize=2 * INFLIGHT), []
    ws = [threading.Thread(target=worker, args=(url, q, errs)) for _ in range(INFLIGHT)]
    for t in ws:
        t.start()
    total = 0
    for rel in rels:
        p = os.path.join(dst, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        fds.append(fd)
        os.ftruncate(fd, sizes[rel])
        for off in range(0, sizes[rel], PART):
            q.put((rel, fd, off, min(PART, sizes[rel] - off)))
        total += sizes[rel]
    for _ in ws:
        q.put(None)
    for t in ws:
        t.join()
    for fd in fds:
        os.close(fd)
    if errs:
        sys.exit("download failed: " + "; ".join(errs[:3]))
    return total


def read(d, rels):
    n = 0
    for rel in rels:
        with open(os.path.join(d, rel), "rb", buffering=0) as f:
            while True:
                b = f.read(8 << 20)
                if not b:
                    break
                n += len(b)
    return n


def st(d, rels):
    from safetensors.torch import load_file

    # clone(): materialise every tensor (load_file may hand out lazily mapped storage)
    return sum(a.clone().nbytes for rel in rels for a in load_file(os.path.join(d, rel)).values())


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "put":
        return put(*args)
    if cmd in ("read", "st"):
        d, rels = args[0], paths(args[1])
        if cmd == "st":
            import safetensors.torch  # noqa: F401 - imported before the clock starts
        c0, t0 = cpu(), time.perf_counter()
        n = (read if cmd == "read" else st)(d, rels)
        print(json.dumps({"seconds": time.perf_counter() - t0, "cpu_s": cpu() - c0, "bytes": n}))
        return
    if cmd == "download":
        url, dst, rels, wl = args[0], args[1], paths(args[2]), args[3]
        if wl == "st":
            import safetensors.torch  # noqa: F401
        c0, t0 = cpu(), time.perf_counter()
        download(url, dst, rels)
        t1 = time.perf_counter()
        # the downloaded copy sits in the page cache, as on a node that has just fetched it
        n = (read if wl == "read" else st)(dst, rels)
        t2 = time.perf_counter()
        print(json.dumps({"seconds": t2 - t0, "fetch_s": t1 - t0, "cpu_s": cpu() - c0, "bytes": n}))
        return
    sys.exit(f"bench_remote.py: unknown command {cmd}")


if __name__ == "__main__":
    main()
