/*
 * fuzz_merkle.c - Merkle proofs (lib/merkle.c): what `slipway audit verify`
 * and every client of the audit log check against signed checkpoints.
 *
 * The first input byte picks a mode.
 *
 *   0  Arbitrary proofs: index/size (or old/new size) as any 64-bit
 *      values, a leaf, roots and up to 130 proof hashes straight from the
 *      input. merkle_verify_inclusion and merkle_verify_consistency (the
 *      iterative algorithms of RFC 9162) must agree exactly with an
 *      independent recursive verifier written here from RFC 6962's PATH
 *      and SUBPROOF definitions.
 *   1  Honest trees of up to 300 leaves, built with merkle_range_append
 *      (collecting every complete subtree as the audit service stores
 *      them); proofs built with the plan API. The root from the plan, from
 *      the range and from a recursive MTH agree; every honest proof
 *      verifies; then the input mutates the claim (index, sizes, leaf, a
 *      byte of an element, dropped, repeated, swapped or substituted
 *      elements, other real node hashes): whatever still verifies must be
 *      exactly the honest proof for the claimed position, leaf and roots.
 */
#include "fuzz.h"

#include "err.h"
#include "merkle.h"

typedef uint8_t hash_t[MERKLE_HASH];

/* ---- the reference (recursive, from RFC 6962 section 2.1) ---- */

/* Largest power of two strictly less than n (n >= 2, any 64-bit n). */
static uint64_t split(uint64_t n)
{
	uint64_t k = 1;
	while (k < (UINT64_C(1) << 63) && k << 1 < n)
		k <<= 1;
	return k;
}

/* A plan lists distinct complete subtrees inside [0, size). */
static void check_plan(int rc, const struct merkle_plan *p, uint64_t size)
{
	FUZZ_CHECK(rc == 0 || rc == SW_ERANGE, "plan code %d", rc);
	if (rc != 0)
		return;
	FUZZ_CHECK(p->n <= MERKLE_MAX_PLAN, "plan of %zu nodes", p->n);
	for (size_t i = 0; i < p->n; i++) {
		const struct merkle_node *nd = &p->nodes[i];
		FUZZ_CHECK(nd->level < MERKLE_MAX_DEPTH, "level %u", nd->level);
		uint64_t first = nd->index << nd->level, len = UINT64_C(1) << nd->level;
		FUZZ_CHECK(first >> nd->level == nd->index && first < size && len <= size - first,
			   "node (%u, %llu) outside a tree of %llu", nd->level,
			   (unsigned long long)nd->index, (unsigned long long)size);
		for (size_t j = 0; j < i; j++)
			FUZZ_CHECK(p->nodes[j].level != nd->level || p->nodes[j].index != nd->index,
				   "node planned twice");
	}
}

/* Consumes proof elements from the end (PATH lists the deepest first). */
static int ref_path(uint64_t m, uint64_t n, const uint8_t *leaf, const hash_t *proof, size_t *left,
		    uint8_t out[MERKLE_HASH])
{
	if (n == 1) {
		memcpy(out, leaf, MERKLE_HASH);
		return 0;
	}
	if (*left == 0)
		return -1;
	const uint8_t *sib = proof[--(*left)];
	uint64_t k = split(n);
	uint8_t sub[MERKLE_HASH];
	if (m < k) {
		if (ref_path(m, k, leaf, proof, left, sub) != 0)
			return -1;
		merkle_node_hash(sub, sib, out);
	} else {
		if (ref_path(m - k, n - k, leaf, proof, left, sub) != 0)
			return -1;
		merkle_node_hash(sib, sub, out);
	}
	return 0;
}

static int ref_inclusion(uint64_t index, uint64_t size, const uint8_t *leaf, const hash_t *proof,
			 size_t n, const uint8_t *root)
{
	if (index >= size)
		return -1;
	size_t left = n;
	uint8_t r[MERKLE_HASH];
	if (ref_path(index, size, leaf, proof, &left, r) != 0 || left != 0)
		return -1;
	return memcmp(r, root, MERKLE_HASH) == 0 ? 0 : -1;
}

