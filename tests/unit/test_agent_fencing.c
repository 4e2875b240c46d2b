/*
 * Unit tests for the agent's durable state (services/agent/store.c): the
 * fencing generation and its rules, finished-task records, the root lock,
 * the atomic `current` / `previous` switch and release pruning.
 */
#include "agent.h"
#include "err.h"

#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

static char root[256];

static int setup(void **state)
{
	(void)state;
	snprintf(root, sizeof root, "/tmp/test_agent_fencing.XXXXXX");
	return mkdtemp(root) ? 0 : -1;
}

static int teardown(void **state)
{
	(void)state;
	agent_rmtree(root);
	return 0;
}

static struct agent_task task(const char *id, uint64_t gen)
{
	struct agent_task t;
	memset(&t, 0, sizeof t);
	snprintf(t.task_id, sizeof t.task_id, "%s", id);
	t.generation = gen;
	return t;
}

static void test_generation_is_durable_and_monotonic(void **state)
{
	(void)state;
	struct agent_store s;
	char err[256];
	assert_int_equal(agent_store_open(root, &s, err, sizeof err), 0);
	assert_int_equal(s.generation, 0);
	assert_int_equal(agent_store_set_generation(&s, 5, "dep1/t1/deploy", err, sizeof err), 0);
	assert_int_equal(agent_store_set_generation(&s, 7, "dep1/t1/retry", err, sizeof err), 0);
	/* Backwards is refused and changes nothing. */
	assert_int_equal(agent_store_set_generation(&s, 6, "old", err, sizeof err), SW_EINVAL);
	assert_int_equal(s.generation, 7);
	agent_store_close(&s);
	/* A restarted agent knows the highest generation it saw. */
	assert_int_equal(agent_store_open(root, &s, err, sizeof err), 0);
	assert_int_equal(s.generation, 7);
	assert_string_equal(s.generation_task, "dep1/t1/retry");
	agent_store_close(&s);
}

static void test_one_agent_per_root(void **state)
{
	(void)state;
	struct agent_store s1, s2;
	char err[256];
	assert_int_equal(agent_store_open(root, &s1, err, sizeof err), 0);
	assert_int_equal(agent_store_open(root, &s2, err, sizeof err), SW_EPRECOND);
	assert_non_null(strstr(err, "another agent"));
	agent_store_close(&s1);
	assert_int_equal(agent_store_open(root, &s2, err, sizeof err), 0);
	agent_store_close(&s2);
}

static void test_fence_rules(void **state)
{
	(void)state;
	struct agent_store s;
	char err[256];
	assert_int_equal(agent_store_open(root, &s, err, sizeof err), 0);
	uint64_t g = s.generation + 10;
	struct agent_task t = task("dep2/web-1/deploy", g);
	/* A new highest generation: persist, then run. */
	assert_int_equal(agent_fence_classify(&s, &t, NULL, NULL), AGENT_FENCE_NEW);
	assert_int_equal(agent_store_set_generation(&s, g, t.task_id, err, sizeof err), 0);
	/* Re-delivered while it runs or waits: ignored. */
	assert_int_equal(agent_fence_classify(&s, &t, &t, NULL), AGENT_FENCE_BUSY);
	assert_int_equal(agent_fence_classify(&s, &t, NULL, &t), AGENT_FENCE_BUSY);
	/* Accepted but never finished (the agent restarted): run it again. */
	assert_int_equal(agent_fence_classify(&s, &t, NULL, NULL), AGENT_FENCE_RESUME);
	/* Finished: the recorded result is reported again, not redone. */
	assert_int_equal(agent_store_put_result(&s, t.task_id, g, AGENT_RESULT_FAILED,
						"health check failed 3 times: HTTP 500", err,
						sizeof err), 0);
	assert_int_equal(agent_fence_classify(&s, &t, NULL, NULL), AGENT_FENCE_REREPORT);
	int result;
	char msg[AGENT_MSG_MAX];
	assert_int_equal(agent_store_get_result(&s, t.task_id, g, &result, msg, sizeof msg), 0);
	assert_int_equal(result, AGENT_RESULT_FAILED);
	assert_string_equal(msg, "health check failed 3 times: HTTP 500");
	/* A lower generation is stale, whatever it is. */
	struct agent_task old = task("dep1/web-1/deploy", g - 1);
	assert_int_equal(agent_fence_classify(&s, &old, NULL, NULL), AGENT_FENCE_STALE);
	struct agent_task old_same_id = task(t.task_id, g - 1);
	assert_int_equal(agent_fence_classify(&s, &old_same_id, NULL, NULL), AGENT_FENCE_STALE);
	/* The same generation for another task is a protocol violation. */
	struct agent_task other = task("dep3/web-1/deploy", g);
	assert_int_equal(agent_fence_classify(&s, &other, NULL, NULL), AGENT_FENCE_CONFLICT);
	/* Records survive a restart, and are keyed by (id, generation). */
	agent_store_close(&s);
	assert_int_equal(agent_store_open(root, &s, err, sizeof err), 0);
	assert_int_equal(agent_fence_classify(&s, &t, NULL, NULL), AGENT_FENCE_REREPORT);
	assert_int_equal(agent_store_get_result(&s, t.task_id, g + 1, &result, msg, sizeof msg),
			 SW_ENOTFOUND);
	assert_int_equal(agent_store_get_result(&s, "unknown", g, &result, msg, sizeof msg),
			 SW_ENOTFOUND);
	/* Messages cannot break the record format. */
	assert_int_equal(agent_store_put_result(&s, "x", 1, AGENT_RESULT_SUCCEEDED, "a\nb", err,
						sizeof err), 0);
	assert_int_equal(agent_store_get_result(&s, "x", 1, &result, msg, sizeof msg), 0);
	assert_string_equal(msg, "a b");
	agent_store_close(&s);
}

