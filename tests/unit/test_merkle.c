/*
 * Unit tests for lib/merkle: the published RFC 6962 test vectors
 * (transparency-dev/merkle's test data: roots for sizes 1-8 over its eight
 * leaves, inclusion and consistency proofs), a naive reference MTH, and
 * exhaustive tamper tests on small trees.
 */
#include "err.h"
#include "hash.h"
#include "merkle.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

static const char *const leaves_hex[8] = {
	"", "00", "10", "2021", "3031", "40414243", "5051525354555657",
	"606162636465666768696a6b6c6d6e6f",
};
static const char *const roots_hex[8] = {
	"6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
	"fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
	"aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
	"d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
	"4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
	"76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
	"ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
	"5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
};

#define MAXN 70

/* Leaf hashes and every stored node of a tree, as the audit store keeps. */
struct store {
	uint64_t size;
	uint8_t leaf[MAXN][MERKLE_HASH];
	struct merkle_node nodes[4 * MAXN];
	size_t nnodes;
};

static void keep(const struct merkle_node *n, void *arg)
{
	struct store *s = arg;
	s->nodes[s->nnodes++] = *n;
}

static void build(struct store *s, uint64_t n, int vectors)
{
	struct merkle_range r;
	merkle_range_init(&r);
	memset(s, 0, sizeof *s);
	for (uint64_t i = 0; i < n; i++) {
		if (vectors) {
			uint8_t data[16];
			size_t len = strlen(leaves_hex[i]) / 2;
			assert_int_equal(hash_unhex(leaves_hex[i], data, len), 0);
			merkle_leaf_hash(data, len, s->leaf[i]);
		} else {
			uint8_t data[8];
			memcpy(data, &i, 8);
			merkle_leaf_hash(data, 8, s->leaf[i]);
		}
		merkle_range_append(&r, s->leaf[i], keep, s);
	}
	s->size = n;
}

static void fill(const struct store *s, struct merkle_plan *p)
{
	for (size_t i = 0; i < p->n; i++) {
		int found = 0;
		for (size_t j = 0; j < s->nnodes; j++)
			if (s->nodes[j].level == p->nodes[i].level && s->nodes[j].index == p->nodes[i].index) {
				memcpy(p->nodes[i].hash, s->nodes[j].hash, MERKLE_HASH);
				found = 1;
			}
		assert_true(found);
	}
}

/* Naive MTH by the RFC's definition, for cross-checking. */
static void ref_mth(const struct store *s, uint64_t a, uint64_t b, uint8_t out[MERKLE_HASH])
{
	if (b - a == 1) {
		memcpy(out, s->leaf[a], MERKLE_HASH);
		return;
	}
	uint64_t k = 1;
	while (k << 1 < b - a)
		k <<= 1;
	uint8_t l[MERKLE_HASH], r[MERKLE_HASH];
	ref_mth(s, a, a + k, l);
	ref_mth(s, a + k, b, r);
	merkle_node_hash(l, r, out);
}

static void root_of(const struct store *s, uint64_t size, uint8_t out[MERKLE_HASH])
{
	struct merkle_plan p;
	assert_int_equal(merkle_plan_root(size, &p), 0);
	fill(s, &p);
	assert_int_equal(merkle_root(size, &p, out), 0);
}

static void hex_eq(const uint8_t *h, const char *want)
{
	char got[65];
	hash_hex(h, MERKLE_HASH, got);
	assert_string_equal(got, want);
}

