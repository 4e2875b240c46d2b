/*
 * it_orchestrator.c - the agent protocol at the wire, against the real
 * orchestrator: who may speak it, registration checks, fencing (superseded
 * generations), reports about a task the caller does not hold, unknown
 * tasks, idempotent reports, and heartbeats of unknown agents.
 */
#include "err.h"
#include "harness.h"
#include "log.h"
#include "pki.h"
#include "rpc.h"

#include "slipway/v1/orchestrator.pb-c.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

static char dir[256], td[128];
static char a_crt[300], a_key[300], b_crt[300], b_key[300], c_crt[300], c_key[300];
static char u_crt[300], u_key[300];
static struct rpc_client *A, *B, *C, *U;

static void issue(const char *path, const char *name, char *crt, char *key)
{
	char prefix[280], uri[256];
	snprintf(prefix, sizeof prefix, "%s/%s", dir, name);
	for (char *p = prefix + strlen(dir) + 1; *p; p++)
		if (*p == '/')
			*p = '-';
	snprintf(uri, sizeof uri, "spiffe://%s/%s", td, path);
	h_issue(h_env("SLIPWAY_PKI_DIR"), prefix, uri, NULL, 0);
	snprintf(crt, 300, "%s.crt", prefix);
	snprintf(key, 300, "%s.key", prefix);
}

static int call(struct rpc_client *c, const char *method, const ProtobufCMessage *req,
		ProtobufCMessage **resp, char *err)
{
	struct rpc_call_opts o = { .timeout_ms = 10000 };
	return rpc_call(c, &slipway__v1__agent_control__descriptor, method, req, resp, &o, err, 256);
}

static int register_as(struct rpc_client *c, const char *app, char *err)
{
	Slipway__V1__RegisterRequest req = SLIPWAY__V1__REGISTER_REQUEST__INIT;
	Slipway__V1__KeyValue l1 = SLIPWAY__V1__KEY_VALUE__INIT, l2 = SLIPWAY__V1__KEY_VALUE__INIT;
	Slipway__V1__KeyValue *labels[2] = { &l1, &l2 };
	uint8_t key[32];
	memset(key, 7, sizeof key);
	l1.key = "app";
	l1.value = (char *)app;
	l2.key = "environment";
	l2.value = "prod";
	req.n_labels = app ? 2 : 1;
	req.labels = app ? labels : &labels[1];
	req.seal_public_key.data = key;
	req.seal_public_key.len = 32;
	req.hostname = "test";
	ProtobufCMessage *m = NULL;
	int rc = call(c, "RegisterAgent", &req.base, &m, err);
	if (m)
		protobuf_c_message_free_unpacked(m, NULL);
	return rc;
}

static int setup(void **st)
{
	(void)st;
	char err[256];
	snprintf(dir, sizeof dir, "%s", h_tmpdir("it_orchestrator"));
	if (pki_trust_domain(h_env("SLIPWAY_PKI_DIR"), td, sizeof td, err, sizeof err) != 0)
		return -1;
	issue("agent/px/a", "a", a_crt, a_key);
	issue("agent/px/b", "b", b_crt, b_key);
	issue("agent/px/c", "c", c_crt, c_key);
	issue("user/mallory", "u", u_crt, u_key);
	/* a and b are enrolled for proto/prod; c is enrolled for another app. */
	char id[3][256];
	for (int i = 0; i < 3; i++)
		snprintf(id[i], sizeof id[i], "spiffe://%s/agent/px/%c", td, 'a' + i);
	if (h_enroll(id[0], "proto", "prod", NULL) != 0 || h_enroll(id[1], "proto", "prod", NULL) != 0 ||
	    h_enroll(id[2], "other", "prod", NULL) != 0)
		return -1;
	const char *addr = h_env("SLIPWAY_ORCHESTRATOR_ADDR"), *ca = h_env("SLIPWAY_CA");
	A = h_client(addr, ca, a_crt, a_key);
	B = h_client(addr, ca, b_crt, b_key);
	C = h_client(addr, ca, c_crt, c_key);
	U = h_client(addr, ca, u_crt, u_key);
	/* A release for app "proto" (the bytes never run: no real agent). */
	if (h_run("head -c 4096 /dev/urandom > '%s/blob' && build/bin/slipway artifact push '%s/blob'"
		" --app proto --version 1.0.0 >/dev/null 2>&1",
		dir, dir) != 0)
		return -1;
	return 0;
}

static int teardown(void **st)
{
	(void)st;
	rpc_client_free(A);
	rpc_client_free(B);
	rpc_client_free(C);
	rpc_client_free(U);
	return 0;
}

static void test_only_agents_speak_the_protocol(void **st)
{
	(void)st;
	char err[256];
	assert_int_equal(register_as(U, "proto", err), SW_EPERM);
	Slipway__V1__HeartbeatRequest hb = SLIPWAY__V1__HEARTBEAT_REQUEST__INIT;
	ProtobufCMessage *m = NULL;
	assert_int_equal(call(U, "Heartbeat", &hb.base, &m, err), SW_EPERM);
	/* The scope is the enrollment's: a label that says otherwise is
	 * refused; none is needed. */
	assert_int_equal(register_as(C, "proto", err), SW_EPERM);
	assert_non_null(strstr(err, "outside this agent's enrollment"));
	assert_int_equal(register_as(C, NULL, err), 0);
	assert_int_equal(register_as(C, "other", err), 0);
	/* An agent unknown to the orchestrator is told to register... */
	h_run("build/bin/slipway agents unenroll spiffe://%s/agent/px/c >/dev/null", td);
	for (int i = 0; i < 100; i++) { /* the orchestrator follows within a second */
		Slipway__V1__HeartbeatResponse *hr;
		assert_int_equal(call(C, "Heartbeat", &hb.base, &m, err), 0);
		hr = (void *)m;
		int again = hr->reregister;
		protobuf_c_message_free_unpacked(m, NULL);
		if (again)
			break;
		usleep(50000);
	}
	assert_int_equal(register_as(C, "other", err), SW_EPERM);
	assert_non_null(strstr(err, "not enrolled"));
	assert_int_equal(call(C, "Heartbeat", &hb.base, &m, err), 0);
	assert_true(((Slipway__V1__HeartbeatResponse *)m)->reregister);
	protobuf_c_message_free_unpacked(m, NULL);
	/* ...and cannot poll before it does. */
	Slipway__V1__PollTasksRequest pr = SLIPWAY__V1__POLL_TASKS_REQUEST__INIT;
	assert_int_equal(call(C, "PollTasks", &pr.base, &m, err), SW_EPRECOND);
}

