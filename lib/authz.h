/*
 * authz.h - the client side of the policy service for every other service:
 * "may this principal do this action on this resource?"
 *
 * Every state-changing RPC, and every read of a protected resource, asks
 * authz_check() before acting. Deny by default: when the policy service
 * cannot answer, the answer is no (SW_EUNAVAIL, so the caller can say
 * "unavailable" rather than "denied").
 *
 * Allow decisions are cached for a few seconds, and never past a policy
 * change: a background stream (Policy/WatchRevision) reports each new
 * revision as soon as it is applied and the cache is dropped; while that
 * stream is down nothing is served from the cache. Denials are never
 * cached (they are rare, and audited by the policy service).
 *
 * Vocabulary (actions x resource kinds) and built-in roles:
 * proto/slipway/v1/authorization.md.
 */
#ifndef SLIPWAY_AUTHZ_H
#define SLIPWAY_AUTHZ_H

#include "rpc.h"

#include <stddef.h>
#include <stdint.h>

struct authz;

struct authz_opts {
	struct rpc_client *policy; /* channel to the policy service (borrowed) */
	int cache_ms;              /* allow-cache lifetime; 0 = 3000, -1 = no cache */
	int timeout_ms;            /* per Authorize call; 0 = 5000 */
};

struct authz_req {
	const char *principal;     /* SPIFFE ID (normally rpc_peer(ctx)) */
	const char *action;        /* "push", "read", "deploy", ... */
	const char *kind;          /* "release", "secret", "deployment", ... */
	const char *app;           /* "" or NULL when not app-scoped */
	const char *environment;
	const char *name;
};

/* Starts the client and its revision watch. Returns 0 and *out. */
int authz_new(const struct authz_opts *o, struct authz **out, char *err, size_t errlen);
void authz_free(struct authz *a);

/*
 * Returns 0 when allowed; SW_EPERM when denied, with the policy's reasons
 * in why (also when the policy service refused the question itself, e.g.
 * because this service may not ask about others); SW_EUNAVAIL when the
 * policy service could not answer. ctx (may be
 * NULL) is the handler's call: its deadline and request id carry over.
 * Any thread.
 */
int authz_check(struct authz *a, struct rpc_ctx *ctx, const struct authz_req *q, char *why,
		size_t whylen);

/* Convenience for handlers: checks rpc_peer(ctx) and on failure sets the
 * call's status message ("permission denied: ...") and returns the code. */
int authz_require(struct authz *a, struct rpc_ctx *ctx, const char *action, const char *kind,
		  const char *app, const char *environment, const char *name);

/* The newest policy revision seen (0 before the first). */
uint64_t authz_revision(struct authz *a);

/* Cache statistics (tests and metrics). */
void authz_stats(struct authz *a, uint64_t *hits, uint64_t *misses);

#endif
