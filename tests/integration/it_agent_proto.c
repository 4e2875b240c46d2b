/*
 * it_agent_proto.c - the real slipway-agent binary, over mTLS, against the
 * real artifact service and a stand-in for the orchestrator's side of
 * service AgentControl that lives in this test (the orchestrator is built
 * in parallel; end-to-end tests against it belong with it). The stand-in
 * only records what the agent says and hands out the tasks the test
 * queues, so every protocol rule is checked on the wire:
 *
 *   registration (labels, seal key, identity) and heartbeats with the
 *   runtime and the highest generation; a task reported STARTED then
 *   SUCCEEDED/FAILED with the runtime; a finished task delivered again is
 *   reported again, not redone; a stale generation is ignored; an answer
 *   with `superseded` stops a task; `reregister` is obeyed; the
 *   orchestrator going away and coming back; SIGTERM exits 0 and leaves
 *   the application serving, and the next agent adopts it; kill -9 in the
 *   middle of a task, then the task delivered again, finishes it, and the
 *   unfinished new process of the killed agent is stopped; the agent
 *   killed (test hook SLIPWAY_AGENT_CRASH_AT) in each crash window of a
 *   deploy and of a crash restart runs, once restarted, exactly one process
 *   of the intended release (counted by command line under its root);
 *   given two orchestrator addresses, the agent moves from a frozen
 *   (SIGSTOP) replica to the other one within about a heartbeat interval.
 */
#include "agent_harness.h"
#include "err.h"
#include "harness.h"
#include "log.h"
#include "pki.h"
#include "rpc.h"

#include "slipway/v1/orchestrator.pb-c.h"

#include <dirent.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#define WAIT_MS 60000
#define MAX_REPORTS 256
#define MAX_QUEUE 8

/* ---------------------------------------------------------------- the stand-in */

struct report {
	char task_id[160];
	uint64_t generation;
	int result;
	char message[300];
	char version[64];
	char digest[80];
	int process;
	int healthy;
};

struct task_spec {
	char task_id[160];
	uint64_t generation;
	int kind;
	char app[32];
	char version[32];
	char digest[80];
};

static struct fake {
	pthread_mutex_t mu;
	pthread_cond_t cond;
	int draining;
	int known;                  /* this instance saw a RegisterAgent */
	int registers;
	char agent_id[256];
	char labels[512];           /* "k=v;k=v;" */
	size_t seal_key_len;
	char hostname[128];
	char agent_version[64];
	int heartbeats;
	uint64_t hb_generation;
	int hb_process;
	int hb_healthy;
	char hb_version[64];
	char hb_endpoint[64];
	int reregister_next;
	uint64_t supersede_gen;
	struct task_spec queue[MAX_QUEUE];
	int nqueue;
	struct report reports[MAX_REPORTS];
	int nreports;
} F = { .mu = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };

static struct rpc_server *srv;
static int srv_port;
static char dir[512], td[128], srv_crt[700], srv_key[700], ag_crt[700], ag_key[700];
static char root[600], agent_log[600], agent_id[256];
static char d1[72], d2[72], d3[72];
static struct h_proc agent;

static int h_register(struct rpc_ctx *ctx, const ProtobufCMessage *reqm, ProtobufCMessage *respm,
		      void *data)
{
	(void)data;
	const Slipway__V1__RegisterRequest *req = (const void *)reqm;
	Slipway__V1__RegisterResponse *resp = (void *)respm;
	if (strncmp(rpc_peer(ctx), "spiffe://", 9) != 0 || strstr(rpc_peer(ctx), "/agent/") == NULL)
		return rpc_errorf(ctx, SW_EPERM, "not an agent");
	pthread_mutex_lock(&F.mu);
	F.known = 1;
	F.registers++;
	snprintf(F.agent_id, sizeof F.agent_id, "%s", rpc_peer(ctx));
	F.labels[0] = '\0';
	for (size_t i = 0; i < req->n_labels; i++) {
		size_t l = strlen(F.labels);
		snprintf(F.labels + l, sizeof F.labels - l, "%s=%s;", req->labels[i]->key,
			 req->labels[i]->value);
	}
	F.seal_key_len = req->seal_public_key.len;
	snprintf(F.hostname, sizeof F.hostname, "%s", req->hostname);
	snprintf(F.agent_version, sizeof F.agent_version, "%s", req->agent_version);
	pthread_cond_broadcast(&F.cond);
	pthread_mutex_unlock(&F.mu);
	resp->agent_id = rpc_strdup(ctx, rpc_peer(ctx));
	resp->heartbeat_interval_ms = 200;
	return 0;
}

static int h_heartbeat(struct rpc_ctx *ctx, const ProtobufCMessage *reqm, ProtobufCMessage *respm,
		       void *data)
{
	(void)data;
	(void)ctx;
	const Slipway__V1__HeartbeatRequest *req = (const void *)reqm;
	Slipway__V1__HeartbeatResponse *resp = (void *)respm;
	pthread_mutex_lock(&F.mu);
	resp->heartbeat_interval_ms = 200;
	if (!F.known || F.reregister_next) {
		resp->reregister = 1;
		F.reregister_next = 0;
	} else {
		F.heartbeats++;
		F.hb_generation = req->highest_generation;
		if (req->runtime != NULL) {
			F.hb_process = req->runtime->process;
			F.hb_healthy = req->runtime->healthy;
			snprintf(F.hb_version, sizeof F.hb_version, "%s", req->runtime->version);
			snprintf(F.hb_endpoint, sizeof F.hb_endpoint, "%s", req->runtime->endpoint);
		}
	}
	pthread_cond_broadcast(&F.cond);
	pthread_mutex_unlock(&F.mu);
	return 0;
}

