"""One instance over several MPI ranks (mpirun --oversubscribe on loopback, shared memory between the ranks):
greedy output equals the single process's token for token with 2 and 4 ranks, colocated on the golden fixtures and
the trained demo checkpoint and in PD (2 -> 2, 1 -> 2, 2 -> 1 ranks, the KV going straight between the ranks that
hold it), MTP k=2 on; every rank takes sequences; bad
rank counts and ranks that cannot load refuse to start with one clear error; kill -9 of a rank mid-stream ends the
client's stream within 5 s and leaves no process of that instance behind."""
import json, os, random, signal, subprocess, sys, tempfile, threading, time

sys.path.insert(0, os.path.dirname(__file__))
import harness

ap = harness.arg_parser()
ap.add_argument("--fixtures", required=True)
ap.add_argument("--demo", required=True, help="the trained demo checkpoint's directory (unpacked here if absent)")
ap.add_argument("--demo-tarball", required=True)
args = ap.parse_args()
logdir = tempfile.mkdtemp(prefix="dist_test_")
check = harness.Checks()
SPEC = ["--speculative-config", '{"method":"mtp","num_speculative_tokens":2}']
# ranks talk over shared memory only; mpirun's own channel stays on loopback
MPI = ["mpirun", "--oversubscribe", "--bind-to", "none", "--mca", "pml", "ob1", "--mca", "btl", "self,vader",
       "--mca", "oob_tcp_if_include", "lo"]
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
seq = [0]


def exe(name):
    return harness.exe(args.build, name)


def ranks_argv(np, argv):
    if np == 1:
        return argv
    return MPI + ["-np", str(np)] + argv + ["--data-parallel-size", str(np), "--enable-expert-parallel"]


def start(np, kind, model, extra=()):
    seq[0] += 1
    argv = [exe("pdserve-" + kind), "--model", model, "--port", "0", "--kv-cache-memory", "64M"] + list(extra)
    return harness.start(ranks_argv(np, argv), os.path.join(logdir, "%02d-%s-np%d.log" % (seq[0], kind, np)), ENV)


def internal(port, prompts, max_tokens=16):
    """Greedy completions of token-id prompts through a colocated instance's internal API, all at once."""
    out = {}

    def one(i, p):
        st, body, _ = harness.request(port, "POST", "/internal/requests",
                                      {"id": "q%d-%d" % (seq[0], i), "mode": "local", "prompt": p,
                                       "max_tokens": max_tokens, "ignore_eos": True, "sampling": {"temperature": 0}})
        toks = []
        for line in (body.decode() if isinstance(body, bytes) else json.dumps(body)).splitlines():
            e = json.loads(line)
            if e.get("event") == "token":
                toks += e["ids"]
        out[i] = (st, toks)

    ths = [threading.Thread(target=one, args=(i, p)) for i, p in enumerate(prompts)]
    [t.start() for t in ths]
    [t.join() for t in ths]
    return [out[i] for i in range(len(prompts))]


def completions(port, prompts, max_tokens=16):
    out = {}

    def one(i, p):
        st, o, _ = harness.request(port, "POST", "/v1/completions",
                                   {"prompt": p, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
                                    "logprobs": 0})
        out[i] = (st, o["choices"][0]["logprobs"]["tokens"] if st == 200 else o)

    ths = [threading.Thread(target=one, args=(i, p)) for i, p in enumerate(prompts)]
    [t.start() for t in ths]
    [t.join() for t in ths]
    return [out[i] for i in range(len(prompts))]


def rank_health(port):
    return harness.request(port, "GET", "/health")[1].get("ranks", [])


def metric(port, name):
    for line in harness.request(port, "GET", "/metrics")[1].decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return -1


rng = random.Random(20)
prompts = [[rng.randrange(0, 120000) for _ in range(rng.choice([1, 6, 17, 40, 100]))] for _ in range(10)]


