"""scripts/serve.sh, the README's main job, run as a user runs it (configs/local-1p1d/ with ports this test picks,
logs in a temporary directory): it answers the OpenAI API; a pool process that dies (SIGKILL: a crash) is started
again by the script and serves; a drained instance (clean exit) stays down; a process that cannot start stops the
script with an error instead of a restart loop; Ctrl-C (SIGINT to the process group) stops every process. With
--decode-ranks 2 the decode pool runs over 2 MPI ranks; kill -9 of rank 1 takes that instance down and the script
starts it again."""
import os, re, select, signal, socket, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(__file__))
import harness

ap = harness.arg_parser()
ap.add_argument("--source", required=True)
args = ap.parse_args()
check = harness.Checks()


def write_conf(d, router, prefill, decode):
    """configs/local-1p1d/ with this test's ports."""
    os.makedirs(d, exist_ok=True)
    src = os.path.join(args.source, "configs", "local-1p1d")
    ports = {"router.yaml": router, "prefill.yaml": prefill, "decode.yaml": decode}
    for name, port in ports.items():
        text = open(os.path.join(src, name)).read()
        text = re.sub(r"(?m)^port:\s*\d+", "port: %d" % port, text)
        text = re.sub(r"(?m)^prefill:\s*\S+", "prefill: 127.0.0.1:%d" % prefill, text)
        text = re.sub(r"(?m)^decode:\s*\S+", "decode: 127.0.0.1:%d" % decode, text)
        text = re.sub(r"(?m)^kv-cache-memory:\s*\S+", "kv-cache-memory: 256M", text)
        open(os.path.join(d, name), "w").write(text)


