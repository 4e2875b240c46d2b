/*
 * keys.c - the secrets service's key material: the versioned master
 * keyring that wraps data keys, the X25519 key values are sealed to on the
 * way in, and the Ed25519 key that signs bundles on the way out.
 *
 * Keyring file (mode 0600, written atomically; see README.md):
 *
 *   slipway-keyring v1
 *   current 2
 *   key 1 <64 hex>
 *   key 2 <64 hex>
 *
 * Every key lives in its own sodium_malloc region, read-only once made;
 * file contents are parsed in place in sodium memory and wiped. Master
 * keys never leave this file: callers wrap and unwrap through it under a
 * read lock; rotation and retirement take the write lock.
 */
#include "secrets.h"

#include "err.h"
#include "log.h"
#include "clock.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define KEYRING_MAGIC "slipway-keyring v1"
#define KCV_CONTEXT "slipway master key check v1"
#define RELOAD_EVERY_MS 1000

struct master {
	uint32_t version;
	uint8_t *key; /* SEC_KEY_BYTES, sodium memory, read-only */
};

struct sec_keys {
	pthread_rwlock_t lock;
	char keyring_path[4096];
	struct master m[SEC_MAX_MASTER];
	size_t nm;
	uint32_t current;
	int64_t last_reload_ms;
	uint64_t gen; /* bumped (under the write lock) whenever the keyring changes */
	pthread_mutex_t reload_mu;
	uint8_t *seal_sk; /* X25519, read-only */
	uint8_t seal_pk[32];
	uint8_t *sign_sk; /* Ed25519 (seed || public), read-only */
	uint8_t sign_pk[32];
	char key_id[SEALED_KEY_ID_MAX];
};

static void master_free(struct master *m)
{
	if (m->key != NULL)
		sodium_free(m->key); /* sodium_free wipes before unmapping */
	m->key = NULL;
	m->version = 0;
}

static void ring_free(struct master *m, size_t n)
{
	for (size_t i = 0; i < n; i++)
		master_free(&m[i]);
}

/* Parses an unsigned decimal from p[n]. */
static int span_u32(const char *p, size_t n, uint32_t *out)
{
	uint64_t v = 0;
	if (n == 0 || n > 10)
		return -1;
	for (size_t i = 0; i < n; i++) {
		if (p[i] < '0' || p[i] > '9')
			return -1;
		v = v * 10 + (uint64_t)(p[i] - '0');
	}
	if (v == 0 || v > UINT32_MAX)
		return -1;
	*out = (uint32_t)v;
	return 0;
}

/* Parses a keyring file held in text[n] (secure memory) into m[], *nm and
 * *current. On failure nothing is kept. */
