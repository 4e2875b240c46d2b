/*
 * Unit tests for lib/sealed: the bundle round trip, every way a bundle can
 * be wrong on the agent side (flipped bits anywhere, another agent's key,
 * another signer, another agent or deployment, expired, issued in the
 * future, forged contents under a genuine box), key files and their
 * permissions, and handing values over as files.
 */
#include "err.h"
#include "sealed.h"

#include "slipway/v1/secrets.pb-c.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sodium.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#define AGENT "spiffe://slipway/agent/r1/host1"
#define OTHER_AGENT "spiffe://slipway/agent/r1/host2"
#define DEP "dep-42"

struct keys {
	uint8_t agent_pk[32], *agent_sk;
	uint8_t sign_pk[32], *sign_sk;
	char key_id[SEALED_KEY_ID_MAX];
};

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void keys_make(struct keys *k)
{
	k->agent_sk = sodium_malloc(32);
	k->sign_sk = sodium_malloc(64);
	assert_non_null(k->agent_sk);
	assert_non_null(k->sign_sk);
	crypto_box_keypair(k->agent_pk, k->agent_sk);
	crypto_sign_keypair(k->sign_pk, k->sign_sk);
	sealed_key_id(k->sign_pk, k->key_id);
}

static void keys_free(struct keys *k)
{
	sodium_free(k->agent_sk);
	sodium_free(k->sign_sk);
}

static const uint8_t v_db[] = "correct horse battery staple";
static const uint8_t v_bin[] = { 0, 1, 2, 0, 255, 0 };

static const struct sealed_item items[] = {
	{ "DB_PASSWORD", 3, v_db, sizeof v_db - 1 },
	{ "tls.key", 1, v_bin, sizeof v_bin },
	{ "EMPTY", 7, NULL, 0 },
};

/* Builds a bundle; returns a malloc'd box. */
static uint8_t *build(const struct keys *k, const char *agent, const uint8_t *agent_pk,
		      int64_t expires, int64_t issued, size_t *len)
{
	struct sealed_build_req r = {
		.deployment_id = DEP, .agent = agent, .expires_unix_ms = expires,
		.issued_unix_ms = issued, .items = items, .nitems = 3, .sign_sk = k->sign_sk,
		.key_id = k->key_id, .agent_pk = agent_pk,
	};
	size_t wl = 0, ol = 0;
	char err[256];
	assert_int_equal(sealed_build_size(&r, &wl, &ol, err, sizeof err), 0);
	uint8_t *work = sodium_malloc(wl), *out = malloc(ol);
	assert_non_null(work);
	assert_non_null(out);
	memset(work, 0xAA, wl);
	assert_int_equal(sealed_build(&r, work, wl, out, ol, len, err, sizeof err), 0);
	assert_int_equal(*len, ol);
	/* The scratch that held the plaintext bundle is wiped. */
	for (size_t i = 0; i < wl; i++)
		assert_int_equal(work[i], 0);
	sodium_free(work);
	return out;
}

static int open_as(const struct keys *k, const uint8_t *box, size_t len, const char *agent,
		   const char *dep, int64_t now, struct sealed_bundle **b, char *err)
{
	struct sealed_expect x = { .agent = agent, .deployment_id = dep, .sign_pk = k->sign_pk,
				   .now_unix_ms = now };
	return sealed_open(box, len, k->agent_pk, k->agent_sk, &x, b, err, 256);
}