static void make_release(const struct agent_store *s, const char *hex, time_t mtime)
{
	char p[AGENT_PATH_MAX];
	agent_store_path(s, p, sizeof p, "releases/%s", hex);
	assert_int_equal(mkdir(p, 0755), 0);
	struct timespec ts[2] = { { mtime, 0 }, { mtime, 0 } };
	utimensat(AT_FDCWD, p, ts, 0);
}

static int exists(const struct agent_store *s, const char *hex)
{
	char p[AGENT_PATH_MAX];
	struct stat st;
	agent_store_path(s, p, sizeof p, "releases/%s", hex);
	return lstat(p, &st) == 0;
}

static void test_switch_and_prune(void **state)
{
	(void)state;
	struct agent_store s;
	char err[256], hex[AGENT_HEX_LEN + 1], h[6][AGENT_HEX_LEN + 1];
	assert_int_equal(agent_store_open(root, &s, err, sizeof err), 0);
	assert_int_equal(agent_store_link(&s, "current", hex), SW_ENOTFOUND);
	for (int i = 0; i < 6; i++) {
		memset(h[i], 'a' + i, AGENT_HEX_LEN);
		h[i][AGENT_HEX_LEN] = '\0';
		make_release(&s, h[i], 1000000 + i * 1000);
	}
	assert_int_equal(agent_store_switch(&s, h[0], err, sizeof err), 0);
	assert_int_equal(agent_store_link(&s, "current", hex), 0);
	assert_string_equal(hex, h[0]);
	assert_int_equal(agent_store_link(&s, "previous", hex), SW_ENOTFOUND);
	assert_int_equal(agent_store_switch(&s, h[1], err, sizeof err), 0);
	assert_int_equal(agent_store_link(&s, "current", hex), 0);
	assert_string_equal(hex, h[1]);
	assert_int_equal(agent_store_link(&s, "previous", hex), 0);
	assert_string_equal(hex, h[0]);
	/* Switching to the same release keeps previous. */
	assert_int_equal(agent_store_switch(&s, h[1], err, sizeof err), 0);
	assert_int_equal(agent_store_link(&s, "previous", hex), 0);
	assert_string_equal(hex, h[0]);
	/* current is a relative symlink into releases/ */
	char p[AGENT_PATH_MAX], target[256];
	agent_store_path(&s, p, sizeof p, "current");
	ssize_t n = readlink(p, target, sizeof target - 1);
	assert_true(n > 0);
	target[n] = '\0';
	assert_int_equal(strncmp(target, "releases/", 9), 0);
	/* A stale temporary unpack directory goes too. */
	agent_store_path(&s, p, sizeof p, "releases/.tmp-abc-1");
	assert_int_equal(mkdir(p, 0755), 0);
	/* keep 3: current (h1) + previous (h0) + the newest other (h5). */
	agent_store_prune(&s, 3);
	assert_true(exists(&s, h[0]));
	assert_true(exists(&s, h[1]));
	assert_false(exists(&s, h[2]));
	assert_false(exists(&s, h[3]));
	assert_false(exists(&s, h[4]));
	assert_true(exists(&s, h[5]));
	struct stat st;
	assert_int_not_equal(lstat(p, &st), 0);
	/* A corrupt link is "nothing deployed", not a crash. */
	agent_store_path(&s, p, sizeof p, "current");
	unlink(p);
	assert_int_equal(symlink("/etc", p), 0);
	assert_int_equal(agent_store_link(&s, "current", hex), SW_ENOTFOUND);
	agent_store_close(&s);
}

static void test_write_file_sync(void **state)
{
	(void)state;
	char p[AGENT_PATH_MAX], err[256], buf[64] = "";
	snprintf(p, sizeof p, "%s/file", root);
	assert_int_equal(agent_write_file_sync(p, "one", 3, err, sizeof err), 0);
	assert_int_equal(agent_write_file_sync(p, "two!", 4, err, sizeof err), 0);
	FILE *f = fopen(p, "r");
	assert_non_null(f);
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = '\0';
	assert_string_equal(buf, "two!");
	struct stat st;
	assert_int_equal(stat(p, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	unlink(p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_generation_is_durable_and_monotonic),
		cmocka_unit_test(test_one_agent_per_root),
		cmocka_unit_test(test_fence_rules),
		cmocka_unit_test(test_switch_and_prune),
		cmocka_unit_test(test_write_file_sync),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
