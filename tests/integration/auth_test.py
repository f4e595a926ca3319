"""The cluster secret (--cluster-secret-file on the router and the instances): instances register with the router
and serve through it with signed calls; unsigned, wrongly signed and stale calls to the instances' internal routes and
to the router's registration get 401, logged once; /health and /metrics stay open, but an unsigned /health of a
prefill instance carries no KV region descriptor; an instance with another secret is never registered. With
--admin-key the admin routes need it (the dashboard page stays open, signed registrations need no admin key)."""
import hashlib, hmac, json, os, sys, tempfile, time

sys.path.insert(0, os.path.dirname(__file__))
import harness

args = harness.arg_parser().parse_args()
logdir = tempfile.mkdtemp(prefix="auth_test_")
check = harness.Checks()


def secret_file(name, text):
    path = os.path.join(logdir, name)
    with open(path, "w") as f:
        f.write(text + "\n")
    os.chmod(path, 0o600)
    return path


SECRET = "a-test-cluster-secret-0123456789"
good, bad = secret_file("secret", SECRET), secret_file("other", "another-cluster-secret-abcdefgh")


def signed(secret, method, path, body, t=None):
    t = int(time.time()) if t is None else t
    raw = b"" if body is None else json.dumps(body).encode()
    msg = "pdserve-v1\n%s\n%s\n%d\n%s" % (method, path, t, hashlib.sha256(raw).hexdigest())
    sig = hmac.new(secret.encode(), msg.encode(), hashlib.sha256).hexdigest()
    return {"X-Pdserve-Auth": "t=%d;sig=%s" % (t, sig)}


def exe(name):
    return harness.exe(args.build, name)


