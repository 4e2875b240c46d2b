/*
 * it_orch_watch.c - many WatchDeployment streams against the real
 * orchestrator (issue 11, fault 10): with more watches open than the
 * orchestrator has worker threads (--workers, 16 by default), other RPCs
 * (ListAgents, GetDeployment from the CLI, an agent's heartbeats and task
 * reports) are still answered within their usual deadlines, the deployment
 * completes, every watcher receives the final SUCCEEDED detail and its
 * stream ends OK; a watcher that cancels is let go, and a watch of a
 * deployment that is already over gets one detail and ends. Then, on a
 * replica restarted with --max-watchers 2: a third watch is
 * RESOURCE_EXHAUSTED, and SIGTERM ends the open ones UNAVAILABLE at once.
 *
 * The agent is this test speaking the agent protocol (as it_orchestrator
 * does): no real agent process.
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

/* More than the orchestrator's default of 16 worker threads. */
#define NWATCH 24

static char dir[256], td[128], a_crt[320], a_key[320];
static struct rpc_client *A, *ADMIN;

static int setup(void **st)
{
	(void)st;
	char err[256], prefix[290], uri[256];
	snprintf(dir, sizeof dir, "%s", h_tmpdir("it_orch_watch"));
	if (pki_trust_domain(h_env("SLIPWAY_PKI_DIR"), td, sizeof td, err, sizeof err) != 0)
		return -1;
	snprintf(prefix, sizeof prefix, "%s/a", dir);
	snprintf(uri, sizeof uri, "spiffe://%s/agent/wx/a", td);
	h_issue(h_env("SLIPWAY_PKI_DIR"), prefix, uri, NULL, 0);
	snprintf(a_crt, sizeof a_crt, "%s.crt", prefix);
	snprintf(a_key, sizeof a_key, "%s.key", prefix);
	const char *addr = h_env("SLIPWAY_ORCHESTRATOR_ADDR"), *ca = h_env("SLIPWAY_CA");
	A = h_client(addr, ca, a_crt, a_key);
	ADMIN = h_client(addr, ca, h_env("SLIPWAY_CERT"), h_env("SLIPWAY_KEY"));
	/* Agents register only inside an enrollment. */
	if (h_enroll(uri, "wx", "prod", NULL) != 0)
		return -1;
	/* Releases for app "wx" (the bytes never run). */
	for (int v = 1; v <= 2; v++)
		if (h_run("head -c 4096 /dev/urandom > '%s/blob' && build/bin/slipway artifact push"
			" '%s/blob' --app wx --version %d.0.0 >/dev/null 2>&1",
			dir, dir, v) != 0)
			return -1;
	return 0;
}

static int teardown(void **st)
{
	(void)st;
	rpc_client_free(A);
	rpc_client_free(ADMIN);
	return 0;
}

/* Unary call with the usual 10 s deadline: the bound on "answered". */
static int call(struct rpc_client *c, const ProtobufCServiceDescriptor *sd, const char *method,
		const ProtobufCMessage *req, ProtobufCMessage **resp, char *err)
{
	struct rpc_call_opts o = { .timeout_ms = 10000 };
	*resp = NULL;
	return rpc_call(c, sd, method, req, resp, &o, err, 256);
}

static void agent_call(const char *method, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	char err[256];
	int rc = call(A, &slipway__v1__agent_control__descriptor, method, req, resp, err);
	if (rc != 0)
		fail_msg("%s: %s (%s)", method, sw_strerror(rc), err);
}

static void heartbeat(void)
{
	Slipway__V1__HeartbeatRequest hb = SLIPWAY__V1__HEARTBEAT_REQUEST__INIT;
	ProtobufCMessage *m = NULL;
	agent_call("Heartbeat", &hb.base, &m);
	assert_false(((Slipway__V1__HeartbeatResponse *)m)->reregister);
	protobuf_c_message_free_unpacked(m, NULL);
}

