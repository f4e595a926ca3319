"""TLS on the router's public API (--ssl-certfile, --ssl-keyfile): a CA and a server certificate made here with the
openssl tool; the official OpenAI client (npm "openai") over https, trusting that CA, runs its checks with an API
key; a client that does not trust the CA is refused by its own verification; plain HTTP to the TLS port gets no
HTTP service; the router refuses to start with a key that does not match the certificate. Issue #22."""
import http.client, json, os, socket, ssl, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(__file__))
import harness

args = harness.arg_parser().parse_args()
logdir = tempfile.mkdtemp(prefix="tls_test_")
check = harness.Checks()
here = os.path.dirname(os.path.abspath(__file__))


def openssl(*a):
    subprocess.run(["openssl"] + list(a), check=True, capture_output=True, cwd=logdir)


# a test CA and a server certificate for localhost and 127.0.0.1, signed by it
openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ca.key",
        "-out", "ca.pem", "-days", "2", "-subj", "/CN=pdserve test CA")
openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "server.key", "-out",
        "server.csr", "-subj", "/CN=localhost")
with open(os.path.join(logdir, "san"), "w") as f:
    f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out",
        "server.pem", "-days", "2", "-extfile", "san")
ca, cert, key = (os.path.join(logdir, n) for n in ("ca.pem", "server.pem", "server.key"))

try:
    d, dport = harness.start([harness.exe(args.build, "pdserve-decode"), "--model", args.model, "--port", "0",
                              "--colocated", "--kv-cache-memory", "64M"], os.path.join(logdir, "decode.log"))
    router = [harness.exe(args.build, "pdserve-router"), "--port", "0", "--model", args.model, "--health-interval",
              "0.2", "--decode", "127.0.0.1:%d" % dport, "--api-key", "sk-tls"]
    bad = subprocess.run(router + ["--ssl-certfile", cert, "--ssl-keyfile", os.path.join(logdir, "ca.key")],
                         capture_output=True, text=True, timeout=30)
    check(bad.returncode != 0 and "--ssl-keyfile" in bad.stderr and "mismatch" in bad.stderr,
          "a key that does not match the certificate stops the start: %r" % bad.stderr[-300:])
    r, port = harness.start(router + ["--ssl-certfile", cert, "--ssl-keyfile", key], os.path.join(logdir, "router.log"))

    trusted = ssl.create_default_context(cafile=ca)
    ok = False
    for _ in range(100):  # healthy once its first poll of the instance is back
        c = http.client.HTTPSConnection("localhost", port, context=trusted, timeout=10)
        c.request("GET", "/health")
        ok = c.getresponse().status == 200
        c.close()
        if ok:
            break
        time.sleep(0.1)
    check(ok, "GET /health over https with the test CA")
    c = http.client.HTTPSConnection("127.0.0.1", port, context=trusted, timeout=30)
    c.request("POST", "/v1/completions", json.dumps({"prompt": "hi", "max_tokens": 2}),
              {"Content-Type": "application/json", "Authorization": "Bearer sk-tls"})
    resp = c.getresponse()
    body = json.loads(resp.read())
    check(resp.status == 200 and body["choices"], "a completion over https with the key (%s)" % resp.status)
    check(c.sock.version() in ("TLSv1.2", "TLSv1.3"), "TLS 1.2 or later (%s)" % c.sock.version())
    c.close()

    # the official client over https
    env = dict(os.environ, NODE_EXTRA_CA_CERTS=ca)
    out = subprocess.run(["node", os.path.join(here, "openai_client.mjs"), "https://localhost:%d/v1" % port, "tiny",
                          "sk-tls"], capture_output=True, text=True, timeout=300, env=env)
    print(out.stdout.strip())
    check(out.returncode == 0, "OpenAI client over https: %s %s" % (out.stdout[-500:], out.stderr[-500:]))

    # a client that does not trust the test CA refuses the certificate itself
    try:
        c = http.client.HTTPSConnection("localhost", port, context=ssl.create_default_context(), timeout=10)
        c.request("GET", "/health")
        c.getresponse()
        check(False, "a client without the test CA must fail verification")
    except ssl.SSLCertVerificationError:
        check(True, "")

    # plain HTTP to the TLS port: no HTTP reply, the connection is closed
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    got = b""
    try:
        while True:
            b = s.recv(4096)
            if not b:
                break
            got += b
    except (socket.timeout, ConnectionResetError):
        pass
    s.close()
    check(not got.startswith(b"HTTP/"), "plain HTTP to the TLS port gets no HTTP service: %r" % got[:60])
    check(r.poll() is None, "the router is still running")
    harness.stop(r)
finally:
    harness.stop_all()
check.finish()