/* Long poll: answers as soon as tasks are queued, or after wait_ms. */
static int h_poll(struct rpc_ctx *ctx, const ProtobufCMessage *reqm, ProtobufCMessage *respm,
		  void *data)
{
	(void)data;
	const Slipway__V1__PollTasksRequest *req = (const void *)reqm;
	Slipway__V1__PollTasksResponse *resp = (void *)respm;
	int64_t until = h_now_ms() + (req->wait_ms > 0 && req->wait_ms < 30000 ? req->wait_ms : 1000);
	int64_t left = rpc_remaining_ms(ctx);
	if (left < INT64_MAX && h_now_ms() + left - 500 < until)
		until = h_now_ms() + left - 500; /* answer within the caller's deadline */
	pthread_mutex_lock(&F.mu);
	while (F.nqueue == 0 && !F.draining && h_now_ms() < until && !rpc_cancelled(ctx)) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 50 * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&F.cond, &F.mu, &ts);
	}
	int n = F.nqueue;
	Slipway__V1__Task **v = n ? rpc_alloc(ctx, (size_t)n * sizeof *v) : NULL;
	for (int i = 0; i < n && v != NULL; i++) {
		Slipway__V1__Task *t = rpc_alloc(ctx, sizeof *t);
		slipway__v1__task__init(t);
		const struct task_spec *q = &F.queue[i];
		t->task_id = rpc_strdup(ctx, q->task_id);
		t->generation = q->generation;
		t->kind = (Slipway__V1__TaskKind)q->kind;
		t->deployment_id = rpc_strdup(ctx, "dep-proto");
		t->app = rpc_strdup(ctx, q->app);
		t->environment = rpc_strdup(ctx, "prod");
		t->version = rpc_strdup(ctx, q->version);
		t->digest = rpc_strdup(ctx, q->digest);
		t->attempt = 1;
		v[i] = t;
	}
	if (v != NULL) {
		resp->tasks = v;
		resp->n_tasks = (size_t)n;
	}
	/* Like an orchestrator, delivered again until the agent reports on it
	 * (an answer to a poll the agent gave up on is lost). */
	pthread_mutex_unlock(&F.mu);
	return 0;
}

static int h_report(struct rpc_ctx *ctx, const ProtobufCMessage *reqm, ProtobufCMessage *respm,
		    void *data)
{
	(void)data;
	(void)ctx;
	const Slipway__V1__TaskReport *req = (const void *)reqm;
	Slipway__V1__ReportTaskResponse *resp = (void *)respm;
	pthread_mutex_lock(&F.mu);
	if (F.nreports < MAX_REPORTS) {
		struct report *r = &F.reports[F.nreports++];
		snprintf(r->task_id, sizeof r->task_id, "%s", req->task_id);
		r->generation = req->generation;
		r->result = req->result;
		snprintf(r->message, sizeof r->message, "%s", req->message);
		if (req->runtime != NULL) {
			snprintf(r->version, sizeof r->version, "%s", req->runtime->version);
			snprintf(r->digest, sizeof r->digest, "%s", req->runtime->digest);
			r->process = req->runtime->process;
			r->healthy = req->runtime->healthy;
		}
	}
	for (int i = 0; i < F.nqueue;) {
		if (strcmp(F.queue[i].task_id, req->task_id) == 0 &&
		    F.queue[i].generation == req->generation) {
			memmove(&F.queue[i], &F.queue[i + 1], (size_t)(F.nqueue - i - 1) * sizeof F.queue[0]);
			F.nqueue--;
		} else {
			i++;
		}
	}
	resp->accepted = 1;
	resp->superseded = F.supersede_gen != 0 && req->generation == F.supersede_gen;
	pthread_cond_broadcast(&F.cond);
	pthread_mutex_unlock(&F.mu);
	return 0;
}

static void on_drain(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&F.mu);
	F.draining = 1;
	pthread_cond_broadcast(&F.cond);
	pthread_mutex_unlock(&F.mu);
}

static const struct rpc_method methods[] = {
	{ "RegisterAgent", RPC_UNARY, 0, h_register, RPC_PEER_AGENT },
	{ "Heartbeat", RPC_UNARY, 0, h_heartbeat, RPC_PEER_AGENT },
	{ "PollTasks", RPC_UNARY, 0, h_poll, RPC_PEER_AGENT },
	{ "ReportTask", RPC_UNARY, 0, h_report, RPC_PEER_AGENT },
};

