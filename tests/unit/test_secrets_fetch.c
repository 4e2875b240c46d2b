/*
 * test_secrets_fetch.c - table-driven tests of the secrets service's pure
 * Fetch decisions (services/secrets/fetchrule.c): why an agent without a
 * usable grant is refused, which pinned versions may be delivered, and how
 * long a bundle lives. The file is compiled into this test directly.
 */
#include "../../services/secrets/fetchrule.c"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <cmocka.h>

#define DEP "dep-1"
#define ME "spiffe://td/agent/a1"

static void test_no_grant(void **state)
{
	(void)state;
	static const struct {
		struct sec_grant_seen g;
		int64_t now;
		int code;
		const char *reason, *msg;
	} cases[] = {
		{ { 0, 0, 0 }, 5000, SW_EPERM, "no grant for the deployment",
		  "no grant for deployment " DEP " to " ME },
		/* someone else's grant: the same words as none at all */
		{ { 1, 0, 9000 }, 5000, SW_EPERM, "grant belongs to another agent",
		  "no grant for deployment " DEP " to " ME },
		{ { 1, 0, 1000 }, 5000, SW_EPERM, "grant belongs to another agent",
		  "no grant for deployment " DEP " to " ME },
		/* its own, expired */
		{ { 1, 1, 3500 }, 5000, SW_EPRECOND, "grant expired",
		  "the grant for deployment " DEP " to " ME " expired 1500 ms ago" },
		{ { 1, 1, 5000 }, 5000, SW_EPRECOND, "grant expired",
		  "the grant for deployment " DEP " to " ME " expired 0 ms ago" },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const char *reason = NULL;
		char err[256] = "";
		int rc = sec_fetch_no_grant(&cases[i].g, DEP, ME, cases[i].now, &reason, err,
					    sizeof err);
		assert_int_equal(rc, cases[i].code);
		assert_string_equal(reason, cases[i].reason);
		assert_string_equal(err, cases[i].msg);
	}
}

static void test_version_ok(void **state)
{
	(void)state;
	static const struct {
		int has_state, st, code;
		const char *reason, *msg;
	} cases[] = {
		{ 1, SEC_ENABLED, 0, NULL, "" },
		{ 1, SEC_DISABLED, SW_EPRECOND, "version disabled",
		  "version 3 of secret DB_PASSWORD is disabled" },
		{ 1, SEC_DESTROYED, SW_EPRECOND, "version destroyed",
		  "version 3 of secret DB_PASSWORD is destroyed" },
		/* the version row is gone: as good as destroyed */
		{ 0, 0, SW_EPRECOND, "version destroyed",
		  "version 3 of secret DB_PASSWORD is destroyed" },
		{ 0, SEC_ENABLED, SW_EPRECOND, "version destroyed",
		  "version 3 of secret DB_PASSWORD is destroyed" },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const char *reason = NULL;
		char err[256] = "";
		int rc = sec_fetch_version_ok(cases[i].has_state, cases[i].st, "DB_PASSWORD", 3,
					      &reason, err, sizeof err);
		assert_int_equal(rc, cases[i].code);
		if (cases[i].reason == NULL)
			assert_null(reason);
		else
			assert_string_equal(reason, cases[i].reason);
		assert_string_equal(err, cases[i].msg);
	}
}

static void test_bundle_expiry(void **state)
{
	(void)state;
	static const struct {
		int64_t now, ttl, gexp, want;
	} cases[] = {
		{ 1000, 300, 5000, 1300 },  /* the bundle's own lifetime */
		{ 1000, 300, 1200, 1200 },  /* never past the grant */
		{ 1000, 300, 1300, 1300 },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
		assert_int_equal(sec_bundle_expiry(cases[i].now, cases[i].ttl, cases[i].gexp),
				 cases[i].want);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_no_grant),
		cmocka_unit_test(test_version_ok),
		cmocka_unit_test(test_bundle_expiry),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
