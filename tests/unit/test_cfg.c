/* Unit tests for lib/cfg: precedence, types, ranges, required, secrets. */
#include "cfg.h"
#include "err.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

static char *s_listen, *s_secret, *s_req, *s_db;
static long long i_workers, ms_grace, sz_max;
static int b_flag;

static struct cfg_opt table[] = {
	{ "listen", CFG_STR, "127.0.0.1:0", 0, 0, 0, "listen", &s_listen },
	{ "workers", CFG_INT, "4", 1, 64, 0, "workers", &i_workers },
	{ "grace", CFG_MS, "10s", 0, 60000, 0, "grace", &ms_grace },
	{ "max-msg", CFG_SIZE, "4MiB", 1024, 64LL << 20, 0, "max", &sz_max },
	{ "verbose", CFG_BOOL, "false", 0, 0, 0, "verbose", &b_flag },
	{ "secret-key", CFG_STR, NULL, 0, 0, CFG_SECRET, "secret", &s_secret },
	{ "needed", CFG_PATH, NULL, 0, 0, CFG_REQUIRED, "needed", &s_req },
	{ "db-url", CFG_STR, NULL, 0, 0, CFG_NO_PASSWORD, "db", &s_db },
};
#define N (sizeof table / sizeof table[0])

static int parse(char **argv, int argc, char *err)
{
	return cfg_parse("UT", table, N, argc, argv, err, 256);
}

static void test_defaults_env_flags_precedence(void **state)
{
	(void)state;
	char err[256];
	setenv("SLIPWAY_UT_WORKERS", "8", 1);
	setenv("SLIPWAY_UT_GRACE", "2s", 1);
	char *argv[] = { "x", "--needed", "/p", "--grace=250ms", "--verbose", NULL };
	assert_int_equal(parse(argv, 5, err), CFG_RUN);
	assert_string_equal(s_listen, "127.0.0.1:0"); /* default */
	assert_int_equal(i_workers, 8);               /* env */
	assert_int_equal(ms_grace, 250);              /* flag beats env */
	assert_int_equal(sz_max, 4 << 20);
	assert_int_equal(b_flag, 1);
	assert_string_equal(s_req, "/p");
	unsetenv("SLIPWAY_UT_WORKERS");
	unsetenv("SLIPWAY_UT_GRACE");
	cfg_free(table, N);
}

static void test_range_and_type_errors(void **state)
{
	(void)state;
	char err[256];
	char *a1[] = { "x", "--needed", "p", "--workers", "0", NULL };
	assert_int_equal(parse(a1, 5, err), SW_EINVAL);
	assert_non_null(strstr(err, "between 1 and 64"));
	char *a2[] = { "x", "--needed", "p", "--workers", "4x", NULL };
	assert_int_equal(parse(a2, 5, err), SW_EINVAL);
	char *a3[] = { "x", "--needed", "p", "--max-msg", "12QB", NULL };
	assert_int_equal(parse(a3, 5, err), SW_EINVAL);
	char *a4[] = { "x", "--needed", "p", "--bogus", "1", NULL };
	assert_int_equal(parse(a4, 5, err), SW_EINVAL);
	assert_non_null(strstr(err, "unknown flag"));
	char *a5[] = { "x", NULL };
	assert_int_equal(parse(a5, 1, err), SW_EINVAL);
	assert_non_null(strstr(err, "SLIPWAY_UT_NEEDED"));
	char *a6[] = { "x", "--needed", NULL };
	assert_int_equal(parse(a6, 2, err), SW_EINVAL);
	char *a7[] = { "x", "positional", NULL };
	assert_int_equal(parse(a7, 2, err), SW_EINVAL);
	setenv("SLIPWAY_UT_WORKERS", "lots", 1);
	char *a8[] = { "x", "--needed", "p", NULL };
	assert_int_equal(parse(a8, 3, err), SW_EINVAL);
	assert_non_null(strstr(err, "SLIPWAY_UT_WORKERS"));
	unsetenv("SLIPWAY_UT_WORKERS");
	cfg_free(table, N);
}

static void test_help_and_check(void **state)
{
	(void)state;
	char err[256];
	char *a1[] = { "x", "--help", NULL };
	assert_int_equal(parse(a1, 2, err), CFG_HELP); /* no required check for help */
	setenv("SLIPWAY_UT_SECRET_KEY", "hunter2", 1);
	char *a2[] = { "x", "--needed", "p", "--check-config", NULL };
	assert_int_equal(parse(a2, 4, err), CFG_CHECK);
	unsetenv("SLIPWAY_UT_SECRET_KEY");
	char buf[4096];
	FILE *f = fmemopen(buf, sizeof buf, "w");
	cfg_print_values(f, table, N);
	fclose(f);
	assert_null(strstr(buf, "hunter2")); /* secrets are never printed */
	assert_non_null(strstr(buf, "secret-key=(set)"));
	f = fmemopen(buf, sizeof buf, "w");
	cfg_print_help(f, "x", "UT", table, N);
	fclose(f);
	assert_non_null(strstr(buf, "SLIPWAY_UT_MAX_MSG"));
	assert_non_null(strstr(buf, "--max-msg"));
	cfg_free(table, N);
}

