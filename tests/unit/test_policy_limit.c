/*
 * test_policy_limit.c - the limit on recorded Authorize denials per
 * principal (services/policy/limit.c): a token bucket of per_minute,
 * counts of the rest, one summary per principal and window, a bounded
 * table that evicts the least recently used principal without losing a
 * count. The clock is a parameter: no sleeping.
 */
#include "../../services/policy/limit.c"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <cmocka.h>

#define A "spiffe://td/user/a"
#define BB "spiffe://td/user/b"

static int admit(struct pol_limiter *l, const char *who, int64_t now, struct pol_denial_summary *s,
		 int *has)
{
	return pol_limiter_admit(l, who, now, s, has);
}

static void test_burst_then_counted(void **state)
{
	(void)state;
	struct pol_limiter *l;
	struct pol_denial_summary s, due[8];
	int has;
	assert_int_equal(pol_limiter_new(5, 16, &l), 0);
	/* 5 at once are recorded, the rest counted. */
	for (int i = 0; i < 5; i++) {
		assert_int_equal(admit(l, A, 1000, &s, &has), 1);
		assert_int_equal(has, 0);
	}
	for (int i = 0; i < 100; i++)
		assert_int_equal(admit(l, A, 1000 + i, &s, &has), 0);
	/* Another principal has its own bucket. */
	assert_int_equal(admit(l, BB, 1100, &s, &has), 1);
	/* One token comes back every 12 s; its denial is recorded, and the
	 * count is not summarized before the window (a minute) ends. */
	assert_int_equal(admit(l, A, 1000 + 11999, &s, &has), 0);
	assert_int_equal(admit(l, A, 1000 + 12000, &s, &has), 1);
	assert_int_equal(has, 0);
	assert_int_equal(pol_limiter_due(l, 1000 + 59999, 0, due, 8), 0);
	/* The writer's sweep summarizes a window that ended. */
	assert_int_equal(pol_limiter_due(l, 1000 + 60000, 0, due, 8), 1);
	assert_string_equal(due[0].principal, A);
	assert_int_equal(due[0].suppressed, 101);
	assert_int_equal(due[0].from_ms, 1000);
	assert_int_equal(due[0].to_ms, 61000);
	assert_int_equal(due[0].per_minute, 5);
	assert_int_equal(pol_limiter_due(l, 1000 + 120000, 0, due, 8), 0);
	pol_limiter_free(l);
}

static void test_summary_with_next_recorded(void **state)
{
	(void)state;
	struct pol_limiter *l;
	struct pol_denial_summary s;
	int has;
	assert_int_equal(pol_limiter_new(2, 16, &l), 0);
	assert_int_equal(admit(l, A, 0, &s, &has), 1);
	assert_int_equal(admit(l, A, 0, &s, &has), 1);
	assert_int_equal(admit(l, A, 10, &s, &has), 0);
	assert_int_equal(admit(l, A, 20, &s, &has), 0);
	/* After the window, the next recorded denial carries the summary. */
	assert_int_equal(admit(l, A, 70000, &s, &has), 1);
	assert_int_equal(has, 1);
	assert_int_equal(s.suppressed, 2);
	assert_int_equal(s.from_ms, 10);
	assert_int_equal(s.to_ms, 70000);
	/* ... once. */
	assert_int_equal(admit(l, A, 70001, &s, &has), 1);
	assert_int_equal(has, 0);
	pol_limiter_free(l);
}

static void test_unlimited(void **state)
{
	(void)state;
	struct pol_limiter *l;
	struct pol_denial_summary s;
	int has;
	assert_int_equal(pol_limiter_new(0, 16, &l), 0);
	for (int i = 0; i < 1000; i++)
		assert_int_equal(admit(l, A, 0, &s, &has), 1);
	pol_limiter_free(l);
	/* No limiter at all: every denial recorded. */
	assert_int_equal(pol_limiter_admit(NULL, A, 0, &s, &has), 1);
	assert_int_equal(pol_limiter_due(NULL, 0, 1, &s, 1), 0);
}

/* The table holds max principals; the least recently used goes first and
 * its count is summarized, never lost. */
static void test_bounded_table(void **state)
{
	(void)state;
	struct pol_limiter *l;
	struct pol_denial_summary s, due[300];
	int has;
	char who[64];
	assert_int_equal(pol_limiter_new(1, 16, &l), 0);
	/* A is used up and has a count. */
	assert_int_equal(admit(l, A, 0, &s, &has), 1);
	assert_int_equal(admit(l, A, 0, &s, &has), 0);
	assert_int_equal(admit(l, A, 0, &s, &has), 0);
	/* 16 more principals evict A. */
	for (int i = 0; i < 16; i++) {
		snprintf(who, sizeof who, "spiffe://td/user/u%d", i);
		assert_int_equal(admit(l, who, 1, &s, &has), 1);
	}
	assert_int_equal(l->used, 16);
	size_t n = pol_limiter_due(l, 2, 0, due, 300);
	assert_int_equal(n, 1);
	assert_string_equal(due[0].principal, A);
	assert_int_equal(due[0].suppressed, 2);
	/* A starts again with a full bucket. */
	assert_int_equal(admit(l, A, 3, &s, &has), 1);
	/* Recently used principals stay: u15 was used last, u0 is evicted. */
	assert_int_equal(find(l, "spiffe://td/user/u15", fnv("spiffe://td/user/u15")) != NONE, 1);
	assert_int_equal(find(l, "spiffe://td/user/u0", fnv("spiffe://td/user/u0")), NONE);
	pol_limiter_free(l);
}

/* When evicted summaries cannot be queued, a new principal is recorded
 * without a bucket (back to recording every denial) rather than a count
 * being dropped. */
static void test_eviction_never_loses_a_count(void **state)
{
	(void)state;
	struct pol_limiter *l;
	struct pol_denial_summary s, due[400];
	int has;
	char who[64];
	uint64_t counted = 0;
	assert_int_equal(pol_limiter_new(1, 16, &l), 0);
	/* Many principals, each with a count, cycle through the table. */
	for (int i = 0; i < 400; i++) {
		snprintf(who, sizeof who, "spiffe://td/user/p%d", i);
		assert_int_equal(admit(l, who, 0, &s, &has), 1);
		if (admit(l, who, 0, &s, &has) == 0)
			counted++;
	}
	uint64_t summed = 0;
	size_t n;
	while ((n = pol_limiter_due(l, 1, 1, due, 400)) > 0)
		for (size_t i = 0; i < n; i++)
			summed += due[i].suppressed;
	assert_int_equal(summed, counted);
	/* 16 counts in the table and 16 in the queue of evicted ones (as
	 * large as the table here); later principals were recorded. */
	assert_int_equal(counted, 32);
	pol_limiter_free(l);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_burst_then_counted),
		cmocka_unit_test(test_summary_with_next_recorded),
		cmocka_unit_test(test_unlimited),
		cmocka_unit_test(test_bounded_table),
		cmocka_unit_test(test_eviction_never_loses_a_count),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
