/*
 * merkle.c - RFC 6962 trees from stored complete subtrees (see merkle.h).
 *
 * The proof builders follow the RFC's recursive definitions (PATH and
 * SUBPROOF) over subtree ranges [a, b). Each MTH(D[a:b]) they need is split
 * into aligned complete subtrees, which are the stored nodes. The same code
 * runs twice: once to plan (record which nodes are needed), once to compute
 * (look the hashes up in the filled plan).
 */
#include "merkle.h"
#include "err.h"

#include "hash.h"

#include <string.h>

void merkle_leaf_hash(const uint8_t *data, size_t len, uint8_t out[MERKLE_HASH])
{
	static const uint8_t z = 0x00;
	hash_sha256(&z, 1, data, len, NULL, 0, out);
}

void merkle_node_hash(const uint8_t left[MERKLE_HASH], const uint8_t right[MERKLE_HASH],
		      uint8_t out[MERKLE_HASH])
{
	static const uint8_t one = 0x01;
	/* out may alias left or right: all input is read before out is written. */
	hash_sha256(&one, 1, left, MERKLE_HASH, right, MERKLE_HASH, out);
}

void merkle_empty_root(uint8_t out[MERKLE_HASH])
{
	hash_sha256("", 0, NULL, 0, NULL, 0, out);
}

/* Largest power of two strictly less than n (n >= 2). "k < n - k" is
 * "2k < n" without overflowing: for n > 2^63, 2k wraps to 0 at k = 2^63. */
static uint64_t split_point(uint64_t n)
{
	uint64_t k = 1;
	while (k < n - k)
		k <<= 1;
	return k;
}

static int is_pow2(uint64_t n)
{
	return n != 0 && (n & (n - 1)) == 0;
}

static int log2u(uint64_t n)
{
	int l = 0;
	while ((1ULL << l) < n)
		l++;
	return l;
}

/* The walk: plan mode records nodes, compute mode looks them up. */
struct walk {
	int planning;
	struct merkle_plan *plan;        /* planning */
	const struct merkle_plan *filled; /* computing */
	int missing;
	uint8_t (*proof)[MERKLE_HASH];
	size_t nproof;
	int overflow;
};

static void need(struct walk *w, uint8_t level, uint64_t index, uint8_t out[MERKLE_HASH])
{
	if (w->planning) {
		struct merkle_plan *p = w->plan;
		for (size_t i = 0; i < p->n; i++)
			if (p->nodes[i].level == level && p->nodes[i].index == index)
				goto zero;
		if (p->n == MERKLE_MAX_PLAN) {
			w->overflow = 1;
			goto zero;
		}
		p->nodes[p->n].level = level;
		p->nodes[p->n].index = index;
		memset(p->nodes[p->n].hash, 0, MERKLE_HASH);
		p->n++;
	zero:
		memset(out, 0, MERKLE_HASH);
		return;
	}
	for (size_t i = 0; i < w->filled->n; i++) {
		const struct merkle_node *nd = &w->filled->nodes[i];
		if (nd->level == level && nd->index == index) {
			memcpy(out, nd->hash, MERKLE_HASH);
			return;
		}
	}
	w->missing = 1;
	memset(out, 0, MERKLE_HASH);
}

/* MTH(D[a:b]), b > a. */
static void mth(struct walk *w, uint64_t a, uint64_t b, uint8_t out[MERKLE_HASH])
{
	uint64_t n = b - a;
	if (is_pow2(n) && a % n == 0) {
		need(w, (uint8_t)log2u(n), a / n, out);
		return;
	}
	uint64_t k = split_point(n);
	uint8_t l[MERKLE_HASH], r[MERKLE_HASH];
	mth(w, a, a + k, l);
	mth(w, a + k, b, r);
	merkle_node_hash(l, r, out);
}

static void emit(struct walk *w, const uint8_t h[MERKLE_HASH])
{
	if (w->planning)
		return;
	if (w->nproof == MERKLE_MAX_PROOF) {
		w->overflow = 1;
		return;
	}
	memcpy(w->proof[w->nproof++], h, MERKLE_HASH);
}