static int ring_parse(const char *path, const char *text, size_t n, struct master *m, size_t *nm,
		      uint32_t *current, char *err, size_t errlen)
{
	size_t off = 0, line = 0, count = 0;
	uint32_t cur = 0;
	int rc = 0;

	while (off < n) {
		const char *l = text + off;
		const char *nl = memchr(l, '\n', n - off);
		size_t len = nl ? (size_t)(nl - l) : n - off;
		off += len + (nl ? 1 : 0);
		line++;
		if (line == 1) {
			if (len != strlen(KEYRING_MAGIC) || memcmp(l, KEYRING_MAGIC, len) != 0) {
				rc = sw_errf(err, errlen, SW_EINVAL,
					     "%s is not a slipway keyring (first line)", path);
				goto out;
			}
			continue;
		}
		if (len == 0)
			continue;
		if (len > 8 && memcmp(l, "current ", 8) == 0) {
			if (cur != 0 || span_u32(l + 8, len - 8, &cur) != 0) {
				rc = sw_errf(err, errlen, SW_EINVAL, "%s line %zu: bad 'current'",
					     path, line);
				goto out;
			}
			continue;
		}
		const char *sp = len > 4 ? memchr(l + 4, ' ', len - 4) : NULL;
		uint32_t v = 0;
		size_t binlen = 0;
		if (len <= 4 || memcmp(l, "key ", 4) != 0 || sp == NULL ||
		    span_u32(l + 4, (size_t)(sp - l) - 4, &v) != 0 ||
		    (size_t)(l + len - sp - 1) != SEC_KEY_BYTES * 2) {
			rc = sw_errf(err, errlen, SW_EINVAL, "%s line %zu: expected 'key N <64 hex>'",
				     path, line);
			goto out;
		}
		for (size_t i = 0; i < count; i++)
			if (m[i].version == v) {
				rc = sw_errf(err, errlen, SW_EINVAL, "%s: key %u appears twice", path,
					     v);
				goto out;
			}
		if (count == SEC_MAX_MASTER) {
			rc = sw_errf(err, errlen, SW_ELIMIT, "%s holds more than %d keys", path,
				     SEC_MAX_MASTER);
			goto out;
		}
		m[count].key = sodium_malloc(SEC_KEY_BYTES);
		if (m[count].key == NULL) {
			rc = sw_errf(err, errlen, SW_ENOMEM, "out of secure memory");
			goto out;
		}
		m[count].version = v;
		if (sodium_hex2bin(m[count].key, SEC_KEY_BYTES, sp + 1, SEC_KEY_BYTES * 2, NULL,
				   &binlen, NULL) != 0 ||
		    binlen != SEC_KEY_BYTES) {
			count++;
			rc = sw_errf(err, errlen, SW_EINVAL, "%s line %zu: key is not hex", path,
				     line);
			goto out;
		}
		sodium_mprotect_readonly(m[count].key);
		count++;
	}
	if (count == 0) {
		rc = sw_errf(err, errlen, SW_EINVAL, "%s holds no keys", path);
		goto out;
	}
	int found = 0;
	for (size_t i = 0; i < count; i++)
		found |= m[i].version == cur;
	if (!found) {
		rc = sw_errf(err, errlen, SW_EINVAL, "%s: 'current' names no key in the file", path);
		goto out;
	}
	*nm = count;
	*current = cur;
out:
	if (rc != 0)
		ring_free(m, count);
	return rc;
}

static int ring_read(const char *path, struct master *m, size_t *nm, uint32_t *current,
		     char *err, size_t errlen)
{
	uint8_t *text = NULL;
	size_t n = 0;
	int rc = sealed_secret_file_read(path, SEALED_KEY_FILE_MAX, &text, &n, err, errlen);
	if (rc != 0)
		return rc;
	rc = ring_parse(path, (const char *)text, n, m, nm, current, err, errlen);
	sodium_memzero(text, n);
	sodium_free(text);
	return rc;
}

