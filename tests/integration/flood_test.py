"""Floods of idle, half-sent requests at routers whose descriptor limit is low (RLIMIT_NOFILE 1024; the test's own
limit is raised, never the machine's). Issue #22.

1. The default connection limit (what 1024 descriptors allow after a reserve): connections beyond it get a 503 and
   are closed at once; the half-sent requests it holds are closed within --http-read-timeout; its health polls keep
   working through the flood; it serves again within 5 s of the flood's end.
2. --max-connections above what the descriptors allow: accept() runs out of descriptors; the router pauses
   accepting instead of spinning, logs a line per 10 s and not one per failed accept(), and serves again within
   5 s of the flood's end (its health polls, which failed meanwhile, recover).
Neither crashes nor writes 1 MB of log; the log is read through a pipe and only its first 1 MB kept."""
import errno, http.client, json, os, resource, select, socket, subprocess, sys, tempfile, threading, time

sys.path.insert(0, os.path.dirname(__file__))
import harness

args = harness.arg_parser().parse_args()
logdir = tempfile.mkdtemp(prefix="flood_test_")
check = harness.Checks()
FLOOD, LIMIT, READ_TIMEOUT, LOG_CAP = 1500, 1024, 2.0, 1 << 20
resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1]),
                                            resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
HALF = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        b"{\"prompt\"")
BODY = {"prompt": "hi", "max_tokens": 2}


def low_limit():
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))


class Log:
    """A process's stderr through a pipe: the first LOG_CAP bytes kept in a file, every byte counted."""

    def __init__(self, pipe, path):
        self.total, self.path = 0, path
        self.t = threading.Thread(target=self._run, args=(pipe,), daemon=True)
        self.t.start()

    def _run(self, pipe):
        with open(self.path, "wb") as f:
            while True:
                b = pipe.read1(65536)
                if not b:
                    return
                if self.total < LOG_CAP:
                    f.write(b[:LOG_CAP - self.total])
                    f.flush()
                self.total += len(b)

    def text(self):
        return open(self.path, errors="replace").read()


def start_router(dport, tag, extra):
    rport = harness.free_port()
    r = subprocess.Popen([harness.exe(args.build, "pdserve-router"), "--port", str(rport), "--model", args.model,
                          "--decode", "127.0.0.1:%d" % dport, "--health-interval", "0.2"] + extra,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=low_limit)
    log = Log(r.stderr, os.path.join(logdir, tag + ".log"))
    harness.wait_healthy(rport)
    st, _, _ = harness.request(rport, "POST", "/v1/completions", BODY)
    check(st == 200, "%s: serves before the flood (%s)" % (tag, st))
    return r, rport, log


def flood(rport):
    """FLOOD non-blocking connects (the backlog fills if the router pauses), then half a request on each."""
    socks = []
    for _ in range(FLOOD):
        s = socket.socket()
        s.setblocking(False)
        if s.connect_ex(("127.0.0.1", rport)) not in (0, errno.EINPROGRESS):
            s.close()
            continue
        socks.append(s)
    deadline, sent, byfd = time.time() + 5, set(), {s.fileno(): s for s in socks}
    poll = select.poll()  # select() stops at descriptor 1024
    for s in socks:
        poll.register(s, select.POLLOUT)
    while time.time() < deadline and len(sent) < len(socks):
        for fd, _ in poll.poll(200):
            s = byfd[fd]
            poll.unregister(fd)
            try:
                s.send(HALF)
            except OSError:
                pass
            sent.add(s)
    return socks, len(sent)


def outcomes(socks, wait):
    """What each flood connection got within `wait` seconds: '503', 'closed' (EOF or reset, no reply), 'open'."""
    got, poll, byfd, buf = {}, select.poll(), {s.fileno(): s for s in socks}, {}
    for s in socks:
        poll.register(s, select.POLLIN)
    deadline = time.time() + wait
    while len(got) < len(socks) and time.time() < deadline:
        for fd, _ in poll.poll(100):
            s = byfd[fd]
            try:
                b = s.recv(4096)
            except OSError:
                b = b""
            if b:
                buf[fd] = buf.get(fd, b"") + b
                continue
            poll.unregister(fd)
            got[fd] = "503" if buf.get(fd, b"").startswith(b"HTTP/1.1 503") else "closed"
    return {k: sum(1 for fd in byfd if got.get(fd, "open") == k) for k in ("503", "closed", "open")}