static void fake_start(int port)
{
	char err[256], listen[64];
	char *ca = h_read_file(h_env("SLIPWAY_CA")), *crt = h_read_file(srv_crt),
	     *key = h_read_file(srv_key);
	snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
	struct rpc_server_opts o = { .service = "fake-orchestrator", .listen = listen, .ca_pem = ca,
				     .cert_pem = crt, .key_pem = key, .trust_domain = td,
				     .max_msg_bytes = 4 << 20, .cq_threads = 1, .workers = 8,
				     .max_queue = 64, .requests_per_method = 4 };
	assert_int_equal(rpc_server_new(&o, &srv, err, sizeof err), 0);
	assert_int_equal(rpc_server_add_service(srv, &slipway__v1__agent_control__descriptor, methods,
						4, NULL, err, sizeof err), 0);
	rpc_server_on_drain(srv, on_drain, NULL);
	pthread_mutex_lock(&F.mu);
	F.draining = 0;
	F.known = 0;
	F.registers = 0;
	F.heartbeats = 0;
	pthread_mutex_unlock(&F.mu);
	if (rpc_server_start(srv, &srv_port, err, sizeof err) != 0)
		fail_msg("fake orchestrator: %s", err);
	free(ca);
	free(crt);
	free(key);
}

static void fake_stop(void)
{
	rpc_server_shutdown(srv, 2000);
	rpc_server_free(srv);
	srv = NULL;
}

/* ---------------------------------------------------------------- helpers */

typedef int (*pred_fn)(const void *arg);

/* Waits (bounded, for failure detection only) until pred holds; F.mu held
 * while pred runs. */
static int wait_for(pred_fn pred, const void *arg)
{
	int64_t until = h_now_ms() + WAIT_MS;
	pthread_mutex_lock(&F.mu);
	int ok;
	while (!(ok = pred(arg)) && h_now_ms() < until) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 100 * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&F.cond, &F.mu, &ts);
	}
	pthread_mutex_unlock(&F.mu);
	return ok;
}

static int registered_n(const void *arg)
{
	return F.registers >= *(const int *)arg;
}

static int heartbeats_n(const void *arg)
{
	return F.heartbeats >= *(const int *)arg;
}

struct want_report {
	const char *task_id;
	uint64_t generation;
	int result;      /* 0 = any final result */
	int count;       /* at least this many such reports */
};

static int count_reports(const char *task_id, uint64_t gen, int result)
{
	int n = 0;
	for (int i = 0; i < F.nreports; i++) {
		const struct report *r = &F.reports[i];
		if (strcmp(r->task_id, task_id) != 0 || r->generation != gen)
			continue;
		if (result == 0 ? r->result != SLIPWAY__V1__TASK_RESULT__TASK_STARTED
				: r->result == result)
			n++;
	}
	return n;
}

static int have_report(const void *arg)
{
	const struct want_report *w = arg;
	return count_reports(w->task_id, w->generation, w->result) >= w->count;
}

/* The last report for (task, gen) with a final result; F.mu not held. */
static struct report last_final(const char *task_id, uint64_t gen)
{
	struct report out;
	memset(&out, 0, sizeof out);
	pthread_mutex_lock(&F.mu);
	for (int i = 0; i < F.nreports; i++) {
		const struct report *r = &F.reports[i];
		if (strcmp(r->task_id, task_id) == 0 && r->generation == gen &&
		    r->result != SLIPWAY__V1__TASK_RESULT__TASK_STARTED)
			out = *r;
	}
	pthread_mutex_unlock(&F.mu);
	return out;
}

static int reports_for(const char *task_id, uint64_t gen, int result)
{
	pthread_mutex_lock(&F.mu);
	int n = count_reports(task_id, gen, result);
	pthread_mutex_unlock(&F.mu);
	return n;
}

static void queue(const char *task_id, uint64_t gen, const char *app, const char *version,
		  const char *digest)
{
	pthread_mutex_lock(&F.mu);
	assert_true(F.nqueue < MAX_QUEUE);
	struct task_spec *t = &F.queue[F.nqueue++];
	memset(t, 0, sizeof *t);
	snprintf(t->task_id, sizeof t->task_id, "%s", task_id);
	t->generation = gen;
	t->kind = SLIPWAY__V1__TASK_KIND__TASK_DEPLOY;
	snprintf(t->app, sizeof t->app, "%s", app);
	snprintf(t->version, sizeof t->version, "%s", version);
	snprintf(t->digest, sizeof t->digest, "%s", digest);
	pthread_cond_broadcast(&F.cond);
	pthread_mutex_unlock(&F.mu);
}

/* Queues a task and waits for its final report (count-th of them). */
static struct report run_task(const char *task_id, uint64_t gen, const char *version,
			      const char *digest, int count)
{
	queue(task_id, gen, "web", version, digest);
	struct want_report w = { task_id, gen, 0, count };
	if (!wait_for(have_report, &w))
		fail_msg("no final report for %s (gen %llu)", task_id, (unsigned long long)gen);
	return last_final(task_id, gen);
}

/* Starts the agent binary; crash_at (or NULL) goes to its environment as
 * SLIPWAY_AGENT_CRASH_AT, orch (or NULL: the stand-in) is its
 * --orchestrator-addr. */