static Slipway__V1__Task *poll_task(struct rpc_client *c, ProtobufCMessage **keep)
{
	char err[256];
	Slipway__V1__PollTasksRequest pr = SLIPWAY__V1__POLL_TASKS_REQUEST__INIT;
	pr.wait_ms = 5000;
	assert_int_equal(call(c, "PollTasks", &pr.base, keep, err), 0);
	Slipway__V1__PollTasksResponse *r = (void *)*keep;
	return r->n_tasks == 1 ? r->tasks[0] : NULL;
}

static int report(struct rpc_client *c, const char *task, uint64_t gen, int result,
		  Slipway__V1__ReportTaskResponse **out, char *err)
{
	Slipway__V1__TaskReport rep = SLIPWAY__V1__TASK_REPORT__INIT;
	rep.task_id = (char *)task;
	rep.generation = gen;
	rep.result = result;
	rep.message = "test";
	ProtobufCMessage *m = NULL;
	int rc = call(c, "ReportTask", &rep.base, &m, err);
	*out = (void *)m;
	return rc;
}

static void test_fencing_and_foreign_reports(void **st)
{
	(void)st;
	char err[256];
	assert_int_equal(register_as(A, "proto", err), 0);
	assert_int_equal(register_as(B, "proto", err), 0);
	assert_int_equal(h_run("build/bin/slipway deploy proto prod 1.0.0 --batch 2 >/dev/null 2>&1"), 0);
	ProtobufCMessage *ka = NULL, *kb = NULL;
	Slipway__V1__Task *ta = poll_task(A, &ka), *tb = poll_task(B, &kb);
	assert_non_null(ta);
	assert_non_null(tb);
	assert_true(ta->generation > 0);
	assert_string_equal(ta->app, "proto");
	assert_int_equal(ta->kind, SLIPWAY__V1__TASK_KIND__TASK_DEPLOY);
	Slipway__V1__ReportTaskResponse *r = NULL;
	/* B reports on A's task: refused, and A's task is unchanged. */
	assert_int_equal(report(B, ta->task_id, ta->generation, SLIPWAY__V1__TASK_RESULT__TASK_FAILED,
				&r, err),
			 SW_EPERM);
	assert_non_null(strstr(err, "not held"));
	/* A task that does not exist. */
	assert_int_equal(report(A, "no-such-task", 1, SLIPWAY__V1__TASK_RESULT__TASK_STARTED, &r, err),
			 SW_ENOTFOUND);
	/* An older generation is superseded and changes nothing. */
	assert_int_equal(report(A, ta->task_id, ta->generation - 1,
				SLIPWAY__V1__TASK_RESULT__TASK_FAILED, &r, err),
			 0);
	assert_true(r->superseded);
	assert_false(r->accepted);
	protobuf_c_message_free_unpacked(&r->base, NULL);
	/* The real generation is accepted; repeating it changes nothing. */
	for (int i = 0; i < 2; i++) {
		assert_int_equal(report(A, ta->task_id, ta->generation,
					SLIPWAY__V1__TASK_RESULT__TASK_SUCCEEDED, &r, err),
				 0);
		assert_true(r->accepted);
		protobuf_c_message_free_unpacked(&r->base, NULL);
	}
	/* A delivered task is not delivered again above its generation. */
	Slipway__V1__PollTasksRequest pr = SLIPWAY__V1__POLL_TASKS_REQUEST__INIT;
	pr.wait_ms = 300;
	pr.highest_generation = ta->generation;
	ProtobufCMessage *m = NULL;
	assert_int_equal(call(A, "PollTasks", &pr.base, &m, err), 0);
	assert_int_equal(((Slipway__V1__PollTasksResponse *)m)->n_tasks, 0);
	protobuf_c_message_free_unpacked(m, NULL);
	/* B succeeds too: the deployment succeeds. */
	assert_int_equal(report(B, tb->task_id, tb->generation, SLIPWAY__V1__TASK_RESULT__TASK_SUCCEEDED,
				&r, err),
			 0);
	protobuf_c_message_free_unpacked(&r->base, NULL);
	int ok = 0;
	for (int i = 0; i < 100 && !ok; i++) {
		ok = h_run("build/bin/slipway status proto prod | grep -q 'current     1.0.0'") == 0;
		if (!ok)
			h_sleep_ms(100);
	}
	assert_true(ok);
	protobuf_c_message_free_unpacked(ka, NULL);
	protobuf_c_message_free_unpacked(kb, NULL);
}

int main(void)
{
	log_init("it_orchestrator", LOG_WARN);
	rpc_init();
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_only_agents_speak_the_protocol),
		cmocka_unit_test(test_fencing_and_foreign_reports),
	};
	int rc = cmocka_run_group_tests_name("it_orchestrator", tests, setup, teardown);
	rpc_shutdown();
	return rc;
}