static void test_round_trip(void **state)
{
	(void)state;
	struct keys k;
	keys_make(&k);
	int64_t exp = now_ms() + 60000;
	size_t len, len2;
	uint8_t *box = build(&k, AGENT, k.agent_pk, exp, 0, &len);
	uint8_t *box2 = build(&k, AGENT, k.agent_pk, exp, 0, &len2);
	struct sealed_bundle *b = NULL, *b2 = NULL;
	char err[256];
	assert_int_equal(open_as(&k, box, len, AGENT, DEP, 0, &b, err), 0);
	assert_int_equal(open_as(&k, box2, len2, AGENT, NULL, 0, &b2, err), 0);
	assert_int_equal(sealed_bundle_count(b), 3);
	assert_string_equal(sealed_bundle_agent(b), AGENT);
	assert_string_equal(sealed_bundle_deployment(b), DEP);
	assert_int_equal(sealed_bundle_expires(b), exp);
	assert_true(sealed_bundle_issued(b) <= now_ms());
	/* A fresh nonce per bundle. */
	assert_memory_not_equal(sealed_bundle_nonce(b), sealed_bundle_nonce(b2), SEALED_NONCE_BYTES);
	struct sealed_item it;
	for (size_t i = 0; i < 3; i++) {
		assert_int_equal(sealed_bundle_item(b, i, &it), 0);
		assert_string_equal(it.name, items[i].name);
		assert_int_equal(it.version, items[i].version);
		assert_int_equal(it.len, items[i].len);
		if (it.len)
			assert_memory_equal(it.value, items[i].value, it.len);
	}
	assert_int_equal(sealed_bundle_item(b, 3, &it), SW_ERANGE);
	assert_int_equal(sealed_bundle_find(b, "tls.key", &it), 0);
	assert_memory_equal(it.value, v_bin, sizeof v_bin);
	assert_int_equal(sealed_bundle_find(b, "nope", &it), SW_ENOTFOUND);
	/* The value is nowhere in the sealed bytes. */
	assert_null(memmem(box, len, v_db, sizeof v_db - 1));
	sealed_bundle_free(b);
	sealed_bundle_free(b2);
	sealed_bundle_free(NULL);
	free(box);
	free(box2);
	keys_free(&k);
}

static void test_every_flipped_bit_position_is_refused(void **state)
{
	(void)state;
	struct keys k;
	keys_make(&k);
	size_t len;
	uint8_t *box = build(&k, AGENT, k.agent_pk, now_ms() + 60000, 0, &len);
	char err[256];
	for (size_t i = 0; i < len; i++) {
		for (int bit = 0; bit < 8; bit += 3) {
			struct sealed_bundle *b = NULL;
			box[i] ^= (uint8_t)(1u << bit);
			int rc = open_as(&k, box, len, AGENT, DEP, 0, &b, err);
			box[i] ^= (uint8_t)(1u << bit);
			assert_int_equal(rc, SW_EINVAL);
			assert_null(b);
		}
	}
	/* Truncated, extended, empty. */
	struct sealed_bundle *b = NULL;
	assert_int_equal(open_as(&k, box, len - 1, AGENT, DEP, 0, &b, err), SW_EINVAL);
	assert_int_equal(open_as(&k, box, SEALED_BOX_OVERHEAD, AGENT, DEP, 0, &b, err), SW_EINVAL);
	assert_int_equal(open_as(&k, box, SEALED_MAX_BOX + 1u, AGENT, DEP, 0, &b, err), SW_EINVAL);
	uint8_t *longer = calloc(1, len + 1);
	memcpy(longer, box, len);
	assert_int_equal(open_as(&k, longer, len + 1, AGENT, DEP, 0, &b, err), SW_EINVAL);
	/* The untouched box still opens. */
	assert_int_equal(open_as(&k, box, len, AGENT, DEP, 0, &b, err), 0);
	sealed_bundle_free(b);
	free(longer);
	free(box);
	keys_free(&k);
}

static void test_another_agents_key_cannot_open(void **state)
{
	(void)state;
	struct keys k, other;
	keys_make(&k);
	keys_make(&other);
	size_t len;
	uint8_t *box = build(&k, AGENT, other.agent_pk, now_ms() + 60000, 0, &len);
	struct sealed_bundle *b = NULL;
	char err[256];
	assert_int_equal(open_as(&k, box, len, AGENT, DEP, 0, &b, err), SW_EINVAL);
	assert_non_null(strstr(err, "does not open"));
	free(box);
	keys_free(&k);
	keys_free(&other);
}

static void test_wrong_signer_is_refused(void **state)
{
	(void)state;
	struct keys k, rogue;
	keys_make(&k);
	keys_make(&rogue);
	/* The rogue signs with its own key but seals to our agent. */
	size_t len;
	uint8_t *box = build(&rogue, AGENT, k.agent_pk, now_ms() + 60000, 0, &len);
	struct sealed_bundle *b = NULL;
	char err[256];
	assert_int_equal(open_as(&k, box, len, AGENT, DEP, 0, &b, err), SW_EPERM);
	assert_non_null(strstr(err, "signature"));
	assert_non_null(strstr(err, k.key_id));
	assert_null(b);
	free(box);
	keys_free(&k);
	keys_free(&rogue);
}