class Serve:
    """scripts/serve.sh in its own process group, its output read line by line."""

    def __init__(self, conf, logs, extra=()):
        env = dict(os.environ, PD_BUILD_DIR=os.path.abspath(args.build), PD_SKIP_SETUP="1")
        self.p = subprocess.Popen(["bash", os.path.join(args.source, "scripts", "serve.sh"), "--model", args.model,
                                   "--config-dir", conf, "--log-dir", logs] + list(extra),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.out = []

    def wait_line(self, pattern, timeout):
        deadline = time.time() + timeout
        for line in self.out:
            if re.search(pattern, line):
                return line
        while time.time() < deadline:
            r, _, _ = select.select([self.p.stdout], [], [], max(0.0, min(1.0, deadline - time.time())))
            if not r:
                continue
            raw = self.p.stdout.readline()
            if not raw:
                break
            line = raw.decode(errors="replace").rstrip()
            print("  serve.sh | " + line, flush=True)
            self.out.append(line)
            if re.search(pattern, line):
                return line
        return None

    def stop(self, sig=signal.SIGINT, timeout=60):
        """Signals the whole group (as Ctrl-C does); returns serve.sh's exit status, or None if it did not end."""
        try:
            os.killpg(self.p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.wait_line(r"^serve: stopped", timeout)
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill_all(self):
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.p.wait()


def pids_with(text):
    """Processes whose command line contains text (this test's config directory)."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            cmd = open("/proc/%s/cmdline" % d, "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd and "pdserve-" in cmd:
            found.append((int(d), cmd))
    return found


def rank_pids(text, name):
    """{rank: pid} of the MPI ranks of pdserve-<name> under text (each rank's rank from its environment)."""
    out = {}
    for pid, cmd in pids_with(text):
        if "pdserve-" + name not in cmd or cmd.startswith("mpirun"):
            continue
        try:
            env = open("/proc/%d/environ" % pid, "rb").read().split(b"\0")
        except OSError:
            continue
        for kv in env:
            if kv.startswith(b"OMPI_COMM_WORLD_RANK="):
                out[int(kv.split(b"=")[1])] = pid
    return out


def serve_again(port):
    """A chat completion answers 200 within 90 s (the router takes a restarted instance back)."""
    st, obj = 0, None
    deadline = time.time() + 90
    while time.time() < deadline:
        st, obj = chat(port)
        if st == 200:
            break
        time.sleep(0.5)
    return st, obj


def chat(port, timeout=60):
    body = {"model": os.path.basename(args.model), "messages": [{"role": "user", "content": "Hello!"}],
            "max_tokens": 8}
    try:
        st, obj, _ = harness.request(port, "POST", "/v1/chat/completions", body, timeout=timeout)
        return st, obj
    except OSError as e:
        return 0, str(e)


tmp = tempfile.mkdtemp(prefix="serve_test_")
conf, logs = os.path.join(tmp, "conf"), os.path.join(tmp, "logs")
rport, pport, dport = harness.free_ports(3)
write_conf(conf, rport, pport, dport)
s = Serve(conf, logs)
try:
    ready = s.wait_line(r"^serve: router http://127\.0\.0\.1:%d" % rport, 180)
    check(ready is not None, "serve.sh printed its ready line with the configured router port")
    if ready:
        st, obj = chat(rport)
        check(st == 200 and obj["choices"], "the README's chat completion answers 200 (%s %s)" % (st, str(obj)[:200]))

        victims = [p for p, cmd in pids_with(conf) if "pdserve-prefill" in cmd]
        check(len(victims) == 1, "one pdserve-prefill process under serve.sh (%s)" % victims)
        if victims:
            os.kill(victims[0], signal.SIGKILL)
            t0 = time.time()
            line = s.wait_line(r"^serve: pdserve-prefill failed \(status 137\).*restarting it in 1 s", 30)
            check(line is not None, "serve.sh reports the killed prefill instance's exit and its restart")
            check(s.wait_line(r"^serve: pdserve-prefill started again", 30) is not None, "and starts it again")
            after, deadline = [], time.time() + 20  # the script's child execs the binary a moment after the fork
            while not after and time.time() < deadline:
                after = [p for p, cmd in pids_with(conf) if "pdserve-prefill" in cmd]
                time.sleep(0.1)
            check(len(after) == 1 and after[0] != victims[0], "a new pdserve-prefill process runs (%s)" % after)
            # the router takes it back once its /health answers: requests succeed again
            st, obj = serve_again(rport)
            check(st == 200 and obj["choices"],
                  "a chat completion answers 200 again after the restart (%s %s)" % (st, str(obj)[:200]))
            print("prefill killed -> serving again in %.1f s" % (time.time() - t0))
            log = open(os.path.join(logs, "prefill.log"), errors="replace").read()
            check("serve: failed with status 137" in log, "prefill.log records the failure and the restart")

            # a drained instance exits 0 once idle: that is not a failure, so it stays down (systemd's on-failure)
            st, _, _ = harness.request(pport, "POST", "/internal/drain", {})
            check(st in (200, 202), "POST /internal/drain on the prefill instance answers (%s)" % st)
            line = s.wait_line(r"^serve: pdserve-prefill exited cleanly.*not restarting it", 150)
            check(line is not None, "serve.sh leaves a drained (cleanly exited) instance down")
            time.sleep(2)
            check(not [p for p, cmd in pids_with(conf) if "pdserve-prefill" in cmd], "and no prefill process runs")
            check(not [l for l in s.out if "pdserve-prefill started again" in l][1:],
                  "the drained instance was not started again")

    rc = s.stop()
    check(rc is not None, "Ctrl-C (SIGINT to the group) stops serve.sh")
    time.sleep(0.5)
    left = pids_with(conf)
    check(not left, "no pdserve process is left after Ctrl-C (%s)" % left)

    # The decode pool over 2 MPI ranks: serves; kill -9 of rank 1 takes the instance down, the script starts it again
    rport3, pport3, dport3 = harness.free_ports(3)
    conf3 = os.path.join(tmp, "conf3")
    write_conf(conf3, rport3, pport3, dport3)
    s3 = Serve(conf3, os.path.join(tmp, "logs3"), ["--decode-ranks", "2"])
    try:
        ready = s3.wait_line(r"^serve: router http://127\.0\.0\.1:%d" % rport3, 180)
        st, obj = chat(rport3) if ready else (0, None)
        ranks = rank_pids(conf3, "decode")
        check(ready and st == 200 and sorted(ranks) == [0, 1],
              "--decode-ranks 2: serves with a decode instance of 2 ranks (%s %s)" % (st, ranks))
        if 1 in ranks:
            os.kill(ranks[1], signal.SIGKILL)
            line = s3.wait_line(r"^serve: pdserve-decode failed \(status \d+\)", 30)
            check(line is not None, "kill -9 of decode rank 1: serve.sh sees the instance go")
            check(s3.wait_line(r"^serve: pdserve-decode started again", 30) is not None, "and starts it again")
            st, obj = serve_again(rport3)
            again = rank_pids(conf3, "decode")
            check(st == 200 and sorted(again) == [0, 1] and again[1] != ranks[1],
                  "a new 2-rank decode instance serves (%s, ranks %s)" % (st, again))
        rc = s3.stop()
        time.sleep(0.5)
        left = pids_with(conf3)
        check(rc is not None and not left, "Ctrl-C stops it with every rank (%s)" % left)
    finally:
        if s3.p.poll() is None:
            s3.kill_all()

    # A process that cannot start (its port is taken) stops the script with an error, not a restart loop.
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    rport2, pport2, dport2 = harness.free_ports(3)
    blocker.bind(("127.0.0.1", pport2))
    blocker.listen(1)
    conf2 = os.path.join(tmp, "conf2")
    write_conf(conf2, rport2, pport2, dport2)
    s2 = Serve(conf2, os.path.join(tmp, "logs2"))
    try:
        t0 = time.time()
        err = s2.wait_line(r"^serve: pdserve-prefill (exited at start-up|failed 5 times in a row)", 120)
        check(err is not None, "a prefill instance that cannot bind its port stops serve.sh with an error")
        try:
            rc2 = s2.p.wait(60)
        except subprocess.TimeoutExpired:
            rc2 = None
        check(rc2 not in (None, 0), "serve.sh exits non-zero then (%s), in %.1f s" % (rc2, time.time() - t0))
        time.sleep(0.5)
        left = pids_with(conf2)
        check(not left, "and leaves no process behind (%s)" % left)
    finally:
        blocker.close()
        if s2.p.poll() is None:
            s2.kill_all()
finally:
    if s.p.poll() is None:
        s.kill_all()
    for pid, _ in pids_with(tmp):
        os.kill(pid, signal.SIGKILL)
for name in ("router", "prefill", "decode"):
    harness._logs.append(os.path.join(logs, name + ".log"))
check.finish()
