/*
 * limit.c - how many denials per principal Authorize records.
 *
 * Every denial used to be written to the decisions table and the audit log,
 * so any holder of a certificate could flood both by asking about itself
 * (or by making requests that other services authorize). Each principal
 * now has a token bucket: `per_minute` recorded denials at once, refilled
 * at that rate. A denial without a token is still answered as a denial,
 * but only counted; the count goes into one summary audit event
 * (policy.denials_suppressed: principal, count, window) when the window
 * ends, a minute after the first uncounted denial: with the principal's
 * next recorded denial if that comes first, else from the decision
 * writer, which asks every second; or when the principal's bucket is
 * evicted. So a principal costs at most per_minute + 1 audit events a
 * minute, however fast it asks. The table keeps at most `max` principals
 * (least recently used evicted first); it never loses a count: when an
 * evicted bucket's summary cannot be queued, the new principal is simply
 * not limited (its denial is recorded, as before this limit).
 *
 * Pure bookkeeping: no I/O; store.c records the summaries. Any thread.
 */
#include "policy.h"
#include "err.h"
#include "spiffe.h"

#include <stdlib.h>
#include <string.h>

_Static_assert(POL_PRINCIPAL_MAX == SPIFFE_ID_MAX, "a bucket holds any SPIFFE ID");

#define WINDOW_MS 60000
#define NONE (-1)

struct bucket {
	char key[POL_PRINCIPAL_MAX + 1];
	uint64_t hash;
	int next;              /* hash chain */
	int older, newer;      /* LRU list */
	int64_t units;         /* tokens x WINDOW_MS */
	int64_t last_ms;       /* last refill */
	uint64_t suppressed;   /* uncounted denials since the last summary */
	int64_t first_ms;      /* the first of them */
};

struct pol_limiter {
	pthread_mutex_t mu;
	uint32_t per_minute;
	size_t max, used, nheads;
	struct bucket *b;
	int *heads;
	int free_list;         /* unused buckets, chained through next */
	int newest, oldest;
	/* Summaries of evicted buckets, waiting for pol_limiter_due. */
	struct pol_denial_summary *evicted;
	size_t nevicted, cap_evicted;
};

static uint64_t fnv(const char *s)
{
	uint64_t h = 1469598103934665603ULL;
	for (; *s; s++) {
		h ^= (unsigned char)*s;
		h *= 1099511628211ULL;
	}
	return h;
}

int pol_limiter_new(uint32_t per_minute, size_t max, struct pol_limiter **out)
{
	struct pol_limiter *l = calloc(1, sizeof *l);
	*out = NULL;
	if (l == NULL)
		return SW_ENOMEM;
	if (max < 1)
		max = 1;
	l->per_minute = per_minute;
	l->max = max;
	l->nheads = 1;
	while (l->nheads < max)
		l->nheads *= 2;
	l->cap_evicted = max < 256 ? max : 256;
	l->b = calloc(max, sizeof *l->b);
	l->heads = malloc(l->nheads * sizeof *l->heads);
	l->evicted = calloc(l->cap_evicted, sizeof *l->evicted);
	if (l->b == NULL || l->heads == NULL || l->evicted == NULL) {
		free(l->b);
		free(l->heads);
		free(l->evicted);
		free(l);
		return SW_ENOMEM;
	}
	for (size_t i = 0; i < l->nheads; i++)
		l->heads[i] = NONE;
	for (size_t i = 0; i < max; i++)
		l->b[i].next = i + 1 < max ? (int)(i + 1) : NONE;
	l->free_list = 0;
	l->newest = l->oldest = NONE;
	pthread_mutex_init(&l->mu, NULL);
	*out = l;
	return 0;
}

void pol_limiter_free(struct pol_limiter *l)
{
	if (l == NULL)
		return;
	pthread_mutex_destroy(&l->mu);
	free(l->b);
	free(l->heads);
	free(l->evicted);
	free(l);
}

/* ---- LRU list ---- */

static void unlink_lru(struct pol_limiter *l, int i)
{
	struct bucket *b = &l->b[i];
	if (b->older != NONE)
		l->b[b->older].newer = b->newer;
	else
		l->oldest = b->newer;
	if (b->newer != NONE)
		l->b[b->newer].older = b->older;
	else
		l->newest = b->older;
	b->older = b->newer = NONE;
}

static void push_newest(struct pol_limiter *l, int i)
{
	struct bucket *b = &l->b[i];
	b->older = l->newest;
	b->newer = NONE;
	if (l->newest != NONE)
		l->b[l->newest].newer = i;
	l->newest = i;
	if (l->oldest == NONE)
		l->oldest = i;
}