static void test_forged_contents_under_a_genuine_signature(void **state)
{
	(void)state;
	struct keys k;
	keys_make(&k);
	/* Sign a bundle with the real key, change one byte of the bundle (not
	 * the signature) and seal it properly: only the signature can tell. */
	Slipway__V1__SecretValue v = SLIPWAY__V1__SECRET_VALUE__INIT, *vp = &v;
	v.name = "DB_PASSWORD";
	v.version = 1;
	v.value.data = (uint8_t *)"aaaa";
	v.value.len = 4;
	uint8_t nonce[24] = { 1 };
	Slipway__V1__SecretBundle sb = SLIPWAY__V1__SECRET_BUNDLE__INIT;
	sb.deployment_id = DEP;
	sb.agent = AGENT;
	sb.expires_unix_ms = now_ms() + 60000;
	sb.issued_unix_ms = now_ms();
	sb.nonce.data = nonce;
	sb.nonce.len = 24;
	sb.n_secrets = 1;
	sb.secrets = &vp;
	uint8_t bundle[512], sig[64], signedb[1024], box[1024 + 48];
	size_t bl = slipway__v1__secret_bundle__pack(&sb, bundle);
	crypto_sign_detached(sig, NULL, bundle, bl, k.sign_sk);
	uint8_t *val = memmem(bundle, bl, "aaaa", 4);
	assert_non_null(val);
	val[0] = 'b';
	Slipway__V1__SignedBundle s = SLIPWAY__V1__SIGNED_BUNDLE__INIT;
	s.bundle.data = bundle;
	s.bundle.len = bl;
	s.signature.data = sig;
	s.signature.len = 64;
	s.key_id = k.key_id;
	size_t sl = slipway__v1__signed_bundle__pack(&s, signedb);
	assert_int_equal(crypto_box_seal(box, signedb, sl, k.agent_pk), 0);
	struct sealed_bundle *b = NULL;
	char err[256];
	assert_int_equal(open_as(&k, box, sl + 48, AGENT, DEP, 0, &b, err), SW_EPERM);
	/* Restored, the same bytes open: the test would notice a broken setup. */
	val[0] = 'a';
	sl = slipway__v1__signed_bundle__pack(&s, signedb);
	assert_int_equal(crypto_box_seal(box, signedb, sl, k.agent_pk), 0);
	assert_int_equal(open_as(&k, box, sl + 48, AGENT, DEP, 0, &b, err), 0);
	sealed_bundle_free(b);
	/* A signature of the wrong length is refused too. */
	s.signature.len = 63;
	sl = slipway__v1__signed_bundle__pack(&s, signedb);
	assert_int_equal(crypto_box_seal(box, signedb, sl, k.agent_pk), 0);
	assert_int_equal(open_as(&k, box, sl + 48, AGENT, DEP, 0, &b, err), SW_EPERM);
	keys_free(&k);
}