def colocated_case(model, name, nps, vocab=None, trained=False):
    """Greedy tokens of one process, then of each rank count, on the same prompts at once."""
    ps = prompts if vocab is None else [[t % vocab for t in p] for p in prompts]
    want = None
    for np in [1] + nps:
        p, port = start(np, "decode", model, ["--colocated"] + SPEC)
        got = internal(port, ps)
        ranks = rank_health(port)
        drafts, acc = metric(port, "pdserve_spec_decode_num_draft_tokens_total"), \
            metric(port, "pdserve_spec_decode_num_accepted_tokens_total")
        harness.stop(p)
        check(all(st == 200 and len(t) == 16 for st, t in got), "%s np=%d: every request served: %r" %
              (name, np, [st for st, _ in got]))
        if want is None:
            want = got
            continue
        same = sum(a[1] == b[1] for a, b in zip(got, want))
        check(same == len(ps), "%s: %d ranks give the single process's greedy tokens on %d/%d prompts" %
              (name, np, same, len(ps)))
        check(len(ranks) == np and all(r["decode_tokens"] > 0 for r in ranks),
              "%s np=%d: every rank decoded some of the sequences: %r" %
              (name, np, [(r["rank"], r["decode_tokens"], r["experts"]) for r in ranks]))
        # the generated fixtures' MTP layers are random: drafts are made and rejected; the trained one's are accepted
        check(drafts > 0 and (acc > 0 or trained is False), "%s np=%d: MTP drafted %s tokens, %s accepted" %
              (name, np, drafts, acc))


def pd_case(model, combos):
    """Router + prefill (np) + decode (np) against router + one colocated process."""
    texts = ["The quick brown fox %d jumps over" % i for i in range(6)] + prompts[:4]
    base = None
    for npp, npd in [(0, 1)] + combos:
        procs = []
        if npp == 0:
            d, dport = start(1, "decode", model, ["--colocated"] + SPEC)
            procs.append(d)
            rargs = ["--decode", "127.0.0.1:%d" % dport]
        else:
            d, dport = start(npd, "decode", model, SPEC)
            pf, pport = start(npp, "prefill", model, SPEC)
            procs += [d, pf]
            rargs = ["--prefill", "127.0.0.1:%d" % pport, "--decode", "127.0.0.1:%d" % dport]
        r, rport = harness.start([exe("pdserve-router"), "--port", "0", "--model", model, "--health-interval", "0.2"]
                                 + rargs, os.path.join(logdir, "router-%d-%d.log" % (npp, npd)))
        procs.append(r)
        harness.wait_healthy(rport)
        got = completions(rport, texts)
        spread = [] if npp == 0 else [("prefill", npp, "prefill_tokens", rank_health(pport)),
                                      ("decode", npd, "decode_tokens", rank_health(dport))]
        for p in reversed(procs):
            harness.stop(p)
        for kind, np, field, ranks in spread:  # each rank's own pool sent or received its sequences' KV
            check(np == 1 or (len(ranks) == np and all(r[field] > 0 for r in ranks)),
                  "PD %d->%d: every %s rank took sequences: %r" % (npp, npd, kind, [(r["rank"], r[field]) for r in ranks]))
        check(all(st == 200 for st, _ in got), "PD %d->%d: every request served: %r" % (npp, npd, got[:2]))
        if base is None:
            base = got
            continue
        same = sum(a[1] == b[1] for a, b in zip(got, base))
        check(same == len(texts), "PD %d -> %d ranks: greedy tokens equal the single colocated process's on %d/%d" %
              (npp, npd, same, len(texts)))


def refuses(argv_np, extra, what, expect):
    """An instance that must not start: every rank exits with an error naming the problem."""
    np, argv = argv_np
    log = os.path.join(logdir, "refuse-%s.log" % what.replace(" ", "_"))
    with open(log, "wb") as f:
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=f, env=ENV, timeout=120)
    text = open(log, errors="replace").read()
    check(p.returncode != 0 and b"READY" not in p.stdout, "%s: refused (exit %d)" % (what, p.returncode))
    check(expect in text, "%s: the error says %r:\n%s" % (what, expect, text[-800:]))
    # said once (rank 0's loader and instance lines at most), not once per rank
    check(text.count(expect) <= 2, "%s: the reason is not repeated by every rank:\n%s" % (what, text[-1500:]))


