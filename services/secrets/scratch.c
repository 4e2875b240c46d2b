/*
 * scratch.c - per-thread secure scratch memory for the hot paths.
 *
 * sodium_malloc costs tens of microseconds (it maps guard pages and locks
 * the region), too much for every data key and value of every Fetch. Each
 * handler thread therefore keeps one region per slot, grown on demand and
 * reused; the caller wipes what it used before returning, and the region is
 * wiped and unmapped when the thread exits.
 */
#include "secrets.h"

#include <pthread.h>
#include <sodium.h>

#define SLOTS 3
#define MIN_CAP 4096

struct scratch {
	uint8_t *p[SLOTS];
	size_t cap[SLOTS];
	size_t used[SLOTS];
};

static pthread_key_t key;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void destroy(void *arg)
{
	struct scratch *s = arg;
	for (int i = 0; i < SLOTS; i++)
		if (s->p[i] != NULL)
			sodium_free(s->p[i]); /* wipes */
	sodium_free(s);
}

static void make_key(void)
{
	pthread_key_create(&key, destroy);
}

static struct scratch *mine(void)
{
	pthread_once(&once, make_key);
	struct scratch *s = pthread_getspecific(key);
	if (s == NULL) {
		s = sodium_malloc(sizeof *s);
		if (s == NULL)
			return NULL;
		sodium_memzero(s, sizeof *s);
		pthread_setspecific(key, s);
	}
	return s;
}

uint8_t *sec_scratch(int slot, size_t n)
{
	struct scratch *s = mine();
	if (s == NULL || slot < 0 || slot >= SLOTS || n > SEC_SCRATCH_MAX)
		return NULL;
	if (s->cap[slot] < n) {
		size_t cap = s->cap[slot] ? s->cap[slot] : MIN_CAP;
		while (cap < n)
			cap *= 2;
		if (s->p[slot] != NULL)
			sodium_free(s->p[slot]);
		s->p[slot] = sodium_malloc(cap); /* a multiple of 64: aligned */
		s->cap[slot] = s->p[slot] ? cap : 0;
		s->used[slot] = 0;
		if (s->p[slot] == NULL)
			return NULL;
	}
	if (n > s->used[slot])
		s->used[slot] = n;
	return s->p[slot];
}

void sec_scratch_wipe(int slot)
{
	struct scratch *s = mine();
	if (s == NULL || slot < 0 || slot >= SLOTS || s->p[slot] == NULL)
		return;
	sodium_memzero(s->p[slot], s->used[slot]);
	s->used[slot] = 0;
}
