#!/usr/bin/env python3
"""Process-level tests of libpdkv: starts real kv_peer processes (receivers and senders) on loopback,
exchanges region descriptors through files, kills peers with SIGKILL and checks that survivors report
the failure within the bound and keep serving. Every child is killed on exit; every wait is bounded.
Exit 0 = pass, 1 = fail, 77 = skip."""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

SKIP = 77
CHILDREN = []
TMP = tempfile.mkdtemp(prefix="kvtest.")
NETNS = []


def cleanup():
    for p in CHILDREN:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
            p.wait()
    for ns in NETNS:
        subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
    shutil.rmtree(TMP, ignore_errors=True)


def on_signal(signum, frame):
    cleanup()
    sys.exit(1)


def fail(msg):
    print("FAIL:", msg)
    for name in sorted(os.listdir(TMP)):
        if name.endswith(".out"):
            print("---- %s ----" % name)
            with open(os.path.join(TMP, name), errors="replace") as f:
                lines = f.readlines()
            sys.stdout.writelines(lines[-40:])
    cleanup()
    sys.exit(1)


class Peer:
    def __init__(self, name, args, env, prefix=()):
        self.name = name
        self.out_path = os.path.join(TMP, name + ".out")
        self.out = open(self.out_path, "w")
        self.p = subprocess.Popen(list(prefix) + [ARGS.peer] + args, stdout=self.out, stderr=subprocess.STDOUT,
                                  env=env, start_new_session=True)
        CHILDREN.append(self.p)

    def text(self):
        with open(self.out_path, errors="replace") as f:
            return f.read()

    def wait_line(self, pattern, timeout):
        end = time.time() + timeout
        while time.time() < end:
            m = re.search(pattern, self.text(), re.M)
            if m:
                return m
            if self.p.poll() is not None:
                break
            time.sleep(0.02)
        fail("%s: no line matching %r within %.0fs" % (self.name, pattern, timeout))

    def wait(self, timeout):
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            fail("%s did not exit within %.0fs" % (self.name, timeout))

    def kill(self):
        os.killpg(self.p.pid, signal.SIGKILL)
        t = time.time()
        self.p.wait()
        return t


def base_env(transport, dev="lo"):
    env = dict(os.environ)
    env["UCX_WARN_UNUSED_ENV_VARS"] = "n"
    if transport == "sm":
        env["UCX_TLS"] = "posix,cma,self"
    elif transport == "smtcp":
        # with tcp present every endpoint is created with peer-failure handling, which posix/cma lanes lack
        # in UCX 1.13: the endpoint is all tcp, and only regions the sender maps (--region alloc) move by
        # shared memory
        env["UCX_TLS"] = "posix,cma,tcp,self"
        env["UCX_NET_DEVICES"] = "lo"
    else:
        env["UCX_TLS"] = "tcp,self"
        env["UCX_NET_DEVICES"] = dev
    return env


def common(extra=()):
    a = ["--proto", ARGS.proto, "--error-timeout", "1", "--timeout", "90"]
    if ARGS.region == "alloc":
        a += ["--alloc"]  # receivers' regions from kv_region_alloc: direct copies over shared memory
    if ARGS.linger is not None:
        a += ["--linger", str(ARGS.linger)]
    if ARGS.small:
        # regions of a quarter of the last-level cache (32 MiB here) or less: direct copies go through the
        # cache, not streaming stores
        a += ["--size", str(8 << 20), "--sizes", "4096,65536,1048576"]
    return a + list(extra)


def check_direct(p):
    """A sender copies directly exactly when the receiver's region is UCX-allocated shared memory and PUT is used."""
    want = 1 if ARGS.region == "alloc" and ARGS.transport != "tcp" and ARGS.proto != "am" else 0
    got = [int(d) for d in re.findall(r"CONNECTED recv=\d+ proto=\w+ direct=(\d)", p.text())]
    if not got or any(d != want for d in got):
        fail("%s: direct=%s, expected %d for every receiver" % (p.name, got, want))


def desc(i):
    return os.path.join(TMP, "recv%d.desc" % i)


def expect_ok(peers, timeout=90):
    for p in peers:
        rc = p.wait(timeout)
        if rc != 0 or "ok=1" not in p.text():
            fail("%s exited %d" % (p.name, rc))
        if p.name.startswith("send"):
            check_direct(p)


