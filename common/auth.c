/* Internal calls signed with the cluster secret (pd_auth.h): HMAC-SHA256 from OpenSSL's libcrypto. */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "common/pd_auth.h"
#include "common/pd_http.h"

static unsigned char g_secret[1024];
static size_t g_len;
static pthread_mutex_t g_log_mu = PTHREAD_MUTEX_INITIALIZER;
static pd_log_limit g_refusals;

pd_status pd_auth_load_secret(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "--cluster-secret-file %s: %s", path, strerror(errno));
        return PD_ERR_IO;
    }
    struct stat sb;
    if (fstat(fileno(f), &sb) == 0 && (sb.st_mode & 077))
        pd_warn("--cluster-secret-file %s is readable by group or others (mode %03o); chmod 600 it", path,
                (unsigned)(sb.st_mode & 0777));
    unsigned char buf[sizeof g_secret + 1];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    size_t a = 0;
    while (a < n && (buf[a] == ' ' || buf[a] == '\t' || buf[a] == '\n' || buf[a] == '\r')) a++;
    while (n > a && (buf[n - 1] == ' ' || buf[n - 1] == '\t' || buf[n - 1] == '\n' || buf[n - 1] == '\r')) n--;
    if (n - a > sizeof g_secret) {
        snprintf(err, errlen, "--cluster-secret-file %s: longer than %zu bytes", path, sizeof g_secret);
        return PD_ERR_INVALID;
    }
    if (n - a < 16) {
        snprintf(err, errlen, "--cluster-secret-file %s: the secret must have at least 16 bytes, it has %zu", path,
                 n - a);
        return PD_ERR_INVALID;
    }
    memcpy(g_secret, buf + a, n - a);
    g_len = n - a;
    OPENSSL_cleanse(buf, sizeof buf);
    return PD_OK;
}

int pd_auth_enabled(void) { return g_len > 0; }

void pd_auth_clear(void)
{
    OPENSSL_cleanse(g_secret, sizeof g_secret);
    g_len = 0;
}

static void hex(const unsigned char *p, size_t n, char *out)
{
    static const char d[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = d[p[i] >> 4];
        out[2 * i + 1] = d[p[i] & 15];
    }
    out[2 * n] = 0;
}

/* sig (65 bytes): the hex HMAC of the call */
static int sign(const char *method, const char *path, long t, const void *body, size_t len, char *sig)
{
    unsigned char h[EVP_MAX_MD_SIZE], mac[EVP_MAX_MD_SIZE];
    unsigned int hn = 0, mn = 0;
    char bh[2 * 32 + 1];
    if (!EVP_Digest(body ? body : "", body ? len : 0, h, &hn, EVP_sha256(), NULL) || hn != 32) return 0;
    hex(h, hn, bh);
    pd_buf msg = {0};
    pd_buf_printf(&msg, "pdserve-v1\n%s\n%s\n%ld\n%s", method, path, t, bh);
    int ok = !msg.failed &&
        HMAC(EVP_sha256(), g_secret, (int)g_len, (const unsigned char *)msg.data, msg.len, mac, &mn) != NULL &&
        mn == 32;
    pd_buf_free(&msg);
    if (ok) hex(mac, mn, sig);
    return ok;
}

void pd_auth_sign(struct evkeyvalq *h, const char *method, const char *path, const void *body, size_t len)
{
    if (!g_len) return;
    const long t = (long)time(NULL);
    char sig[65], v[96];
    if (!sign(method, path, t, body, len, sig)) return; /* unsigned: the peer refuses it and says so */
    snprintf(v, sizeof v, "t=%ld;sig=%s", t, sig);
    evhttp_add_header(h, "X-Pdserve-Auth", v);
}

static const char *method_name(enum evhttp_cmd_type m)
{
    switch (m) {
    case EVHTTP_REQ_GET: return "GET";
    case EVHTTP_REQ_POST: return "POST";
    case EVHTTP_REQ_DELETE: return "DELETE";
    case EVHTTP_REQ_PUT: return "PUT";
    default: return "OTHER";
    }
}

int pd_auth_verify(struct evhttp_request *req, char *why, size_t n)
{
    if (!g_len) return 1;
    const char *v = evhttp_find_header(evhttp_request_get_input_headers(req), "X-Pdserve-Auth");
    long t = 0;
    char got[65] = "", want[65];
    if (!v) {
        snprintf(why, n, "no X-Pdserve-Auth header");
        return 0;
    }
    if (sscanf(v, "t=%ld;sig=%64[0-9a-f]", &t, got) != 2 || strlen(got) != 64) {
        snprintf(why, n, "a malformed X-Pdserve-Auth header");
        return 0;
    }
    const double skew = (double)time(NULL) - (double)t;
    if (skew > PD_AUTH_WINDOW || skew < -PD_AUTH_WINDOW) {
        snprintf(why, n, "a signature %.0f s %s this host's clock (window %.0f s): replayed, or clocks disagree",
                 skew < 0 ? -skew : skew, skew < 0 ? "ahead of" : "behind", PD_AUTH_WINDOW);
        return 0;
    }
    struct evbuffer *b = evhttp_request_get_input_buffer(req);
    const size_t len = evbuffer_get_length(b);
    const void *body = len ? evbuffer_pullup(b, -1) : NULL;
    if (!sign(method_name(evhttp_request_get_command(req)), evhttp_request_get_uri(req), t, body, len, want)) {
        snprintf(why, n, "out of memory checking the signature");
        return 0;
    }
    if (CRYPTO_memcmp(got, want, 64) != 0) {
        snprintf(why, n, "a wrong signature (another cluster secret, or a changed request)");
        return 0;
    }
    return 1;
}

int pd_auth_check(struct evhttp_request *req, const char *who)
{
    char why[160];
    if (pd_auth_verify(req, why, sizeof why)) return 1;
    unsigned long n;
    double since;
    pthread_mutex_lock(&g_log_mu);
    if (pd_log_due(&g_refusals, 10, &n, &since)) {
        char *addr = NULL;
        ev_uint16_t port = 0;
        evhttp_connection_get_peer(evhttp_request_get_connection(req), &addr, &port);
        pd_warn("%s: refused %lu internal call%s without a valid cluster signature in %.0f s (latest: %s %s from %s: "
                "%s)",
                who, n, n == 1 ? "" : "s", since, method_name(evhttp_request_get_command(req)),
                evhttp_request_get_uri(req), addr ? addr : "?", why);
    }
    pthread_mutex_unlock(&g_log_mu);
    pd_http_reply_error(req, 401, "authentication_error", NULL, "this route needs the cluster's signature: %s", why);
    return 0;
}
