/*
 * digest.h - content digests for Slipway: streaming SHA-256 (and MD5, for
 * S3's Content-MD5 and ETag) on OpenSSL EVP, which uses the CPU's SHA
 * extensions (about 3x libsodium's SHA-256 here), plus the one spelling of a
 * digest in the whole system: "sha256:<64 lower-case hex>".
 *
 * Used by the artifact service (hashing while spooling and serving), the
 * CLI (hashing before a push, verifying after a pull) and the agent
 * (verifying a pulled blob before it unpacks it).
 *
 * Threads: a struct digest belongs to one thread at a time; the functions
 * without a context are pure and may be called from any thread.
 */
#ifndef SLIPWAY_DIGEST_H
#define SLIPWAY_DIGEST_H

#include <stddef.h>
#include <stdint.h>

#define DIGEST_SHA256_LEN 32
#define DIGEST_MD5_LEN 16
/* "sha256:" + 64 hex + NUL */
#define DIGEST_STR_LEN 72

enum digest_alg { DIGEST_SHA256 = 0, DIGEST_MD5 = 1 };

/* A running hash. Embed it and call digest_init before use; release with
 * digest_cleanup (also after digest_final). */
struct digest {
	void *ctx; /* EVP_MD_CTX */
	enum digest_alg alg;
};

/* Starts a hash. Returns 0, or SW_ENOMEM. */
int digest_init(struct digest *d, enum digest_alg alg);

/* Adds n bytes. */
void digest_update(struct digest *d, const void *p, size_t n);

/* Writes the hash into out (32 bytes for SHA-256, 16 for MD5) and returns
 * its length, or SW_EINTERNAL. The context cannot be updated afterwards. */
int digest_final(struct digest *d, uint8_t *out);

/* Frees the context. Safe on a zeroed or already cleaned-up struct. */
void digest_cleanup(struct digest *d);

/* Lower-case hex of n bytes into out[2n+1]. */
void digest_hex(const uint8_t *p, size_t n, char *out);

/* Parses exactly 2n hex digits (either case) into out[n]. Returns 0 or
 * SW_EINVAL. */
int digest_unhex(const char *hex, uint8_t *out, size_t n);

/* Formats a SHA-256 as "sha256:<hex>" into out[DIGEST_STR_LEN]. */
void digest_format(const uint8_t sha[DIGEST_SHA256_LEN], char out[DIGEST_STR_LEN]);

/* Strictly parses "sha256:<64 lower-case hex>" (nothing else is accepted,
 * so every digest has one spelling). sha may be NULL to only validate.
 * Returns 0 or SW_EINVAL. */
int digest_parse(const char *s, uint8_t sha[DIGEST_SHA256_LEN]);

/*
 * Hashes what is left of fd from its current offset (at most `limit`
 * bytes when limit > 0) with SHA-256. *size receives the number of bytes
 * read. Reads in 1 MiB blocks; memory use does not depend on the file's
 * size. Returns 0, or SW_EIO (errno-based message in err) or SW_ELIMIT.
 */
int digest_sha256_fd(int fd, uint64_t limit, uint8_t sha[DIGEST_SHA256_LEN], uint64_t *size,
		     char *err, size_t errlen);

#endif
