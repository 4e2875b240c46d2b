/*
 * hash.h - SHA-256 one-shots over several pieces (OpenSSL EVP, which uses
 * the CPU's SHA extensions), with a per-thread context so hot loops (Merkle
 * trees, hash chains) allocate nothing.
 */
#ifndef SLIPWAY_HASH_H
#define SLIPWAY_HASH_H

#include <stddef.h>
#include <stdint.h>

#define HASH_SHA256_LEN 32

/* out = SHA-256(a || b || c); b or c may be NULL (length ignored). Any
 * thread. */
void hash_sha256(const void *a, size_t alen, const void *b, size_t blen, const void *c,
		 size_t clen, uint8_t out[HASH_SHA256_LEN]);

/* Lower-case hex of n bytes into out[2n+1]. */
void hash_hex(const uint8_t *p, size_t n, char *out);

/* Parses exactly 2*n hex digits into out. Returns 0 or SW_EINVAL. */
int hash_unhex(const char *s, uint8_t *out, size_t n);

#endif
