/* Authenticated internal traffic: with a cluster secret (--cluster-secret-file on the router and every instance),
 * each call one pdserve process makes to another (router -> instance requests, health polls, scrapes, drains,
 * aborts; instance -> router registration) carries
 *   X-Pdserve-Auth: t=<unix seconds>;sig=<hex HMAC-SHA256(secret, "pdserve-v1\n" method "\n" path "\n" t "\n"
 *                   hex SHA-256(body))>
 * and the receiver refuses a call whose signature does not match or whose time is more than PD_AUTH_WINDOW seconds
 * from its own clock. Process-wide state: set once at start-up, before any loop runs. */
#ifndef PD_AUTH_H
#define PD_AUTH_H

#include <event2/http.h>
#include <stddef.h>

#include "common/pd_common.h"

#define PD_AUTH_WINDOW 60.0 /* seconds a signed call stays valid: hosts' clocks must agree to well within it */

/* Reads the secret: the file's bytes, surrounding white space trimmed, at least 16 bytes. Warns when the file is
 * readable by group or others. err says why on failure. */
pd_status pd_auth_load_secret(const char *path, char *err, size_t errlen);
/* A secret is set. */
int pd_auth_enabled(void);
/* Adds the X-Pdserve-Auth header for this call to h (nothing without a secret). path: with its query. */
void pd_auth_sign(struct evkeyvalq *h, const char *method, const char *path, const void *body, size_t len);
/* 1 if req carries a valid signature (or no secret is set); else 0, why says what was wrong. Reads the body without
 * consuming it. */
int pd_auth_verify(struct evhttp_request *req, char *why, size_t n);
/* Verifies req; on failure answers 401 (OpenAI's error shape) and logs, at most once per 10 s with the count since
 * the last line, what was refused (who: "router", "decode", ...). Returns what pd_auth_verify returned. */
int pd_auth_check(struct evhttp_request *req, const char *who);
/* Forgets the secret (tests, and exit). */
void pd_auth_clear(void);

#endif
