#!/usr/bin/env python3
"""Soak: a router + prefill + decode deployment under mixed load for a configurable time, resident memory of every
process sampled over time.

The load mixes completions and chat, streamed and not, greedy and sampled (seeded), n=1 and n=2, logprobs, stop
strings, prompts from a few tokens to several hundred, and a share of clients that leave mid-stream on purpose.
Every other request must succeed (200, well-formed, the expected number of tokens unless a stop hit).

Resident memory (VmRSS) is sampled every --interval seconds into a CSV. After a warm-up (--warmup, a fraction of
the run: allocator arenas, UCX pools and metric series fill up) each process's RSS must stay within --tolerance
(5%) of its level at the end of the warm-up, the last sample included. At the end every KV block must be free.

  benchmarks/soak.py --duration 1800                  # 30 minutes on a generated tiny model (build/models/tiny)
  benchmarks/soak.py --duration 60 --model DIR --topology 1p2d --concurrency 6

Exit status 0 when both hold and no request failed; the report names what did not."""
import argparse, concurrent.futures, csv, http.client, json, os, random, socket, sys, tempfile, threading, time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
import harness  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--build", default=os.path.join(HERE, "..", "build"))
ap.add_argument("--model", default=None, help="checkpoint dir (default: build/models/tiny, generated if missing)")
ap.add_argument("--duration", type=float, default=1800, help="seconds of load (default 1800)")
ap.add_argument("--concurrency", type=int, default=4, help="clients at once (default 4)")
ap.add_argument("--interval", type=float, default=10, help="seconds between RSS samples (default 10)")
ap.add_argument("--warmup", type=float, default=0.2, help="fraction of the run before RSS is judged (default 0.2)")
ap.add_argument("--tolerance", type=float, default=0.05, help="allowed RSS drift after warm-up (default 0.05)")
ap.add_argument("--topology", default="1p1d", choices=["1p1d", "1p2d", "2p1d"])
ap.add_argument("--disconnect-share", type=float, default=0.05, help="clients that leave mid-stream (default 0.05)")
ap.add_argument("--out", default=None, help="directory for the CSV, logs and report (default: a temp dir)")
ap.add_argument("--seed", type=int, default=1)
args = ap.parse_args()

build = os.path.abspath(args.build)
out = args.out or tempfile.mkdtemp(prefix="pdserve_soak_")
os.makedirs(out, exist_ok=True)
model = args.model or os.path.join(build, "models", "tiny")
if not os.path.exists(os.path.join(model, "config.json")):
    import subprocess
    subprocess.check_call([harness.exe(build, "pdserve-model"), "generate", "--preset", "tiny", "--out", model])

WORDS = ("the of and to in is was he for it with as his on be at by had are but from or have an they which one you "
         "were all we her she there would their will when who him been has more if no out so said what up its about "
         "into than them can only other time new some could these two may first then do any like my now over such "
         "our man me even most made after also did many before must through back years where much your way well "
         "down should because each just those people how too little state good very make world still own see men "
         "work long get here between both life being under never day same another know while last might us great "
         "old year off come since against go came right used take three").split()

# ---- deployment ----------------------------------------------------------------------------------------------
n_p, n_d = {"1p1d": (1, 1), "1p2d": (1, 2), "2p1d": (2, 1)}[args.topology]
common = ["--model", model, "--kv-cache-memory", "256M", "--max-model-len", "2048", "--port", "0"]
procs = {}
for i in range(n_d):
    procs["decode%d" % i] = harness.start([harness.exe(build, "pdserve-decode")] + common,
                                          os.path.join(out, "decode%d.log" % i))
for i in range(n_p):
    procs["prefill%d" % i] = harness.start([harness.exe(build, "pdserve-prefill")] + common,
                                           os.path.join(out, "prefill%d.log" % i))
procs["router"] = harness.start(
    [harness.exe(build, "pdserve-router"), "--port", "0", "--model", model,
     "--decode", ",".join("127.0.0.1:%d" % procs["decode%d" % i][1] for i in range(n_d)),
     "--prefill", ",".join("127.0.0.1:%d" % procs["prefill%d" % i][1] for i in range(n_p))],
    os.path.join(out, "router.log"))
port = procs["router"][1]
harness.wait_healthy(port)


def rss_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# ---- load ------------------------------------------------------------------------------------------------------
stats_lock = threading.Lock()
stats = {"ok": 0, "failed": 0, "left": 0, "tokens": 0}
failures = []
stop = threading.Event()


def fail(what):
    with stats_lock:
        stats["failed"] += 1
        if len(failures) < 20:
            failures.append(what)