/* Writes the keys m[0..n) (plus `extra` when not NULL) with `current`. */
static int ring_write(const char *path, const struct master *m, size_t n,
		      const struct master *extra, uint32_t current, int replace, char *err,
		      size_t errlen)
{
	size_t cap = 64 + (n + 1) * (16 + SEC_KEY_BYTES * 2), off = 0;
	uint8_t *buf = sodium_malloc(cap);
	int rc;
	if (buf == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of secure memory");
	off += (size_t)snprintf((char *)buf, cap, "%s\ncurrent %u\n", KEYRING_MAGIC, current);
	for (size_t i = 0; i < n + 1; i++) {
		const struct master *k = i < n ? &m[i] : extra;
		if (k == NULL)
			break;
		off += (size_t)snprintf((char *)buf + off, cap - off, "key %u ", k->version);
		sodium_bin2hex((char *)buf + off, cap - off, k->key, SEC_KEY_BYTES);
		off += SEC_KEY_BYTES * 2;
		buf[off++] = '\n';
	}
	rc = sealed_secret_file_write(path, buf, off, replace, err, errlen);
	sodium_memzero(buf, cap);
	sodium_free(buf);
	return rc;
}

static int new_master(struct master *m, uint32_t version, char *err, size_t errlen)
{
	m->key = sodium_malloc(SEC_KEY_BYTES);
	if (m->key == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of secure memory");
	crypto_aead_xchacha20poly1305_ietf_keygen(m->key);
	sodium_mprotect_readonly(m->key);
	m->version = version;
	return 0;
}

static int load_sign(struct sec_keys *k, const char *path, int generate, char *err, size_t errlen)
{
	uint8_t *seed = sodium_malloc(SEALED_SIGN_SEED_BYTES);
	int rc;
	if (seed == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of secure memory");
	rc = sealed_key_read(path, SEALED_LABEL_ED25519_SEED, seed, SEALED_SIGN_SEED_BYTES, err,
			     errlen);
	if (rc == SW_ENOTFOUND && generate) {
		randombytes_buf(seed, SEALED_SIGN_SEED_BYTES);
		rc = sealed_key_write(path, SEALED_LABEL_ED25519_SEED, seed, SEALED_SIGN_SEED_BYTES,
				      err, errlen);
		if (rc == 0)
			log_info("created the bundle signing key", "path=%s", path);
	}
	if (rc == 0) {
		crypto_sign_seed_keypair(k->sign_pk, k->sign_sk, seed);
		sealed_key_id(k->sign_pk, k->key_id);
	}
	sodium_memzero(seed, SEALED_SIGN_SEED_BYTES);
	sodium_free(seed);
	return rc;
}

int sec_keys_load(const struct sec_keys_opts *o, struct sec_keys **out, char *err, size_t errlen)
{
	struct sec_keys *k = NULL;
	int rc = 0;

	*out = NULL;
	k = calloc(1, sizeof *k);
	if (k == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	pthread_rwlock_init(&k->lock, NULL);
	pthread_mutex_init(&k->reload_mu, NULL);
	if (snprintf(k->keyring_path, sizeof k->keyring_path, "%s", o->keyring_path) >=
	    (int)sizeof k->keyring_path) {
		rc = sw_errf(err, errlen, SW_EINVAL, "keyring path too long");
		goto out;
	}
	k->seal_sk = sodium_malloc(SEALED_X25519_BYTES);
	k->sign_sk = sodium_malloc(SEALED_SIGN_SECRET_BYTES);
	if (k->seal_sk == NULL || k->sign_sk == NULL) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of secure memory");
		goto out;
	}

	rc = ring_read(o->keyring_path, k->m, &k->nm, &k->current, err, errlen);
	if (rc == SW_ENOTFOUND && o->generate && o->keyring_may_be_new) {
		rc = new_master(&k->m[0], 1, err, errlen);
		if (rc == 0)
			rc = ring_write(o->keyring_path, k->m, 1, NULL, 1, 0, err, errlen);
		if (rc != 0)
			goto out;
		k->nm = 1;
		k->current = 1;
		log_info("created the master keyring", "path=%s version=%u", o->keyring_path, 1u);
	} else if (rc == SW_ENOTFOUND && o->generate) {
		rc = sw_errf(err, errlen, SW_EPRECOND,
			     "%s is missing but the database holds data keys wrapped by master "
			     "keys: restore the keyring from its backup (not generating a new one)",
			     o->keyring_path);
		goto out;
	} else if (rc != 0) {
		goto out;
	}

	rc = sealed_x25519_load(o->seal_path, o->generate, k->seal_pk, k->seal_sk, err, errlen);
	if (rc != 0)
		goto out;
	rc = load_sign(k, o->sign_path, o->generate, err, errlen);
	if (rc != 0)
		goto out;
	sodium_mprotect_readonly(k->seal_sk);
	sodium_mprotect_readonly(k->sign_sk);
	k->last_reload_ms = clock_mono_ms();
	*out = k;
	k = NULL;
out:
	sec_keys_free(k);
	return rc;
}

void sec_keys_free(struct sec_keys *k)
{
	if (k == NULL)
		return;
	ring_free(k->m, k->nm);
	if (k->seal_sk != NULL)
		sodium_free(k->seal_sk);
	if (k->sign_sk != NULL)
		sodium_free(k->sign_sk);
	pthread_rwlock_destroy(&k->lock);
	pthread_mutex_destroy(&k->reload_mu);
	free(k);
}

uint32_t sec_keys_current(struct sec_keys *k)
{
	pthread_rwlock_rdlock(&k->lock);
	uint32_t v = k->current;
	pthread_rwlock_unlock(&k->lock);
	return v;
}

size_t sec_keys_versions(struct sec_keys *k, uint32_t *out, size_t cap)
{
	pthread_rwlock_rdlock(&k->lock);
	size_t n = 0;
	for (size_t i = 0; i < k->nm && n < cap; i++)
		out[n++] = k->m[i].version;
	pthread_rwlock_unlock(&k->lock);
	/* ascending, for stable output */
	for (size_t i = 1; i < n; i++)
		for (size_t j = i; j > 0 && out[j - 1] > out[j]; j--) {
			uint32_t t = out[j];
			out[j] = out[j - 1];
			out[j - 1] = t;
		}
	return n;
}

static const struct master *find_locked(struct sec_keys *k, uint32_t version)
{
	for (size_t i = 0; i < k->nm; i++)
		if (k->m[i].version == version)
			return &k->m[i];
	return NULL;
}

int sec_keys_kcv(struct sec_keys *k, uint32_t version, uint8_t out[16])
{
	int rc = SW_ENOTFOUND;
	pthread_rwlock_rdlock(&k->lock);
	const struct master *m = find_locked(k, version);
	if (m != NULL) {
		crypto_generichash(out, 16, (const uint8_t *)KCV_CONTEXT, strlen(KCV_CONTEXT),
				   m->key, SEC_KEY_BYTES);
		rc = 0;
	}
	pthread_rwlock_unlock(&k->lock);
	return rc;
}

int sec_keys_wrap(struct sec_keys *k, uint32_t version, const uint8_t *aad, size_t aadlen,
		  const uint8_t *dk, uint8_t *out, uint32_t *used, char *err, size_t errlen)
{
	int rc = 0;
	unsigned long long clen = 0;
	pthread_rwlock_rdlock(&k->lock);
	const struct master *m = find_locked(k, version ? version : k->current);
	if (m == NULL) {
		rc = sw_errf(err, errlen, SW_EPRECOND, "master key %u is not in the keyring",
			     version);
		goto out;
	}
	randombytes_buf(out, SEC_NONCE_BYTES);
	crypto_aead_xchacha20poly1305_ietf_encrypt(out + SEC_NONCE_BYTES, &clen, dk, SEC_KEY_BYTES,
						   aad, aadlen, NULL, out, m->key);
	*used = m->version;
out:
	pthread_rwlock_unlock(&k->lock);
	return rc;
}

/* Re-reads the keyring file and adopts versions this process does not
 * hold (another replica rotated). Unless forced, at most once per
 * RELOAD_EVERY_MS. */
static void reload(struct sec_keys *k, int force)
{
	struct master fresh[SEC_MAX_MASTER];
	size_t n = 0;
	uint32_t cur = 0;
	char err[256];

	pthread_mutex_lock(&k->reload_mu);
	if (!force && clock_mono_ms() - k->last_reload_ms < RELOAD_EVERY_MS) {
		pthread_mutex_unlock(&k->reload_mu);
		return;
	}
	k->last_reload_ms = clock_mono_ms();
	memset(fresh, 0, sizeof fresh);
	if (ring_read(k->keyring_path, fresh, &n, &cur, err, sizeof err) != 0) {
		log_warn("keyring reload failed", "error=%s", err);
		pthread_mutex_unlock(&k->reload_mu);
		return;
	}
	pthread_rwlock_wrlock(&k->lock);
	for (size_t i = 0; i < n; i++) {
		if (find_locked(k, fresh[i].version) == NULL && k->nm < SEC_MAX_MASTER) {
			k->m[k->nm++] = fresh[i];
			fresh[i].key = NULL;
			log_info("adopted a master key from the keyring file", "version=%u",
				 k->m[k->nm - 1].version);
		}
	}
	if (find_locked(k, cur) != NULL && cur > k->current)
		k->current = cur;
	__atomic_add_fetch(&k->gen, 1, __ATOMIC_RELEASE);
	pthread_rwlock_unlock(&k->lock);
	ring_free(fresh, n);
	pthread_mutex_unlock(&k->reload_mu);
}

int sec_keys_unwrap(struct sec_keys *k, uint32_t version, const uint8_t *aad, size_t aadlen,
		    const uint8_t *wrapped, uint8_t *dk, char *err, size_t errlen)
{
	int rc = 0;
	unsigned long long dlen = 0;
	for (int attempt = 0; attempt < 2; attempt++) {
		pthread_rwlock_rdlock(&k->lock);
		const struct master *m = find_locked(k, version);
		if (m != NULL) {
			if (crypto_aead_xchacha20poly1305_ietf_decrypt(
				    dk, &dlen, NULL, wrapped + SEC_NONCE_BYTES,
				    SEC_WRAPPED_BYTES - SEC_NONCE_BYTES, aad, aadlen, wrapped,
				    m->key) != 0 ||
			    dlen != SEC_KEY_BYTES) {
				sodium_memzero(dk, SEC_KEY_BYTES);
				rc = sw_errf(err, errlen, SW_EDATALOSS,
					     "the wrapped data key does not authenticate with master "
					     "key %u",
					     version);
			}
			pthread_rwlock_unlock(&k->lock);
			return rc;
		}
		pthread_rwlock_unlock(&k->lock);
		if (attempt == 0)
			reload(k, 0);
	}
	return sw_errf(err, errlen, SW_EPRECOND,
		       "master key %u is not in the keyring (retired, or the keyring is stale)",
		       version);
}

uint64_t sec_keys_generation(struct sec_keys *k)
{
	/* Written under the write lock; read without one (once per data key
	 * on the Fetch path). */
	return __atomic_load_n(&k->gen, __ATOMIC_ACQUIRE);
}

int sec_keys_add(struct sec_keys *k, uint32_t *version, char *err, size_t errlen)
{
	struct master nm = { 0, NULL };
	uint32_t v = 0;
	int rc = 0;

	/* Another replica may have added keys to the shared file: never write
	 * a keyring that lacks them. */
	reload(k, 1);
	pthread_rwlock_wrlock(&k->lock);
	if (k->nm >= SEC_MAX_MASTER) {
		rc = sw_errf(err, errlen, SW_ELIMIT,
			     "the keyring holds %d master keys: retire old ones first",
			     SEC_MAX_MASTER);
		goto out;
	}
	for (size_t i = 0; i < k->nm; i++)
		if (k->m[i].version > v)
			v = k->m[i].version;
	rc = new_master(&nm, v + 1, err, errlen);
	if (rc != 0)
		goto out;
	/* The file first: a key must be on disk before anything is wrapped with it. */
	rc = ring_write(k->keyring_path, k->m, k->nm, &nm, nm.version, 1, err, errlen);
	if (rc != 0)
		goto out;
	k->m[k->nm++] = nm;
	k->current = nm.version;
	*version = nm.version;
	nm.key = NULL;
out:
	__atomic_add_fetch(&k->gen, 1, __ATOMIC_RELEASE);
	pthread_rwlock_unlock(&k->lock);
	master_free(&nm);
	return rc;
}

int sec_keys_retire_except(struct sec_keys *k, uint32_t keep, char *err, size_t errlen)
{
	int rc = 0;
	pthread_rwlock_wrlock(&k->lock);
	const struct master *m = find_locked(k, keep);
	if (m == NULL) {
		rc = sw_errf(err, errlen, SW_EPRECOND, "master key %u is not in the keyring", keep);
		goto out;
	}
	rc = ring_write(k->keyring_path, m, 1, NULL, keep, 1, err, errlen);
	if (rc != 0)
		goto out;
	size_t j = 0;
	for (size_t i = 0; i < k->nm; i++) {
		if (k->m[i].version == keep)
			k->m[j++] = k->m[i];
		else
			master_free(&k->m[i]);
	}
	k->nm = j;
	k->current = keep;
out:
	__atomic_add_fetch(&k->gen, 1, __ATOMIC_RELEASE);
	pthread_rwlock_unlock(&k->lock);
	return rc;
}

int sec_keys_open_sealed(struct sec_keys *k, const uint8_t *box, size_t len, uint8_t *out,
			 size_t cap, size_t *outlen, char *err, size_t errlen)
{
	*outlen = 0;
	if (len < crypto_box_SEALBYTES || len - crypto_box_SEALBYTES > cap)
		return sw_errf(err, errlen, SW_EINVAL, "sealed value of %zu bytes is out of range",
			       len);
	if (crypto_box_seal_open(out, box, len, k->seal_pk, k->seal_sk) != 0) {
		sodium_memzero(out, len - crypto_box_SEALBYTES);
		return sw_errf(err, errlen, SW_EINVAL,
			       "the sealed value does not open with the service's key (tampered, "
			       "or sealed to another key: fetch the key with GetServiceKeys)");
	}
	*outlen = len - crypto_box_SEALBYTES;
	return 0;
}

void sec_keys_public(struct sec_keys *k, uint8_t seal_pk[32], uint8_t sign_pk[32],
		     char key_id[SEALED_KEY_ID_MAX])
{
	memcpy(seal_pk, k->seal_pk, 32);
	memcpy(sign_pk, k->sign_pk, 32);
	memcpy(key_id, k->key_id, SEALED_KEY_ID_MAX);
}

const uint8_t *sec_keys_sign_sk(struct sec_keys *k)
{
	return k->sign_sk;
}
