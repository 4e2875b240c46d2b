/*
 * test_provenance.c - the signed provenance statement (lib/provenance):
 * one canonical encoding per statement, every other spelling refused, and
 * the trusted builder keys with their owners.
 */
#include "err.h"
#include "provenance.h"

#include <sodium.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#define D "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static void sample(struct prov_statement *s)
{
	memset(s, 0, sizeof *s);
	snprintf(s->app, sizeof s->app, "web");
	snprintf(s->version, sizeof s->version, "1.4.2");
	snprintf(s->digest, sizeof s->digest, "%s", D);
	snprintf(s->repository, sizeof s->repository, "https://git.example.com/shop/web");
	snprintf(s->commit, sizeof s->commit, "0123456789abcdef0123456789abcdef01234567");
	snprintf(s->ref, sizeof s->ref, "refs/heads/main");
	snprintf(s->builder, sizeof s->builder, "ci bot");
	s->build_time_ms = 1796681782303;
}

static void test_round_trip(void **state)
{
	(void)state;
	struct prov_statement s, back;
	char buf[PROV_STATEMENT_MAX], err[256];
	size_t n = 0;
	sample(&s);
	assert_int_equal(prov_encode(&s, buf, sizeof buf, &n, err, sizeof err), 0);
	assert_string_equal(buf, PROV_VERSION_LINE "\napp web\nversion 1.4.2\ndigest " D
						   "\nrepository https://git.example.com/shop/web\n"
						   "commit 0123456789abcdef0123456789abcdef01234567\n"
						   "ref refs/heads/main\nbuilder ci bot\nbuild-id \n"
						   "build-time-ms 1796681782303\n");
	assert_int_equal(prov_parse((const uint8_t *)buf, n, &back, err, sizeof err), 0);
	assert_memory_equal(&s, &back, sizeof s);
	/* Every field at its bound still fits. */
	memset(s.repository, 'r', 512);
	memset(s.ref, 'f', 256);
	memset(s.builder, 'b', 256);
	memset(s.build_id, 'i', 256);
	memset(s.commit, 'a', 64);
	assert_int_equal(prov_encode(&s, buf, sizeof buf, &n, err, sizeof err), 0);
	assert_int_equal(prov_parse((const uint8_t *)buf, n, &back, err, sizeof err), 0);
}

/* Replaces the first `from` of the canonical sample with `to` and parses. */
static int parse_edited(const char *from, const char *to)
{
	struct prov_statement s;
	char buf[PROV_STATEMENT_MAX], out[PROV_STATEMENT_MAX + 64], err[256];
	size_t n = 0;
	sample(&s);
	assert_int_equal(prov_encode(&s, buf, sizeof buf, &n, err, sizeof err), 0);
	char *at = strstr(buf, from);
	assert_non_null(at);
	int k = snprintf(out, sizeof out, "%.*s%s%s", (int)(at - buf), buf, to, at + strlen(from));
	return prov_parse((const uint8_t *)out, (size_t)k, &s, err, sizeof err);
}