static void test_wrong_agent_deployment_and_times(void **state)
{
	(void)state;
	struct keys k;
	keys_make(&k);
	int64_t now = now_ms(), exp = now + 60000;
	size_t len;
	uint8_t *box = build(&k, AGENT, k.agent_pk, exp, 0, &len);
	struct sealed_bundle *b = NULL;
	char err[256];
	/* Meant for another agent (which happens to hold the same key). */
	assert_int_equal(open_as(&k, box, len, OTHER_AGENT, DEP, 0, &b, err), SW_EPERM);
	assert_non_null(strstr(err, "not for " OTHER_AGENT));
	/* Prefix of the agent id is not the agent. */
	assert_int_equal(open_as(&k, box, len, "spiffe://slipway/agent/r1/host", DEP, 0, &b, err),
			 SW_EPERM);
	assert_int_equal(open_as(&k, box, len, AGENT, "dep-43", 0, &b, err), SW_EPERM);
	/* Expired: at and after the expiry; fine just before it. */
	assert_int_equal(open_as(&k, box, len, AGENT, DEP, exp, &b, err), SW_EPRECOND);
	assert_non_null(strstr(err, "expired"));
	assert_int_equal(open_as(&k, box, len, AGENT, DEP, exp + 3600000, &b, err), SW_EPRECOND);
	assert_int_equal(open_as(&k, box, len, AGENT, DEP, exp - 1, &b, err), 0);
	sealed_bundle_free(b);
	free(box);
	/* Issued in the future beyond the tolerated skew. */
	box = build(&k, AGENT, k.agent_pk, now + 3600000, now + SEALED_CLOCK_SKEW_MS + 60000, &len);
	assert_int_equal(open_as(&k, box, len, AGENT, DEP, now, &b, err), SW_EPRECOND);
	assert_int_equal(open_as(&k, box, len, AGENT, DEP, now + 120000, &b, err), 0);
	sealed_bundle_free(b);
	free(box);
	keys_free(&k);
}

static void test_build_refuses_bad_requests(void **state)
{
	(void)state;
	struct keys k;
	keys_make(&k);
	char err[256];
	size_t wl, ol;
	struct sealed_item bad[2] = { { "../etc", 1, v_db, 3 }, { "A", 1, v_db, 3 } };
	struct sealed_build_req r = { .deployment_id = DEP, .agent = AGENT,
				      .expires_unix_ms = now_ms() + 1000, .items = bad,
				      .nitems = 1, .sign_sk = k.sign_sk, .key_id = k.key_id,
				      .agent_pk = k.agent_pk };
	assert_int_equal(sealed_build_size(&r, &wl, &ol, err, sizeof err), SW_EINVAL);
	bad[0].name = "A";
	r.nitems = 2;
	assert_int_equal(sealed_build_size(&r, &wl, &ol, err, sizeof err), SW_EINVAL);
	assert_non_null(strstr(err, "twice"));
	r.nitems = SEALED_MAX_ITEMS + 1;
	assert_int_equal(sealed_build_size(&r, &wl, &ol, err, sizeof err), SW_ELIMIT);
	r.nitems = 1;
	r.deployment_id = "";
	assert_int_equal(sealed_build_size(&r, &wl, &ol, err, sizeof err), SW_EINVAL);
	r.deployment_id = "with space";
	assert_int_equal(sealed_build_size(&r, &wl, &ol, err, sizeof err), SW_EINVAL);
	r.deployment_id = DEP;
	r.expires_unix_ms = 0;
	assert_int_equal(sealed_build_size(&r, &wl, &ol, err, sizeof err), SW_EINVAL);
	r.expires_unix_ms = now_ms() + 1000;
	/* An all-zero (low-order) agent key cannot be sealed to. */
	uint8_t zero[32] = { 0 };
	r.agent_pk = zero;
	assert_int_equal(sealed_build_size(&r, &wl, &ol, err, sizeof err), 0);
	uint8_t *work = sodium_malloc(wl), *out = malloc(ol);
	size_t outlen;
	assert_int_equal(sealed_build(&r, work, wl, out, ol, &outlen, err, sizeof err), SW_EINVAL);
	assert_int_equal(outlen, 0);
	/* Buffers too small. */
	r.agent_pk = k.agent_pk;
	assert_int_equal(sealed_build(&r, work, wl - 1, out, ol, &outlen, err, sizeof err),
			 SW_EINVAL);
	assert_int_equal(sealed_build(&r, work, wl, out, ol - 1, &outlen, err, sizeof err),
			 SW_EINVAL);
	assert_int_equal(sealed_build(&r, work, wl, out, ol, &outlen, err, sizeof err), 0);
	sodium_free(work);
	free(out);
	keys_free(&k);
}