/* PATH(m, D[a:b]) with m an absolute leaf index in [a, b). */
static void path(struct walk *w, uint64_t m, uint64_t a, uint64_t b)
{
	uint64_t n = b - a;
	if (n <= 1)
		return;
	uint64_t k = split_point(n);
	uint8_t h[MERKLE_HASH];
	if (m - a < k) {
		path(w, m, a, a + k);
		mth(w, a + k, b, h);
	} else {
		path(w, m, a + k, b);
		mth(w, a, a + k, h);
	}
	emit(w, h);
}

/* SUBPROOF(m, D[a:b], b_flag) with m relative to a. */
static void subproof(struct walk *w, uint64_t m, uint64_t a, uint64_t b, int flag)
{
	uint64_t n = b - a;
	uint8_t h[MERKLE_HASH];
	if (m == n) {
		if (!flag) {
			mth(w, a, b, h);
			emit(w, h);
		}
		return;
	}
	uint64_t k = split_point(n);
	if (m <= k) {
		subproof(w, m, a, a + k, flag);
		mth(w, a + k, b, h);
	} else {
		subproof(w, m - k, a + k, b, 0);
		mth(w, a, a + k, h);
	}
	emit(w, h);
}

int merkle_plan_root(uint64_t size, struct merkle_plan *p)
{
	struct walk w = { .planning = 1, .plan = p };
	uint8_t h[MERKLE_HASH];
	p->n = 0;
	if (size > 0)
		mth(&w, 0, size, h);
	return w.overflow ? SW_ERANGE : 0;
}

int merkle_plan_inclusion(uint64_t index, uint64_t size, struct merkle_plan *p)
{
	struct walk w = { .planning = 1, .plan = p };
	p->n = 0;
	if (index >= size)
		return SW_ERANGE;
	path(&w, index, 0, size);
	return w.overflow ? SW_ERANGE : 0;
}

int merkle_plan_consistency(uint64_t old_size, uint64_t new_size, struct merkle_plan *p)
{
	struct walk w = { .planning = 1, .plan = p };
	p->n = 0;
	if (old_size == 0 || old_size > new_size)
		return SW_ERANGE;
	if (old_size < new_size)
		subproof(&w, old_size, 0, new_size, 1);
	return w.overflow ? SW_ERANGE : 0;
}

int merkle_root(uint64_t size, const struct merkle_plan *p, uint8_t out[MERKLE_HASH])
{
	struct walk w = { .filled = p };
	if (size == 0) {
		merkle_empty_root(out);
		return 0;
	}
	mth(&w, 0, size, out);
	return w.missing ? SW_EINTERNAL : 0;
}

int merkle_inclusion(uint64_t index, uint64_t size, const struct merkle_plan *p,
		     uint8_t proof[][MERKLE_HASH], size_t *n)
{
	struct walk w = { .filled = p, .proof = proof };
	*n = 0;
	if (index >= size)
		return SW_ERANGE;
	path(&w, index, 0, size);
	*n = w.nproof;
	return w.missing || w.overflow ? SW_EINTERNAL : 0;
}

int merkle_consistency(uint64_t old_size, uint64_t new_size, const struct merkle_plan *p,
		       uint8_t proof[][MERKLE_HASH], size_t *n)
{
	struct walk w = { .filled = p, .proof = proof };
	*n = 0;
	if (old_size == 0 || old_size > new_size)
		return SW_ERANGE;
	if (old_size < new_size)
		subproof(&w, old_size, 0, new_size, 1);
	*n = w.nproof;
	return w.missing || w.overflow ? SW_EINTERNAL : 0;
}

int merkle_verify_inclusion(uint64_t index, uint64_t size, const uint8_t leaf[MERKLE_HASH],
			    const uint8_t proof[][MERKLE_HASH], size_t n,
			    const uint8_t root[MERKLE_HASH])
{
	if (index >= size)
		return SW_EINVAL;
	uint64_t fn = index, sn = size - 1;
	uint8_t r[MERKLE_HASH];
	memcpy(r, leaf, MERKLE_HASH);
	for (size_t i = 0; i < n; i++) {
		if (sn == 0)
			return SW_EINVAL;
		if ((fn & 1) || fn == sn) {
			merkle_node_hash(proof[i], r, r);
			if (!(fn & 1))
				while (!(fn & 1) && fn != 0) {
					fn >>= 1;
					sn >>= 1;
				}
		} else {
			merkle_node_hash(r, proof[i], r);
		}
		fn >>= 1;
		sn >>= 1;
	}
	return (sn == 0 && memcmp(r, root, MERKLE_HASH) == 0) ? 0 : SW_EINVAL;
}