static void test_only_canonical(void **state)
{
	(void)state;
	struct prov_statement s;
	char err[256];
	assert_int_equal(parse_edited("ref refs", "ref refs"), 0);
	assert_int_equal(parse_edited(PROV_VERSION_LINE, "slipway-provenance-v2"), SW_EINVAL);
	assert_int_equal(parse_edited("ref refs/heads/main", "ref  refs/heads/main"), SW_EINVAL);
	assert_int_equal(parse_edited("ref refs/heads/main\n", "ref refs/heads/main\r\n"),
			 SW_EINVAL);
	assert_int_equal(parse_edited("build-time-ms 1", "build-time-ms 01"), SW_EINVAL);
	assert_int_equal(parse_edited("build-time-ms 1", "build-time-ms +1"), SW_EINVAL);
	assert_int_equal(parse_edited("1796681782303\n", "1796681782303"), SW_EINVAL);
	assert_int_equal(parse_edited("1796681782303\n", "1796681782303\n\n"), SW_EINVAL);
	assert_int_equal(parse_edited("app web\nversion 1.4.2\n", "version 1.4.2\napp web\n"),
			 SW_EINVAL);
	assert_int_equal(parse_edited("ref refs/heads/main\n", ""), SW_EINVAL);
	assert_int_equal(parse_edited("commit 0123", "commit X123"), SW_EINVAL);
	assert_int_equal(parse_edited("digest sha256:0", "digest sha256:A"), SW_EINVAL);
	assert_int_equal(parse_edited("ci bot", "ci\x01bot"), SW_EINVAL);
	assert_int_equal(prov_parse((const uint8_t *)"", 0, &s, err, sizeof err), SW_EINVAL);
	assert_int_equal(prov_parse(NULL, 0, &s, err, sizeof err), SW_EINVAL);
	/* A NUL inside a value. */
	char buf[PROV_STATEMENT_MAX];
	size_t n = 0;
	sample(&s);
	assert_int_equal(prov_encode(&s, buf, sizeof buf, &n, err, sizeof err), 0);
	char *b = strstr(buf, "ci bot");
	b[2] = '\0';
	assert_int_equal(prov_parse((const uint8_t *)buf, n, &s, err, sizeof err), SW_EINVAL);
	/* Encoding refuses what it could not parse back. */
	sample(&s);
	snprintf(s.ref, sizeof s.ref, "refs/heads/a b");
	assert_int_equal(prov_encode(&s, buf, sizeof buf, &n, err, sizeof err), SW_EINVAL);
	sample(&s);
	s.build_time_ms = -1;
	assert_int_equal(prov_encode(&s, buf, sizeof buf, &n, err, sizeof err), SW_EINVAL);
}

static void test_keys_owner(void **state)
{
	(void)state;
	unsigned char pk[crypto_sign_PUBLICKEYBYTES], sk[crypto_sign_SECRETKEYBYTES];
	char pk64[64], text[512], err[256], used[65], owner[256], why[256];
	uint8_t sig[64];
	struct prov_keys *k = NULL;
	assert_true(sodium_init() >= 0);
	crypto_sign_keypair(pk, sk);
	sodium_bin2base64(pk64, sizeof pk64, pk, sizeof pk, sodium_base64_VARIANT_ORIGINAL);
	snprintf(text, sizeof text, "key web ci %s spiffe://td/user/alice\nrequire web\n", pk64);
	assert_int_equal(prov_keys_parse(text, "keys", &k, err, sizeof err), 0);
	const char *msg = "statement";
	crypto_sign_detached(sig, NULL, (const unsigned char *)msg, strlen(msg), sk);
	assert_int_equal(prov_keys_verify(k, "web", (const uint8_t *)msg, strlen(msg), sig, 64, "",
					  used, sizeof used, owner, sizeof owner, why, sizeof why),
			 0);
	assert_string_equal(used, "ci");
	assert_string_equal(owner, "spiffe://td/user/alice");
	sig[0] ^= 1;
	assert_int_equal(prov_keys_verify(k, "web", (const uint8_t *)msg, strlen(msg), sig, 64, "",
					  used, sizeof used, owner, sizeof owner, why, sizeof why),
			 SW_EPERM);
	assert_string_equal(owner, "");
	prov_keys_free(k);
	/* The owner must be a SPIFFE ID. */
	snprintf(text, sizeof text, "key web ci %s alice\n", pk64);
	assert_int_equal(prov_keys_parse(text, "keys", &k, err, sizeof err), SW_EINVAL);
	assert_non_null(strstr(err, "keys:1"));
	sodium_memzero(sk, sizeof sk);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round_trip),
		cmocka_unit_test(test_only_canonical),
		cmocka_unit_test(test_keys_owner),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
