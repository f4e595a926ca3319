"""The router's GET /dashboard in headless Chromium (driven through chromedriver's WebDriver HTTP API, no other
dependencies): against a live PD deployment under load, the page renders the instance table and the figures from
/admin/stats, draws its charts, fetches nothing from outside the router, and logs no console errors. The
screenshot goes to the build directory. Chromium and chromedriver are required: without them this test fails
(install: apt-get install chromium chromium-driver, or PD_TEST_TOOLS=1 scripts/setup.sh)."""
import base64, http.client, json, os, shutil, subprocess, sys, tempfile, threading, time

sys.path.insert(0, os.path.dirname(__file__))
import harness

ap = harness.arg_parser()
ap.add_argument("--screenshot", required=True)
args = ap.parse_args()
check = harness.Checks()


chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
driver = shutil.which("chromedriver")
if not chromium or not driver:
    print("FAIL: headless Chromium and chromedriver are required for the dashboard test and were not found "
          "(chromium: %s, chromedriver: %s). Install them: apt-get install chromium chromium-driver "
          "(or PD_TEST_TOOLS=1 scripts/setup.sh)." % (chromium, driver), flush=True)
    sys.exit(1)


def wd(port, method, path, body=None, timeout=60):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request(method, path, json.dumps(body) if body is not None else None, {"Content-Type": "application/json"})
    r = c.getresponse()
    data = json.loads(r.read() or b"{}")
    c.close()
    if r.status != 200:
        raise RuntimeError("webdriver %s %s: %s %s" % (method, path, r.status, json.dumps(data)[:500]))
    return data.get("value")


logdir = tempfile.mkdtemp(prefix="dashboard_test_")
udd = tempfile.mkdtemp(prefix="chromium_profile_")
dport = harness.free_port()
drv = subprocess.Popen([driver, "--port=%d" % dport, "--allowed-ips=127.0.0.1"], stdout=subprocess.DEVNULL,
                       stderr=open(os.path.join(logdir, "chromedriver.log"), "wb"))
harness._procs.append(drv)
dep = harness.Deployment(args.build, args.model, "pd", logdir)
stop = threading.Event()


def load():  # a steady trickle of streamed requests while the page watches
    i = 0
    while not stop.is_set():
        harness.sse(dep.port, "/v1/completions", {"model": "tiny", "prompt": "Dashboard load %d " % i + "word " * 30,
                                                  "max_tokens": 12, "ignore_eos": True, "stream": True})
        i += 1


sid = None
try:
    for _ in range(100):
        try:
            if wd(dport, "GET", "/status", timeout=2).get("ready"):
                break
        except (OSError, RuntimeError):
            pass
        time.sleep(0.1)
    caps = {"capabilities": {"alwaysMatch": {
        "browserName": "chrome",
        "goog:loggingPrefs": {"browser": "ALL", "performance": "ALL"},
        "goog:chromeOptions": {"binary": chromium, "args": [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
            "--user-data-dir=" + udd, "--window-size=1400,1400"]}}}}
    sid = wd(dport, "POST", "/session", caps)["sessionId"]
    threads = [threading.Thread(target=load, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    base = "http://127.0.0.1:%d" % dep.port
    wd(dport, "POST", "/session/%s/url" % sid, {"url": base + "/dashboard"})
    js = lambda script: wd(dport, "POST", "/session/%s/execute/sync" % sid, {"script": script, "args": []})
    deadline = time.time() + 60
    while time.time() < deadline and int(js("return document.body.dataset.polls || 0") or 0) < 6:
        time.sleep(0.5)
    stop.set()
    time.sleep(1.5)  # one more poll after the load
    state = js("""
      const rows = [...document.querySelectorAll('#inst tbody tr')].map(r => [...r.cells].map(c => c.textContent));
      const painted = [...document.querySelectorAll('canvas')].map(c => {
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return [c.id, n]; });
      const res = performance.getEntriesByType('resource').map(e => e.name);
      return {rows, painted, res, polls: +document.body.dataset.polls, status: document.getElementById('status').textContent,
              tok: document.getElementById('t-tok').textContent, ttft: document.getElementById('t-ttft').textContent,
              itl: document.getElementById('t-itl').textContent, acc: document.getElementById('t-acc').textContent,
              bw: document.getElementById('t-bw').textContent, count: document.getElementById('t-count').textContent,
              err: document.getElementById('err').textContent};""")
    print(json.dumps({k: v for k, v in state.items() if k != "res"}, indent=1))
    check(state["polls"] >= 6, "the page polled /admin/stats repeatedly")
    check(state["status"] == "ready" and not state["err"], "status ready, no fetch error")
    roles = sorted(r[0] for r in state["rows"])
    check(roles == ["decode", "prefill"], "instance table rows: %r" % state["rows"])
    check(all(r[2] == "healthy" and r[1].startswith("127.0.0.1:") for r in state["rows"]), "instances healthy")
    check(state["ttft"].count("/") == 2 and not state["ttft"].startswith("—"), "TTFT percentiles shown")
    check(not state["itl"].startswith("—"), "ITL percentiles shown")
    check(state["acc"] == "n/a", "acceptance rate n/a without speculative decoding")
    check(state["tok"] not in ("—", ""), "throughput shown")
    check(int(state["count"].split("/")[0]) > 0, "request count shown")
    for cid, n in state["painted"]:
        check(n > 500, "canvas %s drawn (%d pixels)" % (cid, n))
    outside = [u for u in state["res"] if not u.startswith(base) and not u.startswith("data:")]
    check(not outside, "no resources from outside the router: %r" % outside)
    logs = wd(dport, "POST", "/session/%s/se/log" % sid, {"type": "browser"}) or []
    errors = [l for l in logs if l.get("level") in ("SEVERE", "ERROR")]
    check(not errors, "console errors: %r" % errors)
    perf = wd(dport, "POST", "/session/%s/se/log" % sid, {"type": "performance"}) or []
    urls = set()
    for l in perf:
        m = json.loads(l["message"])["message"]
        if m.get("method") == "Network.requestWillBeSent":
            urls.add(m["params"]["request"]["url"])
    net = [u for u in urls if u.split(":", 1)[0] in ("http", "https", "ws", "wss")]  # not chrome:// internals
    bad = [u for u in net if not u.startswith(base)]
    check(net and not bad, "network requests only to the router: %r" % bad)
    png = wd(dport, "GET", "/session/%s/screenshot" % sid)
    os.makedirs(os.path.dirname(os.path.abspath(args.screenshot)), exist_ok=True)
    with open(args.screenshot, "wb") as f:
        f.write(base64.b64decode(png))
    print("screenshot:", args.screenshot)
finally:
    stop.set()
    if sid:
        try:
            wd(dport, "DELETE", "/session/" + sid)
        except (OSError, RuntimeError):
            pass
    dep.close()
    harness.stop(drv)
    shutil.rmtree(udd, ignore_errors=True)

check.finish(logdir)