static void report(const Slipway__V1__Task *t, Slipway__V1__TaskResult result)
{
	Slipway__V1__TaskReport rep = SLIPWAY__V1__TASK_REPORT__INIT;
	rep.task_id = t->task_id;
	rep.generation = t->generation;
	rep.result = result;
	rep.message = "it_orch_watch";
	ProtobufCMessage *m = NULL;
	agent_call("ReportTask", &rep.base, &m);
	assert_true(((Slipway__V1__ReportTaskResponse *)m)->accepted);
	protobuf_c_message_free_unpacked(m, NULL);
}

/* Everything else people do while the watches are open, each within 10 s. */
static void other_rpcs_answered(const char *id)
{
	char err[256];
	Slipway__V1__ListAgentsRequest la = SLIPWAY__V1__LIST_AGENTS_REQUEST__INIT;
	la.app = "wx";
	ProtobufCMessage *m = NULL;
	int rc = call(ADMIN, &slipway__v1__orchestrator__descriptor, "ListAgents", &la.base, &m, err);
	if (rc != 0)
		fail_msg("ListAgents with %d watches open: %s (%s)", NWATCH, sw_strerror(rc), err);
	assert_int_equal(((Slipway__V1__ListAgentsResponse *)m)->n_agents, 1);
	protobuf_c_message_free_unpacked(m, NULL);
	if (h_run("build/bin/slipway --timeout 10s deployment show %s >'%s/show.out' 2>&1", id, dir) != 0)
		fail_msg("slipway deployment show with %d watches open failed: see %s/show.out", NWATCH,
			 dir);
	heartbeat();
}

static struct rpc_stream *open_watch(const char *id)
{
	char err[256];
	struct rpc_stream *s = NULL;
	Slipway__V1__WatchDeploymentRequest req = SLIPWAY__V1__WATCH_DEPLOYMENT_REQUEST__INIT;
	req.id = (char *)id;
	/* Long enough never to be what ends a watch in this test. */
	struct rpc_call_opts o = { .timeout_ms = 120000 };
	int rc = rpc_stream_open(ADMIN, &slipway__v1__orchestrator__descriptor, "WatchDeployment", &o,
				 &s, err, sizeof err);
	if (rc != 0)
		fail_msg("open watch: %s (%s)", sw_strerror(rc), err);
	assert_int_equal(rpc_stream_send(s, &req.base), 0);
	assert_int_equal(rpc_stream_close_send(s), 0);
	return s;
}

/* Reads a watch to its end: the last detail's state, and the stream's
 * status is OK. */
static int drain_watch(struct rpc_stream *s, int i, int *received)
{
	char err[256];
	ProtobufCMessage *m = NULL;
	int state = -1, rc;
	*received = 0;
	while ((rc = rpc_stream_recv(s, &m)) == 1) {
		state = (int)((Slipway__V1__DeploymentDetail *)m)->deployment->state;
		(*received)++;
		protobuf_c_message_free_unpacked(m, NULL);
	}
	int fin = rpc_stream_finish(s, err, sizeof err);
	if (rc != 0 || fin != 0)
		fail_msg("watch %d ended with %s (%s) after %d details", i, sw_strerror(fin ? fin : rc),
			 err, *received);
	return state;
}

/* The agent registers, a deployment of one target to `version` starts,
 * and its task reaches the agent (returned: free *keep). */
