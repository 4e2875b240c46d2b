/*
 * Unit tests for the secrets service's key handling and envelope
 * encryption, without servers: the master keyring file (creation, strict
 * parsing, refusal of exposed or malformed files, rotation, retirement,
 * adoption of keys another replica added), wrapping, and the identity
 * binding of both layers (a ciphertext under another app, environment,
 * name, version or master key version does not open). Every open goes
 * through a data key cache (dkcache.c) that is hot after the first one,
 * so each refusal below is also a cache miss where it must be one: another
 * identity, another master key version, altered bytes, a changed keyring.
 *
 * The service's files are compiled into this test directly: they are not
 * part of lib/.
 */
#include "../../services/secrets/dkcache.c"
#include "../../services/secrets/envelope.c"
#include "../../services/secrets/keys.c"
#include "../../services/secrets/scratch.c"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

static char dir[256], ring[300], seal[300], sign[300];
static struct sec_dkcache *dkc;

static int setup(void **state)
{
	(void)state;
	snprintf(dir, sizeof dir, "/tmp/test_sealed_keyring.XXXXXX");
	if (mkdtemp(dir) == NULL)
		return -1;
	snprintf(ring, sizeof ring, "%s/master.keyring", dir);
	snprintf(seal, sizeof seal, "%s/seal.key", dir);
	snprintf(sign, sizeof sign, "%s/sign.key", dir);
	char err[256];
	return sec_dkcache_new(64, 60000, &dkc, err, sizeof err) == 0 && dkc != NULL ? 0 : -1;
}

static int teardown(void **state)
{
	(void)state;
	sec_dkcache_free(dkc);
	char cmd[400];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	return system(cmd) == 0 ? 0 : -1;
}

static void reset(void)
{
	unlink(ring);
	unlink(seal);
	unlink(sign);
}

static struct sec_keys *load(int generate, int may_be_new, int want)
{
	struct sec_keys_opts o = { ring, seal, sign, generate, may_be_new };
	struct sec_keys *k = NULL;
	char err[512];
	int rc = sec_keys_load(&o, &k, err, sizeof err);
	if (rc != want)
		fail_msg("load: %d (%s), want %d", rc, err, want);
	return k;
}