/* SUBPROOF(m, D[0:n], b): computes the old and new subtree roots. */
static int ref_sub(uint64_t m, uint64_t n, int b, const uint8_t *old_root, const hash_t *proof,
		   size_t *left, uint8_t o[MERKLE_HASH], uint8_t nw[MERKLE_HASH])
{
	if (m == n) {
		if (b) {
			memcpy(o, old_root, MERKLE_HASH);
			memcpy(nw, old_root, MERKLE_HASH);
			return 0;
		}
		if (*left == 0)
			return -1;
		memcpy(o, proof[--(*left)], MERKLE_HASH);
		memcpy(nw, o, MERKLE_HASH);
		return 0;
	}
	if (*left == 0)
		return -1;
	const uint8_t *sib = proof[--(*left)];
	uint64_t k = split(n);
	uint8_t so[MERKLE_HASH], sn[MERKLE_HASH];
	if (m <= k) {
		if (ref_sub(m, k, b, old_root, proof, left, so, sn) != 0)
			return -1;
		memcpy(o, so, MERKLE_HASH);
		merkle_node_hash(sn, sib, nw);
	} else {
		if (ref_sub(m - k, n - k, 0, old_root, proof, left, so, sn) != 0)
			return -1;
		merkle_node_hash(sib, so, o);
		merkle_node_hash(sib, sn, nw);
	}
	return 0;
}

static int ref_consistency(uint64_t m, uint64_t n, const uint8_t *old_root,
			   const uint8_t *new_root, const hash_t *proof, size_t np)
{
	if (m == 0 || m > n)
		return -1;
	if (m == n)
		return np == 0 && memcmp(old_root, new_root, MERKLE_HASH) == 0 ? 0 : -1;
	size_t left = np;
	uint8_t o[MERKLE_HASH], nw[MERKLE_HASH];
	if (ref_sub(m, n, 1, old_root, proof, &left, o, nw) != 0 || left != 0)
		return -1;
	return memcmp(o, old_root, MERKLE_HASH) == 0 && memcmp(nw, new_root, MERKLE_HASH) == 0 ? 0
												  : -1;
}

/* ---- mode 0: arbitrary proofs ---- */

static void fz_hash(struct fz *f, uint8_t out[MERKLE_HASH])
{
	for (int i = 0; i < MERKLE_HASH; i++)
		out[i] = fz_u8(f);
}

static void mode_arbitrary(struct fz *f)
{
	static hash_t proof[130];
	int consistency = fz_u8(f) & 1;
	uint64_t a = fz_u64(f), b = fz_u64(f);
	uint8_t x[MERKLE_HASH], y[MERKLE_HASH];
	fz_hash(f, x);
	fz_hash(f, y);
	size_t n = fz_u8(f) % 131;
	for (size_t i = 0; i < n; i++)
		fz_hash(f, proof[i]);
	static struct merkle_plan pl;
	check_plan(merkle_plan_root(b, &pl), &pl, b);
	if (!consistency) {
		check_plan(merkle_plan_inclusion(a, b, &pl), &pl, b);
		int rc = merkle_verify_inclusion(a, b, x, (const uint8_t(*)[MERKLE_HASH])proof, n, y);
		int rr = ref_inclusion(a, b, x, proof, n, y);
		FUZZ_CHECK((rc == 0) == (rr == 0),
			   "inclusion index %llu size %llu n %zu: merkle %d, reference %d",
			   (unsigned long long)a, (unsigned long long)b, n, rc, rr);
		FUZZ_CHECK(rc == 0 || rc == SW_EINVAL, "code %d", rc);
	} else {
		check_plan(merkle_plan_consistency(a, b, &pl), &pl, b);
		int rc = merkle_verify_consistency(a, b, x, y, (const uint8_t(*)[MERKLE_HASH])proof, n);
		int rr = ref_consistency(a, b, x, y, proof, n);
		FUZZ_CHECK((rc == 0) == (rr == 0),
			   "consistency %llu -> %llu n %zu: merkle %d, reference %d",
			   (unsigned long long)a, (unsigned long long)b, n, rc, rr);
		FUZZ_CHECK(rc == 0 || rc == SW_EINVAL, "code %d", rc);
	}
}

/* ---- mode 1: honest trees ---- */

#define MAX_LEAVES 300

struct store {
	size_t n;
	struct merkle_node nodes[2 * MAX_LEAVES + 8];
};

static void collect(const struct merkle_node *node, void *arg)
{
	struct store *s = arg;
	s->nodes[s->n++] = *node;
}

static const struct merkle_node *store_get(const struct store *s, uint8_t level, uint64_t index)
{
	for (size_t i = 0; i < s->n; i++)
		if (s->nodes[i].level == level && s->nodes[i].index == index)
			return &s->nodes[i];
	return NULL;
}

static void fill(const struct store *s, struct merkle_plan *p)
{
	for (size_t i = 0; i < p->n; i++) {
		const struct merkle_node *nd = store_get(s, p->nodes[i].level, p->nodes[i].index);
		FUZZ_CHECK(nd != NULL, "plan needs node (%u, %llu) the store lacks",
			   p->nodes[i].level, (unsigned long long)p->nodes[i].index);
		memcpy(p->nodes[i].hash, nd->hash, MERKLE_HASH);
	}
}