static const Slipway__V1__Task *start_deployment(const char *version, char id[64],
						 ProtobufCMessage **keep)
{
	char err[256];
	ProtobufCMessage *m = NULL;
	Slipway__V1__RegisterRequest reg = SLIPWAY__V1__REGISTER_REQUEST__INIT;
	Slipway__V1__KeyValue l1 = SLIPWAY__V1__KEY_VALUE__INIT, l2 = SLIPWAY__V1__KEY_VALUE__INIT;
	Slipway__V1__KeyValue *labels[2] = { &l1, &l2 };
	uint8_t key[32];
	memset(key, 7, sizeof key);
	l1.key = "app";
	l1.value = "wx";
	l2.key = "environment";
	l2.value = "prod";
	reg.n_labels = 2;
	reg.labels = labels;
	reg.seal_public_key.data = key;
	reg.seal_public_key.len = sizeof key;
	reg.hostname = "it-orch-watch";
	agent_call("RegisterAgent", &reg.base, &m);
	protobuf_c_message_free_unpacked(m, NULL);

	Slipway__V1__CreateDeploymentRequest cr = SLIPWAY__V1__CREATE_DEPLOYMENT_REQUEST__INIT;
	cr.app = "wx";
	cr.environment = "prod";
	cr.release_case = SLIPWAY__V1__CREATE_DEPLOYMENT_REQUEST__RELEASE_VERSION;
	cr.version = (char *)version;
	int rc = call(ADMIN, &slipway__v1__orchestrator__descriptor, "CreateDeployment", &cr.base, &m,
		      err);
	if (rc != 0)
		fail_msg("CreateDeployment: %s (%s)", sw_strerror(rc), err);
	snprintf(id, 64, "%s", ((Slipway__V1__Deployment *)m)->id);
	protobuf_c_message_free_unpacked(m, NULL);
	Slipway__V1__PollTasksRequest pr = SLIPWAY__V1__POLL_TASKS_REQUEST__INIT;
	pr.wait_ms = 8000;
	agent_call("PollTasks", &pr.base, keep);
	Slipway__V1__PollTasksResponse *tr = (void *)*keep;
	assert_int_equal(tr->n_tasks, 1);
	return tr->tasks[0];
}

static void test_watchers_hold_no_worker(void **st)
{
	(void)st;
	char err[256], id[64];
	ProtobufCMessage *m = NULL, *tm = NULL;
	int rc;
	const Slipway__V1__Task *task = start_deployment("1.0.0", id, &tm);

	/* NWATCH watches, and one more that its client will cancel. */
	struct rpc_stream *w[NWATCH];
	for (int i = 0; i < NWATCH; i++)
		w[i] = open_watch(id);
	struct rpc_stream *quitter = open_watch(id);

	/* While they are open, the rest of the service answers. */
	other_rpcs_answered(id);

	/* Each watch has its first detail: the deployment, not over. */
	for (int i = 0; i < NWATCH; i++) {
		rc = rpc_stream_recv(w[i], &m);
		if (rc != 1)
			fail_msg("watch %d: no first detail (%s)", i, rc < 0 ? sw_strerror(rc) : "end");
		int state = (int)((Slipway__V1__DeploymentDetail *)m)->deployment->state;
		assert_true(state == SLIPWAY__V1__DEPLOYMENT_STATE__RUNNING ||
			    state == SLIPWAY__V1__DEPLOYMENT_STATE__QUEUED);
		protobuf_c_message_free_unpacked(m, NULL);
	}
	assert_int_equal(rpc_stream_recv(quitter, &m), 1);
	protobuf_c_message_free_unpacked(m, NULL);
	rpc_stream_cancel(quitter);
	assert_int_equal(rpc_stream_finish(quitter, err, sizeof err), SW_ECANCELLED);

	/* The agent works through its task, heartbeating, while the watches
	 * stay open. */
	report(task, SLIPWAY__V1__TASK_RESULT__TASK_STARTED);
	heartbeat();
	other_rpcs_answered(id);
	report(task, SLIPWAY__V1__TASK_RESULT__TASK_SUCCEEDED);
	heartbeat();
	protobuf_c_message_free_unpacked(tm, NULL);

	/* Every watcher sees the end, and its stream ends OK. */
	for (int i = 0; i < NWATCH; i++) {
		int received = 0;
		int state = drain_watch(w[i], i, &received);
		if (state != SLIPWAY__V1__DEPLOYMENT_STATE__SUCCEEDED)
			fail_msg("watch %d ended on state %d, not SUCCEEDED", i, state);
	}

	/* A watch of a deployment that is over: its final detail, then OK. */
	int received = 0;
	assert_int_equal(drain_watch(open_watch(id), -1, &received),
			 SLIPWAY__V1__DEPLOYMENT_STATE__SUCCEEDED);
	assert_int_equal(received, 1);

	/* An unknown deployment is an error at once, not a deferred stream. */
	struct rpc_stream *s = open_watch("d-no-such-deployment");
	assert_true(rpc_stream_recv(s, &m) <= 0);
	assert_int_equal(rpc_stream_finish(s, err, sizeof err), SW_ENOTFOUND);
}

