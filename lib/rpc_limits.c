/*
 * rpc_limits.c - the admission limits of rpc_limits.h: service-wide
 * counters and a table of callers (SPIFFE ID -> what that caller holds),
 * all under one mutex. A caller's entry lives while it holds anything, so
 * the table never has more entries than calls in flight.
 */
#include "rpc_limits.h"
#include "err.h"
#include "spiffe.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NBUCKETS 256

struct rpc_limits_peer {
	struct rpc_limits_peer *next;
	int streams;
	int calls;
	char id[SPIFFE_ID_MAX + 1];
};

struct rpc_limits {
	struct rpc_limits_opts o;
	pthread_mutex_t mu;
	int streams;        /* open streams */
	int worker_streams; /* streams queued for or on a worker */
	struct rpc_limits_peer *bucket[NBUCKETS];
};

static unsigned bucket_of(const char *s)
{
	uint32_t h = 2166136261u; /* FNV-1a */
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 16777619u;
	return h % NBUCKETS;
}

int rpc_limits_new(const struct rpc_limits_opts *o, struct rpc_limits **out)
{
	struct rpc_limits *l = calloc(1, sizeof *l);
	*out = NULL;
	if (l == NULL)
		return SW_ENOMEM;
	l->o = *o;
	if (l->o.max_streams < 1)
		l->o.max_streams = 1;
	if (l->o.max_streams_per_peer < 1)
		l->o.max_streams_per_peer = 1;
	if (l->o.max_calls_per_peer < 1)
		l->o.max_calls_per_peer = 1;
	if (l->o.max_worker_streams < 1)
		l->o.max_worker_streams = 1;
	pthread_mutex_init(&l->mu, NULL);
	*out = l;
	return 0;
}

void rpc_limits_free(struct rpc_limits *l)
{
	if (l == NULL)
		return;
	for (int i = 0; i < NBUCKETS; i++)
		while (l->bucket[i] != NULL) {
			struct rpc_limits_peer *p = l->bucket[i];
			l->bucket[i] = p->next;
			free(p);
		}
	pthread_mutex_destroy(&l->mu);
	free(l);
}

/* Finds (or, with create, adds) the entry of id. Under mu. */
static struct rpc_limits_peer *peer_get(struct rpc_limits *l, const char *id, int create)
{
	unsigned b = bucket_of(id);
	for (struct rpc_limits_peer *p = l->bucket[b]; p != NULL; p = p->next)
		if (strcmp(p->id, id) == 0)
			return p;
	if (!create)
		return NULL;
	struct rpc_limits_peer *p = calloc(1, sizeof *p);
	if (p == NULL)
		return NULL;
	snprintf(p->id, sizeof p->id, "%s", id);
	p->next = l->bucket[b];
	l->bucket[b] = p;
	return p;
}

/* Drops p from the table once it holds nothing. Under mu. */
static void peer_put(struct rpc_limits *l, struct rpc_limits_peer *p)
{
	if (p->streams > 0 || p->calls > 0)
		return;
	struct rpc_limits_peer **pp = &l->bucket[bucket_of(p->id)];
	while (*pp != NULL && *pp != p)
		pp = &(*pp)->next;
	if (*pp == p)
		*pp = p->next;
	free(p);
}

int rpc_limits_admit(struct rpc_limits *l, const char *peer, int service, int stream,
		     int worker, struct rpc_hold *h, char *why, size_t whylen)
{
	int rc = 0;
	memset(h, 0, sizeof *h);
	if (!stream && !worker)
		return 0;
	pthread_mutex_lock(&l->mu);
	struct rpc_limits_peer *p = peer_get(l, peer, 1);
	if (p == NULL) {
		rc = sw_errf(why, whylen, SW_ELIMIT, "server out of memory");
		goto out;
	}
	if (stream && l->streams >= l->o.max_streams) {
		rc = sw_errf(why, whylen, SW_ELIMIT,
			     "too many open streams in this service (%d, --max-streams)",
			     l->o.max_streams);
		goto out;
	}
	if (stream && p->streams >= l->o.max_streams_per_peer) {
		rc = sw_errf(why, whylen, SW_ELIMIT,
			     "too many open streams from %s (%d, --max-streams-per-peer)", peer,
			     l->o.max_streams_per_peer);
		goto out;
	}
	if (stream && worker && l->worker_streams >= l->o.max_worker_streams) {
		rc = sw_errf(why, whylen, SW_ELIMIT,
			     "too many streams holding a handler thread (%d, --max-worker-streams)",
			     l->o.max_worker_streams);
		goto out;
	}
	if (worker && !service && p->calls >= l->o.max_calls_per_peer) {
		rc = sw_errf(why, whylen, SW_ELIMIT,
			     "too many calls in progress from %s (%d, --max-calls-per-peer)", peer,
			     l->o.max_calls_per_peer);
		goto out;
	}
	if (stream) {
		l->streams++;
		p->streams++;
		h->stream = 1;
	}
	if (worker) {
		p->calls++;
		if (stream)
			l->worker_streams++;
		h->worker = 1;
	}
	h->peer = p;
out:
	if (p != NULL && h->peer == NULL)
		peer_put(l, p);
	pthread_mutex_unlock(&l->mu);
	return rc;
}

void rpc_limits_release_worker(struct rpc_limits *l, struct rpc_hold *h)
{
	if (h->peer == NULL || !h->worker)
		return;
	pthread_mutex_lock(&l->mu);
	h->peer->calls--;
	if (h->stream)
		l->worker_streams--;
	h->worker = 0;
	struct rpc_limits_peer *p = h->peer;
	if (!h->stream)
		h->peer = NULL;
	peer_put(l, p);
	pthread_mutex_unlock(&l->mu);
}

void rpc_limits_release(struct rpc_limits *l, struct rpc_hold *h)
{
	rpc_limits_release_worker(l, h);
	if (h->peer == NULL)
		return;
	pthread_mutex_lock(&l->mu);
	if (h->stream) {
		h->peer->streams--;
		l->streams--;
		h->stream = 0;
	}
	peer_put(l, h->peer);
	h->peer = NULL;
	pthread_mutex_unlock(&l->mu);
}

void rpc_limits_counts(struct rpc_limits *l, int *streams, int *worker_streams)
{
	pthread_mutex_lock(&l->mu);
	*streams = l->streams;
	*worker_streams = l->worker_streams;
	pthread_mutex_unlock(&l->mu);
}
