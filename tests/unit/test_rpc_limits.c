/*
 * test_rpc_limits.c - the admission limits of lib/rpc_limits: each limit
 * refuses the call past it with SW_ELIMIT naming its flag, callers are
 * counted apart, service principals are not held to the per-caller call
 * share, and what a call held comes back when it ends.
 */
#include "err.h"
#include "rpc_limits.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#define MALLORY "spiffe://t/user/mallory"
#define ALICE "spiffe://t/user/alice"
#define ORCH "spiffe://t/service/orchestrator"

static struct rpc_limits *mk(int streams, int per_peer, int calls, int worker_streams)
{
	struct rpc_limits_opts o = { streams, per_peer, calls, worker_streams };
	struct rpc_limits *l = NULL;
	assert_int_equal(rpc_limits_new(&o, &l), 0);
	return l;
}

static void test_streams_per_peer(void **st)
{
	(void)st;
	struct rpc_limits *l = mk(100, 2, 100, 100);
	struct rpc_hold h[4];
	char why[256];
	assert_int_equal(rpc_limits_admit(l, MALLORY, 0, 1, 0, &h[0], why, sizeof why), 0);
	assert_int_equal(rpc_limits_admit(l, MALLORY, 0, 1, 0, &h[1], why, sizeof why), 0);
	assert_int_equal(rpc_limits_admit(l, MALLORY, 0, 1, 0, &h[2], why, sizeof why), SW_ELIMIT);
	assert_non_null(strstr(why, "--max-streams-per-peer"));
	assert_null(h[2].peer);
	/* Another caller is not affected. */
	assert_int_equal(rpc_limits_admit(l, ALICE, 0, 1, 0, &h[3], why, sizeof why), 0);
	/* One ends: mallory may open one again. */
	rpc_limits_release(l, &h[0]);
	assert_int_equal(rpc_limits_admit(l, MALLORY, 0, 1, 0, &h[0], why, sizeof why), 0);
	rpc_limits_release(l, &h[0]);
	rpc_limits_release(l, &h[1]);
	rpc_limits_release(l, &h[3]);
	int s, w;
	rpc_limits_counts(l, &s, &w);
	assert_int_equal(s, 0);
	assert_int_equal(w, 0);
	rpc_limits_free(l);
}

static void test_streams_in_all(void **st)
{
	(void)st;
	struct rpc_limits *l = mk(2, 10, 100, 100);
	struct rpc_hold h[3];
	char why[256];
	assert_int_equal(rpc_limits_admit(l, MALLORY, 0, 1, 0, &h[0], why, sizeof why), 0);
	assert_int_equal(rpc_limits_admit(l, ALICE, 0, 1, 0, &h[1], why, sizeof why), 0);
	assert_int_equal(rpc_limits_admit(l, ORCH, 1, 1, 0, &h[2], why, sizeof why), SW_ELIMIT);
	assert_non_null(strstr(why, "--max-streams)"));
	/* Unary calls take no stream slot. */
	assert_int_equal(rpc_limits_admit(l, ORCH, 1, 0, 1, &h[2], why, sizeof why), 0);
	for (int i = 0; i < 3; i++)
		rpc_limits_release(l, &h[i]);
	rpc_limits_free(l);
}

static void test_calls_per_peer_and_services(void **st)
{
	(void)st;
	struct rpc_limits *l = mk(100, 100, 2, 100);
	struct rpc_hold h[6];
	char why[256];
	assert_int_equal(rpc_limits_admit(l, MALLORY, 0, 0, 1, &h[0], why, sizeof why), 0);
	assert_int_equal(rpc_limits_admit(l, MALLORY, 0, 1, 1, &h[1], why, sizeof why), 0);
	assert_int_equal(rpc_limits_admit(l, MALLORY, 0, 0, 1, &h[2], why, sizeof why), SW_ELIMIT);
	assert_non_null(strstr(why, "--max-calls-per-peer"));
	assert_non_null(strstr(why, MALLORY));
	/* A service principal is not held to the share. */
	for (int i = 3; i < 6; i++)
		assert_int_equal(rpc_limits_admit(l, ORCH, 1, 0, 1, &h[i], why, sizeof why), 0);
	/* The stream's handler deferred: its worker slot comes back, the
	 * stream slot stays. */
	rpc_limits_release_worker(l, &h[1]);
	assert_non_null(h[1].peer);
	assert_int_equal(rpc_limits_admit(l, MALLORY, 0, 0, 1, &h[2], why, sizeof why), 0);
	for (int i = 0; i < 6; i++)
		rpc_limits_release(l, &h[i]);
	int s, w;
	rpc_limits_counts(l, &s, &w);
	assert_int_equal(s, 0);
	assert_int_equal(w, 0);
	rpc_limits_free(l);
}

static void test_worker_streams_in_all(void **st)
{
	(void)st;
	struct rpc_limits *l = mk(100, 100, 100, 2);
	struct rpc_hold h[4];
	char why[256];
	assert_int_equal(rpc_limits_admit(l, MALLORY, 0, 1, 1, &h[0], why, sizeof why), 0);
	assert_int_equal(rpc_limits_admit(l, ALICE, 0, 1, 1, &h[1], why, sizeof why), 0);
	assert_int_equal(rpc_limits_admit(l, ORCH, 1, 1, 1, &h[2], why, sizeof why), SW_ELIMIT);
	assert_non_null(strstr(why, "--max-worker-streams"));
	/* Unary calls still get in: the rest of the pool is theirs. */
	assert_int_equal(rpc_limits_admit(l, ORCH, 1, 0, 1, &h[2], why, sizeof why), 0);
	/* A deferred stream (no worker) too. */
	assert_int_equal(rpc_limits_admit(l, ALICE, 0, 1, 0, &h[3], why, sizeof why), 0);
	for (int i = 0; i < 4; i++)
		rpc_limits_release(l, &h[i]);
	rpc_limits_free(l);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_streams_per_peer),
		cmocka_unit_test(test_streams_in_all),
		cmocka_unit_test(test_calls_per_peer_and_services),
		cmocka_unit_test(test_worker_streams_in_all),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
