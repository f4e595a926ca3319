#!/usr/bin/env python3
"""Decode throughput of one instance as 1 rank x T threads against N ranks x T/N threads (expert parallelism and
data-parallel attention over MPI, docs/scaling.md), in the same run, alternating, on the `bench` preset by default.
Each configuration serves the same load: --requests greedy requests of --prompt-len random token ids and
--max-tokens generated tokens, --concurrency at a time, through a colocated decode instance's internal API.
Reported per configuration (median of --reps runs): generated tokens/s, resident memory per process, and for the
ranks the expert exchange per engine step: rounds, bytes, time in the collectives and its share of the step. From
the measured bytes and rounds it estimates the exchange on a two-socket server and between two hosts.
Usage: benchmarks/dist_bench.py [--build build] [--model DIR] [--ranks 2] [--threads 2] [--requests 48]
                                [--concurrency 16] [--prompt-len 32] [--max-tokens 64] [--reps 2] [--spec K]
The model defaults to build/models/bench (generated with pdserve-model generate --preset bench when missing)."""
import argparse, http.client, json, os, random, signal, statistics, subprocess, sys, threading, time

ap = argparse.ArgumentParser()
ap.add_argument("--build", default="build")
ap.add_argument("--model", default=None)
ap.add_argument("--ranks", type=int, default=2)
ap.add_argument("--threads", type=int, default=2, help="kernel threads of the one-rank instance (split over ranks)")
ap.add_argument("--requests", type=int, default=48)
ap.add_argument("--concurrency", type=int, default=16)
ap.add_argument("--prompt-len", type=int, default=32)
ap.add_argument("--max-tokens", type=int, default=64)
ap.add_argument("--reps", type=int, default=2)
ap.add_argument("--spec", type=int, default=0, help="MTP drafts per step (0: off)")
ap.add_argument("--kv-cache-memory", default="256M")
args = ap.parse_args()
model = args.model or os.path.join(args.build, "models", "bench")
if not os.path.exists(os.path.join(model, "config.json")):
    print("dist_bench: generating the bench preset into", model, flush=True)
    subprocess.run([os.path.join(args.build, "tools", "pdserve-model"), "generate", "--preset", "bench", "--out",
                    model], check=True)
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
MPI = ["mpirun", "--bind-to", "none", "--mca", "pml", "ob1", "--mca", "btl", "self,vader", "--mca",
       "oob_tcp_if_include", "lo"]


def start(ranks, threads):
    argv = [os.path.join(args.build, "decode", "pdserve-decode"), "--colocated", "--model", model, "--port", "0",
            "--kv-cache-memory", args.kv_cache_memory, "--max-num-seqs", str(max(16, args.concurrency))]
    if args.spec:
        argv += ["--speculative-config", json.dumps({"method": "mtp", "num_speculative_tokens": args.spec})]
    env = dict(ENV, PDSERVE_THREADS=str(threads))
    if ranks > 1:
        if ranks > os.cpu_count():
            argv = ["--oversubscribe"] + argv
        argv = MPI + ["-np", str(ranks)] + argv + ["--data-parallel-size", str(ranks), "--enable-expert-parallel"]
    log = open("/tmp/dist_bench_%d.log" % ranks, "wb")
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, env=env)
    deadline = time.time() + 600
    while time.time() < deadline:
        line = p.stdout.readline()
        if line.startswith(b"READY "):
            return p, int(line.split()[1])
        if not line and p.poll() is not None:
            break
    sys.exit("dist_bench: the instance did not start; see /tmp/dist_bench_%d.log" % ranks)


def get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    c.close()
    return body


def load(port, seed):
    rng = random.Random(seed)
    prompts = [[rng.randrange(1000, 100000) for _ in range(args.prompt_len)] for _ in range(args.requests)]
    todo = list(range(len(prompts)))
    lock = threading.Lock()
    gen = [0]

    def worker():
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop()
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
            c.request("POST", "/internal/requests", json.dumps(
                {"id": "b%d-%d" % (seed, i), "mode": "local", "prompt": prompts[i], "max_tokens": args.max_tokens,
                 "ignore_eos": True, "sampling": {"temperature": 0}}))
            n = sum(len(json.loads(l).get("ids", [])) for l in c.getresponse().read().decode().splitlines())
            c.close()
            with lock:
                gen[0] += n

    t0 = time.time()
    ths = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    [t.start() for t in ths]
    [t.join() for t in ths]
    return gen[0], time.time() - t0