def sc_pair(env, count=40, extra_s=(), extra_r=(), prefix_r=(), prefix_s=(), env_s=None):
    r = Peer("recv0", ["recv", "--desc-out", desc(0), "--count", str(count), "--expect-complete", "1"] +
             common(extra_r), env, prefix_r)
    s = Peer("send0", ["send", "--desc", desc(0), "--count", str(count)] + common(extra_s), env_s or env, prefix_s)
    expect_ok([s, r])
    m = re.search(r"CONNECTED recv=0 proto=(\w+)", s.text())
    print("pair ok: protocol %s" % (m.group(1) if m else "?"))
    return s, r


def sc_many_senders(env):
    r = Peer("recv0", ["recv", "--desc-out", desc(0), "--count", "20", "--expect-complete", "3"] + common(), env)
    ss = [Peer("send%d" % i, ["send", "--desc", desc(0), "--count", "20", "--slot", str(i), "--slots", "3",
                               "--seed", str(i + 1)] + common(), env) for i in range(3)]
    expect_ok(ss + [r])


def sc_many_receivers(env):
    rs = [Peer("recv%d" % i, ["recv", "--desc-out", desc(i), "--count", "20", "--expect-complete", "1"] + common(), env)
          for i in range(3)]
    s = Peer("send0", ["send", "--count", "20"] + sum([["--desc", desc(i)] for i in range(3)], []) + common(), env)
    expect_ok([s] + rs)


def check_bound(what, t_kill, t_seen):
    delay = t_seen - t_kill
    print("%s reported %.3fs after SIGKILL" % (what, delay))
    if delay > 1.5:
        fail("%s took %.3fs (bound 1s + 0.5s slack)" % (what, delay))


def sc_kill_sender(env):
    # The receiver runs until told to stop (SIGTERM); senders exit only after every notice was acked.
    r = Peer("recv0", ["recv", "--desc-out", desc(0), "--count", "1000000"] + common(), env)
    victim = Peer("send1", ["send", "--desc", desc(0), "--count", "1000000", "--slot", "1", "--slots", "3",
                            "--conc", "2"] + common(), env)
    s0 = Peer("send0", ["send", "--desc", desc(0), "--count", "30", "--slot", "0", "--slots", "3"] + common(), env)
    vid = victim.wait_line(r"READY id=(\w+)", 30).group(1)
    # killed while transfers flow, after the first round trip: killing it during UCX's wire-up (the first
    # milliseconds of the connection) can abort the receiver inside UCX 1.13 (an assertion on a pending wire-up
    # reply when the endpoint fails; docs/kvtransfer.md), which no caller can prevent
    victim.wait_line(r"FLOWING recv=0", 30)
    time.sleep(0.3)
    t_kill = victim.kill()
    m = r.wait_line(r"PEER_FAILED peer=%s status=.* t=([\d.]+)" % vid, 10)
    check_bound("receiver: dead sender", t_kill, float(m.group(1)))
    # The survivor keeps serving: a sender that starts after the failure completes too.
    s2 = Peer("send2", ["send", "--desc", desc(0), "--count", "30", "--slot", "2", "--slots", "3"] + common(), env)
    expect_ok([s0, s2])
    r.p.send_signal(signal.SIGTERM)
    expect_ok([r])


def sc_kill_receiver(env):
    rs = [Peer("recv%d" % i, ["recv", "--desc-out", desc(i), "--count", "30", "--expect-complete", "1"] + common(), env)
          for i in range(3)]
    s = Peer("send0", ["send", "--count", "30", "--long-mask", "2", "--expect-fail-mask", "2"] +
             sum([["--desc", desc(i)] for i in range(3)], []) + common(), env)
    s.wait_line(r"READY id=", 30)
    s.wait_line(r"FLOWING recv=1", 30)  # after wire-up, while transfers flow (see sc_kill_sender)
    time.sleep(0.3)
    t_kill = rs[1].kill()
    m = s.wait_line(r"(?:XFER_ERROR|PEER_FAILED) recv=1 .*t=([\d.]+)", 10)
    check_bound("sender: dead receiver", t_kill, float(m.group(1)))
    expect_ok([s, rs[0], rs[2]])