static hash_t leaves[MAX_LEAVES];

static void mth(uint64_t a, uint64_t b, uint8_t out[MERKLE_HASH])
{
	if (b - a == 1) {
		memcpy(out, leaves[a], MERKLE_HASH);
		return;
	}
	uint64_t k = split(b - a);
	uint8_t l[MERKLE_HASH], r[MERKLE_HASH];
	mth(a, a + k, l);
	mth(a + k, b, r);
	merkle_node_hash(l, r, out);
}

static struct store st;
static hash_t roots[MAX_LEAVES + 1];
static struct merkle_plan plan;

static void root_of(uint64_t size, uint8_t out[MERKLE_HASH])
{
	FUZZ_CHECK(merkle_plan_root(size, &plan) == 0, "plan root");
	fill(&st, &plan);
	FUZZ_CHECK(merkle_root(size, &plan, out) == 0, "root");
}

static size_t honest_inclusion(uint64_t index, uint64_t size, hash_t *proof)
{
	size_t n = 0;
	FUZZ_CHECK(merkle_plan_inclusion(index, size, &plan) == 0, "plan inclusion");
	fill(&st, &plan);
	FUZZ_CHECK(merkle_inclusion(index, size, &plan, proof, &n) == 0, "inclusion");
	return n;
}

static size_t honest_consistency(uint64_t m, uint64_t n, hash_t *proof)
{
	size_t np = 0;
	FUZZ_CHECK(merkle_plan_consistency(m, n, &plan) == 0, "plan consistency");
	fill(&st, &plan);
	FUZZ_CHECK(merkle_consistency(m, n, &plan, proof, &np) == 0, "consistency");
	return np;
}

/* Applies up to four mutations chosen by the input to a proof. */
static size_t mutate(struct fz *f, hash_t *proof, size_t n)
{
	int k = fz_u8(f) % 5;
	for (int i = 0; i < k; i++) {
		uint8_t op = fz_u8(f) % 7;
		size_t at = n ? fz_u8(f) % n : 0;
		switch (op) {
		case 0: /* flip a bit */
			if (n)
				proof[at][fz_u8(f) % MERKLE_HASH] ^= (uint8_t)(1u << (fz_u8(f) % 8));
			break;
		case 1: /* drop the last */
			if (n)
				n--;
			break;
		case 2: /* repeat one at the end */
			if (n && n < MERKLE_MAX_PROOF)
				memcpy(proof[n++], proof[at], MERKLE_HASH);
			break;
		case 3: { /* swap two */
			size_t b = n ? fz_u8(f) % n : 0;
			hash_t t;
			memcpy(t, proof[at], MERKLE_HASH);
			memcpy(proof[at], proof[b], MERKLE_HASH);
			memcpy(proof[b], t, MERKLE_HASH);
			break;
		}
		case 4: /* substitute a real node */
			if (n && st.n)
				memcpy(proof[at], st.nodes[fz_u8(f) % st.n].hash, MERKLE_HASH);
			break;
		case 5: /* drop the first */
			if (n) {
				memmove(proof[0], proof[1], (n - 1) * sizeof *proof);
				n--;
			}
			break;
		default: /* insert a real node at the front */
			if (n < MERKLE_MAX_PROOF && st.n) {
				memmove(proof[1], proof[0], n * sizeof *proof);
				memcpy(proof[0], st.nodes[fz_u8(f) % st.n].hash, MERKLE_HASH);
				n++;
			}
		}
	}
	return n;
}

static uint64_t nudge(struct fz *f, uint64_t v, uint64_t lo, uint64_t hi)
{
	int d = (int)(fz_u8(f) % 5) - 2; /* -2 .. 2 */
	int64_t w = (int64_t)v + d;
	if (w < (int64_t)lo)
		w = (int64_t)lo;
	if (w > (int64_t)hi)
		w = (int64_t)hi;
	return (uint64_t)w;
}