def serving_again(rport, tag):
    t0, back = time.time(), None
    while time.time() - t0 < 10:
        try:
            st, _, _ = harness.request(rport, "POST", "/v1/completions", BODY, timeout=2)
            if st == 200:
                back = time.time() - t0
                break
        except OSError:
            pass
        time.sleep(0.1)
    print("%s: serving again %s s after the flood ended" % (tag, None if back is None else "%.2f" % back))
    check(back is not None and back < 5, "%s: serving again within 5 s of the flood's end (%s)" % (tag, back))


def finish(r, log, tag):
    check(r.poll() is None, "%s: the router is still running" % tag)
    r.terminate()
    r.wait(10)
    log.t.join(5)
    check(log.total < LOG_CAP, "%s: under 1 MB of router log (%d bytes)" % (tag, log.total))


socks = []
try:
    d, dport = harness.start([harness.exe(args.build, "pdserve-decode"), "--model", args.model, "--port", "0",
                              "--colocated", "--kv-cache-memory", "64M"], os.path.join(logdir, "decode.log"))

    # 1. the default connection limit and the read timeout
    r, rport, log = start_router(dport, "limit", ["--http-read-timeout", str(READ_TIMEOUT), "--http-idle-timeout",
                                                  "1"])
    t0 = time.time()
    socks, sent = flood(rport)
    got = outcomes(socks, READ_TIMEOUT + 3 - (time.time() - t0))
    print("limit: %d connections, %d with half a request: %s within %.1f s" % (len(socks), sent, got,
                                                                                 time.time() - t0))
    check(got["503"] > 0, "limit: connections beyond the limit get a 503 (%d)" % got["503"])
    check(got["open"] == 0, "limit: every half-sent request is closed within the read timeout (%d open)"
          % got["open"])
    check(r.poll() is None, "limit: the router survives the flood")
    text = log.text()
    check("Too many open files" not in text, "limit: the router never ran out of descriptors")
    check(text.count("at the connection limit") <= 2, "limit: refusals logged once per 10 s (%d lines)"
          % text.count("at the connection limit"))
    check("stopped answering health checks" not in text, "limit: its health polls kept working through the flood")
    for s in socks:
        s.close()
    socks = []
    serving_again(rport, "limit")
    # the timeouts apply to requests arriving and to idle keep-alive connections, never to a reply being streamed
    c = http.client.HTTPConnection("127.0.0.1", rport, timeout=30)
    t0 = time.time()
    c.request("POST", "/v1/completions", json.dumps({"prompt": "hi", "max_tokens": 1500, "ignore_eos": True,
                                                     "stream": True}), {"Content-Type": "application/json"})
    resp = c.getresponse()
    events = sum(1 for line in resp if line.startswith(b"data: {"))
    took = time.time() - t0
    check(resp.status == 200 and events > 1000 and took > READ_TIMEOUT,
          "limit: a %.1f s stream outlives the %.0f s read timeout (%d events)" % (took, READ_TIMEOUT, events))
    t0 = time.time()
    c.request("GET", "/health")
    c.getresponse().read()
    c.sock.settimeout(10)
    idle = c.sock.recv(1) == b"" and time.time() - t0
    check(idle and 0.8 < idle < 3, "limit: an idle keep-alive connection is closed after --http-idle-timeout 1 (%s)"
          % idle)
    c.close()
    finish(r, log, "limit")

    # 2. a limit above the descriptors: accept() fails, the listener pauses
    r, rport, log = start_router(dport, "emfile", ["--max-connections", "100000"])
    socks, sent = flood(rport)
    time.sleep(3)
    print("emfile: %d connections, %d with half a request; router log %d bytes" % (len(socks), sent, log.total))
    check(r.poll() is None, "emfile: the router survives the flood")
    for s in socks:
        s.close()
    socks = []
    serving_again(rport, "emfile")
    text = log.text()
    check("more than the descriptor limit allows" in text, "emfile: the too-high limit is warned about at start")
    check("Too many open files" in text and text.count("accept() failed") <= 5,
          "emfile: descriptor exhaustion is logged, at most once per 10 s (%d lines)" % text.count("accept() failed"))
    finish(r, log, "emfile")
finally:
    for s in socks:
        s.close()
    harness.stop_all()
check.finish()