def kill_case(model, victim, sig=signal.SIGKILL, extra=()):
    """kill -9 of one rank while a stream is open: the client's stream ends within 5 s, no rank is left. SIGSTOP: the
    stopped rank blocks every other in a collective until --collective-timeout aborts the instance."""
    d, dport = start(2, "decode", model, ["--colocated"] + list(extra))
    how = "kill -9" if sig == signal.SIGKILL else "SIGSTOP of"
    r, rport = harness.start([exe("pdserve-router"), "--port", "0", "--model", model, "--health-interval", "0.2",
                              "--decode", "127.0.0.1:%d" % dport], os.path.join(logdir, "router-kill%d.log" % victim))
    harness.wait_healthy(rport)
    pids = [int(x) for x in subprocess.run(["pgrep", "-P", str(d.pid)], stdout=subprocess.PIPE).stdout.split()]
    ranks = {}
    for pid in pids:  # each rank's rank from its environment
        env = open("/proc/%d/environ" % pid, "rb").read().split(b"\0")
        for kv in env:
            if kv.startswith(b"OMPI_COMM_WORLD_RANK="):
                ranks[int(kv.split(b"=")[1])] = pid
    check(sorted(ranks) == [0, 1], "both ranks found: %r" % ranks)
    result = {}

    def stream():
        t0 = time.time()
        try:
            st, evs, done, raw = harness.sse(rport, "/v1/completions",
                                             {"prompt": "tell a long story", "max_tokens": 4000, "ignore_eos": True,
                                              "stream": True}, timeout=30)
            result["end"] = (st, done, raw[-300:])
        except Exception as e:  # a reset connection is an ending too
            result["end"] = ("exception", False, repr(e))
        result["t"] = time.time() - t0
        result["t_end"] = time.time()

    th = threading.Thread(target=stream)
    th.start()
    time.sleep(1.5)
    t_kill = time.time()
    os.kill(ranks[victim], sig)
    th.join(20)
    check(not th.is_alive() and result.get("t_end", 1e9) - t_kill < 5,
          "%s rank %d: the stream ended %.1f s later: %r" % (how, victim, result.get("t_end", 1e9) - t_kill,
                                                                 result.get("end")))
    st, done, raw = result.get("end", (None, None, b""))
    check(not done or b"error" in raw, "%s rank %d: the client sees an error, not a clean end: %r" % (how, victim, raw))
    try:
        d.wait(10)
    except subprocess.TimeoutExpired:
        pass
    def alive(pid):
        try:
            return open("/proc/%d/stat" % pid).read().split()[2] != "Z"
        except OSError:
            return False

    # mpirun may exit while the kernel is still tearing down a rank it killed: give that 5 s
    deadline = time.time() + 5
    while any(alive(pid) for pid in ranks.values()) and time.time() < deadline:
        time.sleep(0.05)
    left = [pid for pid in ranks.values() if alive(pid)]
    check(d.poll() is not None and not left, "%s rank %d: mpirun exited (%r) and no rank is left: %r" %
          (how, victim, d.poll(), left))
    harness.stop(r)


try:
    if not os.path.exists(os.path.join(args.demo, "config.json")):
        os.makedirs(os.path.dirname(args.demo), exist_ok=True)
        subprocess.run(["tar", "-xJf", args.demo_tarball, "-C", os.path.dirname(args.demo)], check=True)
    v3tiny = os.path.join(args.fixtures, "v3tiny")
    fp8 = os.path.join(args.fixtures, "v3yarn-fp8")
    vocab = json.load(open(os.path.join(v3tiny, "config.json")))["vocab_size"]
    colocated_case(v3tiny, "v3tiny", [2, 4], vocab)
    colocated_case(fp8, "v3yarn-fp8", [2], json.load(open(os.path.join(fp8, "config.json")))["vocab_size"])
    colocated_case(args.demo, "demo-v3", [2, 4], trained=True)
    pd_case(args.demo, [(2, 2), (1, 2), (2, 1)])
    # bad input: every rank exits with one clear error
    base = [exe("pdserve-decode"), "--colocated", "--model", args.model, "--port", "0"]
    refuses((3, MPI + ["-np", "3"] + base + ["--data-parallel-size", "3", "--enable-expert-parallel"]), (),
            "3 ranks for 16 experts", "cannot be split evenly over 3 expert-parallel ranks")
    refuses((2, MPI + ["-np", "2"] + base + ["--data-parallel-size", "3"]), (), "a rank count mpirun does not give",
            "--data-parallel-size 3, but this MPI job has 2 ranks")
    dp = ["--data-parallel-size", "2", "--enable-expert-parallel"]
    refuses((2, MPI + ["-np", "1"] + base + dp + [":", "-np", "1"] + base + dp + ["--max-num-seqs", "8"]), (),
            "ranks with different options", "rank 1 was started with different options")
    broken = os.path.join(logdir, "no-shards")
    os.makedirs(broken)
    subprocess.run(["cp", os.path.join(args.model, "config.json"), broken], check=True)
    other = [exe("pdserve-decode"), "--colocated", "--model", broken, "--port", "0"]
    refuses((2, MPI + ["-np", "1"] + base + dp + [":", "-np", "1"] + other + dp), (), "a rank without its shards",
            "rank 1 could not load the model")
    kill_case(args.model, 1)
    kill_case(args.model, 0)
    kill_case(args.model, 1, signal.SIGSTOP, ["--collective-timeout", "2"])
finally:
    harness.stop_all()
check.finish(logdir)