def one(rng):
    chat = rng.random() < 0.5
    stream = rng.random() < 0.6
    prompt = " ".join(rng.choice(WORDS) for _ in range(rng.choice([3, 20, 60, 150, 400])))
    body = {"max_tokens": rng.choice([1, 8, 32, 96]), "stream": stream}
    body["temperature"] = rng.choice([0, 0.8])
    if body["temperature"]:
        body["seed"] = rng.randrange(1 << 30)
    if rng.random() < 0.15:
        body["n"] = 2
    if rng.random() < 0.2:
        body["stop"] = [rng.choice(WORDS) + " " + rng.choice(WORDS)]
    if rng.random() < 0.5:
        body["ignore_eos"] = True
    if chat:
        body["messages"] = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": prompt}]
        if rng.random() < 0.2:
            body["logprobs"], body["top_logprobs"] = True, 2
        path = "/v1/chat/completions"
    else:
        body["prompt"] = prompt
        if rng.random() < 0.2:
            body["logprobs"] = 2
        path = "/v1/completions"
    body["model"] = os.path.basename(model.rstrip("/"))
    if stream:
        body["stream_options"] = {"include_usage": True}
    leave = stream and rng.random() < args.disconnect_share
    if leave:  # a client that goes away mid-stream: RST after the first bytes
        data = json.dumps(body).encode()
        s = socket.create_connection(("127.0.0.1", port), timeout=60)
        s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                  % (path.encode(), len(data)) + data)
        s.recv(64)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
        with stats_lock:
            stats["left"] += 1
        return
    if stream:
        st, events, done, raw = harness.sse(port, path, body, timeout=300)
        if st != 200 or not done or any("error" in e for e in events):
            return fail("%s stream: %r %r" % (path, st, raw[-300:] if isinstance(raw, bytes) else raw))
        usage = [e["usage"] for e in events if e.get("usage")]
        if len(usage) != 1:
            return fail("%s stream: %d usage chunks" % (path, len(usage)))
        finished = [c for e in events for c in e.get("choices", []) if c.get("finish_reason")]
        if len(finished) != body.get("n", 1):
            return fail("%s stream: %d of %d choices finished" % (path, len(finished), body.get("n", 1)))
        with stats_lock:
            stats["ok"] += 1
            stats["tokens"] += usage[0]["completion_tokens"]
        return
    st, o, _ = harness.request(port, "POST", path, body, timeout=300)
    if st != 200 or not isinstance(o, dict) or len(o.get("choices", [])) != body.get("n", 1):
        return fail("%s: %r %r" % (path, st, o))
    ct = o["usage"]["completion_tokens"]
    stopped = any(c["finish_reason"] == "stop" for c in o["choices"])
    if not stopped and ct != body["max_tokens"] * body.get("n", 1):
        return fail("%s: %d completion tokens, expected %d" % (path, ct, body["max_tokens"] * body.get("n", 1)))
    with stats_lock:
        stats["ok"] += 1
        stats["tokens"] += ct


def client(i):
    rng = random.Random(args.seed * 1000 + i)
    while not stop.is_set():
        try:
            one(rng)
        except Exception as e:  # a broken connection or a malformed reply is a failed request
            fail("exception: %r" % e)


# ---- run -------------------------------------------------------------------------------------------------------
names = sorted(procs)
csv_path = os.path.join(out, "rss.csv")
samples = []  # (t, {name: kb})
t0 = time.time()
with open(csv_path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["seconds", "requests_ok", "requests_failed"] + ["%s_rss_kb" % n for n in names])
    workers = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.concurrency)]
    for th in workers:
        th.start()
    next_t = t0
    while True:
        now = time.time()
        row = {n: rss_kb(procs[n][0].pid) for n in names}
        samples.append((now - t0, row))
        with stats_lock:
            ok, bad = stats["ok"], stats["failed"]
        w.writerow(["%.1f" % (now - t0), ok, bad] + [row[n] for n in names])
        f.flush()
        print("%7.0f s  ok %6d  failed %d  " % (now - t0, ok, bad) +
              "  ".join("%s %.1f MB" % (n, row[n] / 1024) for n in names), flush=True)
        if now - t0 >= args.duration:
            break
        next_t += args.interval
        time.sleep(max(0, min(next_t, t0 + args.duration) - time.time()))
    stop.set()
    for th in workers:
        th.join(330)

# ---- verdict ---------------------------------------------------------------------------------------------------
dead = [n for n in names if procs[n][0].poll() is not None]
idle_ok, loads = False, None
deadline = time.time() + 60
while time.time() < deadline and not dead:
    loads = {n: harness.request(procs[n][1], "GET", "/health")[1]["load"] for n in names if n != "router"}
    if all(l["free_blocks"] == l["total_blocks"] and l["running"] == 0 and l["waiting"] == 0 for l in loads.values()):
        idle_ok = True
        break
    time.sleep(0.5)

warm_end = args.duration * args.warmup
post = [(t, r) for t, r in samples if t >= warm_end]
lines, flat = [], True
lines.append("| process | RSS at warm-up end (MB) | min after (MB) | max after (MB) | last (MB) | max drift |")
lines.append("|---|---|---|---|---|---|")
for n in names:
    base = post[0][1][n] if post else 0
    vals = [r[n] for _, r in post]
    drift = max(abs(v - base) for v in vals) / base if base else 1.0
    flat &= drift <= args.tolerance
    lines.append("| %s | %.1f | %.1f | %.1f | %.1f | %+.1f%% |" % (n, base / 1024, min(vals) / 1024, max(vals) / 1024,
                                                                   vals[-1] / 1024, 100 * drift))
elapsed = samples[-1][0] if samples else 0
report = ["# pdserve soak (%s, %.0f s, %d clients, model %s)" % (args.topology, elapsed, args.concurrency, model), "",
          "requests ok %d, failed %d, clients that left mid-stream on purpose %d (%.1f req/s)"
          % (stats["ok"], stats["failed"], stats["left"], (stats["ok"] + stats["left"]) / max(elapsed, 1)), "",
          "RSS sampled every %.0f s (%s); judged after the first %.0f%% of the run, tolerance %.0f%%:"
          % (args.interval, csv_path, 100 * args.warmup, 100 * args.tolerance), ""] + lines + [""]
report.append("memory flat: %s" % ("yes" if flat else "NO"))
report.append("every KV block free at the end: %s%s" % ("yes" if idle_ok else "NO", "" if idle_ok else " %r" % loads))
if dead:
    report.append("processes that died: %s" % ", ".join(dead))
for fl in failures:
    report.append("failure: %s" % fl)
text = "\n".join(report)
print(text)
with open(os.path.join(out, "report.md"), "w") as f:
    f.write(text + "\n")
for n in names:
    harness.stop(procs[n][0])
sys.exit(0 if flat and idle_ok and not dead and stats["failed"] == 0 else 1)
