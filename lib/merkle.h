/*
 * merkle.h - RFC 6962 / RFC 9162 Merkle tree hashing, proofs and their
 * verification, over SHA-256 (OpenSSL).
 *
 *   leaf hash = SHA-256(0x00 || leaf bytes)
 *   node hash = SHA-256(0x01 || left || right)
 *   MTH({})   = SHA-256("")
 *
 * Proofs are built from stored complete subtrees: the node at (level h,
 * index i) is the root of leaves [i*2^h, (i+1)*2^h). The builder first
 * plans which nodes a proof needs (merkle_plan_*), the caller fetches them
 * all at once (one database round trip), then the proof is assembled from
 * them. Every proof costs O(log n) node reads.
 *
 * merkle_range is a compact range ("frontier") for computing roots of a
 * growing tree while streaming leaves: O(log n) memory.
 */
#ifndef SLIPWAY_MERKLE_H
#define SLIPWAY_MERKLE_H

#include <stddef.h>
#include <stdint.h>

#define MERKLE_HASH 32
#define MERKLE_MAX_DEPTH 64
/* A proof never has more elements than this (2 * 64 levels). */
#define MERKLE_MAX_PROOF 128
/* A plan never needs more stored nodes than this. */
#define MERKLE_MAX_PLAN 256

void merkle_leaf_hash(const uint8_t *data, size_t len, uint8_t out[MERKLE_HASH]);
void merkle_node_hash(const uint8_t left[MERKLE_HASH], const uint8_t right[MERKLE_HASH],
		      uint8_t out[MERKLE_HASH]);
void merkle_empty_root(uint8_t out[MERKLE_HASH]);

/* A stored complete subtree: leaves [index << level, (index + 1) << level). */
struct merkle_node {
	uint8_t level;
	uint64_t index;
	uint8_t hash[MERKLE_HASH];
};

/* The nodes a proof needs, then their hashes once fetched. */
struct merkle_plan {
	size_t n;
	struct merkle_node nodes[MERKLE_MAX_PLAN];
};

/* Plans the nodes needed for the root of [0, size). */
int merkle_plan_root(uint64_t size, struct merkle_plan *p);
/* Plans an inclusion proof of leaf `index` in a tree of `size`. SW_ERANGE
 * when index >= size. */
int merkle_plan_inclusion(uint64_t index, uint64_t size, struct merkle_plan *p);
/* Plans a consistency proof from old_size to new_size (0 < old <= new). */
int merkle_plan_consistency(uint64_t old_size, uint64_t new_size, struct merkle_plan *p);

/* With every planned node's hash filled in, builds the root / the proof.
 * proof must hold MERKLE_MAX_PROOF hashes; *n receives the count. Returns 0
 * or SW_EINTERNAL when a node is missing from the plan. */
int merkle_root(uint64_t size, const struct merkle_plan *p, uint8_t out[MERKLE_HASH]);
int merkle_inclusion(uint64_t index, uint64_t size, const struct merkle_plan *p,
		     uint8_t proof[][MERKLE_HASH], size_t *n);
int merkle_consistency(uint64_t old_size, uint64_t new_size, const struct merkle_plan *p,
		       uint8_t proof[][MERKLE_HASH], size_t *n);

/* Verification (RFC 9162 2.1.3.2 and 2.1.4.2). Return 0 when valid, else
 * SW_EINVAL (the proof does not prove it). */
int merkle_verify_inclusion(uint64_t index, uint64_t size, const uint8_t leaf[MERKLE_HASH],
			    const uint8_t proof[][MERKLE_HASH], size_t n,
			    const uint8_t root[MERKLE_HASH]);
int merkle_verify_consistency(uint64_t old_size, uint64_t new_size,
			      const uint8_t old_root[MERKLE_HASH],
			      const uint8_t new_root[MERKLE_HASH],
			      const uint8_t proof[][MERKLE_HASH], size_t n);

/* ---- compact range: streaming roots ---- */

struct merkle_range {
	uint64_t size;
	/* hashes[h] holds the complete subtree of 2^h leaves that is still
	 * waiting for its right sibling, when bit h of size is set. */
	uint8_t hashes[MERKLE_MAX_DEPTH][MERKLE_HASH];
};

void merkle_range_init(struct merkle_range *r);
/* Appends one leaf hash. Optionally reports the complete subtrees this
 * append finished (level 0 = the leaf itself) through fn. */
void merkle_range_append(struct merkle_range *r, const uint8_t leaf[MERKLE_HASH],
			 void (*fn)(const struct merkle_node *node, void *arg), void *arg);
/* The root of the leaves appended so far (the empty root when none). */
void merkle_range_root(const struct merkle_range *r, uint8_t out[MERKLE_HASH]);
/* Loads a range for `size` leaves from the complete subtrees of its binary
 * decomposition, as planned by merkle_plan_root(size). */
int merkle_range_load(struct merkle_range *r, uint64_t size, const struct merkle_plan *p);

#endif