static void test_vector_roots(void **state)
{
	(void)state;
	struct store *s = calloc(1, sizeof *s);
	uint8_t root[MERKLE_HASH];
	build(s, 8, 1);
	for (int n = 1; n <= 8; n++) {
		root_of(s, (uint64_t)n, root);
		hex_eq(root, roots_hex[n - 1]);
		/* The streaming range agrees. */
		struct store t;
		build(&t, (uint64_t)n, 1);
		struct merkle_range r;
		struct merkle_plan p;
		merkle_plan_root((uint64_t)n, &p);
		fill(&t, &p);
		assert_int_equal(merkle_range_load(&r, (uint64_t)n, &p), 0);
		merkle_range_root(&r, root);
		hex_eq(root, roots_hex[n - 1]);
	}
	merkle_empty_root(root);
	hex_eq(root, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
	free(s);
}

static void check_inclusion(const struct store *s, uint64_t m, uint64_t n, const char *const *want,
			    size_t nwant)
{
	struct merkle_plan p;
	uint8_t proof[MERKLE_MAX_PROOF][MERKLE_HASH], root[MERKLE_HASH];
	size_t len;
	assert_int_equal(merkle_plan_inclusion(m, n, &p), 0);
	fill(s, &p);
	assert_int_equal(merkle_inclusion(m, n, &p, proof, &len), 0);
	assert_int_equal(len, nwant);
	for (size_t i = 0; i < nwant; i++)
		hex_eq(proof[i], want[i]);
	root_of(s, n, root);
	assert_int_equal(merkle_verify_inclusion(m, n, s->leaf[m], proof, len, root), 0);
}

static void test_vector_inclusion(void **state)
{
	(void)state;
	struct store *s = calloc(1, sizeof *s);
	build(s, 8, 1);
	const char *p08[] = { "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
			      "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
			      "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4" };
	const char *p58[] = { "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
			      "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
			      "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7" };
	const char *p23[] = { "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125" };
	const char *p15[] = { "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
			      "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
			      "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b" };
	check_inclusion(s, 0, 8, p08, 3);
	check_inclusion(s, 5, 8, p58, 3);
	check_inclusion(s, 2, 3, p23, 1);
	check_inclusion(s, 1, 5, p15, 3);
	check_inclusion(s, 0, 1, NULL, 0);
	free(s);
}

static void check_consistency(const struct store *s, uint64_t m, uint64_t n,
			      const char *const *want, size_t nwant)
{
	struct merkle_plan p;
	uint8_t proof[MERKLE_MAX_PROOF][MERKLE_HASH], r1[MERKLE_HASH], r2[MERKLE_HASH];
	size_t len;
	assert_int_equal(merkle_plan_consistency(m, n, &p), 0);
	fill(s, &p);
	assert_int_equal(merkle_consistency(m, n, &p, proof, &len), 0);
	assert_int_equal(len, nwant);
	for (size_t i = 0; i < nwant; i++)
		hex_eq(proof[i], want[i]);
	root_of(s, m, r1);
	root_of(s, n, r2);
	assert_int_equal(merkle_verify_consistency(m, n, r1, r2, proof, len), 0);
}

static void test_vector_consistency(void **state)
{
	(void)state;
	struct store *s = calloc(1, sizeof *s);
	build(s, 8, 1);
	const char *c18[] = { "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
			      "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
			      "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4" };
	const char *c68[] = { "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
			      "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
			      "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7" };
	const char *c25[] = { "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
			      "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b" };
	const char *c67[] = { "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
			      "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
			      "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7" };
	check_consistency(s, 1, 8, c18, 3);
	check_consistency(s, 6, 8, c68, 3);
	check_consistency(s, 2, 5, c25, 2);
	check_consistency(s, 6, 7, c67, 3);
	check_consistency(s, 8, 8, NULL, 0);
	free(s);
}

static void test_roots_match_reference(void **state)
{
	(void)state;
	struct store *s = calloc(1, sizeof *s);
	build(s, 64, 0);
	for (uint64_t n = 1; n <= 64; n++) {
		uint8_t a[MERKLE_HASH], b[MERKLE_HASH];
		root_of(s, n, a);
		ref_mth(s, 0, n, b);
		assert_memory_equal(a, b, MERKLE_HASH);
	}
	free(s);
}

/* Every inclusion proof on trees up to 20 leaves verifies, and every
 * corruption of it fails. */
static void test_inclusion_tamper_exhaustive(void **state)
{
	(void)state;
	struct store *s = calloc(1, sizeof *s);
	build(s, 40, 0);
	for (uint64_t n = 1; n <= 20; n++) {
		uint8_t root[MERKLE_HASH], other[MERKLE_HASH];
		root_of(s, n, root);
		root_of(s, n + 1, other);
		for (uint64_t m = 0; m < n; m++) {
			struct merkle_plan p;
			uint8_t pr[MERKLE_MAX_PROOF][MERKLE_HASH], bad[MERKLE_MAX_PROOF][MERKLE_HASH];
			size_t len;
			assert_int_equal(merkle_plan_inclusion(m, n, &p), 0);
			fill(s, &p);
			assert_int_equal(merkle_inclusion(m, n, &p, pr, &len), 0);
			assert_int_equal(merkle_verify_inclusion(m, n, s->leaf[m], pr, len, root), 0);
			/* wrong index, size, leaf, root */
			if (m + 1 < n)
				assert_int_not_equal(merkle_verify_inclusion(m + 1, n, s->leaf[m], pr, len, root), 0);
			if (m > 0)
				assert_int_not_equal(merkle_verify_inclusion(m - 1, n, s->leaf[m], pr, len, root), 0);
			assert_int_not_equal(merkle_verify_inclusion(m, n * 2, s->leaf[m], pr, len, root), 0);
			if (n / 2 > m && n / 2 != n)
				assert_int_not_equal(merkle_verify_inclusion(m, n / 2, s->leaf[m], pr, len, root), 0);
			assert_int_not_equal(merkle_verify_inclusion(m, n, s->leaf[(m + 1) % 40], pr, len, root), 0);
			assert_int_not_equal(merkle_verify_inclusion(m, n, s->leaf[m], pr, len, other), 0);
			/* flipped bits, missing and extra elements */
			for (size_t i = 0; i < len; i++) {
				memcpy(bad, pr, len * MERKLE_HASH);
				bad[i][i % MERKLE_HASH] ^= 0x01;
				assert_int_not_equal(merkle_verify_inclusion(m, n, s->leaf[m], bad, len, root), 0);
			}
			if (len > 0)
				assert_int_not_equal(merkle_verify_inclusion(m, n, s->leaf[m], pr, len - 1, root), 0);
			memcpy(bad, pr, len * MERKLE_HASH);
			memcpy(bad[len], root, MERKLE_HASH);
			assert_int_not_equal(merkle_verify_inclusion(m, n, s->leaf[m], bad, len + 1, root), 0);
		}
		uint8_t none[1][MERKLE_HASH];
		assert_int_not_equal(merkle_verify_inclusion(n, n, s->leaf[0], none, 0, root), 0);
		struct merkle_plan p;
		assert_int_equal(merkle_plan_inclusion(n, n, &p), SW_ERANGE);
	}
	free(s);
}

static void test_consistency_tamper_exhaustive(void **state)
{
	(void)state;
	struct store *s = calloc(1, sizeof *s);
	build(s, 40, 0);
	for (uint64_t n = 1; n <= 20; n++) {
		for (uint64_t m = 1; m <= n; m++) {
			struct merkle_plan p;
			uint8_t pr[MERKLE_MAX_PROOF][MERKLE_HASH], bad[MERKLE_MAX_PROOF][MERKLE_HASH];
			uint8_t r1[MERKLE_HASH], r2[MERKLE_HASH], x[MERKLE_HASH];
			size_t len;
			assert_int_equal(merkle_plan_consistency(m, n, &p), 0);
			fill(s, &p);
			assert_int_equal(merkle_consistency(m, n, &p, pr, &len), 0);
			root_of(s, m, r1);
			root_of(s, n, r2);
			root_of(s, n + 1, x);
			assert_int_equal(merkle_verify_consistency(m, n, r1, r2, pr, len), 0);
			if (m == n)
				continue;
			assert_int_not_equal(merkle_verify_consistency(m, n, r2, r1, pr, len), 0);
			assert_int_not_equal(merkle_verify_consistency(m, n, r1, x, pr, len), 0);
			/* doubled and halved sizes (other sizes can share a proof's shape;
			 * the signed checkpoint binds the size) */
			assert_int_not_equal(merkle_verify_consistency(m, n * 2, r1, r2, pr, len), 0);
			if (n / 2 > m)
				assert_int_not_equal(merkle_verify_consistency(m, n / 2, r1, r2, pr, len), 0);
			if (m * 2 <= n)
				assert_int_not_equal(merkle_verify_consistency(m * 2, n, r1, r2, pr, len), 0);
			if (m > 1)
				assert_int_not_equal(merkle_verify_consistency(m - 1, n, r1, r2, pr, len), 0);
			for (size_t i = 0; i < len; i++) {
				memcpy(bad, pr, len * MERKLE_HASH);
				bad[i][(i * 7) % MERKLE_HASH] ^= 0x80;
				assert_int_not_equal(merkle_verify_consistency(m, n, r1, r2, bad, len), 0);
			}
			assert_int_not_equal(merkle_verify_consistency(m, n, r1, r2, pr, len - 1), 0);
			memcpy(bad, pr, len * MERKLE_HASH);
			memcpy(bad[len], r2, MERKLE_HASH);
			assert_int_not_equal(merkle_verify_consistency(m, n, r1, r2, bad, len + 1), 0);
		}
	}
	free(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_vector_roots),
		cmocka_unit_test(test_vector_inclusion),
		cmocka_unit_test(test_vector_consistency),
		cmocka_unit_test(test_roots_match_reference),
		cmocka_unit_test(test_inclusion_tamper_exhaustive),
		cmocka_unit_test(test_consistency_tamper_exhaustive),
	};
	return cmocka_run_group_tests_name("merkle", tests, NULL, NULL);
}