static void start_agent_with(const char *crash_at, const char *orch_addr)
{
	char orch[256], hook[96];
	snprintf(orch, sizeof orch, "127.0.0.1:%d", srv_port);
	if (orch_addr != NULL)
		snprintf(orch, sizeof orch, "%s", orch_addr);
	snprintf(hook, sizeof hook, "SLIPWAY_AGENT_CRASH_AT=%s", crash_at ? crash_at : "");
	char *argv[] = { "/usr/bin/env", hook,
			 "build/bin/slipway-agent",
			 "--orchestrator-addr", orch,
			 "--artifact-addr", (char *)h_env("SLIPWAY_ARTIFACT_ADDR"),
			 "--ca", (char *)h_env("SLIPWAY_CA"),
			 "--cert", ag_crt,
			 "--key", ag_key,
			 "--root", root,
			 "--label", "app=web",
			 "--label", "environment=prod",
			 "--labels", "region=it,group=a",
			 "--hostname", "proto-1",
			 "--heartbeat-interval", "1s",
			 "--poll-wait", "2s",
			 "--restart-backoff", "100ms",
			 "--pull-retry", "10s",
			 "--shutdown-grace", "20s",
			 NULL };
	assert_int_equal(h_start(&agent, argv, NULL, agent_log), 0);
}

static void start_agent(void)
{
	start_agent_with(NULL, NULL);
}

static int agent_exited(void)
{
	int st;
	return waitpid(agent.pid, &st, WNOHANG) == agent.pid;
}

static int app_pid(void)
{
	char p[700];
	snprintf(p, sizeof p, "%s/run/app.pid", root);
	return ah_read_pid(p);
}

static void app_serves(const char *version)
{
	char endpoint[64];
	pthread_mutex_lock(&F.mu);
	snprintf(endpoint, sizeof endpoint, "%s", F.hb_endpoint);
	pthread_mutex_unlock(&F.mu);
	const char *colon = strrchr(endpoint, ':');
	assert_non_null(colon);
	int status = 0;
	char *body = ah_http_get(atoi(colon + 1), "/", &status);
	assert_non_null(body);
	char want[64];
	snprintf(want, sizeof want, "\"version\":\"%s\"", version);
	if (strstr(body, want) == NULL)
		fail_msg("serving %s, want %s", body, version);
	free(body);
}

struct hb_want {
	const char *version;
	int process;
	uint64_t generation;
};

static int heartbeat_shows(const void *arg)
{
	const struct hb_want *w = arg;
	return strcmp(F.hb_version, w->version) == 0 && F.hb_process == w->process && F.hb_healthy &&
	       F.hb_generation == w->generation && F.hb_endpoint[0] != '\0';
}

/* ---------------------------------------------------------------- set-up */

static void issue(const char *name, const char *uri, int server, char *crt, char *key)
{
	char prefix[600];
	snprintf(prefix, sizeof prefix, "%s/%s", dir, name);
	h_issue(h_env("SLIPWAY_PKI_DIR"), prefix, uri, NULL, server);
	snprintf(crt, 700, "%s.crt", prefix);
	snprintf(key, 700, "%s.key", prefix);
}

static int setup(void **state)
{
	(void)state;
	char err[256], uri[256];
	snprintf(dir, sizeof dir, "%s", h_tmpdir("it_agent_proto"));
	if (pki_trust_domain(h_env("SLIPWAY_PKI_DIR"), td, sizeof td, err, sizeof err) != 0)
		return -1;
	snprintf(uri, sizeof uri, "spiffe://%s/service/orchestrator", td);
	issue("orchestrator", uri, 1, srv_crt, srv_key);
	snprintf(agent_id, sizeof agent_id, "spiffe://%s/agent/it/proto-1", td);
	issue("agent", agent_id, 0, ag_crt, ag_key);
	snprintf(root, sizeof root, "%s/root", dir);
	snprintf(agent_log, sizeof agent_log, "%s/agent.log", dir);
	if (ah_push("build/demo/web-1.0.0.tar.gz", "itproto-web", "1.0.0", d1, err, sizeof err) ||
	    ah_push("build/demo/web-2.0.0.tar.gz", "itproto-web", "2.0.0", d2, err, sizeof err) ||
	    ah_push("build/demo/web-3.0.0.tar.gz", "itproto-web", "3.0.0", d3, err, sizeof err)) {
		fprintf(stderr, "push: %s\n", err);
		return -1;
	}
	fake_start(0);
	start_agent();
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	int pid = app_pid();
	if (agent.pid > 0)
		h_stop(&agent, SIGTERM, 30000);
	ah_kill_group(pid);
	if (srv != NULL)
		fake_stop();
	return 0;
}

/* ---------------------------------------------------------------- tests */

