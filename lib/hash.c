/*
 * hash.c - see hash.h.
 */
#include "hash.h"
#include "err.h"

#include <openssl/evp.h>
#include <pthread.h>
#include <string.h>

static EVP_MD *sha256_md;
static pthread_once_t md_once = PTHREAD_ONCE_INIT;
static pthread_key_t ctx_key;

static void free_ctx(void *p)
{
	EVP_MD_CTX_free(p);
}

static void init_md(void)
{
	/* Fetch once: an implicit fetch per call costs more than the hash. */
	sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
	pthread_key_create(&ctx_key, free_ctx);
}

void hash_sha256(const void *a, size_t alen, const void *b, size_t blen, const void *c,
		 size_t clen, uint8_t out[HASH_SHA256_LEN])
{
	pthread_once(&md_once, init_md);
	EVP_MD_CTX *ctx = pthread_getspecific(ctx_key);
	if (ctx == NULL) {
		ctx = EVP_MD_CTX_new();
		pthread_setspecific(ctx_key, ctx);
	}
	unsigned int n = 0;
	EVP_DigestInit_ex(ctx, sha256_md, NULL);
	EVP_DigestUpdate(ctx, a, alen);
	if (b != NULL)
		EVP_DigestUpdate(ctx, b, blen);
	if (c != NULL)
		EVP_DigestUpdate(ctx, c, clen);
	EVP_DigestFinal_ex(ctx, out, &n);
}

void hash_hex(const uint8_t *p, size_t n, char *out)
{
	static const char hex[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = hex[p[i] >> 4];
		out[2 * i + 1] = hex[p[i] & 15];
	}
	out[2 * n] = '\0';
}

static int nib(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int hash_unhex(const char *s, uint8_t *out, size_t n)
{
	if (strlen(s) != 2 * n)
		return SW_EINVAL;
	for (size_t i = 0; i < n; i++) {
		int hi = nib(s[2 * i]), lo = nib(s[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return SW_EINVAL;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
}
