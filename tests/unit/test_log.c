/* Unit tests for lib/log: format, escaping, levels, request ids. */
#include "log.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

static char last[8192];
static int lines;

static void sink(const char *line, size_t len, void *arg)
{
	(void)arg;
	if (len >= sizeof last)
		len = sizeof last - 1;
	memcpy(last, line, len);
	last[len] = '\0';
	lines++;
}

static void test_fields_and_levels(void **state)
{
	(void)state;
	log_init("audit", LOG_INFO);
	log_set_sink(sink, NULL);
	lines = 0;
	log_debug("hidden", NULL);
	assert_int_equal(lines, 0);
	log_set_request_id("abc-123");
	log_info("appended", "seq=%llu app=%s n=%d", 42ULL, "web", -7);
	assert_int_equal(lines, 1);
	assert_non_null(strstr(last, " level=info service=audit req=abc-123 msg=appended seq=42 app=web n=-7\n"));
	assert_true(strncmp(last, "ts=", 3) == 0);
	log_set_request_id(NULL);
	log_warn("no request", NULL);
	assert_null(strstr(last, "req="));
}

static void test_escaping_keeps_one_line(void **state)
{
	(void)state;
	log_init("x", LOG_DEBUG);
	log_set_sink(sink, NULL);
	log_info("evil", "who=%s", "bob\nlevel=error msg=\"forged\"");
	/* One line, and the value cannot forge a key. */
	assert_ptr_equal(strchr(last, '\n'), last + strlen(last) - 1);
	assert_non_null(strstr(last, "who=\"bob\\nlevel=error msg=\\\"forged\\\"\"\n"));
	assert_non_null(strstr(last, "msg=evil who=\""));
	log_info("empty", "v=%s c=%c", "", 'q');
	assert_non_null(strstr(last, "v=\"\" c=q"));
	log_info("ctl", "v=%s", "a\x01z");
	assert_non_null(strstr(last, "v=\"a\\x01z\""));
	log_info("width", "v=%.3s p=%5.1f", "abcdef", 2.25);
	assert_non_null(strstr(last, "v=abc p=  2.2"));
}

static void test_long_line_truncated(void **state)
{
	(void)state;
	char big[6000];
	memset(big, 'a', sizeof big - 1);
	big[sizeof big - 1] = '\0';
	log_init("x", LOG_DEBUG);
	log_set_sink(sink, NULL);
	log_info("big", "v=%s", big);
	assert_true(strlen(last) <= 4096);
	assert_non_null(strstr(last, "truncated=yes\n"));
}

static void test_level_parse(void **state)
{
	(void)state;
	enum log_level l;
	assert_int_equal(log_level_parse("WARN", &l), 0);
	assert_int_equal(l, LOG_WARN);
	assert_int_not_equal(log_level_parse("loud", &l), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fields_and_levels),
		cmocka_unit_test(test_escaping_keeps_one_line),
		cmocka_unit_test(test_long_line_truncated),
		cmocka_unit_test(test_level_parse),
	};
	return cmocka_run_group_tests_name("log", tests, NULL, NULL);
}
