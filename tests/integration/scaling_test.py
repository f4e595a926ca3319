"""Independent scaling with real processes: instances register with a router that starts empty, a decode
instance joins and another drains (admin API) while traffic flows without a failed request, a prefill
instance drains on SIGTERM and exits cleanly, a restarted router learns its instances again, and the bucket-aware
policy packs decode batches into the captured sizes where least-load spreads them."""
import json, os, signal, socket, sys, tempfile, threading, time

sys.path.insert(0, os.path.dirname(__file__))
import harness

args = harness.arg_parser().parse_args()
logdir = tempfile.mkdtemp(prefix="scaling_test_")
check = harness.Checks()


def exe(name):
    return harness.exe(args.build, name)


def wait(cond, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if cond():
                return True
        except OSError:
            pass
        time.sleep(0.1)
    check(False, what)
    return False


rport = harness.free_port()
router_argv = [exe("pdserve-router"), "--port", str(rport), "--model", args.model, "--health-interval", "0.2"]
url = "http://127.0.0.1:%d" % rport
common = ["--model", args.model, "--kv-cache-memory", "128M", "--max-model-len", "1024", "--router-url", url,
          "--port", "0"]
procs = []


def start(kind, tag):
    p, port = harness.start([exe("pdserve-" + kind)] + common, os.path.join(logdir, tag + ".log"))
    procs.append(p)
    return p, port


def instances():
    return {i["address"]: i for i in harness.request(rport, "GET", "/admin/instances")[1]["instances"]}


router, _ = harness.start(router_argv, os.path.join(logdir, "router1.log"))
try:
    st, _, _ = harness.request(rport, "GET", "/health")
    check(st == 503, "a router with no instances is not healthy")
    d1 = start("decode", "decode1")
    p1 = start("prefill", "prefill1")
    wait(lambda: harness.request(rport, "GET", "/health")[0] == 200, 15, "registered instances make the router healthy")

    stop_traffic = threading.Event()
    results = []

    def traffic():
        i = 0
        while not stop_traffic.is_set():
            st, o, _ = harness.request(rport, "POST", "/v1/completions",
                                       {"prompt": "scale %d" % i, "max_tokens": 12, "ignore_eos": True})
            results.append(st)
            i += 1

    workers = [threading.Thread(target=traffic) for _ in range(3)]
    for w in workers:
        w.start()
    time.sleep(1)
    d2 = start("decode", "decode2")
    a2 = "127.0.0.1:%d" % d2[1]
    wait(lambda: instances().get(a2, {}).get("healthy"), 15, "a decode instance joins while traffic flows")
    time.sleep(1.5)
    gen2 = harness.request(d2[1], "GET", "/metrics")[1]
    served2 = [l for l in gen2.decode().splitlines() if l.startswith("pdserve_generation_tokens_total")]
    check(served2 and float(served2[0].split()[1]) > 0, "the new decode instance takes work: %r" % served2)
    # drain the first decode instance through the router's admin API
    a1 = "127.0.0.1:%d" % d1[1]
    st, o, _ = harness.request(rport, "POST", "/admin/instances/%s/drain" % a1, {})
    check(st == 200, "admin drain accepted: %r" % ((st, o),))
    try:
        rc = d1[0].wait(30)
    except Exception:
        rc = None
    check(rc == 0, "the drained decode instance finished its requests and exited cleanly (rc %r)" % rc)
    time.sleep(1)
    # a second prefill instance, then SIGTERM drains the first
    p2 = start("prefill", "prefill2")
    wait(lambda: instances().get("127.0.0.1:%d" % p2[1], {}).get("healthy"), 15, "a second prefill instance joins")
    p1[0].send_signal(signal.SIGTERM)
    try:
        rc = p1[0].wait(30)
    except Exception:
        rc = None
    check(rc == 0, "SIGTERM drains a prefill instance, which exits cleanly (rc %r)" % rc)
    time.sleep(1)
    stop_traffic.set()
    for w in workers:
        w.join(60)
    bad = [s for s in results if s != 200]
    check(len(results) > 20 and not bad, "no request failed while instances came and went: %d requests, failures %r"
          % (len(results), bad[:10]))
    # the router restarts: instances register again by themselves
    harness.stop(router)
    router, _ = harness.start(router_argv, os.path.join(logdir, "router2.log"))
    wait(lambda: harness.request(rport, "GET", "/health")[0] == 200, 20, "instances re-register with a restarted router")
    st, o, _ = harness.request(rport, "POST", "/v1/completions", {"prompt": "after restart", "max_tokens": 4})
    check(st == 200, "served after the router restart: %r" % ((st, o),))
finally:
    harness.stop(router)
    for p in procs:
        harness.stop(p)


# ---- the bucket-aware decode policy -----------------------------------------------------------------------------
def placement(policy, n):
    """Opens n long streams one after another through a router with the policy over two decode instances whose
    smallest captured batch size is 4; returns how many each decode instance got (its streams, then closed)."""
    tag = "bucket-" + policy
    inst = [harness.start([exe("pdserve-decode"), "--port", "0", "--model", args.model, "--kv-cache-memory", "64M",
                           "--max-model-len", "512", "--graph-batch-sizes", "4,8"], os.path.join(logdir, tag + "-d%d.log" % i))
            for i in range(2)]
    inst.append(harness.start([exe("pdserve-prefill"), "--port", "0", "--model", args.model, "--kv-cache-memory", "64M",
                               "--max-model-len", "512"], os.path.join(logdir, tag + "-p.log")))
    r, port = harness.start([exe("pdserve-router"), "--port", "0", "--model", args.model, "--health-interval", "0.2",
                             "--policy", policy, "--decode", ",".join("127.0.0.1:%d" % x[1] for x in inst[:2]),
                             "--prefill", "127.0.0.1:%d" % inst[2][1]], os.path.join(logdir, tag + "-router.log"))
    streams = []
    try:
        harness.wait_healthy(port)
        wait(lambda: all(i.get("captured_sizes") == [4, 8] for i in
                         harness.request(port, "GET", "/admin/instances")[1]["instances"] if i["role"] == "decode"),
             10, "decode instances report their captured sizes")
        for k in range(n):
            c = socket.create_connection(("127.0.0.1", port), timeout=30)
            b = json.dumps({"prompt": "pack %d" % k, "max_tokens": 400, "stream": True, "ignore_eos": True}).encode()
            c.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(b) + b)
            c.recv(64)  # the stream started: the router has placed it
            streams.append(c)
        got = {i["address"]: i["inflight"] for i in harness.request(port, "GET", "/admin/instances")[1]["instances"]
               if i["role"] == "decode"}
        return sorted(got.values(), reverse=True)
    finally:
        for c in streams:
            c.close()
        harness.stop(r)
        for p, _ in inst:
            harness.stop(p)


packed = placement("bucket", 5)
check(packed == [4, 1], "bucket policy: four streams fill one instance's captured size 4, the fifth goes to the other "
      "(got %r)" % packed)
spread = placement("least-load", 4)
check(spread == [2, 2], "least-load spreads the same streams evenly (got %r)" % spread)

check.finish()
