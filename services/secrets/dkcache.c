/*
 * dkcache.c - unwrapped data keys kept for a bounded time, so that a Fetch
 * of secrets fetched a moment ago skips their unwrap.
 *
 * An entry is found by exactly what its unwrap depended on: the wrapped
 * key as stored (72 bytes: random nonce, ciphertext, tag), the master key
 * version, a BLAKE2b-256 of the wrap's associated data (the secret's
 * identity) and the keyring's generation (any change of the keyring, a
 * rotation, a retirement or a re-read of the file, makes every older entry
 * a miss). Unwrapping is deterministic, so a hit yields the very key the
 * unwrap would; a row that was altered, copied to another name, scope or
 * version, or rewrapped, is a miss and goes through the real unwrap (and
 * fails it, when it should). The value itself is still decrypted and
 * authenticated on every Fetch.
 *
 * Memory: one table, sodium_malloc'd at start (locked, guard pages, out of
 * core dumps), never grown. An entry lives at most ttl_ms from when it was
 * unwrapped (a hit does not extend it); a sweeper thread wipes expired
 * entries every second (sodium_memzero), and sec_dkcache_clear wipes them
 * all (master key rotation, a destroyed version). When the slots an entry
 * may use are full, the oldest of them is overwritten.
 */
#include "secrets.h"

#include "clock.h"
#include "err.h"

#include <pthread.h>
#include <sodium.h>
#include <string.h>
#include <time.h>

#define PROBE 8   /* slots an entry may use, from its home slot on */
#define SHARDS 16 /* locks: concurrent fetches rarely meet on one */

struct entry {
	int64_t expires_ms; /* 0: empty */
	uint64_t keys_gen;
	uint32_t mk_version;
	uint8_t aad_hash[32];
	uint8_t wrapped[SEC_WRAPPED_BYTES];
	uint8_t dk[SEC_KEY_BYTES];
};

struct sec_dkcache {
	pthread_mutex_t shard[SHARDS]; /* shard i guards slots [i * n / SHARDS, (i + 1) * n / SHARDS) */
	pthread_mutex_t mu;            /* the sweeper's sleep, and the counters */
	pthread_cond_t cv;
	pthread_t sweeper;
	int stopping, have_sweeper;
	int64_t ttl_ms;
	size_t n; /* slots, a power of two */
	struct entry *e; /* sodium_malloc */
	unsigned long long hits, misses;
};

static void wipe(struct entry *e)
{
	sodium_memzero(e, sizeof *e);
}

static void *sweep_main(void *arg)
{
	struct sec_dkcache *c = arg;
	pthread_mutex_lock(&c->mu);
	while (!c->stopping) {
		struct timespec dl = clock_after(CLOCK_REALTIME, 1000);
		pthread_cond_timedwait(&c->cv, &c->mu, &dl);
		int64_t now = clock_mono_ms();
		size_t per = c->n / SHARDS;
		for (size_t sh = 0; sh < SHARDS; sh++) {
			pthread_mutex_lock(&c->shard[sh]);
			for (size_t i = sh * per; i < (sh + 1) * per; i++)
				if (c->e[i].expires_ms != 0 && c->e[i].expires_ms <= now)
					wipe(&c->e[i]);
			pthread_mutex_unlock(&c->shard[sh]);
		}
	}
	pthread_mutex_unlock(&c->mu);
	return NULL;
}