static void mode_honest(struct fz *f)
{
	static hash_t proof[MERKLE_MAX_PROOF], want[MERKLE_MAX_PROOF];
	uint64_t size = 1 + fz_u8(f) + (fz_u8(f) & 1 ? 44 : 0);
	if (size > MAX_LEAVES)
		size = MAX_LEAVES;
	uint8_t salt = fz_u8(f);
	struct merkle_range r;
	merkle_range_init(&r);
	st.n = 0;
	for (uint64_t i = 0; i < size; i++) {
		uint8_t data[9] = { salt };
		for (int k = 0; k < 8; k++)
			data[1 + k] = (uint8_t)(i >> (8 * k));
		merkle_leaf_hash(data, sizeof data, leaves[i]);
		merkle_range_append(&r, leaves[i], collect, &st);
		merkle_range_root(&r, roots[i + 1]);
	}
	uint8_t h[MERKLE_HASH];
	mth(0, size, h);
	FUZZ_CHECK(memcmp(h, roots[size], MERKLE_HASH) == 0, "range root of %llu",
		   (unsigned long long)size);
	uint64_t m = 1 + fz_u32(f) % size;
	mth(0, m, h);
	FUZZ_CHECK(memcmp(h, roots[m], MERKLE_HASH) == 0, "range root of %llu",
		   (unsigned long long)m);
	root_of(m, h);
	FUZZ_CHECK(memcmp(h, roots[m], MERKLE_HASH) == 0, "plan root of %llu",
		   (unsigned long long)m);
	FUZZ_CHECK(merkle_plan_root(m, &plan) == 0, "plan");
	fill(&st, &plan);
	struct merkle_range loaded;
	FUZZ_CHECK(merkle_range_load(&loaded, m, &plan) == 0, "range load");
	merkle_range_root(&loaded, h);
	FUZZ_CHECK(memcmp(h, roots[m], MERKLE_HASH) == 0, "loaded range root");

	if (fz_u8(f) & 1) {
		uint64_t idx = fz_u32(f) % m;
		size_t n = honest_inclusion(idx, m, proof);
		FUZZ_CHECK(merkle_verify_inclusion(idx, m, leaves[idx],
						   (const uint8_t(*)[MERKLE_HASH])proof, n,
						   roots[m]) == 0,
			   "honest inclusion %llu of %llu fails", (unsigned long long)idx,
			   (unsigned long long)m);
		FUZZ_CHECK(ref_inclusion(idx, m, leaves[idx], proof, n, roots[m]) == 0, "ref");
		/* The claim changes. */
		uint64_t ci = nudge(f, idx, 0, size - 1), cm = nudge(f, m, 1, size);
		const uint8_t *leaf = leaves[ci];
		if (fz_u8(f) % 4 == 0 && st.n)
			leaf = st.nodes[fz_u8(f) % st.n].hash;
		n = mutate(f, proof, n);
		if (merkle_verify_inclusion(ci, cm, leaf, (const uint8_t(*)[MERKLE_HASH])proof, n,
					    roots[cm]) != 0)
			return;
		FUZZ_CHECK(ci < cm && memcmp(leaf, leaves[ci], MERKLE_HASH) == 0,
			   "accepted a leaf that is not leaf %llu", (unsigned long long)ci);
		size_t wn = honest_inclusion(ci, cm, want);
		FUZZ_CHECK(wn == n && memcmp(want, proof, n * MERKLE_HASH) == 0,
			   "accepted a proof of %llu in %llu that is not the honest one",
			   (unsigned long long)ci, (unsigned long long)cm);
	} else {
		uint64_t n2 = m + fz_u32(f) % (size - m + 1);
		size_t n = honest_consistency(m, n2, proof);
		FUZZ_CHECK(merkle_verify_consistency(m, n2, roots[m], roots[n2],
						     (const uint8_t(*)[MERKLE_HASH])proof, n) == 0,
			   "honest consistency %llu -> %llu fails", (unsigned long long)m,
			   (unsigned long long)n2);
		FUZZ_CHECK(ref_consistency(m, n2, roots[m], roots[n2], proof, n) == 0, "ref");
		uint64_t cm = nudge(f, m, 1, size), cn = nudge(f, n2, 1, size);
		n = mutate(f, proof, n);
		if (merkle_verify_consistency(cm, cn, roots[cm], roots[cn],
					      (const uint8_t(*)[MERKLE_HASH])proof, n) != 0)
			return;
		FUZZ_CHECK(cm <= cn, "accepted old %llu > new %llu", (unsigned long long)cm,
			   (unsigned long long)cn);
		size_t wn = honest_consistency(cm, cn, want);
		FUZZ_CHECK(wn == n && memcmp(want, proof, n * MERKLE_HASH) == 0,
			   "accepted a consistency proof %llu -> %llu that is not the honest one",
			   (unsigned long long)cm, (unsigned long long)cn);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz f = { data, size };
	if (fz_u8(&f) & 1)
		mode_honest(&f);
	else
		mode_arbitrary(&f);
	return 0;
}
