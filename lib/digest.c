/*
 * digest.c - streaming SHA-256 / MD5 on OpenSSL EVP and the digest
 * spelling (see digest.h).
 */
#include "digest.h"
#include "err.h"
#include "hash.h"

#include <openssl/evp.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int digest_init(struct digest *d, enum digest_alg alg)
{
	d->alg = alg;
	d->ctx = EVP_MD_CTX_new();
	if (d->ctx == NULL)
		return SW_ENOMEM;
	const EVP_MD *md = alg == DIGEST_MD5 ? EVP_md5() : EVP_sha256();
	if (EVP_DigestInit_ex(d->ctx, md, NULL) != 1) {
		EVP_MD_CTX_free(d->ctx);
		d->ctx = NULL;
		return SW_EINTERNAL;
	}
	return 0;
}

void digest_update(struct digest *d, const void *p, size_t n)
{
	if (n > 0)
		EVP_DigestUpdate(d->ctx, p, n);
}

int digest_final(struct digest *d, uint8_t *out)
{
	unsigned int len = 0;
	if (d->ctx == NULL || EVP_DigestFinal_ex(d->ctx, out, &len) != 1)
		return SW_EINTERNAL;
	return (int)len;
}

void digest_cleanup(struct digest *d)
{
	if (d->ctx != NULL)
		EVP_MD_CTX_free(d->ctx);
	d->ctx = NULL;
}

void digest_hex(const uint8_t *p, size_t n, char *out)
{
	hash_hex(p, n, out);
}

int digest_unhex(const char *hex, uint8_t *out, size_t n)
{
	return hash_unhex(hex, out, n);
}

void digest_format(const uint8_t sha[DIGEST_SHA256_LEN], char out[DIGEST_STR_LEN])
{
	memcpy(out, "sha256:", 7);
	digest_hex(sha, DIGEST_SHA256_LEN, out + 7);
}

int digest_parse(const char *s, uint8_t sha[DIGEST_SHA256_LEN])
{
	if (s == NULL || strncmp(s, "sha256:", 7) != 0 || strlen(s) != 7 + 64)
		return SW_EINVAL;
	for (size_t i = 7; i < 7 + 64; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return SW_EINVAL;
	if (sha != NULL)
		return digest_unhex(s + 7, sha, DIGEST_SHA256_LEN);
	return 0;
}

int digest_sha256_fd(int fd, uint64_t limit, uint8_t sha[DIGEST_SHA256_LEN], uint64_t *size,
		     char *err, size_t errlen)
{
	enum { BLOCK = 1 << 20 };
	struct digest d = { 0 };
	uint8_t *buf = NULL;
	uint64_t total = 0;
	int rc = digest_init(&d, DIGEST_SHA256);
	if (rc != 0)
		return sw_errf(err, errlen, rc, "cannot start SHA-256");
	buf = malloc(BLOCK);
	if (buf == NULL) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		goto out;
	}
	for (;;) {
		ssize_t got = read(fd, buf, BLOCK);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0) {
			rc = sw_errf(err, errlen, SW_EIO, "read: %s", strerror(errno));
			goto out;
		}
		if (got == 0)
			break;
		total += (uint64_t)got;
		if (limit > 0 && total > limit) {
			rc = sw_errf(err, errlen, SW_ELIMIT, "more than %llu bytes",
				     (unsigned long long)limit);
			goto out;
		}
		digest_update(&d, buf, (size_t)got);
	}
	if (digest_final(&d, sha) != DIGEST_SHA256_LEN) {
		rc = sw_errf(err, errlen, SW_EINTERNAL, "SHA-256 failed");
		goto out;
	}
	if (size != NULL)
		*size = total;
out:
	free(buf);
	digest_cleanup(&d);
	return rc;
}
