"""Starts real pdserve processes on loopback ports they pick (--port 0, 'READY <port>' on stdout), waits until
the router is healthy, and always stops them. Used by the integration tests."""
import argparse, atexit, http.client, json, os, signal, socket, subprocess, sys, time

_procs = []
_logs = []
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")


def sanitizer_reports():
    """(log, first lines of the report) for every started process whose log holds a sanitizer report (ASan/UBSan
    builds print them on stderr, leaks at exit)."""
    found = []
    for name in _logs:
        try:
            with open(name, errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        for mark in SANITIZER_MARKS:
            at = text.find(mark)
            if at >= 0:
                found.append((name, text[at:at + 600]))
                break
    return found

def _kill_all():
    for p in _procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.time() + 5
    for p in _procs:
        try:
            p.wait(max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

atexit.register(_kill_all)


def stop_all():
    """Stops every process started here (SIGTERM, then SIGKILL after 5 s)."""
    _kill_all()
signal.signal(signal.SIGTERM, lambda *a: sys.exit(1))


def exe(build, name):
    """Path of an executable in a build tree: exe(build, "pdserve-decode") -> build/decode/pdserve-decode."""
    return os.path.join(build, name.split("-")[1], name)


def arg_parser():
    """The integration tests' command line: --build (the build tree) and --model (the tiny model's directory); a test
    adds its own options and calls parse_args()."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--model", required=True)
    return ap


def free_ports(n):
    """n loopback ports free now (bound together so that they differ, then released for the caller's processes)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def free_port():
    return free_ports(1)[0]


class Checks:
    """Counts checks; a failed one is printed at once. finish() prints the closing line and exits."""

    def __init__(self):
        self.passed, self.failures = 0, []

    def __call__(self, cond, what):
        if cond:
            self.passed += 1
        else:
            self.failures.append(what)
            print("FAIL:", what, flush=True)

    def finish(self, files=None):
        """files: where the test left its logs or outputs, named when a check failed."""
        _kill_all()  # leak reports are written at exit
        for name, report in sanitizer_reports():
            self(False, "sanitizer report in %s:\n%s" % (name, report))
        if self.failures and files:
            print("files in", files)
        print("%d passed, %d failed" % (self.passed, len(self.failures)))
        sys.exit(1 if self.failures else 0)


def start(argv, logname, env=None):
    """Starts one executable; returns (process, port)."""
    log = open(logname, "wb")
    _logs.append(logname)
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, env=env)
    _procs.append(p)
    deadline = time.time() + 120
    line = b""
    while time.time() < deadline:
        line = p.stdout.readline()
        if line.startswith(b"READY "):
            return p, int(line.split()[1])
        if not line and p.poll() is not None:
            break
    raise RuntimeError("%s did not start (see %s): %r" % (argv[0], logname, line))


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def request(port, method, path, body=None, timeout=120, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    data = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    c.request(method, path, data, h)
    r = c.getresponse()
    raw = r.read()
    c.close()
    try:
        return r.status, json.loads(raw), r
    except ValueError:
        return r.status, raw, r


def sse(port, path, body, timeout=120):
    """POSTs a streaming request; returns (status, [event objects], saw_done, raw bytes)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raw = r.read()
        c.close()
        return r.status, json.loads(raw), False, raw
    events, done, raw = [], False, b""
    while True:
        line = r.readline()
        if not line:
            break
        raw += line
        line = line.strip()
        if not line:
            continue
        assert line.startswith(b"data: "), line
        payload = line[6:]
        if payload == b"[DONE]":
            done = True
            continue
        assert not done, "data after [DONE]"
        events.append(json.loads(payload))
    c.close()
    return 200, events, done, raw


def wait_healthy(port, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            st, _, _ = request(port, "GET", "/health", timeout=5)
            if st == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("router on %d never became healthy" % port)


class Deployment:
    """A router in front of either 1 prefill + 1 decode (pd) or 1 colocated decode."""

    def __init__(self, build, model, mode, logdir, server_args=(), router_args=()):
        self.procs = []
        b = lambda name: exe(build, name)
        common = ["--model", model, "--kv-cache-memory", "256M"] + list(server_args)
        tag = os.path.join(logdir, mode)
        if mode == "pd":
            d, dport = start([b("pdserve-decode"), "--port", "0"] + common, tag + "-decode.log")
            p, pport = start([b("pdserve-prefill"), "--port", "0"] + common, tag + "-prefill.log")
            self.procs += [d, p]
            rargs = ["--prefill", "127.0.0.1:%d" % pport, "--decode", "127.0.0.1:%d" % dport]
            self.decode_port, self.prefill_port = dport, pport
        else:
            d, dport = start([b("pdserve-decode"), "--port", "0", "--colocated"] + common, tag + "-decode.log")
            self.procs.append(d)
            rargs = ["--decode", "127.0.0.1:%d" % dport]
            self.decode_port, self.prefill_port = dport, None
        r, self.port = start([b("pdserve-router"), "--port", "0", "--model", model, "--health-interval", "0.2"]
                             + rargs + list(router_args), tag + "-router.log")
        self.procs.append(r)
        wait_healthy(self.port)

    def close(self):
        for p in reversed(self.procs):
            stop(p)
