/*
 * envelope.c - envelope encryption of secret values at rest.
 *
 * Each version gets its own random 32-byte data key. The value is
 * encrypted with it (XChaCha20-Poly1305, random 24-byte nonce); the data
 * key is encrypted ("wrapped") with the current master key. Both layers
 * authenticate the secret's identity as associated data:
 *
 *   value AAD = "slipway/secret-value/v1" 0x00 || id
 *   wrap  AAD = "slipway/secret-key/v1"   0x00 || id || be32(master key version)
 *   id        = be16(len) app || be16(len) env || be16(len) name || be32(version)
 *
 * so a ciphertext or wrapped key copied to another name, scope or version
 * (or relabelled with another master key version) does not decrypt. The
 * master key version is bound to the wrapped key only, which is what lets
 * rotation rewrap data keys without touching value ciphertexts.
 *
 * Data keys live in the per-thread secure scratch and are wiped after use.
 */
#include "secrets.h"

#include "err.h"

#include <sodium.h>
#include <string.h>

#define VALUE_CTX "slipway/secret-value/v1"
#define KEY_CTX "slipway/secret-key/v1"
#define AAD_MAX 512

static size_t put16(uint8_t *p, const char *s)
{
	size_t n = strlen(s);
	p[0] = (uint8_t)(n >> 8);
	p[1] = (uint8_t)n;
	memcpy(p + 2, s, n);
	return n + 2;
}

static size_t put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
	return 4;
}

/* Builds an AAD into out[AAD_MAX]; returns its length, or 0 when the
 * identity does not fit (callers validated it already). */
static size_t aad(uint8_t *out, const char *ctx, const struct sec_ident *id, int with_mk,
		  uint32_t mk)
{
	size_t n = strlen(ctx) + 1;
	if (strlen(id->app) > SEC_APP_MAX || strlen(id->env) > SEC_APP_MAX ||
	    strlen(id->name) > SEALED_NAME_MAX)
		return 0;
	memcpy(out, ctx, n);
	n += put16(out + n, id->app);
	n += put16(out + n, id->env);
	n += put16(out + n, id->name);
	n += put32(out + n, id->version);
	if (with_mk)
		n += put32(out + n, mk);
	return n;
}

int sec_env_seal(struct sec_keys *k, const struct sec_ident *id, const uint8_t *plain,
		 size_t len, uint8_t *ct, uint8_t wrapped[SEC_WRAPPED_BYTES], uint32_t *mk_version,
		 char *err, size_t errlen)
{
	uint8_t va[AAD_MAX], ka[AAD_MAX];
	uint8_t *dk = sec_scratch(SEC_SCRATCH_KEY, SEC_KEY_BYTES);
	unsigned long long clen = 0;
	int rc = 0;
	size_t vn = aad(va, VALUE_CTX, id, 0, 0);
	if (vn == 0)
		return sw_errf(err, errlen, SW_EINVAL, "secret identity too long");
	if (dk == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of secure memory");
	crypto_aead_xchacha20poly1305_ietf_keygen(dk);
	/* Wrap first: the master key version goes into the wrap's AAD. */
	uint32_t cur = sec_keys_current(k);
	size_t kn = aad(ka, KEY_CTX, id, 1, cur);
	rc = sec_keys_wrap(k, cur, ka, kn, dk, wrapped, mk_version, err, errlen);
	if (rc == 0) {
		randombytes_buf(ct, SEC_NONCE_BYTES);
		crypto_aead_xchacha20poly1305_ietf_encrypt(ct + SEC_NONCE_BYTES, &clen, plain, len,
							   va, vn, NULL, ct, dk);
	}
	sec_scratch_wipe(SEC_SCRATCH_KEY);
	return rc;
}

int sec_env_open(struct sec_keys *k, struct sec_dkcache *dkc, const struct sec_ident *id,
		 const uint8_t *ct, size_t ctlen, const uint8_t wrapped[SEC_WRAPPED_BYTES],
		 uint32_t mk_version, uint8_t *plain, char *err, size_t errlen)
{
	uint8_t ah[32];
	uint8_t va[AAD_MAX], ka[AAD_MAX];
	unsigned long long plen = 0;
	int rc = 0;
	size_t vn = aad(va, VALUE_CTX, id, 0, 0), kn = aad(ka, KEY_CTX, id, 1, mk_version);
	if (vn == 0 || kn == 0)
		return sw_errf(err, errlen, SW_EINVAL, "secret identity too long");
	if (ctlen < SEC_CT_OVERHEAD)
		return sw_errf(err, errlen, SW_EDATALOSS, "stored ciphertext is truncated");
	uint8_t *dk = sec_scratch(SEC_SCRATCH_KEY, SEC_KEY_BYTES);
	if (dk == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of secure memory");
	uint64_t gen = 0;
	if (dkc != NULL) {
		sec_dkcache_hash_aad(ka, kn, ah);
		gen = sec_keys_generation(k);
	}
	if (dkc == NULL || !sec_dkcache_get(dkc, gen, mk_version, ah, wrapped, dk)) {
		rc = sec_keys_unwrap(k, mk_version, ka, kn, wrapped, dk, err, errlen);
		if (rc == 0)
			sec_dkcache_put(dkc, gen, mk_version, ah, wrapped, dk);
	}
	if (rc == 0 &&
	    crypto_aead_xchacha20poly1305_ietf_decrypt(plain, &plen, NULL, ct + SEC_NONCE_BYTES,
						       ctlen - SEC_NONCE_BYTES, va, vn, ct,
						       dk) != 0) {
		sodium_memzero(plain, ctlen - SEC_CT_OVERHEAD);
		rc = sw_errf(err, errlen, SW_EDATALOSS,
			     "the stored value does not authenticate (altered, or copied from "
			     "another secret or version)");
	}
	sec_scratch_wipe(SEC_SCRATCH_KEY);
	return rc;
}

int sec_env_rewrap(struct sec_keys *k, const struct sec_ident *id,
		   const uint8_t old[SEC_WRAPPED_BYTES], uint32_t old_version,
		   uint8_t out[SEC_WRAPPED_BYTES], uint32_t new_version, char *err, size_t errlen)
{
	uint8_t oa[AAD_MAX], na[AAD_MAX];
	uint32_t used = 0;
	size_t on = aad(oa, KEY_CTX, id, 1, old_version), nn = aad(na, KEY_CTX, id, 1, new_version);
	if (on == 0 || nn == 0)
		return sw_errf(err, errlen, SW_EINVAL, "secret identity too long");
	uint8_t *dk = sec_scratch(SEC_SCRATCH_KEY, SEC_KEY_BYTES);
	if (dk == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of secure memory");
	int rc = sec_keys_unwrap(k, old_version, oa, on, old, dk, err, errlen);
	if (rc == 0)
		rc = sec_keys_wrap(k, new_version, na, nn, dk, out, &used, err, errlen);
	sec_scratch_wipe(SEC_SCRATCH_KEY);
	return rc;
}