static void test_cap_and_shutdown(void **st)
{
	(void)st;
	char err[256], id[64];
	ProtobufCMessage *m = NULL, *tm = NULL;
	const char *S = h_env("SLIPWAY_STACK_DIR");
	assert_int_equal(h_run("scripts/stack stop '%s' orchestrator >/dev/null 2>&1", S), 0);
	assert_int_equal(h_run("SLIPWAY_ORCHESTRATOR_MAX_WATCHERS=2 scripts/stack start '%s' orchestrator"
			     " >/dev/null 2>&1",
			     S),
			 0);
	/* Clients that wait for the restarted replica. */
	const char *addr = h_env("SLIPWAY_ORCHESTRATOR_ADDR"), *ca = h_env("SLIPWAY_CA");
	rpc_client_free(A);
	rpc_client_free(ADMIN);
	A = h_service_client(addr, ca, a_crt, a_key);
	ADMIN = h_service_client(addr, ca, h_env("SLIPWAY_CERT"), h_env("SLIPWAY_KEY"));
	start_deployment("2.0.0", id, &tm);

	struct rpc_stream *w[2];
	for (int i = 0; i < 2; i++) {
		w[i] = open_watch(id);
		assert_int_equal(rpc_stream_recv(w[i], &m), 1);
		protobuf_c_message_free_unpacked(m, NULL);
	}
	struct rpc_stream *s = open_watch(id);
	assert_true(rpc_stream_recv(s, &m) <= 0);
	assert_int_equal(rpc_stream_finish(s, err, sizeof err), SW_ELIMIT);
	assert_non_null(strstr(err, "too many deployment watches"));

	/* SIGTERM: the drain ends the open watches UNAVAILABLE ("watch
	 * again"), not the grace period's cancellation. The stop runs in the
	 * background: the process takes its time to exit. */
	assert_int_equal(h_run("(scripts/stack stop '%s' orchestrator; touch '%s/stopped')"
			     " >/dev/null 2>&1 &",
			     S, dir),
			 0);
	for (int i = 0; i < 2; i++) {
		int rc;
		while ((rc = rpc_stream_recv(w[i], &m)) == 1)
			protobuf_c_message_free_unpacked(m, NULL);
		assert_int_equal(rpc_stream_finish(w[i], err, sizeof err), SW_EUNAVAIL);
		assert_non_null(strstr(err, "shutting down"));
	}
	char stopped[300];
	snprintf(stopped, sizeof stopped, "%s/stopped", dir);
	for (int i = 0; i < 300 && access(stopped, F_OK) != 0; i++)
		h_sleep_ms(100);
	assert_int_equal(access(stopped, F_OK), 0);
	assert_int_equal(h_run("scripts/stack start '%s' orchestrator >/dev/null 2>&1", S), 0);
	protobuf_c_message_free_unpacked(tm, NULL);
}

int main(void)
{
	log_init("it_orch_watch", LOG_WARN);
	rpc_init();
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_watchers_hold_no_worker),
		cmocka_unit_test(test_cap_and_shutdown),
	};
	int rc = cmocka_run_group_tests_name("it_orch_watch", tests, setup, teardown);
	rpc_shutdown();
	return rc;
}