def rss_mb(p):
    pids = [p.pid] + [int(x) for x in subprocess.run(["pgrep", "-P", str(p.pid)], stdout=subprocess.PIPE)
                      .stdout.split()]
    out = []
    for pid in pids:
        try:
            for line in open("/proc/%d/status" % pid):
                if line.startswith("VmRSS:") and int(line.split()[1]) > 100000:
                    out.append(int(line.split()[1]) / 1024)
        except OSError:
            pass
    return out


def run(ranks, threads, rep):
    p, port = start(ranks, threads)
    try:
        load(port, 1000 + rep)  # warm-up: first-touch pages, captured plans
        h0 = json.loads(get(port, "/health")).get("ranks", [])
        n, secs = load(port, rep)
        h1 = json.loads(get(port, "/health")).get("ranks", [])
        mem = rss_mb(p)
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
    ex = None
    if h1:
        d = lambda k, r: h1[r][k] - h0[r][k]
        steps = max(1, d("steps", 0))
        ex = {"steps": steps,
              "rounds_per_step": sum(d("moe_rounds", r) for r in range(ranks)) / ranks / steps,
              "bytes_per_step": sum(d("moe_bytes", r) for r in range(ranks)) / steps,
              "wait_ms_per_step": 1e3 * statistics.mean(d("moe_wait_s", r) for r in range(ranks)) / steps,
              "serve_ms_per_step": 1e3 * statistics.mean(d("moe_serve_s", r) for r in range(ranks)) / steps,
              "step_ms": 1e3 * statistics.mean(d("step_s", r) for r in range(ranks)) / steps}
    return {"tok_s": n / secs, "tokens": n, "secs": secs, "rss_mb": mem, "exchange": ex}


configs = [(1, args.threads), (args.ranks, max(1, args.threads // args.ranks))]
results = {c: [] for c in configs}
for rep in range(args.reps):
    for c in configs:  # alternating: the machine is shared and noisy
        r = run(c[0], c[1], rep)
        results[c].append(r)
        print("rep %d: %d rank(s) x %d thread(s): %.1f tok/s (%d tokens in %.1f s), RSS %s MB" %
              (rep, c[0], c[1], r["tok_s"], r["tokens"], r["secs"], [round(x) for x in r["rss_mb"]]), flush=True)

med = {c: statistics.median(r["tok_s"] for r in results[c]) for c in configs}
one, many = configs
print("\nmodel %s, %d requests x (%d prompt + %d generated tokens), %d at a time, MTP k=%d" %
      (model, args.requests, args.prompt_len, args.max_tokens, args.concurrency, args.spec))
print("| instance | tok/s (median of %d) | resident MB per process |" % args.reps)
print("|---|---|---|")
for c in configs:
    rss = [round(x) for x in results[c][-1]["rss_mb"]]
    print("| %d rank(s) x %d thread(s) | %.1f | %s |" % (c[0], c[1], med[c], rss))
print("ratio (%d ranks / 1 rank): %.3f (goal >= 0.8)" % (many[0], med[many] / med[one]))
rss1 = results[one][-1]["rss_mb"]
rssn = results[many][-1]["rss_mb"]
if rss1 and rssn:
    print("resident memory per rank / one process: %.3f (goal <= 0.6)" % (max(rssn) / max(rss1)))
ex = results[many][-1]["exchange"]
if ex:
    print("\nexpert exchange per engine step (%d steps): %.1f rounds, %.0f KB sent between ranks, %.2f ms in the "
          "collectives (%.1f%% of a %.2f ms step), %.2f ms running received rows" %
          (ex["steps"], ex["rounds_per_step"], ex["bytes_per_step"] / 1e3, ex["wait_ms_per_step"],
           100 * ex["wait_ms_per_step"] / max(1e-9, ex["step_ms"]), ex["step_ms"], ex["serve_ms_per_step"]))
    # the same bytes and rounds elsewhere: transfer = bytes / bandwidth, plus per-round latency (3 collectives)
    for name, gbps, lat_us in (("two-socket server (inter-socket link ~60 GB/s, ~1 us per collective)", 60, 1),
                               ("two hosts, 100 Gb/s RDMA (12.5 GB/s, ~5 us per collective)", 12.5, 5)):
        t = ex["bytes_per_step"] / (gbps * 1e9) * 1e3 + ex["rounds_per_step"] * 3 * lat_us / 1e3
        print("  estimate, %s: %.2f ms per step of transfer and latency (%.1f%% of this step's %.2f ms)" %
              (name, t, 100 * t / max(1e-9, ex["step_ms"]), ex["step_ms"]))
