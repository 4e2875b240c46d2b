/*
 * test_artifact.c - the artifact service's validation (names.c) and trusted
 * builder keys (keys.c), without servers. The service's own source files
 * are compiled into this test so their rules are tested exactly as built.
 */
#include "../../services/artifact/keys.c"
#include "../../services/artifact/names.c"
#include <sodium.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

static void test_app_names(void **state)
{
	(void)state;
	assert_true(name_app_ok("web"));
	assert_true(name_app_ok("a"));
	assert_true(name_app_ok("0shop-api-2"));
	char longest[64];
	memset(longest, 'a', 63);
	longest[63] = '\0';
	assert_true(name_app_ok(longest));
	char toolong[65];
	memset(toolong, 'a', 64);
	toolong[64] = '\0';
	assert_false(name_app_ok(toolong));
	assert_false(name_app_ok(""));
	assert_false(name_app_ok(NULL));
	assert_false(name_app_ok("-web"));
	assert_false(name_app_ok("Web"));
	assert_false(name_app_ok("web_api"));
	assert_false(name_app_ok("web/api"));
	assert_false(name_app_ok("../web"));
	assert_false(name_app_ok("web api"));
	assert_false(name_app_ok("web\n"));
	assert_false(name_app_ok("wéb"));
	assert_false(name_app_ok("*"));
}

static void test_versions(void **state)
{
	(void)state;
	assert_true(name_version_ok("1.2.0"));
	assert_true(name_version_ok("v1.2.0-rc.1+build.5"));
	assert_true(name_version_ok("2026_11_26"));
	assert_true(name_version_ok("A"));
	assert_false(name_version_ok(""));
	assert_false(name_version_ok("."));
	assert_false(name_version_ok(".."));
	assert_false(name_version_ok(".1"));
	assert_false(name_version_ok("-1"));
	assert_false(name_version_ok("1..2"));
	assert_false(name_version_ok("1/2"));
	assert_false(name_version_ok("1.2 "));
	assert_false(name_version_ok("1@2"));
	assert_false(name_version_ok("1\\2"));
	char v[200];
	memset(v, '1', 128);
	v[128] = '\0';
	assert_true(name_version_ok(v));
	v[128] = '1';
	v[129] = '\0';
	assert_false(name_version_ok(v));
}

static void test_media_types(void **state)
{
	(void)state;
	assert_true(art_media_type_ok("application/vnd.slipway.bundle.v1+tar+gzip"));
	assert_true(art_media_type_ok("application/octet-stream"));
	assert_false(art_media_type_ok("application"));
	assert_false(art_media_type_ok("/x"));
	assert_false(art_media_type_ok("x/"));
	assert_false(art_media_type_ok("a/b/c"));
	assert_false(art_media_type_ok("text/plain; charset=utf-8"));
	assert_false(art_media_type_ok(""));
}

static void test_provenance(void **state)
{
	(void)state;
	Slipway__V1__Provenance p = SLIPWAY__V1__PROVENANCE__INIT;
	char why[256];
	assert_int_equal(art_provenance_ok(&p, why, sizeof why), 0);
	assert_int_equal(art_provenance_ok(NULL, why, sizeof why), 0);
	p.repository = "https://git.example.com/shop/web";
	p.commit = "0123456789abcdef0123456789abcdef01234567";
	p.ref = "refs/heads/main";
	p.builder = "ci";
	assert_int_equal(art_provenance_ok(&p, why, sizeof why), 0);
	p.commit = "ABCDEF1";
	assert_int_equal(art_provenance_ok(&p, why, sizeof why), SW_EINVAL);
	assert_non_null(strstr(why, "commit"));
	p.commit = "abc";
	assert_int_equal(art_provenance_ok(&p, why, sizeof why), SW_EINVAL);
	p.commit = "abcdef1";
	p.ref = "refs/heads/a b";
	assert_int_equal(art_provenance_ok(&p, why, sizeof why), SW_EINVAL);
	p.ref = "main";
	p.builder = "ci\nlevel=error forged=1";
	assert_int_equal(art_provenance_ok(&p, why, sizeof why), SW_EINVAL);
	p.builder = "ci";
	uint8_t sig[63] = { 0 };
	p.signature.data = sig;
	p.signature.len = sizeof sig;
	assert_int_equal(art_provenance_ok(&p, why, sizeof why), SW_EINVAL);
	p.signature.len = 0;
	p.signing_key = "ci-key";
	assert_int_equal(art_provenance_ok(&p, why, sizeof why), SW_EINVAL); /* key without sig */
	p.signing_key = "";
	p.build_time_unix_ms = -1;
	assert_int_equal(art_provenance_ok(&p, why, sizeof why), SW_EINVAL);
}