static void test_names(void **state)
{
	(void)state;
	assert_true(sealed_name_ok("DB_PASSWORD"));
	assert_true(sealed_name_ok("tls.key"));
	assert_true(sealed_name_ok("a-b_c.9"));
	assert_false(sealed_name_ok(""));
	assert_false(sealed_name_ok(NULL));
	assert_false(sealed_name_ok("."));
	assert_false(sealed_name_ok(".."));
	assert_false(sealed_name_ok(".hidden"));
	assert_false(sealed_name_ok("-rf"));
	assert_false(sealed_name_ok("a/b"));
	assert_false(sealed_name_ok("a b"));
	assert_false(sealed_name_ok("é"));
	char longname[SEALED_NAME_MAX + 2];
	memset(longname, 'a', sizeof longname);
	longname[SEALED_NAME_MAX] = '\0';
	assert_true(sealed_name_ok(longname));
	longname[SEALED_NAME_MAX] = 'a';
	longname[SEALED_NAME_MAX + 1] = '\0';
	assert_false(sealed_name_ok(longname));
}

static char tmpdir[256];

static int setup_tmp(void **state)
{
	(void)state;
	snprintf(tmpdir, sizeof tmpdir, "/dev/shm/test_sealed.XXXXXX");
	if (mkdtemp(tmpdir) == NULL) {
		snprintf(tmpdir, sizeof tmpdir, "/tmp/test_sealed.XXXXXX");
		if (mkdtemp(tmpdir) == NULL)
			return -1;
	}
	return 0;
}