/* ---- hash chains ---- */

static int find(struct pol_limiter *l, const char *key, uint64_t h)
{
	for (int i = l->heads[h & (l->nheads - 1)]; i != NONE; i = l->b[i].next)
		if (l->b[i].hash == h && strcmp(l->b[i].key, key) == 0)
			return i;
	return NONE;
}

static void unchain(struct pol_limiter *l, int i)
{
	int *p = &l->heads[l->b[i].hash & (l->nheads - 1)];
	while (*p != i)
		p = &l->b[*p].next;
	*p = l->b[i].next;
}

static void summarize(const struct pol_limiter *l, struct bucket *b, int64_t now,
		      struct pol_denial_summary *s)
{
	memcpy(s->principal, b->key, sizeof s->principal);
	s->suppressed = b->suppressed;
	s->from_ms = b->first_ms;
	s->to_ms = now;
	s->per_minute = l->per_minute;
	b->suppressed = 0;
	b->first_ms = 0;
}

/* A bucket for key: a free one, or the least recently used one evicted
 * (its pending count queued as a summary). NONE when the oldest has a count
 * that cannot be queued. */
static int take(struct pol_limiter *l, const char *key, uint64_t h, int64_t now)
{
	int i = l->free_list;
	if (i != NONE) {
		l->free_list = l->b[i].next;
		l->used++;
	} else {
		i = l->oldest;
		struct bucket *old = &l->b[i];
		if (old->suppressed > 0) {
			if (l->nevicted == l->cap_evicted)
				return NONE;
			summarize(l, old, now, &l->evicted[l->nevicted++]);
		}
		unchain(l, i);
		unlink_lru(l, i);
	}
	struct bucket *b = &l->b[i];
	memset(b, 0, sizeof *b);
	memcpy(b->key, key, strlen(key) + 1);
	b->hash = h;
	b->older = b->newer = NONE;
	b->units = (int64_t)l->per_minute * WINDOW_MS;
	b->last_ms = now;
	b->next = l->heads[h & (l->nheads - 1)];
	l->heads[h & (l->nheads - 1)] = i;
	push_newest(l, i);
	return i;
}

int pol_limiter_admit(struct pol_limiter *l, const char *principal, int64_t now,
		      struct pol_denial_summary *sum, int *has_sum)
{
	*has_sum = 0;
	if (l == NULL || l->per_minute == 0 || strlen(principal) > POL_PRINCIPAL_MAX)
		return 1;
	uint64_t h = fnv(principal);
	int record;
	pthread_mutex_lock(&l->mu);
	int i = find(l, principal, h);
	if (i == NONE)
		i = take(l, principal, h, now);
	if (i == NONE) {
		pthread_mutex_unlock(&l->mu);
		return 1;
	}
	struct bucket *b = &l->b[i];
	unlink_lru(l, i);
	push_newest(l, i);
	/* Refill: per_minute tokens a minute, at most per_minute held. A
	 * token is WINDOW_MS units and each millisecond adds per_minute
	 * units, so nothing is lost to rounding however often it is asked. */
	int64_t cap = (int64_t)l->per_minute * WINDOW_MS, dt = now - b->last_ms;
	if (dt > 0) {
		b->units = dt >= WINDOW_MS ? cap : b->units + dt * (int64_t)l->per_minute;
		if (b->units > cap)
			b->units = cap;
		b->last_ms = now;
	}
	if (b->units >= WINDOW_MS) {
		b->units -= WINDOW_MS;
		record = 1;
		if (b->suppressed > 0 && now - b->first_ms >= WINDOW_MS) {
			summarize(l, b, now, sum);
			*has_sum = 1;
		}
	} else {
		record = 0;
		if (b->suppressed++ == 0)
			b->first_ms = now;
	}
	pthread_mutex_unlock(&l->mu);
	return record;
}

size_t pol_limiter_due(struct pol_limiter *l, int64_t now, int all,
		       struct pol_denial_summary *out, size_t max)
{
	size_t n = 0;
	if (l == NULL)
		return 0;
	pthread_mutex_lock(&l->mu);
	while (l->nevicted > 0 && n < max)
		out[n++] = l->evicted[--l->nevicted];
	for (int i = l->oldest; i != NONE && n < max; i = l->b[i].newer) {
		struct bucket *b = &l->b[i];
		if (b->suppressed > 0 && (all || now - b->first_ms >= WINDOW_MS))
			summarize(l, b, now, &out[n++]);
	}
	pthread_mutex_unlock(&l->mu);
	return n;
}