int merkle_verify_consistency(uint64_t old_size, uint64_t new_size,
			      const uint8_t old_root[MERKLE_HASH],
			      const uint8_t new_root[MERKLE_HASH],
			      const uint8_t proof[][MERKLE_HASH], size_t n)
{
	if (old_size == 0 || old_size > new_size)
		return SW_EINVAL;
	if (old_size == new_size)
		return (n == 0 && memcmp(old_root, new_root, MERKLE_HASH) == 0) ? 0 : SW_EINVAL;
	if (n == 0)
		return SW_EINVAL;
	/* When old_size is a power of two, the old root is the proof's implied
	 * first element. */
	size_t start = 0;
	const uint8_t *first = proof[0];
	if (is_pow2(old_size)) {
		first = old_root;
		start = 0;
	} else {
		start = 1;
	}
	uint64_t fn = old_size - 1, sn = new_size - 1;
	while (fn & 1) {
		fn >>= 1;
		sn >>= 1;
	}
	uint8_t fr[MERKLE_HASH], sr[MERKLE_HASH];
	memcpy(fr, first, MERKLE_HASH);
	memcpy(sr, first, MERKLE_HASH);
	for (size_t i = start; i < n; i++) {
		if (sn == 0)
			return SW_EINVAL;
		if ((fn & 1) || fn == sn) {
			merkle_node_hash(proof[i], fr, fr);
			merkle_node_hash(proof[i], sr, sr);
			if (!(fn & 1))
				while (!(fn & 1) && fn != 0) {
					fn >>= 1;
					sn >>= 1;
				}
		} else {
			merkle_node_hash(sr, proof[i], sr);
		}
		fn >>= 1;
		sn >>= 1;
	}
	return (sn == 0 && memcmp(fr, old_root, MERKLE_HASH) == 0 &&
		memcmp(sr, new_root, MERKLE_HASH) == 0)
		       ? 0
		       : SW_EINVAL;
}

void merkle_range_init(struct merkle_range *r)
{
	memset(r, 0, sizeof *r);
}

void merkle_range_append(struct merkle_range *r, const uint8_t leaf[MERKLE_HASH],
			 void (*fn)(const struct merkle_node *node, void *arg), void *arg)
{
	uint64_t n = r->size;
	struct merkle_node nd;
	nd.level = 0;
	nd.index = n;
	memcpy(nd.hash, leaf, MERKLE_HASH);
	if (fn)
		fn(&nd, arg);
	int l = 0;
	while ((n >> l) & 1) {
		merkle_node_hash(r->hashes[l], nd.hash, nd.hash);
		l++;
		nd.level = (uint8_t)l;
		nd.index = n >> l;
		if (fn)
			fn(&nd, arg);
	}
	memcpy(r->hashes[l], nd.hash, MERKLE_HASH);
	r->size = n + 1;
}

void merkle_range_root(const struct merkle_range *r, uint8_t out[MERKLE_HASH])
{
	int have = 0;
	uint8_t acc[MERKLE_HASH];
	for (int l = 0; l < MERKLE_MAX_DEPTH; l++) {
		if (!((r->size >> l) & 1))
			continue;
		if (!have) {
			memcpy(acc, r->hashes[l], MERKLE_HASH);
			have = 1;
		} else {
			merkle_node_hash(r->hashes[l], acc, acc);
		}
	}
	if (!have)
		merkle_empty_root(out);
	else
		memcpy(out, acc, MERKLE_HASH);
}

int merkle_range_load(struct merkle_range *r, uint64_t size, const struct merkle_plan *p)
{
	merkle_range_init(r);
	for (int l = 0; l < MERKLE_MAX_DEPTH; l++) {
		if (!((size >> l) & 1))
			continue;
		uint64_t idx = (size >> l) - 1;
		int found = 0;
		for (size_t i = 0; i < p->n; i++)
			if (p->nodes[i].level == l && p->nodes[i].index == idx) {
				memcpy(r->hashes[l], p->nodes[i].hash, MERKLE_HASH);
				found = 1;
			}
		if (!found)
			return SW_EINTERNAL;
	}
	r->size = size;
	return 0;
}