try:
    r, rport = harness.start([exe("pdserve-router"), "--port", "0", "--model", args.model, "--health-interval", "0.2",
                              "--cluster-secret-file", good], os.path.join(logdir, "router.log"))
    url = "http://127.0.0.1:%d" % rport
    common = ["--model", args.model, "--port", "0", "--kv-cache-memory", "64M", "--router-url", url,
              "--cluster-secret-file", good]
    d, dport = harness.start([exe("pdserve-decode")] + common, os.path.join(logdir, "decode.log"))
    p, pport = harness.start([exe("pdserve-prefill")] + common, os.path.join(logdir, "prefill.log"))
    harness.wait_healthy(rport)
    st, o, _ = harness.request(rport, "POST", "/v1/completions", {"prompt": "Hello", "max_tokens": 4})
    check(st == 200 and o["choices"], "signed registration and signed PD calls serve a completion (%s)" % st)

    # the instances' internal routes take signed calls only
    req = {"id": "forged-1", "prompt": [1, 2, 3], "max_tokens": 2}
    cases = [("no signature", {}), ("another secret", signed("another-cluster-secret-abcdefgh", "POST",
                                                              "/internal/requests", req)),
             ("a stale signature", signed(SECRET, "POST", "/internal/requests", req, int(time.time()) - 120)),
             ("a signature of another body", signed(SECRET, "POST", "/internal/requests", dict(req, max_tokens=9)))]
    for what, hdr in cases:
        st, o, _ = harness.request(dport, "POST", "/internal/requests", req, headers=hdr)
        check(st == 401 and o["error"]["type"] == "authentication_error",
              "decode /internal/requests with %s: 401 (%s %r)" % (what, st, o))
    st, o, _ = harness.request(pport, "POST", "/internal/prefill", req)
    check(st == 401, "prefill /internal/prefill unsigned: 401 (%s)" % st)
    st, o, _ = harness.request(dport, "POST", "/internal/drain", {})
    check(st == 401, "decode /internal/drain unsigned: 401 (%s)" % st)
    path = "/internal/requests/no-such-request"
    st, o, _ = harness.request(dport, "DELETE", path, None, headers=signed(SECRET, "DELETE", path, None))
    check(st == 404, "decode DELETE %s correctly signed: past the check, to the route (404) (%s %r)" % (path, st, o))
    st, h, _ = harness.request(pport, "GET", "/health")
    check(st == 200 and "kv_desc" not in h, "prefill /health unsigned: open, without the KV descriptor (%s)" % st)
    st, h, _ = harness.request(pport, "GET", "/health", headers=signed(SECRET, "GET", "/health", None))
    check(st == 200 and h.get("kv_desc", "").startswith("pdkv1:"), "prefill /health signed: the KV descriptor")
    st, _, _ = harness.request(dport, "GET", "/metrics")
    check(st == 200, "/metrics stays open (%s)" % st)
    dlog = open(os.path.join(logdir, "decode.log"), errors="replace").read()
    check(dlog.count("without a valid cluster signature") == 1,
          "the decode instance logs its refusals once: %d lines" % dlog.count("without a valid cluster signature"))

    # registration: forged ones and an instance with another secret are refused
    reg = {"address": "127.0.0.1:1", "role": "decode"}
    for what, hdr in (("no signature", {}), ("another secret", signed("another-cluster-secret-abcdefgh", "POST",
                                                                      "/admin/instances", reg))):
        st, o, _ = harness.request(rport, "POST", "/admin/instances", reg, headers=hdr)
        check(st == 401, "registration with %s: 401 (%s)" % (what, st))
    o2, o2port = harness.start([exe("pdserve-decode")] + common[:-1] + [bad], os.path.join(logdir, "other.log"))
    time.sleep(1.5)
    st, insts, _ = harness.request(rport, "GET", "/admin/instances")
    addrs = [i["address"] for i in insts["instances"]]
    check("127.0.0.1:%d" % o2port not in addrs and "127.0.0.1:1" not in addrs and len(addrs) == 2,
          "only the two instances with the cluster's secret are registered: %r" % addrs)
    rlog = open(os.path.join(logdir, "router.log"), errors="replace").read()
    check(rlog.count("without a valid cluster signature") == 1 and SECRET not in rlog,
          "the router logs its refusals once and never the secret")
    harness.stop(o2)

    # --admin-key: the admin routes need it; registrations keep taking the cluster signature; the dashboard page opens
    a, aport = harness.start([exe("pdserve-router"), "--port", "0", "--model", args.model, "--admin-key", "adm-1,adm-2",
                              "--cluster-secret-file", good, "--decode", "127.0.0.1:%d" % dport],
                             os.path.join(logdir, "admin-router.log"))
    for method, path in (("GET", "/admin/instances"), ("GET", "/admin/stats"),
                         ("POST", "/admin/instances/127.0.0.1:%d/drain" % dport), ("DELETE", "/admin/instances/x:1")):
        body = {} if method == "POST" else None
        st, o, _ = harness.request(aport, method, path, body)
        check(st == 401 and o["error"]["code"] == "invalid_admin_key", "%s %s without the admin key: 401 (%s)" %
              (method, path, st))
        st, o, _ = harness.request(aport, method, path, body, headers={"Authorization": "Bearer adm-wrong"})
        check(st == 401, "%s %s with a wrong admin key: 401 (%s)" % (method, path, st))
    for key in ("adm-1", "adm-2"):
        st, o, _ = harness.request(aport, "GET", "/admin/instances", headers={"Authorization": "Bearer " + key})
        check(st == 200 and len(o["instances"]) == 1, "GET /admin/instances with admin key %s: 200 (%s)" % (key, st))
    st, o, _ = harness.request(aport, "GET", "/admin/stats", headers={"Authorization": "Bearer adm-1"})
    check(st == 200, "GET /admin/stats with the admin key: 200 (%s)" % st)
    reg = {"address": "127.0.0.1:%d" % pport, "role": "prefill"}
    st, o, _ = harness.request(aport, "POST", "/admin/instances", reg, headers=signed(SECRET, "POST",
                                                                                      "/admin/instances", reg))
    check(st == 200, "a signed registration needs no admin key (%s %r)" % (st, o))
    st, _, _ = harness.request(aport, "GET", "/dashboard")
    check(st == 200, "the dashboard page itself stays open (%s)" % st)
    alog = open(os.path.join(logdir, "admin-router.log"), errors="replace").read()
    check(alog.count("without the admin key") == 1 and "adm-1" not in alog, "admin refusals logged once, no key")
    harness.stop(a)
    import subprocess
    out = subprocess.run([exe("pdserve-router"), "--port", "0", "--model", args.model, "--api-key", "same-key",
                          "--admin-key", "same-key"], capture_output=True, text=True, timeout=30)
    check(out.returncode != 0 and "must not also be an API key" in out.stderr + out.stdout,
          "an admin key that is also an API key is refused: %r" % (out.stderr + out.stdout)[-200:])
    # a secret shorter than 16 bytes is refused at start
    short = secret_file("short", "tooshort")
    import subprocess
    out = subprocess.run([exe("pdserve-router"), "--port", "0", "--model", args.model, "--cluster-secret-file", short],
                         capture_output=True, text=True, timeout=30)
    check(out.returncode == 2 and "at least 16 bytes" in out.stderr, "a short secret: %r" % out.stderr[-200:])
finally:
    harness.stop_all()
check.finish()