static int teardown_tmp(void **state)
{
	(void)state;
	char cmd[512];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

static void test_key_files(void **state)
{
	(void)state;
	char p[512], q[512], err[256];
	uint8_t key[32], back[32], pk[32], pk2[32];
	uint8_t *sk = sodium_malloc(32);
	randombytes_buf(key, sizeof key);
	snprintf(p, sizeof p, "%s/k.key", tmpdir);
	assert_int_equal(sealed_key_read(p, SEALED_LABEL_ED25519_SEED, back, 32, err, sizeof err),
			 SW_ENOTFOUND);
	assert_int_equal(sealed_key_write(p, SEALED_LABEL_ED25519_SEED, key, 32, err, sizeof err), 0);
	struct stat st;
	assert_int_equal(stat(p, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	assert_int_equal(sealed_key_read(p, SEALED_LABEL_ED25519_SEED, back, 32, err, sizeof err), 0);
	assert_memory_equal(key, back, 32);
	/* Never replaced. */
	assert_int_equal(sealed_key_write(p, SEALED_LABEL_ED25519_SEED, key, 32, err, sizeof err),
			 SW_EEXIST);
	/* Another label, another length. */
	assert_int_equal(sealed_key_read(p, SEALED_LABEL_X25519_SECRET, back, 32, err, sizeof err),
			 SW_EINVAL);
	assert_int_equal(sealed_key_read(p, SEALED_LABEL_ED25519_SEED, back, 16, err, sizeof err),
			 SW_EINVAL);
	/* Group- or other-accessible files are refused, whatever they hold. */
	chmod(p, 0640);
	assert_int_equal(sealed_key_read(p, SEALED_LABEL_ED25519_SEED, back, 32, err, sizeof err),
			 SW_EPERM);
	assert_non_null(strstr(err, "chmod 600"));
	chmod(p, 0604);
	assert_int_equal(sealed_key_read(p, SEALED_LABEL_ED25519_SEED, back, 32, err, sizeof err),
			 SW_EPERM);
	chmod(p, 0600);
	/* A symbolic link to a key file is refused. */
	snprintf(q, sizeof q, "%s/link.key", tmpdir);
	assert_int_equal(symlink(p, q), 0);
	assert_int_equal(sealed_key_read(q, SEALED_LABEL_ED25519_SEED, back, 32, err, sizeof err),
			 SW_EPERM);
	/* Garbage. */
	snprintf(q, sizeof q, "%s/garbage.key", tmpdir);
	assert_int_equal(sealed_secret_file_write(q, (const uint8_t *)"slipway-key ed25519-seed\nzz\n",
						  28, 0, err, sizeof err),
			 0);
	assert_int_equal(sealed_key_read(q, SEALED_LABEL_ED25519_SEED, back, 32, err, sizeof err),
			 SW_EINVAL);
	/* X25519 pairs: created once, then loaded. */
	snprintf(q, sizeof q, "%s/agent.key", tmpdir);
	assert_int_equal(sealed_x25519_load(q, 0, pk, sk, err, sizeof err), SW_ENOTFOUND);
	assert_int_equal(sealed_x25519_load(q, 1, pk, sk, err, sizeof err), 0);
	assert_int_equal(sealed_x25519_load(q, 1, pk2, sk, err, sizeof err), 0);
	assert_memory_equal(pk, pk2, 32);
	/* Public key files. */
	snprintf(q, sizeof q, "%s/sign.pub", tmpdir);
	assert_int_equal(sealed_public_key_write(q, SEALED_LABEL_ED25519_PUBLIC, key, 32, err,
						 sizeof err),
			 0);
	assert_int_equal(stat(q, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0644);
	assert_int_equal(sealed_public_key_read(q, SEALED_LABEL_ED25519_PUBLIC, back, 32, err,
						sizeof err),
			 0);
	assert_memory_equal(key, back, 32);
	char id1[SEALED_KEY_ID_MAX], id2[SEALED_KEY_ID_MAX];
	sealed_key_id(key, id1);
	key[0] ^= 1;
	sealed_key_id(key, id2);
	assert_int_equal(strlen(id1), 24);
	assert_string_not_equal(id1, id2);
	sodium_free(sk);
}

static void test_write_files(void **state)
{
	(void)state;
	struct keys k;
	keys_make(&k);
	size_t len;
	uint8_t *box = build(&k, AGENT, k.agent_pk, now_ms() + 60000, 0, &len);
	struct sealed_bundle *b = NULL;
	char err[256], dir[512], p[600];
	assert_int_equal(open_as(&k, box, len, AGENT, DEP, 0, &b, err), 0);
	snprintf(dir, sizeof dir, "%s/release", tmpdir);
	assert_int_equal(mkdir(dir, 0750), 0);
	/* A directory open to the group is refused. */
	assert_int_equal(sealed_bundle_write_files(b, dir, 0, err, sizeof err), SW_EPERM);
	chmod(dir, 0700);
	int on_tmpfs = strncmp(tmpdir, "/dev/shm/", 9) == 0;
	assert_int_equal(sealed_bundle_write_files(b, dir, on_tmpfs, err, sizeof err), 0);
	/* Twice is fine (a re-run task): files are replaced. */
	assert_int_equal(sealed_bundle_write_files(b, dir, on_tmpfs, err, sizeof err), 0);
	snprintf(p, sizeof p, "%s/DB_PASSWORD", dir);
	struct stat st;
	assert_int_equal(stat(p, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0400);
	assert_int_equal(st.st_size, sizeof v_db - 1);
	FILE *f = fopen(p, "r");
	char buf[64] = "";
	assert_non_null(f);
	assert_int_equal(fread(buf, 1, sizeof buf, f), sizeof v_db - 1);
	fclose(f);
	assert_memory_equal(buf, v_db, sizeof v_db - 1);
	snprintf(p, sizeof p, "%s/EMPTY", dir);
	assert_int_equal(stat(p, &st), 0);
	assert_int_equal(st.st_size, 0);
	/* Off tmpfs, require_tmpfs refuses. */
	char disk[] = "/var/tmp/test_sealed_disk.XXXXXX";
	if (mkdtemp(disk) != NULL) {
		assert_int_equal(sealed_bundle_write_files(b, disk, 1, err, sizeof err), SW_EPERM);
		assert_non_null(strstr(err, "tmpfs"));
		rmdir(disk);
	}
	sealed_bundle_free(b);
	free(box);
	keys_free(&k);
}

int main(void)
{
	if (sealed_init() != 0)
		return 1;
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round_trip),
		cmocka_unit_test(test_every_flipped_bit_position_is_refused),
		cmocka_unit_test(test_another_agents_key_cannot_open),
		cmocka_unit_test(test_wrong_signer_is_refused),
		cmocka_unit_test(test_forged_contents_under_a_genuine_signature),
		cmocka_unit_test(test_wrong_agent_deployment_and_times),
		cmocka_unit_test(test_build_refuses_bad_requests),
		cmocka_unit_test(test_names),
		cmocka_unit_test(test_key_files),
		cmocka_unit_test(test_write_files),
	};
	return cmocka_run_group_tests_name("test_sealed", tests, setup_tmp, teardown_tmp);
}