static void test_register_and_heartbeat(void **state)
{
	(void)state;
	int one = 1, three = 3;
	assert_true(wait_for(registered_n, &one));
	pthread_mutex_lock(&F.mu);
	assert_string_equal(F.agent_id, agent_id);
	assert_non_null(strstr(F.labels, "app=web;"));
	assert_non_null(strstr(F.labels, "environment=prod;"));
	assert_non_null(strstr(F.labels, "region=it;"));
	assert_non_null(strstr(F.labels, "group=a;"));
	assert_int_equal(F.seal_key_len, 32);
	assert_string_equal(F.hostname, "proto-1");
	assert_string_equal(F.agent_version, SLIPWAY_VERSION);
	pthread_mutex_unlock(&F.mu);
	/* The interval comes from the answer (200 ms), not the flag (1 s). */
	assert_true(wait_for(heartbeats_n, &three));
	pthread_mutex_lock(&F.mu);
	assert_int_equal(F.hb_process, SLIPWAY__V1__PROCESS_STATE__PROCESS_NONE);
	assert_int_equal(F.hb_generation, 0);
	pthread_mutex_unlock(&F.mu);
	/* The seal key was created 0600 under the root, in keys/ (0700). */
	char p[700];
	snprintf(p, sizeof p, "%s/keys/seal.key", root);
	struct stat st;
	assert_int_equal(stat(p, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	snprintf(p, sizeof p, "%s/keys", root);
	assert_int_equal(stat(p, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0700);
}

static void test_deploy_is_reported(void **state)
{
	(void)state;
	struct report r = run_task("dep-a/proto-1/deploy", 10, "1.0.0", d1, 1);
	if (r.result != SLIPWAY__V1__TASK_RESULT__TASK_SUCCEEDED)
		fail_msg("v1: %s", r.message);
	assert_string_equal(r.version, "1.0.0");
	assert_string_equal(r.digest, d1);
	assert_int_equal(r.process, SLIPWAY__V1__PROCESS_STATE__PROCESS_RUNNING);
	assert_true(r.healthy);
	/* STARTED came first, once. */
	assert_int_equal(reports_for("dep-a/proto-1/deploy", 10, SLIPWAY__V1__TASK_RESULT__TASK_STARTED), 1);
	pthread_mutex_lock(&F.mu);
	int first_started = -1, first_final = -1;
	for (int i = 0; i < F.nreports; i++) {
		if (strcmp(F.reports[i].task_id, "dep-a/proto-1/deploy") != 0)
			continue;
		if (F.reports[i].result == SLIPWAY__V1__TASK_RESULT__TASK_STARTED && first_started < 0)
			first_started = i;
		if (F.reports[i].result == SLIPWAY__V1__TASK_RESULT__TASK_SUCCEEDED && first_final < 0)
			first_final = i;
	}
	pthread_mutex_unlock(&F.mu);
	assert_true(first_started >= 0 && first_started < first_final);
	struct hb_want w = { "1.0.0", SLIPWAY__V1__PROCESS_STATE__PROCESS_RUNNING, 10 };
	assert_true(wait_for(heartbeat_shows, &w));
	app_serves("1.0.0");
}

static void test_finished_task_is_reported_again_not_redone(void **state)
{
	(void)state;
	int pid = app_pid();
	struct report r = run_task("dep-a/proto-1/deploy", 10, "1.0.0", d1, 2);
	assert_int_equal(r.result, SLIPWAY__V1__TASK_RESULT__TASK_SUCCEEDED);
	/* No second STARTED: it was not run again. */
	assert_int_equal(reports_for("dep-a/proto-1/deploy", 10, SLIPWAY__V1__TASK_RESULT__TASK_STARTED), 1);
	assert_int_equal(app_pid(), pid);
}

static void test_stale_generation_is_ignored(void **state)
{
	(void)state;
	/* One poll answer: a stale task (generation 5 < 10), then a new one. */
	queue("dep-old/proto-1/deploy", 5, "web", "2.0.0", d2);
	struct report r = run_task("dep-b/proto-1/deploy", 11, "3.0.0", d3, 1);
	assert_int_equal(r.result, SLIPWAY__V1__TASK_RESULT__TASK_FAILED);
	assert_non_null(strstr(r.message, "health check"));
	assert_int_equal(reports_for("dep-old/proto-1/deploy", 5, 0), 0);
	assert_int_equal(reports_for("dep-old/proto-1/deploy", 5, SLIPWAY__V1__TASK_RESULT__TASK_STARTED), 0);
	pthread_mutex_lock(&F.mu);
	F.nqueue = 0; /* the stale task is never reported on: stop offering it */
	pthread_mutex_unlock(&F.mu);
	/* v3 failed its health check: v1 still serves. */
	assert_string_equal(r.version, "1.0.0");
	app_serves("1.0.0");
}

static void test_bad_task_fails_with_a_reason(void **state)
{
	(void)state;
	queue("dep-c/proto-1/deploy", 12, "api", "2.0.0", d2);
	struct want_report w = { "dep-c/proto-1/deploy", 12, 0, 1 };
	assert_true(wait_for(have_report, &w));
	struct report r = last_final("dep-c/proto-1/deploy", 12);
	assert_int_equal(r.result, SLIPWAY__V1__TASK_RESULT__TASK_FAILED);
	assert_non_null(strstr(r.message, "app api"));
}

static void test_superseded_stops_the_task(void **state)
{
	(void)state;
	pthread_mutex_lock(&F.mu);
	F.supersede_gen = 13;
	pthread_mutex_unlock(&F.mu);
	queue("dep-d/proto-1/deploy", 13, "web", "2.0.0", d2);
	struct want_report w = { "dep-d/proto-1/deploy", 13, SLIPWAY__V1__TASK_RESULT__TASK_STARTED, 1 };
	assert_true(wait_for(have_report, &w));
	/* The next task: v1 is still what runs, so it is already done. */
	struct report r = run_task("dep-e/proto-1/deploy", 14, "1.0.0", d1, 1);
	assert_int_equal(r.result, SLIPWAY__V1__TASK_RESULT__TASK_SUCCEEDED);
	assert_non_null(strstr(r.message, "already running"));
	assert_int_equal(reports_for("dep-d/proto-1/deploy", 13, 0), 0);
	pthread_mutex_lock(&F.mu);
	F.supersede_gen = 0;
	pthread_mutex_unlock(&F.mu);
}

static void test_reregister(void **state)
{
	(void)state;
	pthread_mutex_lock(&F.mu);
	int n = F.registers + 1;
	F.reregister_next = 1;
	pthread_mutex_unlock(&F.mu);
	assert_true(wait_for(registered_n, &n));
}

static void test_orchestrator_down_and_back(void **state)
{
	(void)state;
	int port = srv_port;
	fake_stop();
	/* The agent keeps trying and never exits on a transient error. */
	h_sleep_ms(3000);
	assert_false(agent_exited());
	fake_start(port);
	assert_int_equal(srv_port, port);
	int one = 1;
	assert_true(wait_for(registered_n, &one)); /* told to reregister by the new instance */
	struct report r = run_task("dep-f/proto-1/deploy", 15, "2.0.0", d2, 1);
	if (r.result != SLIPWAY__V1__TASK_RESULT__TASK_SUCCEEDED)
		fail_msg("v2: %s", r.message);
	struct hb_want w = { "2.0.0", SLIPWAY__V1__PROCESS_STATE__PROCESS_RUNNING, 15 };
	assert_true(wait_for(heartbeat_shows, &w));
	app_serves("2.0.0");
}

static void test_sigterm_leaves_the_app_running(void **state)
{
	(void)state;
	int pid = app_pid();
	assert_true(ah_pid_alive(pid));
	assert_int_equal(h_stop(&agent, SIGTERM, 30000), 0);
	assert_true(ah_pid_alive(pid));
	app_serves("2.0.0");
	/* The next agent adopts it: same process, reported running. */
	pthread_mutex_lock(&F.mu);
	int n = F.registers + 1;
	F.hb_version[0] = '\0';
	pthread_mutex_unlock(&F.mu);
	start_agent();
	assert_true(wait_for(registered_n, &n));
	struct hb_want w = { "2.0.0", SLIPWAY__V1__PROCESS_STATE__PROCESS_RUNNING, 15 };
	assert_true(wait_for(heartbeat_shows, &w));
	assert_int_equal(app_pid(), pid);
	assert_true(h_grep_count(agent_log, "adopted the running release") >= 1);
}

static void test_kill9_mid_task_then_redelivery(void **state)
{
	(void)state;
	int pid = app_pid();
	/* v3's health check takes seconds to fail: kill the agent during it. */
	queue("dep-g/proto-1/deploy", 16, "web", "3.0.0", d3);
	struct want_report w = { "dep-g/proto-1/deploy", 16, SLIPWAY__V1__TASK_RESULT__TASK_STARTED, 1 };
	assert_true(wait_for(have_report, &w));
	char cand[700];
	snprintf(cand, sizeof cand, "%s/run/candidate.json", root);
	char *cj = NULL;
	for (int i = 0; i < 200 && (cj = h_read_file(cand)) == NULL; i++)
		h_sleep_ms(25);
	assert_non_null(cj);
	int cpid = atoi(strstr(cj, "\"pid\":") + 6);
	free(cj);
	assert_true(ah_pid_alive(cpid));
	assert_int_equal(h_stop(&agent, SIGKILL, 10000), 128 + SIGKILL);
	/* Restarted, the agent stops the half-checked process ... */
	pthread_mutex_lock(&F.mu);
	int n = F.registers + 1;
	pthread_mutex_unlock(&F.mu);
	start_agent();
	assert_true(wait_for(registered_n, &n));
	for (int i = 0; i < 400 && ah_pid_alive(cpid); i++)
		h_sleep_ms(25);
	assert_false(ah_pid_alive(cpid));
	/* ... and, given the task again, finishes it (no result was recorded). */
	struct report r = run_task("dep-g/proto-1/deploy", 16, "3.0.0", d3, 1);
	assert_int_equal(r.result, SLIPWAY__V1__TASK_RESULT__TASK_FAILED);
	assert_non_null(strstr(r.message, "health check"));
	assert_int_equal(reports_for("dep-g/proto-1/deploy", 16, SLIPWAY__V1__TASK_RESULT__TASK_STARTED), 2);
	assert_int_equal(app_pid(), pid);
	app_serves("2.0.0");
}

/* Counts the live processes whose argv[0] is a program under this agent's
 * releases/ (whatever the agent thinks it runs): the release hex of the
 * last one goes to hex (65 bytes), its pid to *pid. */
static int release_processes(char *hex, int *pid)
{
	char prefix[700];
	snprintf(prefix, sizeof prefix, "%s/releases/", root);
	size_t plen = strlen(prefix);
	DIR *d = opendir("/proc");
	assert_non_null(d);
	struct dirent *de;
	int n = 0;
	hex[0] = '\0';
	*pid = 0;
	while ((de = readdir(d)) != NULL) {
		char *end = NULL;
		long p = strtol(de->d_name, &end, 10);
		if (end == de->d_name || *end != '\0' || p <= 0 || !ah_pid_alive((int)p))
			continue;
		char path[64], cmd[2048];
		snprintf(path, sizeof path, "/proc/%ld/cmdline", p);
		FILE *f = fopen(path, "r");
		if (f == NULL)
			continue;
		size_t got = fread(cmd, 1, sizeof cmd - 1, f);
		fclose(f);
		cmd[got] = '\0';
		if (strncmp(cmd, prefix, plen) != 0)
			continue;
		n++;
		snprintf(hex, 65, "%.64s", cmd + plen);
		*pid = (int)p;
	}
	closedir(d);
	return n;
}

/* Exactly one process of the release with digest `digest` runs, it is the
 * one the agent supervises (run/app.pid) and it serves `version`. Checked
 * twice, a while apart, so that a second copy the supervisor starts late
 * is seen too. */
static void exactly_one(const char *version, const char *digest)
{
	for (int round = 0; round < 2; round++) {
		h_sleep_ms(1500);
		char hex[65];
		int pid = 0, n = release_processes(hex, &pid);
		if (n != 1)
			fail_msg("%d processes of releases under %s run, want 1", n, root);
		assert_string_equal(hex, digest + 7);
		assert_int_equal(pid, app_pid());
		app_serves(version);
	}
}

/* Fault 7 of issue 11, and the other crash windows of a deploy: the agent
 * killed (-9) after the new process started but before it was recorded,
 * after `current` was switched but before the new process was recorded,
 * after it was recorded but before the old one was stopped, and after the
 * task finished but before its result was recorded. Restarted, the agent
 * must run exactly one copy of the intended release, and finish the task
 * when it is delivered again. */
static void test_crash_windows_leave_exactly_one_process(void **state)
{
	(void)state;
	static const char *const points[] = { "after-spawn", "after-switch", "after-record",
					      "before-result" };
	uint64_t gen = 100;
	int v1 = 0; /* v2 runs now (test_kill9_mid_task_then_redelivery) */
	for (size_t i = 0; i < sizeof points / sizeof points[0]; i++, gen++) {
		v1 = !v1;
		const char *version = v1 ? "1.0.0" : "2.0.0", *digest = v1 ? d1 : d2;
		char task_id[64], needle[64];
		snprintf(task_id, sizeof task_id, "dep-crash-%llu/proto-1/deploy",
			 (unsigned long long)gen);
		assert_int_equal(h_stop(&agent, SIGTERM, 30000), 0);
		pthread_mutex_lock(&F.mu);
		int n = F.registers + 1;
		pthread_mutex_unlock(&F.mu);
		start_agent_with(points[i], NULL);
		assert_true(wait_for(registered_n, &n));
		queue(task_id, gen, "web", version, digest);
		if (h_wait(&agent, WAIT_MS) != 128 + SIGKILL)
			fail_msg("the agent did not stop itself at %s", points[i]);
		snprintf(needle, sizeof needle, "crash_at=%s", points[i]);
		assert_true(h_grep_count(agent_log, needle) >= 1);

		pthread_mutex_lock(&F.mu);
		n = F.registers + 1;
		pthread_mutex_unlock(&F.mu);
		start_agent();
		assert_true(wait_for(registered_n, &n));
		/* The orchestrator delivers the task again (the stand-in stopped
		 * offering it at the STARTED report). */
		queue(task_id, gen, "web", version, digest);
		struct want_report w = { task_id, gen, 0, 1 };
		if (!wait_for(have_report, &w))
			fail_msg("%s: no final report after the restart", points[i]);
		struct report r = last_final(task_id, gen);
		if (r.result != SLIPWAY__V1__TASK_RESULT__TASK_SUCCEEDED)
			fail_msg("%s: %s", points[i], r.message);
		struct hb_want hw = { version, SLIPWAY__V1__PROCESS_STATE__PROCESS_RUNNING, gen };
		assert_true(wait_for(heartbeat_shows, &hw));
		exactly_one(version, digest);
	}
}

/* A supervisor restart (the application crashed) interrupted between
 * starting the process and recording it. */
static void test_crash_during_a_restart_leaves_exactly_one_process(void **state)
{
	(void)state;
	/* test_crash_windows_... ended on v2 */
	assert_int_equal(h_stop(&agent, SIGTERM, 30000), 0);
	pthread_mutex_lock(&F.mu);
	int n = F.registers + 1;
	pthread_mutex_unlock(&F.mu);
	start_agent_with("after-restart-spawn", NULL);
	assert_true(wait_for(registered_n, &n));
	int pid = app_pid();
	assert_true(ah_pid_alive(pid));
	kill(pid, SIGKILL);
	if (h_wait(&agent, WAIT_MS) != 128 + SIGKILL)
		fail_msg("the agent did not stop itself at after-restart-spawn");
	pthread_mutex_lock(&F.mu);
	n = F.registers + 1;
	pthread_mutex_unlock(&F.mu);
	start_agent();
	assert_true(wait_for(registered_n, &n));
	exactly_one("2.0.0", d2);
}

/* Another replica of the stand-in, in its own process so that it can be
 * frozen with SIGSTOP: `it_agent_proto --fake-replica CRT KEY PORT_FILE`. */
static int fake_replica_main(char **argv)
{
	char err[256];
	snprintf(srv_crt, sizeof srv_crt, "%s", argv[2]);
	snprintf(srv_key, sizeof srv_key, "%s", argv[3]);
	if (pki_trust_domain(h_env("SLIPWAY_PKI_DIR"), td, sizeof td, err, sizeof err) != 0)
		return 1;
	rpc_init();
	fake_start(0);
	char num[32];
	int n = snprintf(num, sizeof num, "%d\n", srv_port);
	FILE *f = fopen(argv[4], "w");
	if (f == NULL || fwrite(num, 1, (size_t)n, f) != (size_t)n || fclose(f) != 0)
		return 1;
	for (;;)
		pause(); /* until SIGKILL */
}

/* Fault 5 of issue 11, the agent's side: the replica the agent talks to is
 * frozen (SIGSTOP) while another one runs. The agent, given both
 * addresses, moves to the survivor within about a heartbeat interval,
 * registers there when told it is unknown, keeps heartbeating and takes
 * tasks from it. */
static void test_frozen_replica_failover(void **state)
{
	(void)state;
	char pf[700], rlog[700], exe[700], addrs[128];
	struct h_proc rep;
	snprintf(pf, sizeof pf, "%s/replica.port", dir);
	snprintf(rlog, sizeof rlog, "%s/replica.log", dir);
	ssize_t el = readlink("/proc/self/exe", exe, sizeof exe - 1);
	assert_true(el > 0);
	exe[el] = '\0';
	char *rargv[] = { exe, "--fake-replica", srv_crt, srv_key, pf, NULL };
	assert_int_equal(h_start(&rep, rargv, pf, rlog), 0);

	assert_int_equal(h_stop(&agent, SIGTERM, 30000), 0);
	snprintf(addrs, sizeof addrs, "127.0.0.1:%d,127.0.0.1:%d", rep.port, srv_port);
	pthread_mutex_lock(&F.mu);
	F.known = 0; /* the survivor does not know the agent: it must register */
	int r0 = F.registers;
	pthread_mutex_unlock(&F.mu);
	start_agent_with(NULL, addrs);
	/* The first address answers: nothing reaches the second one. */
	int regs = h_grep_count(agent_log, "registered with the orchestrator");
	for (int i = 0; i < 400 && h_grep_count(agent_log, "registered with the orchestrator") == regs;
	     i++)
		h_sleep_ms(25);
	h_sleep_ms(1000);
	pthread_mutex_lock(&F.mu);
	assert_int_equal(F.registers, r0);
	int h0 = F.heartbeats;
	pthread_mutex_unlock(&F.mu);

	assert_int_equal(kill(rep.pid, SIGSTOP), 0);
	long long t0 = h_now_ms();
	int want = r0 + 1;
	assert_true(wait_for(registered_n, &want));
	want = h0 + 1;
	assert_true(wait_for(heartbeats_n, &want));
	long long gap = h_now_ms() - t0;
	/* Interval 200 ms (the stand-in's answer), heartbeat deadline 1 s:
	 * the survivor hears from the agent well within 4 s. */
	if (gap > 4000)
		fail_msg("no heartbeat reached the survivor for %lld ms after the freeze", gap);
	pthread_mutex_lock(&F.mu);
	h0 = F.heartbeats;
	pthread_mutex_unlock(&F.mu);
	h_sleep_ms(2000);
	pthread_mutex_lock(&F.mu);
	int beats = F.heartbeats - h0;
	pthread_mutex_unlock(&F.mu);
	if (beats < 5)
		fail_msg("%d heartbeats in 2 s at a 200 ms interval", beats);
	/* Tasks come from the survivor too (v2 runs: done at once). */
	struct report r = run_task("dep-fo/proto-1/deploy", 200, "2.0.0", d2, 1);
	if (r.result != SLIPWAY__V1__TASK_RESULT__TASK_SUCCEEDED)
		fail_msg("after the failover: %s", r.message);
	assert_true(h_grep_count(agent_log, "moving to the next one") >= 1);

	kill(rep.pid, SIGKILL);
	kill(rep.pid, SIGCONT);
	assert_int_equal(h_wait(&rep, 10000), 128 + SIGKILL);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_register_and_heartbeat),
		cmocka_unit_test(test_deploy_is_reported),
		cmocka_unit_test(test_finished_task_is_reported_again_not_redone),
		cmocka_unit_test(test_stale_generation_is_ignored),
		cmocka_unit_test(test_bad_task_fails_with_a_reason),
		cmocka_unit_test(test_superseded_stops_the_task),
		cmocka_unit_test(test_reregister),
		cmocka_unit_test(test_orchestrator_down_and_back),
		cmocka_unit_test(test_sigterm_leaves_the_app_running),
		cmocka_unit_test(test_kill9_mid_task_then_redelivery),
		cmocka_unit_test(test_crash_windows_leave_exactly_one_process),
		cmocka_unit_test(test_crash_during_a_restart_leaves_exactly_one_process),
		cmocka_unit_test(test_frozen_replica_failover),
	};
	if (argc == 5 && strcmp(argv[1], "--fake-replica") == 0)
		return fake_replica_main(argv);
	if (getenv("SLIPWAY_ARTIFACT_ADDR") == NULL) {
		fprintf(stderr, "it_agent_proto: the stack must run the artifact and secrets services\n");
		return 1;
	}
	signal(SIGPIPE, SIG_IGN);
	rpc_init();
	int rc = cmocka_run_group_tests(tests, setup, teardown);
	ah_wait_outbox_drained(30000);
	rpc_shutdown();
	return rc;
}
