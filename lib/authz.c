/*
 * authz.c - Authorize calls with an allow-cache bound to the policy revision
 * (see authz.h).
 */
#include "authz.h"
#include "err.h"
#include "log.h"

#include "slipway/v1/policy.pb-c.h"
#include "clock.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CACHE_SLOTS 4096 /* power of two */
#define KEY_MAX 1024

struct entry {
	uint64_t hash;
	uint64_t revision;
	int64_t expires_ms;
	char *key;
};

struct authz {
	struct authz_opts o;
	pthread_mutex_t mu;
	struct entry slots[CACHE_SLOTS];
	size_t used;
	uint64_t revision;      /* newest revision reported by the watch */
	int watching;           /* the watch stream is up: the cache may serve */
	uint64_t hits, misses;
	pthread_t watcher;
	atomic_int stop;
	struct rpc_stream *stream;
	pthread_mutex_t smu;
};

static uint64_t fnv1a(const char *s, size_t n)
{
	uint64_t h = 1469598103934665603ULL;
	for (size_t i = 0; i < n; i++) {
		h ^= (unsigned char)s[i];
		h *= 1099511628211ULL;
	}
	return h ? h : 1;
}

static void cache_clear_locked(struct authz *a)
{
	for (size_t i = 0; i < CACHE_SLOTS; i++) {
		free(a->slots[i].key);
		memset(&a->slots[i], 0, sizeof a->slots[i]);
	}
	a->used = 0;
}

/* Builds the cache key; returns its length or -1 if it does not fit. */
static int make_key(const struct authz_req *q, char *out, size_t cap)
{
	int n = snprintf(out, cap, "%s\x1f%s\x1f%s\x1f%s\x1f%s\x1f%s", q->principal, q->action,
			 q->kind, q->app ? q->app : "", q->environment ? q->environment : "",
			 q->name ? q->name : "");
	return (n < 0 || (size_t)n >= cap) ? -1 : n;
}

static int cache_lookup(struct authz *a, const char *key, size_t n)
{
	uint64_t h = fnv1a(key, n);
	int hit = 0;
	pthread_mutex_lock(&a->mu);
	if (a->watching) {
		for (size_t i = 0; i < CACHE_SLOTS; i++) {
			struct entry *e = &a->slots[(h + i) & (CACHE_SLOTS - 1)];
			if (e->hash == 0)
				break;
			if (e->hash == h && strcmp(e->key, key) == 0) {
				hit = e->revision == a->revision && e->expires_ms > clock_mono_ms();
				break;
			}
		}
	}
	if (hit)
		a->hits++;
	else
		a->misses++;
	pthread_mutex_unlock(&a->mu);
	return hit;
}

static void cache_store(struct authz *a, const char *key, size_t n, uint64_t revision)
{
	uint64_t h = fnv1a(key, n);
	pthread_mutex_lock(&a->mu);
	/* Only decisions made at the revision the watch reports are kept. */
	if (!a->watching || revision != a->revision)
		goto out;
	if (a->used >= CACHE_SLOTS / 2)
		cache_clear_locked(a);
	for (size_t i = 0; i < CACHE_SLOTS; i++) {
		struct entry *e = &a->slots[(h + i) & (CACHE_SLOTS - 1)];
		if (e->hash == 0 || (e->hash == h && strcmp(e->key, key) == 0)) {
			if (e->hash == 0) {
				e->key = strdup(key);
				if (e->key == NULL)
					goto out;
				e->hash = h;
				a->used++;
			}
			e->revision = revision;
			e->expires_ms = clock_mono_ms() + a->o.cache_ms;
			break;
		}
	}
out:
	pthread_mutex_unlock(&a->mu);
}

static void set_revision(struct authz *a, uint64_t rev, int watching)
{
	pthread_mutex_lock(&a->mu);
	if (rev != a->revision || !watching)
		cache_clear_locked(a);
	if (watching)
		a->revision = rev;
	a->watching = watching;
	pthread_mutex_unlock(&a->mu);
}

static void *watch_main(void *arg)
{
	struct authz *a = arg;
	int backoff = 200;
	char err[256];
	while (!atomic_load(&a->stop)) {
		struct rpc_stream *s = NULL;
		struct rpc_call_opts co = { .timeout_ms = 24LL * 3600 * 1000 };
		if (rpc_stream_open(a->o.policy, &slipway__v1__policy__descriptor, "WatchRevision", &co,
				    &s, err, sizeof err) == 0) {
			/* authz_free sets stop, then cancels the registered stream under
			 * smu: check stop under the same lock, so that a stream opened
			 * while authz_free ran is cancelled too (else recv would block
			 * until the policy service sends something). */
			pthread_mutex_lock(&a->smu);
			a->stream = s;
			if (atomic_load(&a->stop))
				rpc_stream_cancel(s);
			pthread_mutex_unlock(&a->smu);
			Slipway__V1__WatchRevisionRequest req = SLIPWAY__V1__WATCH_REVISION_REQUEST__INIT;
			if (rpc_stream_send(s, &req.base) == 0 && rpc_stream_close_send(s) == 0) {
				ProtobufCMessage *m = NULL;
				while (!atomic_load(&a->stop) && rpc_stream_recv(s, &m) == 1) {
					Slipway__V1__GetRevisionResponse *r = (void *)m;
					set_revision(a, r->revision, 1);
					backoff = 200;
					protobuf_c_message_free_unpacked(m, NULL);
				}
			}
			set_revision(a, 0, 0);
			pthread_mutex_lock(&a->smu);
			a->stream = NULL;
			pthread_mutex_unlock(&a->smu);
			rpc_stream_cancel(s);
			rpc_stream_finish(s, err, sizeof err);
		}
		for (int waited = 0; waited < backoff && !atomic_load(&a->stop); waited += 50) {
			struct timespec ts = { 0, 50 * 1000000L };
			nanosleep(&ts, NULL);
		}
		backoff = backoff * 2 > 5000 ? 5000 : backoff * 2;
	}
	return NULL;
}

