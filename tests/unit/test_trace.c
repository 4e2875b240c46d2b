/* Unit tests for lib/trace: W3C traceparent parsing and formatting, child
 * spans, the thread's current context and its trace_id in log lines. */
#include "err.h"
#include "log.h"
#include "trace.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

/* The example of the W3C Trace Context specification. */
#define SPEC "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

static int parses(const char *s)
{
	struct trace_ctx t;
	return trace_parse(s, strlen(s), &t) == 0 && t.valid;
}

static void test_parse_and_format_round_trip(void **state)
{
	(void)state;
	struct trace_ctx t;
	char out[TRACE_PARENT_LEN + 1], hex[TRACE_ID_HEX + 1];
	assert_int_equal(trace_parse(SPEC, strlen(SPEC), &t), 0);
	assert_true(t.valid);
	assert_int_equal(t.flags, 1);
	assert_int_equal(t.trace_id[0], 0x4b);
	assert_int_equal(t.span_id[7], 0xb7);
	assert_int_equal(trace_format(&t, out), 0);
	assert_string_equal(out, SPEC);
	trace_id_hex(&t, hex);
	assert_string_equal(hex, "4bf92f3577b34da6a3ce929d0e0e4736");
	/* Flags other than sampled are kept as they came. */
	assert_int_equal(trace_parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", 55, &t), 0);
	assert_int_equal(t.flags, 0);
	assert_int_equal(trace_format(&t, out), 0);
	assert_string_equal(out, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
}

static void test_invalid_values_are_refused(void **state)
{
	(void)state;
	static const char *const bad[] = {
		"",
		"00",
		/* one short, one long for version 00 */
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
		/* upper case hex */
		"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
		/* all-zero ids */
		"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
		/* version ff, and a version that is not hex */
		"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		/* wrong separators, non-hex digits */
		"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
		"00-4bf92f3577b34da6a3ce929d0e0e473z-00f067aa0ba902b7-01",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
		/* a later version with trailing data not after a dash */
		"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
		/* a line break smuggled in */
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-\n1",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		struct trace_ctx t = { .valid = 1 };
		assert_int_equal(trace_parse(bad[i], strlen(bad[i]), &t), SW_EINVAL);
		assert_false(t.valid);
	}
	struct trace_ctx t;
	assert_int_equal(trace_parse(NULL, 0, &t), SW_EINVAL);
	char out[TRACE_PARENT_LEN + 1] = "x";
	t.valid = 0;
	assert_int_equal(trace_format(&t, out), SW_EINVAL);
	assert_string_equal(out, "");
}

static void test_later_versions_are_read_as_00(void **state)
{
	(void)state;
	/* A reader of version 00 reads the first four fields of a later
	 * version and ignores what follows a dash. */
	assert_true(parses("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
	assert_true(parses("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds"));
}

static void test_value_is_bounded_by_its_length(void **state)
{
	(void)state;
	/* The value comes from gRPC metadata: not NUL-terminated. */
	char buf[64];
	memcpy(buf, SPEC, 55);
	memset(buf + 55, 'z', sizeof buf - 55);
	struct trace_ctx t;
	assert_int_equal(trace_parse(buf, 55, &t), 0);
	assert_int_equal(trace_parse(buf, 54, &t), SW_EINVAL);
}

static void test_new_and_child(void **state)
{
	(void)state;
	struct trace_ctx a, b, c;
	trace_new(&a);
	trace_new(&b);
	assert_true(a.valid && b.valid);
	assert_int_equal(a.flags, 1);
	assert_memory_not_equal(a.trace_id, b.trace_id, 16);
	trace_child(&a, &c);
	assert_memory_equal(c.trace_id, a.trace_id, 16);
	assert_memory_not_equal(c.span_id, a.span_id, 8);
	assert_int_equal(c.flags, a.flags);
	/* A child of nothing is a new trace. */
	struct trace_ctx none = { .valid = 0 };
	trace_child(&none, &c);
	assert_true(c.valid);
	trace_child(NULL, &c);
	assert_true(c.valid);
	/* What we format, we parse. */
	char out[TRACE_PARENT_LEN + 1];
	assert_int_equal(trace_format(&c, out), 0);
	assert_true(parses(out));
}

static char last[4096];

static void sink(const char *line, size_t len, void *arg)
{
	(void)arg;
	if (len >= sizeof last)
		len = sizeof last - 1;
	memcpy(last, line, len);
	last[len] = '\0';
}

static void test_current_context_and_log_lines(void **state)
{
	(void)state;
	log_init("trace", LOG_INFO);
	log_set_sink(sink, NULL);
	assert_false(trace_current()->valid);
	log_info("before", NULL);
	assert_null(strstr(last, "trace_id="));

	assert_int_equal(trace_enter_id("4bf92f3577b34da6a3ce929d0e0e4736"), 0);
	assert_true(trace_current()->valid);
	log_info("during", "k=%d", 1);
	assert_non_null(strstr(last, " trace_id=4bf92f3577b34da6a3ce929d0e0e4736 msg=during k=1\n"));

	trace_set_current(NULL);
	assert_false(trace_current()->valid);
	log_info("after", NULL);
	assert_null(strstr(last, "trace_id="));

	/* A bad stored id clears the context instead of keeping a stale one. */
	assert_int_equal(trace_enter_id("4bf92f3577b34da6a3ce929d0e0e4736"), 0);
	assert_int_equal(trace_enter_id("not-a-trace"), SW_EINVAL);
	assert_false(trace_current()->valid);
	assert_int_equal(trace_enter_id(""), SW_EINVAL);
	assert_int_equal(trace_enter_id("00000000000000000000000000000000"), SW_EINVAL);
	assert_int_equal(trace_enter_id("4BF92F3577B34DA6A3CE929D0E0E4736"), SW_EINVAL);
	log_info("cleared", NULL);
	assert_null(strstr(last, "trace_id="));
	log_set_sink(NULL, NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_and_format_round_trip),
		cmocka_unit_test(test_invalid_values_are_refused),
		cmocka_unit_test(test_later_versions_are_read_as_00),
		cmocka_unit_test(test_value_is_bounded_by_its_length),
		cmocka_unit_test(test_new_and_child),
		cmocka_unit_test(test_current_context_and_log_lines),
	};
	return cmocka_run_group_tests_name("trace", tests, NULL, NULL);
}
