/* Unit tests for lib/spiffe and the error mapping of lib/err. */
#include "err.h"
#include "spiffe.h"

#include <grpc/status.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <cmocka.h>

static void test_valid_ids(void **state)
{
	(void)state;
	struct spiffe_id id;
	assert_int_equal(spiffe_parse("spiffe://slipway/service/audit", "slipway", &id, NULL, 0), 0);
	assert_int_equal(id.kind, SPIFFE_SERVICE);
	assert_string_equal(id.name, "audit");
	assert_int_equal(spiffe_parse("spiffe://slipway/agent/eu-1/web-3", NULL, &id, NULL, 0), 0);
	assert_int_equal(id.kind, SPIFFE_AGENT);
	assert_string_equal(id.name, "eu-1/web-3");
	assert_int_equal(spiffe_parse("spiffe://slipway/user/alice.b", NULL, &id, NULL, 0), 0);
	assert_int_equal(id.kind, SPIFFE_USER);
	assert_int_equal(spiffe_parse("spiffe://slipway/other/x", NULL, &id, NULL, 0), 0);
	assert_int_equal(id.kind, SPIFFE_OTHER);
}

static void test_invalid_ids(void **state)
{
	(void)state;
	static const char *const bad[] = {
		"", "spiffe://", "spiffe:///user/a", "spiffe://slipway", "spiffe://slipway/",
		"spiffe://Slipway/user/a", "spiffe://slipway/user/", "spiffe://slipway//a",
		"spiffe://slipway/user/../admin", "spiffe://slipway/user/./a",
		"spiffe://slipway/user/a?x=1", "spiffe://slipway/user/a#f", "http://slipway/user/a",
		"spiffe://slipway/user/a b", "spiffe://slipway/user/a%2f",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		assert_int_equal(spiffe_parse(bad[i], NULL, NULL, NULL, 0), SW_EINVAL);
	char err[128];
	assert_int_equal(spiffe_parse("spiffe://other/user/a", "slipway", NULL, err, sizeof err),
			 SW_EINVAL);
	assert_non_null(strstr(err, "trust domain"));
}

static void test_format(void **state)
{
	(void)state;
	char out[256];
	assert_int_equal(spiffe_format(out, sizeof out, "slipway", SPIFFE_AGENT, "eu/h1"), 0);
	assert_string_equal(out, "spiffe://slipway/agent/eu/h1");
	assert_int_equal(spiffe_format(out, sizeof out, "slipway", SPIFFE_USER, "a/b"), SW_EINVAL);
	assert_int_equal(spiffe_format(out, sizeof out, "slipway", SPIFFE_AGENT, "noslash"),
			 SW_EINVAL);
	assert_int_equal(spiffe_format(out, 10, "slipway", SPIFFE_USER, "alice"), SW_EINVAL);
}

static void test_error_mapping_matches_grpc(void **state)
{
	(void)state;
	assert_int_equal(sw_err_to_grpc(SW_OK), GRPC_STATUS_OK);
	assert_int_equal(sw_err_to_grpc(SW_EINVAL), GRPC_STATUS_INVALID_ARGUMENT);
	assert_int_equal(sw_err_to_grpc(SW_ENOTFOUND), GRPC_STATUS_NOT_FOUND);
	assert_int_equal(sw_err_to_grpc(SW_EEXIST), GRPC_STATUS_ALREADY_EXISTS);
	assert_int_equal(sw_err_to_grpc(SW_EPERM), GRPC_STATUS_PERMISSION_DENIED);
	assert_int_equal(sw_err_to_grpc(SW_EUNAUTH), GRPC_STATUS_UNAUTHENTICATED);
	assert_int_equal(sw_err_to_grpc(SW_EPRECOND), GRPC_STATUS_FAILED_PRECONDITION);
	assert_int_equal(sw_err_to_grpc(SW_ERANGE), GRPC_STATUS_OUT_OF_RANGE);
	assert_int_equal(sw_err_to_grpc(SW_ELIMIT), GRPC_STATUS_RESOURCE_EXHAUSTED);
	assert_int_equal(sw_err_to_grpc(SW_EUNAVAIL), GRPC_STATUS_UNAVAILABLE);
	assert_int_equal(sw_err_to_grpc(SW_ETIMEDOUT), GRPC_STATUS_DEADLINE_EXCEEDED);
	assert_int_equal(sw_err_to_grpc(SW_ECANCELLED), GRPC_STATUS_CANCELLED);
	assert_int_equal(sw_err_to_grpc(SW_EABORTED), GRPC_STATUS_ABORTED);
	assert_int_equal(sw_err_to_grpc(SW_EUNIMPL), GRPC_STATUS_UNIMPLEMENTED);
	assert_int_equal(sw_err_to_grpc(SW_EDATALOSS), GRPC_STATUS_DATA_LOSS);
	assert_int_equal(sw_err_to_grpc(SW_EINTERNAL), GRPC_STATUS_INTERNAL);
	assert_int_equal(sw_err_to_grpc(-999), GRPC_STATUS_UNKNOWN);
	/* Round trips for every code that has its own status. */
	for (int e = SW_EINVAL; e >= SW_EDATALOSS; e--)
		assert_int_equal(sw_err_from_grpc(sw_err_to_grpc(e)), e);
	assert_int_equal(sw_err_from_grpc(GRPC_STATUS_INTERNAL), SW_EINTERNAL);
	assert_string_equal(sw_grpc_status_name(GRPC_STATUS_UNAUTHENTICATED), "UNAUTHENTICATED");
	assert_string_equal(sw_grpc_status_name(99), "UNKNOWN");
	char buf[8];
	assert_int_equal(sw_errf(buf, sizeof buf, SW_EINVAL, "%s", "truncated message"), SW_EINVAL);
	assert_string_equal(buf, "truncat");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_valid_ids),
		cmocka_unit_test(test_invalid_ids),
		cmocka_unit_test(test_format),
		cmocka_unit_test(test_error_mapping_matches_grpc),
	};
	return cmocka_run_group_tests_name("spiffe+err", tests, NULL, NULL);
}
