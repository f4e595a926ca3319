"""A flood of idle, half-sent requests at a router whose descriptor limit is low (RLIMIT_NOFILE 1024; the test's
own limit is raised, never the machine's): while the router is out of descriptors it pauses accepting instead of
spinning and logs a line per 10 s, not one per failed accept(); once the flood ends it serves again within 5 s (its
health polls, which failed during the flood, recover) and it never crashed. Issue #22."""
import errno, os, resource, select, socket, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(__file__))
import harness

args = harness.arg_parser().parse_args()
logdir = tempfile.mkdtemp(prefix="flood_test_")
check = harness.Checks()
FLOOD, LIMIT = 1500, 1024
resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1]),
                                            resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


def low_limit():
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))


socks = []
try:
    d, dport = harness.start([harness.exe(args.build, "pdserve-decode"), "--model", args.model, "--port", "0",
                              "--colocated", "--kv-cache-memory", "64M"], os.path.join(logdir, "decode.log"))
    rport = harness.free_port()
    log = os.path.join(logdir, "router.log")
    r = subprocess.Popen([harness.exe(args.build, "pdserve-router"), "--port", str(rport), "--model", args.model,
                          "--decode", "127.0.0.1:%d" % dport, "--health-interval", "0.2"],
                         stdout=subprocess.DEVNULL, stderr=open(log, "w"), preexec_fn=low_limit)
    harness.wait_healthy(rport)
    body = {"prompt": "hi", "max_tokens": 2}
    st, _, _ = harness.request(rport, "POST", "/v1/completions", body)
    check(st == 200, "serves before the flood (%s)" % st)
    # the flood: non-blocking connects (the backlog fills once the router pauses), then half a request on each
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
                s.send(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: 100\r\n\r\n{\"prompt\"")
            except OSError:
                pass
            sent.add(s)
    time.sleep(3)
    during = os.path.getsize(log)
    print("flood: %d connections, %d with half a request; router log %d bytes" % (len(socks), len(sent), during))
    check(r.poll() is None, "the router survives the flood")
    for s in socks:
        s.close()
    socks = []
    t0, back = time.time(), None
    while time.time() - t0 < 10:
        try:
            st, o, _ = harness.request(rport, "POST", "/v1/completions", body, timeout=2)
            if st == 200:
                back = time.time() - t0
                break
        except OSError:
            pass
        time.sleep(0.1)
    print("serving again %s s after the flood ended" % (None if back is None else "%.2f" % back))
    check(back is not None and back < 5, "serving again within 5 s of the flood's end (%s)" % back)
    size = os.path.getsize(log)
    check(size < (1 << 20), "under 1 MB of router log (%d bytes)" % size)
    text = open(log, errors="replace").read()
    check("Too many open files" in text and text.count("accept() failed") <= 5,
          "descriptor exhaustion is logged, at most once per 10 s (%d lines)" % text.count("accept() failed"))
    check(r.poll() is None, "the router is still running")
    r.terminate()
    r.wait(10)
finally:
    for s in socks:
        s.close()
    harness.stop_all()
check.finish()