int authz_new(const struct authz_opts *o, struct authz **out, char *err, size_t errlen)
{
	*out = NULL;
	if (o->policy == NULL)
		return sw_errf(err, errlen, SW_EINVAL, "authorization needs a policy client");
	struct authz *a = calloc(1, sizeof *a);
	if (a == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	a->o = *o;
	if (a->o.cache_ms == 0)
		a->o.cache_ms = 3000;
	if (a->o.timeout_ms <= 0)
		a->o.timeout_ms = 5000;
	pthread_mutex_init(&a->mu, NULL);
	pthread_mutex_init(&a->smu, NULL);
	atomic_init(&a->stop, 0);
	if (a->o.cache_ms > 0 && pthread_create(&a->watcher, NULL, watch_main, a) != 0) {
		pthread_mutex_destroy(&a->mu);
		pthread_mutex_destroy(&a->smu);
		free(a);
		return sw_errf(err, errlen, SW_EINTERNAL, "cannot start the revision watch");
	}
	*out = a;
	return 0;
}

void authz_free(struct authz *a)
{
	if (a == NULL)
		return;
	atomic_store(&a->stop, 1);
	if (a->o.cache_ms > 0) {
		pthread_mutex_lock(&a->smu);
		if (a->stream != NULL)
			rpc_stream_cancel(a->stream);
		pthread_mutex_unlock(&a->smu);
		pthread_join(a->watcher, NULL);
	}
	cache_clear_locked(a);
	pthread_mutex_destroy(&a->mu);
	pthread_mutex_destroy(&a->smu);
	free(a);
}

int authz_check(struct authz *a, struct rpc_ctx *ctx, const struct authz_req *q, char *why,
		size_t whylen)
{
	char key[KEY_MAX];
	int klen = make_key(q, key, sizeof key);
	if (klen > 0 && a->o.cache_ms > 0 && cache_lookup(a, key, (size_t)klen))
		return 0;

	Slipway__V1__AuthorizeRequest req = SLIPWAY__V1__AUTHORIZE_REQUEST__INIT;
	Slipway__V1__Resource res = SLIPWAY__V1__RESOURCE__INIT;
	req.principal = (char *)q->principal;
	req.action = (char *)q->action;
	res.kind = (char *)q->kind;
	res.app = (char *)(q->app ? q->app : "");
	res.environment = (char *)(q->environment ? q->environment : "");
	res.name = (char *)(q->name ? q->name : "");
	req.resource = &res;
	ProtobufCMessage *out = NULL;
	char err[256];
	struct rpc_call_opts co = { .timeout_ms = a->o.timeout_ms, .parent = ctx };
	int rc = rpc_call(a->o.policy, &slipway__v1__policy__descriptor, "Authorize", &req.base, &out,
			  &co, err, sizeof err);
	if (rc == SW_EPERM || rc == SW_EINVAL) {
		/* The policy service refused the question itself (this service
		 * may not ask, or asked something malformed): a denial. */
		log_warn("authorization question refused: denying", "action=%s kind=%s error=%s",
			 q->action, q->kind, err);
		sw_errf(why, whylen, 0, "the policy service refused the question: %s", err);
		return SW_EPERM;
	}
	if (rc != 0) {
		log_warn("authorization unavailable: denying", "action=%s kind=%s error=%s", q->action,
			 q->kind, err);
		sw_errf(why, whylen, 0, "the policy service could not answer: %s", err);
		return SW_EUNAVAIL;
	}
	Slipway__V1__AuthorizeResponse *r = (void *)out;
	if (r->allowed) {
		if (klen > 0 && a->o.cache_ms > 0)
			cache_store(a, key, (size_t)klen, r->revision);
		rc = 0;
	} else {
		size_t off = 0;
		if (whylen > 0)
			why[0] = '\0';
		for (size_t i = 0; i < r->n_reasons && off + 1 < whylen; i++) {
			int n = snprintf(why + off, whylen - off, "%s%s", i ? "; " : "", r->reasons[i]);
			if (n < 0)
				break;
			off += (size_t)n;
		}
		if (r->n_reasons == 0)
			sw_errf(why, whylen, 0, "no rule allows %s on %s", q->action, q->kind);
		rc = SW_EPERM;
	}
	protobuf_c_message_free_unpacked(out, NULL);
	return rc;
}

int authz_require(struct authz *a, struct rpc_ctx *ctx, const char *action, const char *kind,
		  const char *app, const char *environment, const char *name)
{
	struct authz_req q = { rpc_peer(ctx), action, kind, app, environment, name };
	char why[512];
	int rc = authz_check(a, ctx, &q, why, sizeof why);
	if (rc == SW_EPERM)
		return rpc_errorf(ctx, rc, "permission denied: %s may not %s %s: %s", rpc_peer(ctx),
				  action, kind, why);
	if (rc != 0)
		return rpc_errorf(ctx, rc, "cannot authorize: %s", why);
	return 0;
}

uint64_t authz_revision(struct authz *a)
{
	pthread_mutex_lock(&a->mu);
	uint64_t r = a->revision;
	pthread_mutex_unlock(&a->mu);
	return r;
}

void authz_stats(struct authz *a, uint64_t *hits, uint64_t *misses)
{
	pthread_mutex_lock(&a->mu);
	*hits = a->hits;
	*misses = a->misses;
	pthread_mutex_unlock(&a->mu);
}