/* A secret never comes from a flag (the process list shows flags): the
 * environment or a private file only; a URL never holds a password. */
static void test_secrets_stay_off_the_command_line(void **state)
{
	(void)state;
	char err[256];
	char *a1[] = { "x", "--needed", "p", "--secret-key", "hunter2", NULL };
	assert_int_equal(parse(a1, 5, err), SW_EINVAL);
	assert_non_null(strstr(err, "SLIPWAY_UT_SECRET_KEY"));
	assert_non_null(strstr(err, "--secret-key-file"));
	assert_null(strstr(err, "hunter2"));
	char *a1b[] = { "x", "--needed", "p", "--secret-key=hunter2", NULL };
	assert_int_equal(parse(a1b, 4, err), SW_EINVAL);
	assert_null(strstr(err, "hunter2"));

	char path[] = "/tmp/test_cfg_secret.XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "s3cr3t\n", 7), 7);
	close(fd);
	char *a2[] = { "x", "--needed", "p", "--secret-key-file", path, NULL };
	assert_int_equal(parse(a2, 5, err), CFG_RUN);
	assert_string_equal(s_secret, "s3cr3t");
	chmod(path, 0644); /* readable by others: refused */
	assert_int_equal(parse(a2, 5, err), SW_EINVAL);
	assert_non_null(strstr(err, "chmod 600"));
	chmod(path, 0600);
	setenv("SLIPWAY_UT_SECRET_KEY_FILE", path, 1);
	char *a3[] = { "x", "--needed", "p", NULL };
	assert_int_equal(parse(a3, 3, err), CFG_RUN);
	assert_string_equal(s_secret, "s3cr3t");
	unsetenv("SLIPWAY_UT_SECRET_KEY_FILE");
	unlink(path);
	char *a4[] = { "x", "--needed", "p", "--verbose-file", "/dev/null", NULL };
	assert_int_equal(parse(a4, 5, err), SW_EINVAL); /* only secrets have -file */

	char *a5[] = { "x", "--needed", "p", "--db-url", "postgresql://u:pw@h/db", NULL };
	assert_int_equal(parse(a5, 5, err), SW_EINVAL);
	assert_non_null(strstr(err, "PGPASSFILE"));
	assert_null(strstr(err, "pw@"));
	char *a6[] = { "x", "--needed", "p", "--db-url", "host=h dbname=d password = pw", NULL };
	assert_int_equal(parse(a6, 5, err), SW_EINVAL);
	char *a7[] = { "x", "--needed", "p", "--db-url", "postgresql://u@h:5432/db?sslmode=require",
		       NULL };
	assert_int_equal(parse(a7, 5, err), CFG_RUN);
	cfg_free(table, N);
}

static void test_number_parsers(void **state)
{
	(void)state;
	long long v;
	int b;
	assert_int_equal(cfg_parse_ll("-12", &v), 0);
	assert_int_equal(v, -12);
	assert_int_equal(cfg_parse_ll("", &v), SW_EINVAL);
	assert_int_equal(cfg_parse_ll(" 1", &v), SW_EINVAL);
	assert_int_equal(cfg_parse_ll("99999999999999999999", &v), SW_EINVAL);
	assert_int_equal(cfg_parse_ms("5m", &v), 0);
	assert_int_equal(v, 300000);
	assert_int_equal(cfg_parse_ms("1h", &v), 0);
	assert_int_equal(v, 3600000);
	assert_int_equal(cfg_parse_ms("-1s", &v), SW_EINVAL);
	assert_int_equal(cfg_parse_size("8KiB", &v), 0);
	assert_int_equal(v, 8192);
	assert_int_equal(cfg_parse_size("9223372036854775807GiB", &v), SW_EINVAL);
	assert_int_equal(cfg_parse_bool("ON", &b), 0);
	assert_int_equal(b, 1);
	assert_int_equal(cfg_parse_bool("nope", &b), SW_EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_defaults_env_flags_precedence),
		cmocka_unit_test(test_range_and_type_errors),
		cmocka_unit_test(test_help_and_check),
		cmocka_unit_test(test_secrets_stay_off_the_command_line),
		cmocka_unit_test(test_number_parsers),
	};
	return cmocka_run_group_tests_name("cfg", tests, NULL, NULL);
}