int sec_dkcache_new(size_t entries, int64_t ttl_ms, struct sec_dkcache **out, char *err,
		    size_t errlen)
{
	*out = NULL;
	if (entries == 0 || ttl_ms <= 0)
		return 0; /* off */
	struct sec_dkcache *c = calloc(1, sizeof *c);
	if (c == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	c->n = PROBE * SHARDS;
	while (c->n < entries && c->n < ((size_t)1 << 20))
		c->n <<= 1;
	c->ttl_ms = ttl_ms;
	c->e = sodium_malloc(c->n * sizeof *c->e);
	if (c->e == NULL) {
		size_t n = c->n;
		free(c);
		return sw_errf(err, errlen, SW_ENOMEM, "cannot allocate %zu data key cache entries", n);
	}
	memset(c->e, 0, c->n * sizeof *c->e);
	for (int i = 0; i < SHARDS; i++)
		pthread_mutex_init(&c->shard[i], NULL);
	pthread_mutex_init(&c->mu, NULL);
	pthread_cond_init(&c->cv, NULL);
	if (pthread_create(&c->sweeper, NULL, sweep_main, c) != 0) {
		sec_dkcache_free(c);
		return sw_errf(err, errlen, SW_EINTERNAL, "cannot start the data key cache sweeper");
	}
	c->have_sweeper = 1;
	*out = c;
	return 0;
}

void sec_dkcache_free(struct sec_dkcache *c)
{
	if (c == NULL)
		return;
	if (c->have_sweeper) {
		pthread_mutex_lock(&c->mu);
		c->stopping = 1;
		pthread_cond_signal(&c->cv);
		pthread_mutex_unlock(&c->mu);
		pthread_join(c->sweeper, NULL);
	}
	sodium_free(c->e); /* wipes */
	for (int i = 0; i < SHARDS; i++)
		pthread_mutex_destroy(&c->shard[i]);
	pthread_mutex_destroy(&c->mu);
	pthread_cond_destroy(&c->cv);
	free(c);
}

/* An entry's shard and its home slot's index inside the shard: the wrap's
 * nonce is random, so its first bytes spread entries evenly. Probing stays
 * inside the shard. */
static size_t shard_of(const uint8_t *wrapped)
{
	return wrapped[0] % SHARDS;
}

static struct entry *slot_at(struct sec_dkcache *c, size_t shard, const uint8_t *wrapped,
			     size_t i)
{
	size_t per = c->n / SHARDS;
	uint64_t h;
	memcpy(&h, wrapped + 1, sizeof h);
	return &c->e[shard * per + (((size_t)h + i) & (per - 1))];
}

static int same(const struct entry *e, uint64_t gen, uint32_t mk, const uint8_t aad_hash[32],
		const uint8_t *wrapped)
{
	return e->keys_gen == gen && e->mk_version == mk && sodium_memcmp(e->aad_hash, aad_hash, 32) == 0 &&
	       sodium_memcmp(e->wrapped, wrapped, SEC_WRAPPED_BYTES) == 0;
}

void sec_dkcache_hash_aad(const uint8_t *aad, size_t aadlen, uint8_t out[32])
{
	crypto_generichash(out, 32, aad, aadlen, NULL, 0);
}

int sec_dkcache_get(struct sec_dkcache *c, uint64_t keys_gen, uint32_t mk_version,
		    const uint8_t aad_hash[32], const uint8_t *wrapped, uint8_t *dk)
{
	if (c == NULL)
		return 0;
	int64_t now = clock_mono_ms();
	size_t sh = shard_of(wrapped);
	int hit = 0;
	pthread_mutex_lock(&c->shard[sh]);
	for (size_t i = 0; i < PROBE && !hit; i++) {
		struct entry *e = slot_at(c, sh, wrapped, i);
		if (e->expires_ms == 0 || !same(e, keys_gen, mk_version, aad_hash, wrapped))
			continue;
		if (e->expires_ms <= now) {
			wipe(e);
			break;
		}
		memcpy(dk, e->dk, SEC_KEY_BYTES);
		hit = 1;
	}
	pthread_mutex_unlock(&c->shard[sh]);
	__atomic_add_fetch(hit ? &c->hits : &c->misses, 1, __ATOMIC_RELAXED);
	return hit;
}

void sec_dkcache_put(struct sec_dkcache *c, uint64_t keys_gen, uint32_t mk_version,
		     const uint8_t aad_hash[32], const uint8_t *wrapped, const uint8_t *dk)
{
	if (c == NULL)
		return;
	int64_t now = clock_mono_ms();
	size_t sh = shard_of(wrapped);
	pthread_mutex_lock(&c->shard[sh]);
	struct entry *slot = NULL;
	for (size_t i = 0; i < PROBE; i++) {
		struct entry *e = slot_at(c, sh, wrapped, i);
		if (e->expires_ms == 0 || e->expires_ms <= now || same(e, keys_gen, mk_version, aad_hash, wrapped)) {
			slot = e;
			break;
		}
		if (slot == NULL || e->expires_ms < slot->expires_ms)
			slot = e; /* the oldest, unless a free one turns up */
	}
	wipe(slot);
	slot->expires_ms = now + c->ttl_ms;
	slot->keys_gen = keys_gen;
	slot->mk_version = mk_version;
	memcpy(slot->aad_hash, aad_hash, 32);
	memcpy(slot->wrapped, wrapped, SEC_WRAPPED_BYTES);
	memcpy(slot->dk, dk, SEC_KEY_BYTES);
	pthread_mutex_unlock(&c->shard[sh]);
}

void sec_dkcache_clear(struct sec_dkcache *c)
{
	if (c == NULL)
		return;
	size_t per = c->n / SHARDS;
	for (size_t sh = 0; sh < SHARDS; sh++) {
		pthread_mutex_lock(&c->shard[sh]);
		sodium_memzero(c->e + sh * per, per * sizeof *c->e);
		pthread_mutex_unlock(&c->shard[sh]);
	}
}

void sec_dkcache_stats(struct sec_dkcache *c, size_t *live, unsigned long long *hits,
		       unsigned long long *misses)
{
	*live = 0;
	*hits = *misses = 0;
	if (c == NULL)
		return;
	size_t per = c->n / SHARDS;
	for (size_t sh = 0; sh < SHARDS; sh++) {
		pthread_mutex_lock(&c->shard[sh]);
		for (size_t i = sh * per; i < (sh + 1) * per; i++)
			*live += c->e[i].expires_ms != 0;
		pthread_mutex_unlock(&c->shard[sh]);
	}
	*hits = __atomic_load_n(&c->hits, __ATOMIC_RELAXED);
	*misses = __atomic_load_n(&c->misses, __ATOMIC_RELAXED);
}