static void test_tokens_and_keys(void **state)
{
	(void)state;
	int64_t id;
	char app[64], key[ART_KEY_LEN];
	assert_int_equal(art_token_id("", &id), 0);
	assert_int_equal(id, 0);
	assert_int_equal(art_token_id("r42", &id), 0);
	assert_int_equal(id, 42);
	assert_int_equal(art_token_id("r0", &id), SW_EINVAL);
	assert_int_equal(art_token_id("r-1", &id), SW_EINVAL);
	assert_int_equal(art_token_id("42", &id), SW_EINVAL);
	assert_int_equal(art_token_id("r42'; DROP TABLE releases", &id), SW_EINVAL);
	assert_int_equal(art_token_app("aweb", app), 0);
	assert_string_equal(app, "web");
	assert_int_equal(art_token_app("a../x", app), SW_EINVAL);
	assert_int_equal(art_token_app("web", app), SW_EINVAL);
	art_blob_key("sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", key);
	assert_string_equal(key, "blobs/sha256/ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

/* ---- trusted keys ---- */

static char pk_web[64], pk_all[64];
static unsigned char sk_web[crypto_sign_SECRETKEYBYTES], sk_all[crypto_sign_SECRETKEYBYTES],
	sk_other[crypto_sign_SECRETKEYBYTES];

static int keys_setup(void **state)
{
	(void)state;
	unsigned char pk[crypto_sign_PUBLICKEYBYTES];
	if (sodium_init() < 0)
		return -1;
	crypto_sign_keypair(pk, sk_web);
	sodium_bin2base64(pk_web, sizeof pk_web, pk, sizeof pk, sodium_base64_VARIANT_ORIGINAL);
	crypto_sign_keypair(pk, sk_all);
	sodium_bin2base64(pk_all, sizeof pk_all, pk, sizeof pk, sodium_base64_VARIANT_ORIGINAL);
	crypto_sign_keypair(pk, sk_other);
	return 0;
}

static const char *D1 = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
static const char *D2 = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

static void sign(const unsigned char *sk, const char *msg, uint8_t sig[64])
{
	crypto_sign_detached(sig, NULL, (const unsigned char *)msg, strlen(msg), sk);
}

static void test_keys_file(void **state)
{
	(void)state;
	char text[1024], err[256], used[65], why[256];
	struct art_keys *k = NULL;
	snprintf(text, sizeof text,
		 "# builders\n"
		 "key web ci-web %s\n"
		 "key * release %s   # everyone\n"
		 "\n"
		 "require web\n",
		 pk_web, pk_all);
	assert_int_equal(art_keys_parse(text, "keys", &k, err, sizeof err), 0);
	assert_int_equal(art_keys_count(k), 2);
	assert_true(art_keys_required(k, "web"));
	assert_false(art_keys_required(k, "api"));

	uint8_t sig[64];
	/* The per-app key signs web; the global key signs anything. */
	sign(sk_web, D1, sig);
	assert_int_equal(art_keys_verify(k, "web", D1, sig, 64, "ci-web", used, sizeof used, why,
					 sizeof why), 0);
	assert_string_equal(used, "ci-web");
	assert_int_equal(art_keys_verify(k, "web", D1, sig, 64, "", used, sizeof used, why,
					 sizeof why), 0);
	assert_string_equal(used, "ci-web");
	/* ...but not another app, and not another digest. */
	assert_int_equal(art_keys_verify(k, "api", D1, sig, 64, "ci-web", used, sizeof used, why,
					 sizeof why), SW_EPERM);
	assert_non_null(strstr(why, "not trusted"));
	assert_int_equal(art_keys_verify(k, "web", D2, sig, 64, "", used, sizeof used, why,
					 sizeof why), SW_EPERM);
	assert_string_equal(used, "");
	sign(sk_all, D2, sig);
	assert_int_equal(art_keys_verify(k, "api", D2, sig, 64, "release", used, sizeof used, why,
					 sizeof why), 0);
	/* A key nobody trusts, a missing signature, a short one. */
	sign(sk_other, D1, sig);
	assert_int_equal(art_keys_verify(k, "web", D1, sig, 64, "", used, sizeof used, why,
					 sizeof why), SW_EPERM);
	assert_int_equal(art_keys_verify(k, "web", D1, NULL, 0, "", used, sizeof used, why,
					 sizeof why), SW_EPERM);
	assert_int_equal(art_keys_verify(k, "web", D1, sig, 10, "", used, sizeof used, why,
					 sizeof why), SW_EPERM);
	/* A flipped bit. */
	sign(sk_web, D1, sig);
	sig[5] ^= 1;
	assert_int_equal(art_keys_verify(k, "web", D1, sig, 64, "ci-web", used, sizeof used, why,
					 sizeof why), SW_EPERM);
	art_keys_free(k);

	/* No file: nothing trusted, nothing required. */
	assert_int_equal(art_keys_load(NULL, &k, err, sizeof err), 0);
	assert_int_equal(art_keys_count(k), 0);
	assert_false(art_keys_required(k, "web"));
	art_keys_free(k);
}

/* Expands each "%s" of tmpl to pk (test text only). */
static void expand(char *out, size_t cap, const char *tmpl, const char *pk)
{
	size_t off = 0;
	for (const char *p = tmpl; *p && off + 1 < cap; p++) {
		if (p[0] == '%' && p[1] == 's') {
			off += (size_t)snprintf(out + off, cap - off, "%s", pk);
			p++;
		} else {
			out[off++] = *p;
		}
	}
	out[off < cap ? off : cap - 1] = '\0';
}

static void test_keys_file_errors(void **state)
{
	(void)state;
	char text[1024], err[256];
	struct art_keys *k = NULL;
	struct {
		const char *fmt;
		const char *want;
	} bad[] = {
		{ "key web ci %s extra\n", "keys:1" },
		{ "key Web ci %s\n", "invalid app" },
		{ "key web c/i %s\n", "key names" },
		{ "key web ci bm90LWEta2V5\n%s", "32 bytes" },
		{ "key web ci %s\nkey web ci %s\n", "twice" },
		{ "require ../x\n%s", "require" },
		{ "trust web %s\n", "unknown directive" },
		{ "key api ci %s\nrequire web\n", "no key is trusted" },
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		expand(text, sizeof text, bad[i].fmt, pk_web);
		err[0] = '\0';
		assert_int_equal(art_keys_parse(text, "keys", &k, err, sizeof err), SW_EINVAL);
		assert_null(k);
		if (strstr(err, bad[i].want) == NULL)
			fail_msg("case %zu: '%s' does not mention '%s'", i, err, bad[i].want);
	}
	assert_int_equal(art_keys_load("/nonexistent/keys", &k, err, sizeof err), SW_EINVAL);
	assert_non_null(strstr(err, "/nonexistent/keys"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_app_names),
		cmocka_unit_test(test_versions),
		cmocka_unit_test(test_media_types),
		cmocka_unit_test(test_provenance),
		cmocka_unit_test(test_tokens_and_keys),
		cmocka_unit_test(test_keys_file),
		cmocka_unit_test(test_keys_file_errors),
	};
	return cmocka_run_group_tests(tests, keys_setup, NULL);
}