static void write_ring(const char *text, mode_t mode)
{
	unlink(ring);
	FILE *f = fopen(ring, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
	chmod(ring, mode);
}

static void test_created_once_then_loaded(void **state)
{
	(void)state;
	reset();
	/* Missing files and no --generate-keys: a start-up error. */
	assert_null(load(0, 1, SW_ENOTFOUND));
	/* Missing keyring while the database holds wrapped keys: refused even
	 * with --generate-keys. */
	assert_null(load(1, 0, SW_EPRECOND));
	assert_int_equal(access(ring, F_OK), -1);
	struct sec_keys *k = load(1, 1, 0);
	assert_int_equal(sec_keys_current(k), 1);
	struct stat st;
	assert_int_equal(stat(ring, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	uint8_t seal1[32], sign1[32], seal2[32], sign2[32], kcv1[16], kcv2[16];
	char id1[SEALED_KEY_ID_MAX], id2[SEALED_KEY_ID_MAX];
	sec_keys_public(k, seal1, sign1, id1);
	assert_int_equal(sec_keys_kcv(k, 1, kcv1), 0);
	assert_int_equal(sec_keys_kcv(k, 2, kcv1 + 0), SW_ENOTFOUND);
	sec_keys_kcv(k, 1, kcv1);
	sec_keys_free(k);
	/* Loaded again: the same keys, nothing regenerated. */
	k = load(1, 1, 0);
	sec_keys_public(k, seal2, sign2, id2);
	sec_keys_kcv(k, 1, kcv2);
	assert_memory_equal(seal1, seal2, 32);
	assert_memory_equal(sign1, sign2, 32);
	assert_string_equal(id1, id2);
	assert_memory_equal(kcv1, kcv2, 16);
	sec_keys_free(k);
	/* An exposed keyring is refused. */
	chmod(ring, 0644);
	assert_null(load(1, 1, SW_EPERM));
	chmod(ring, 0600);
	chmod(sign, 0640);
	assert_null(load(1, 1, SW_EPERM));
	chmod(sign, 0600);
}

static void test_malformed_keyrings_are_refused(void **state)
{
	(void)state;
	static const char *bad[] = {
		"",
		"slipway-keyring v2\ncurrent 1\nkey 1 "
		"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
		"slipway-keyring v1\ncurrent 2\nkey 1 "
		"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
		"slipway-keyring v1\nkey 1 "
		"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
		"slipway-keyring v1\ncurrent 1\nkey 1 "
		"00112233445566778899aabbccddeeff00112233445566778899aabbccddee\n",
		"slipway-keyring v1\ncurrent 1\nkey 1 "
		"00112233445566778899aabbccddeeff00112233445566778899aabbccddeezz\n",
		"slipway-keyring v1\ncurrent 1\nkey 1 "
		"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\nkey 1 "
		"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
		"slipway-keyring v1\ncurrent 1\ncurrent 1\nkey 1 "
		"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
		"slipway-keyring v1\ncurrent 0\nkey 0 "
		"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
		"slipway-keyring v1\ncurrent 1\nkey -1 "
		"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
		"slipway-keyring v1\ncurrent 1\nkey 1  "
		"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
		"slipway-keyring v1\ncurrent 1\n",
		"slipway-keyring v1\ncurrent 99999999999\nkey 1 "
		"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		write_ring(bad[i], 0600);
		struct sec_keys_opts o = { ring, seal, sign, 1, 1 };
		struct sec_keys *k = NULL;
		char err[512];
		int rc = sec_keys_load(&o, &k, err, sizeof err);
		if (rc == 0)
			fail_msg("keyring %zu was accepted", i);
		assert_null(k);
		/* The message names the file, never the key. */
		assert_null(strstr(err, "00112233"));
	}
	/* More than SEC_MAX_MASTER keys. */
	char *big = malloc(200 * (SEC_MAX_MASTER + 2));
	size_t off = (size_t)snprintf(big, 200, "slipway-keyring v1\ncurrent 1\n");
	for (int i = 1; i <= SEC_MAX_MASTER + 1; i++)
		off += (size_t)snprintf(big + off, 200, "key %d %064d\n", i, 0);
	write_ring(big, 0600);
	free(big);
	assert_null(load(1, 1, SW_ELIMIT));
	/* A good one with blank lines and no trailing newline. */
	write_ring("slipway-keyring v1\n\ncurrent 7\nkey 7 "
		   "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
		   0600);
	struct sec_keys *k = load(1, 1, 0);
	assert_int_equal(sec_keys_current(k), 7);
	sec_keys_free(k);
	unlink(ring);
}

static void test_envelope_binds_identity(void **state)
{
	(void)state;
	reset();
	struct sec_keys *k = load(1, 1, 0);
	char err[512];
	const uint8_t value[] = "the value";
	size_t len = sizeof value - 1;
	uint8_t ct[64], wrapped[SEC_WRAPPED_BYTES], plain[64];
	uint32_t mk = 0;
	struct sec_ident id = { "web", "prod", "DB", 3 };
	assert_int_equal(sec_env_seal(k, &id, value, len, ct, wrapped, &mk, err, sizeof err), 0);
	assert_int_equal(mk, 1);
	assert_null(memmem(ct, len + SEC_CT_OVERHEAD, value, len));
	assert_int_equal(sec_env_open(k, dkc, &id, ct, len + SEC_CT_OVERHEAD, wrapped, mk, plain, err,
				      sizeof err),
			 0);
	assert_memory_equal(plain, value, len);
	/* Again: from the cache this time, same value. */
	size_t live = 0;
	unsigned long long hits = 0, misses = 0, hits0;
	sec_dkcache_stats(dkc, &live, &hits0, &misses);
	memset(plain, 0, sizeof plain);
	assert_int_equal(sec_env_open(k, dkc, &id, ct, len + SEC_CT_OVERHEAD, wrapped, mk, plain, err,
				      sizeof err),
			 0);
	assert_memory_equal(plain, value, len);
	sec_dkcache_stats(dkc, &live, &hits, &misses);
	assert_int_equal(hits, hits0 + 1);
	assert_true(live >= 1);
	/* Any other identity: does not open. */
	const struct sec_ident others[] = {
		{ "web2", "prod", "DB", 3 }, { "web", "staging", "DB", 3 }, { "web", "", "DB", 3 },
		{ "web", "prod", "DB2", 3 }, { "web", "prod", "DB", 4 },    { "webp", "rod", "DB", 3 },
	};
	for (size_t i = 0; i < sizeof others / sizeof others[0]; i++)
		assert_int_equal(sec_env_open(k, dkc, &others[i], ct, len + SEC_CT_OVERHEAD, wrapped, mk,
					      plain, err, sizeof err),
				 SW_EDATALOSS);
	/* Another master key version label: not held. */
	assert_int_equal(sec_env_open(k, dkc, &id, ct, len + SEC_CT_OVERHEAD, wrapped, 2, plain, err,
				      sizeof err),
			 SW_EPRECOND);
	/* Flipped bits in either layer. */
	ct[SEC_NONCE_BYTES + 1] ^= 1;
	assert_int_equal(sec_env_open(k, dkc, &id, ct, len + SEC_CT_OVERHEAD, wrapped, mk, plain, err,
				      sizeof err),
			 SW_EDATALOSS);
	ct[SEC_NONCE_BYTES + 1] ^= 1;
	wrapped[SEC_NONCE_BYTES] ^= 1;
	assert_int_equal(sec_env_open(k, dkc, &id, ct, len + SEC_CT_OVERHEAD, wrapped, mk, plain, err,
				      sizeof err),
			 SW_EDATALOSS);
	wrapped[SEC_NONCE_BYTES] ^= 1;
	/* Rotation: a new key, rewrap, retire the old one; the value opens with
	 * the new wrapping and its ciphertext never changed. */
	uint32_t v2 = 0;
	uint8_t rewrapped[SEC_WRAPPED_BYTES];
	assert_int_equal(sec_keys_add(k, &v2, err, sizeof err), 0);
	assert_int_equal(v2, 2);
	assert_int_equal(sec_keys_current(k), 2);
	assert_int_equal(sec_env_rewrap(k, &id, wrapped, 1, rewrapped, 2, err, sizeof err), 0);
	assert_memory_not_equal(wrapped, rewrapped, SEC_WRAPPED_BYTES);
	/* The rewrapped key is bound to its new version too. */
	assert_int_equal(sec_env_open(k, dkc, &id, ct, len + SEC_CT_OVERHEAD, rewrapped, 1, plain, err,
				      sizeof err),
			 SW_EDATALOSS);
	assert_int_equal(sec_keys_retire_except(k, 2, err, sizeof err), 0);
	assert_int_equal(sec_env_open(k, dkc, &id, ct, len + SEC_CT_OVERHEAD, rewrapped, 2, plain, err,
				      sizeof err),
			 0);
	assert_memory_equal(plain, value, len);
	assert_int_equal(sec_env_open(k, dkc, &id, ct, len + SEC_CT_OVERHEAD, wrapped, 1, plain, err,
				      sizeof err),
			 SW_EPRECOND);
	sec_keys_free(k);
	/* The file holds only key 2 now, and a restart agrees. */
	k = load(0, 0, 0);
	uint32_t vs[8];
	assert_int_equal(sec_keys_versions(k, vs, 8), 1);
	assert_int_equal(vs[0], 2);
	assert_int_equal(sec_env_open(k, dkc, &id, ct, len + SEC_CT_OVERHEAD, rewrapped, 2, plain, err,
				      sizeof err),
			 0);
	sec_keys_free(k);
}

/* The data key cache: a hit only for the very wrapped key, master key
 * version, identity and keyring generation; entries die at their TTL (on
 * lookup, and by the sweeper without one) and on clear. */
static void test_dkcache_bounds(void **state)
{
	(void)state;
	struct sec_dkcache *c = NULL, *s = NULL;
	char err[256];
	uint8_t wrapped[SEC_WRAPPED_BYTES], ah[32], dk[SEC_KEY_BYTES], out[SEC_KEY_BYTES];
	size_t live = 0;
	unsigned long long hits = 0, misses = 0;
	randombytes_buf(wrapped, sizeof wrapped);
	randombytes_buf(dk, sizeof dk);
	sec_dkcache_hash_aad((const uint8_t *)"aad", 3, ah);
	assert_int_equal(sec_dkcache_new(0, 60000, &c, err, sizeof err), 0);
	assert_null(c); /* off */
	assert_int_equal(sec_dkcache_get(NULL, 1, 1, ah, wrapped, out), 0);
	assert_int_equal(sec_dkcache_new(16, 60000, &c, err, sizeof err), 0);
	sec_dkcache_put(c, 7, 1, ah, wrapped, dk);
	assert_int_equal(sec_dkcache_get(c, 7, 1, ah, wrapped, out), 1);
	assert_memory_equal(out, dk, sizeof dk);
	assert_int_equal(sec_dkcache_get(c, 8, 1, ah, wrapped, out), 0); /* keyring changed */
	assert_int_equal(sec_dkcache_get(c, 7, 2, ah, wrapped, out), 0); /* master version */
	uint8_t other[32];
	sec_dkcache_hash_aad((const uint8_t *)"aae", 3, other);
	assert_int_equal(sec_dkcache_get(c, 7, 1, other, wrapped, out), 0); /* identity */
	wrapped[SEC_WRAPPED_BYTES - 1] ^= 1;
	assert_int_equal(sec_dkcache_get(c, 7, 1, ah, wrapped, out), 0); /* bytes */
	wrapped[SEC_WRAPPED_BYTES - 1] ^= 1;
	sec_dkcache_clear(c);
	assert_int_equal(sec_dkcache_get(c, 7, 1, ah, wrapped, out), 0);
	sec_dkcache_stats(c, &live, &hits, &misses);
	assert_int_equal(live, 0);
	/* Many more keys than slots: bounded, and the newest ones are there. */
	for (int i = 0; i < 1000; i++) {
		wrapped[0] = (uint8_t)i;
		wrapped[1] = (uint8_t)(i >> 8);
		sec_dkcache_put(c, 7, 1, ah, wrapped, dk);
		assert_int_equal(sec_dkcache_get(c, 7, 1, ah, wrapped, out), 1);
	}
	sec_dkcache_stats(c, &live, &hits, &misses);
	assert_true(live <= 128);
	sec_dkcache_free(c);
	/* A 1 ms lifetime: gone at the next lookup, and by the sweeper alone. */
	assert_int_equal(sec_dkcache_new(16, 1, &s, err, sizeof err), 0);
	sec_dkcache_put(s, 7, 1, ah, wrapped, dk);
	usleep(5000);
	assert_int_equal(sec_dkcache_get(s, 7, 1, ah, wrapped, out), 0);
	wrapped[0] ^= 0x55;
	sec_dkcache_put(s, 7, 1, ah, wrapped, dk);
	for (int i = 0; i < 100; i++) {
		sec_dkcache_stats(s, &live, &hits, &misses);
		if (live == 0)
			break;
		usleep(50000);
	}
	assert_int_equal(live, 0);
	sec_dkcache_free(s);
}

static void test_keys_of_another_replica_are_adopted(void **state)
{
	(void)state;
	reset();
	struct sec_keys *a = load(1, 1, 0), *b = load(0, 0, 0);
	char err[512];
	uint32_t v = 0;
	/* Replica a rotates; b learns the new key from the shared file when it
	 * meets it, and b's own rotation keeps it. */
	assert_int_equal(sec_keys_add(a, &v, err, sizeof err), 0);
	assert_int_equal(v, 2);
	struct sec_ident id = { "web", "prod", "K", 1 };
	const uint8_t value[] = "x";
	uint8_t ct[64], wrapped[SEC_WRAPPED_BYTES], plain[8];
	uint32_t mk = 0;
	assert_int_equal(sec_env_seal(a, &id, value, 1, ct, wrapped, &mk, err, sizeof err), 0);
	assert_int_equal(mk, 2);
	b->last_reload_ms = 0; /* let b re-read now rather than in a second */
	assert_int_equal(sec_env_open(b, dkc, &id, ct, 1 + SEC_CT_OVERHEAD, wrapped, mk, plain, err,
				      sizeof err),
			 0);
	assert_int_equal(sec_keys_add(b, &v, err, sizeof err), 0);
	assert_int_equal(v, 3);
	sec_keys_free(a);
	a = load(0, 0, 0);
	uint32_t vs[8];
	assert_int_equal(sec_keys_versions(a, vs, 8), 3);
	assert_int_equal(sec_env_open(a, dkc, &id, ct, 1 + SEC_CT_OVERHEAD, wrapped, 2, plain, err,
				      sizeof err),
			 0);
	sec_keys_free(a);
	sec_keys_free(b);
}

static void test_sealed_values_open_only_with_the_service_key(void **state)
{
	(void)state;
	reset();
	struct sec_keys *k = load(1, 1, 0);
	uint8_t seal_pk[32], sign_pk[32], other_pk[32], other_sk[32], box[64], out[64];
	char kid[SEALED_KEY_ID_MAX], err[512];
	size_t n = 0;
	sec_keys_public(k, seal_pk, sign_pk, kid);
	crypto_box_seal(box, (const uint8_t *)"hunter22", 8, seal_pk);
	assert_int_equal(sec_keys_open_sealed(k, box, 8 + 48, out, sizeof out, &n, err, sizeof err),
			 0);
	assert_int_equal(n, 8);
	assert_memory_equal(out, "hunter22", 8);
	/* too big for the output, truncated, tampered, another key */
	assert_int_equal(sec_keys_open_sealed(k, box, 8 + 48, out, 7, &n, err, sizeof err), SW_EINVAL);
	assert_int_equal(sec_keys_open_sealed(k, box, 47, out, sizeof out, &n, err, sizeof err),
			 SW_EINVAL);
	box[50] ^= 1;
	assert_int_equal(sec_keys_open_sealed(k, box, 8 + 48, out, sizeof out, &n, err, sizeof err),
			 SW_EINVAL);
	crypto_box_keypair(other_pk, other_sk);
	crypto_box_seal(box, (const uint8_t *)"hunter22", 8, other_pk);
	assert_int_equal(sec_keys_open_sealed(k, box, 8 + 48, out, sizeof out, &n, err, sizeof err),
			 SW_EINVAL);
	assert_null(strstr(err, "hunter22"));
	/* The signing key signs what the published public key verifies. */
	uint8_t sig[64];
	crypto_sign_detached(sig, NULL, (const uint8_t *)"m", 1, sec_keys_sign_sk(k));
	assert_int_equal(crypto_sign_verify_detached(sig, (const uint8_t *)"m", 1, sign_pk), 0);
	sec_keys_free(k);
}

int main(void)
{
	if (sealed_init() != 0)
		return 1;
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_created_once_then_loaded),
		cmocka_unit_test(test_malformed_keyrings_are_refused),
		cmocka_unit_test(test_envelope_binds_identity),
		cmocka_unit_test(test_dkcache_bounds),
		cmocka_unit_test(test_keys_of_another_replica_are_adopted),
		cmocka_unit_test(test_sealed_values_open_only_with_the_service_key),
	};
	return cmocka_run_group_tests_name("test_sealed_keyring", tests, setup, teardown);
}