def sc_cancel(env):
    s, r = sc_pair(env, count=30, extra_s=["--cancel-every", "3"])
    canceled = int(re.search(r"canceled=(\d+)", s.text()).group(1))
    aborted = int(re.search(r"aborted=(\d+)", r.text()).group(1))
    print("canceled %d, receiver saw %d aborts" % (canceled, aborted))
    if canceled == 0 or aborted != canceled:
        fail("canceled %d transfers but the receiver saw %d aborts" % (canceled, aborted))


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sc_idle(env):
    # After a stream of notices the receiver lingers (re-polls its worker from a timer instead of sleeping
    # armed) for kv_params_t.linger, then must sleep on its event fd again: a loop that never re-arms, or
    # that spins on a readable event fd, shows up as CPU time while nothing arrives.
    r = Peer("recv0", ["recv", "--desc-out", desc(0), "--count", "1000000"] + common(), env)
    s = Peer("send0", ["send", "--desc", desc(0), "--count", "40"] + common(), env)
    expect_ok([s])
    time.sleep(0.2)
    c0, t0 = cpu_seconds(r.p.pid), time.time()
    time.sleep(2.0)
    used = (cpu_seconds(r.p.pid) - c0) / (time.time() - t0)
    print("idle receiver: %.1f ms of CPU per second" % (used * 1000))
    if used > 0.02:
        fail("the idle receiver used %.1f ms of CPU per second (more than 20)" % (used * 1000))
    # and it still serves: a second sender's transfers complete after the idle period
    s2 = Peer("send1", ["send", "--desc", desc(0), "--count", "20", "--seed", "7"] + common(), env)
    expect_ok([s2])
    r.p.send_signal(signal.SIGTERM)
    expect_ok([r])


def sc_netns(env):
    if os.geteuid() != 0 or not shutil.which("ip"):
        print("SKIP: needs root and iproute2")
        sys.exit(SKIP)
    tag = "%d" % (os.getpid() % 100000)
    na, nb = "pdkv_a_" + tag, "pdkv_b_" + tag
    va, vb = "pdkva" + tag, "pdkvb" + tag
    octet = 1 + os.getpid() % 250
    cmds = [["ip", "netns", "add", na], ["ip", "netns", "add", nb],
            ["ip", "link", "add", va, "netns", na, "type", "veth", "peer", "name", vb, "netns", nb],
            ["ip", "-n", na, "addr", "add", "10.200.%d.1/24" % octet, "dev", va],
            ["ip", "-n", nb, "addr", "add", "10.200.%d.2/24" % octet, "dev", vb],
            ["ip", "-n", na, "link", "set", va, "up"], ["ip", "-n", nb, "link", "set", vb, "up"],
            ["ip", "-n", na, "link", "set", "lo", "up"], ["ip", "-n", nb, "link", "set", "lo", "up"]]
    for i, c in enumerate(cmds):
        if i < 2:
            NETNS.append(c[-1])
        res = subprocess.run(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if res.returncode != 0:
            print("SKIP: '%s' failed: %s" % (" ".join(c), res.stdout.strip()))
            cleanup()
            sys.exit(SKIP)
    end = time.time() + 10
    while time.time() < end:
        states = [subprocess.run(["ip", "-n", ns, "link", "show", "dev", dev], stdout=subprocess.PIPE, text=True).stdout
                  for ns, dev in ((na, va), (nb, vb))]
        if all("NO-CARRIER" not in st and "state UP" in st for st in states):
            break
        time.sleep(0.05)
    else:
        fail("veth pair did not come up")
    sc_pair(base_env("tcp", va), count=20, prefix_r=["ip", "netns", "exec", na],
            prefix_s=["ip", "netns", "exec", nb], env_s=base_env("tcp", vb))


SCENARIOS = {"pair": sc_pair, "many_senders": sc_many_senders, "many_receivers": sc_many_receivers,
             "kill_sender": sc_kill_sender, "kill_receiver": sc_kill_receiver, "cancel": sc_cancel, "netns": sc_netns,
             "idle": sc_idle}

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--peer", required=True)
    ap.add_argument("--transport", choices=["sm", "smtcp", "tcp"], default="sm")
    ap.add_argument("--proto", choices=["auto", "put", "am"], default="auto")
    ap.add_argument("--region", choices=["user", "alloc"], default="user",
                    help="receivers register mmap'd memory (user) or take it from kv_region_alloc (alloc)")
    ap.add_argument("--small", action="store_true", help="8 MiB regions and blocks up to 1 MiB")
    ap.add_argument("--linger", type=float, help="kv_params_t.linger in microseconds (default: the library's)")
    ap.add_argument("scenario", choices=sorted(SCENARIOS))
    ARGS = ap.parse_args()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGALRM, on_signal)
    signal.alarm(170)
    t0 = time.time()
    try:
        SCENARIOS[ARGS.scenario](base_env(ARGS.transport))
    finally:
        cleanup()
    print("PASS %s/%s/%s in %.1fs" % (ARGS.scenario, ARGS.transport, ARGS.proto, time.time() - t0))
