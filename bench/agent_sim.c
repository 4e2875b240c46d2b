/*
 * agent_sim.c - many simulated agents speaking the AgentControl protocol
 * (proto/slipway/v1/orchestrator.proto) for `bench/run orchestrator`.
 * Benchmarks only.
 *
 * Every simulated agent has its own certificate (issued in-process with
 * lib/pki from the stack's CA, since identity comes from mTLS) and so its
 * own channel and TCP connection. One thread drives them all with the gRPC
 * C core async API on one completion queue. An agent registers (labels
 * app, environment, region=r1; a random X25519 key), holds a PollTasks long
 * poll, answers a task at once with ReportTask STARTED then SUCCEEDED
 * ("instant health"), and heartbeats at the interval the orchestrator
 * gives, with a runtime like the real agent's.
 *
 * Commands on stdin, one per line; answers on stdout, one JSON object per
 * line, each with an "event" field. Times come from one clock
 * (CLOCK_MONOTONIC in this process).
 *
 *   grow N APP ENV    start agents until N exist (new ones get these
 *                     labels); answers "grow" when all are registered
 *   measure SECONDS   counts heartbeats completed in the window and the CPU
 *                     used by --orch-pid (and --pg-pid with its children,
 *                     and this process) from /proc/<pid>/stat
 *   fail VERSION I    agent I answers a deploy task of VERSION with FAILED;
 *                     answers "armed", then "rollback" once every agent
 *                     that received a deploy task of that deployment has
 *                     received its rollback task (times from the FAILED
 *                     report being sent); meanwhile an agent that has its
 *                     rollback task holds its answers (see hold())
 *   stop I            agent I stops heartbeating (and polling) from its
 *                     next beat on, then probes PollTasks every 20 ms until
 *                     the orchestrator refuses it as not registered; answers
 *                     "lost" with the time from the stop and from its last
 *                     heartbeat, in ms and in heartbeat intervals
 *   quit
 *
 * With --echo the agents call /slipway.test.v1.Echo/Say instead (no
 * registration or polls) at the same rate: the rpc echo baseline with the
 * same shape of load.
 *
 *   bench-agent_sim --target A --ca F --pki-dir D --cert-dir D
 *                   [--orch-pid P] [--pg-pid P] [--poll-wait-ms MS]
 *                   [--interval-ms MS] [--echo]
 */
#include "cfg.h"
#include "pki.h"
#include "rpc.h"
#include "tls.h"

#include "slipway/v1/enrollment.pb-c.h"
#include "slipway/v1/orchestrator.pb-c.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_AGENTS 20000
#define REG_WINDOW 64          /* registrations in flight while growing */
#define STARTS_PER_ROUND 16    /* new agents (certificate, channel) per loop round */
#define PROBE_MS 20
#define CALL_TIMEOUT_MS 30000
#define LAT_CAP (1u << 22)
#define ROLLBACK_TIMEOUT_S 60

enum kind { K_REG, K_HB, K_POLL, K_REP, K_PROBE };
enum tkind { T_HB, T_REG, T_POLL, T_REP, T_PROBE, T_TASK };

struct call {
	int kind;
	struct agent *a;
	grpc_call *call;
	grpc_metadata_array init_md, trail_md;
	grpc_byte_buffer *send, *recv;
	grpc_status_code status;
	grpc_slice details;
	int64_t start_ns;
	int busy;
	char why[160];
};

struct task {
	char id[512];
	char dep[64];
	char version[136];
	char digest[80];
	uint64_t gen;
	int kind;
};

struct agent {
	int idx;
	char host[16];
	char app[64], env[64];
	grpc_channel *ch;
	int registered, stopped, lost_reported;
	int64_t hb_due_ns, last_hb_ns, stop_ns;
	uint64_t highest;
	char version[136], digest[80];
	uint8_t seal[32];
	struct call reg, hb, poll, rep, probe;
	struct task cur, next;
	int have_cur, have_next, rep_final, rep_failed;
};

struct timer {
	int64_t due;
	int idx;
	int kind;
};

static const char *target, *pki_dir, *cert_dir;
static char *ca_pem, trust_domain[128];

/* Agents register only inside an enrollment: each new one is enrolled
 * first, as the stack's admin (SLIPWAY_POLICY_ADDR, SLIPWAY_CERT and
 * SLIPWAY_KEY), before its channel opens. */
static void enroll(const char *uri, const char *app, const char *env)
{
	static struct rpc_client *policy;
	char err[512];
	if (policy == NULL) {
		char *cert = NULL, *key = NULL;
		const char *addr = getenv("SLIPWAY_POLICY_ADDR"), *cp = getenv("SLIPWAY_CERT"),
			   *kp = getenv("SLIPWAY_KEY");
		if (addr == NULL || cp == NULL || kp == NULL ||
		    tls_read_pem(cp, &cert, err, sizeof err) != 0 ||
		    tls_read_pem(kp, &key, err, sizeof err) != 0) {
			fprintf(stderr, "agent_sim: enrolling needs SLIPWAY_POLICY_ADDR, SLIPWAY_CERT "
					"and SLIPWAY_KEY (an admin's)\n");
			exit(1);
		}
		struct rpc_client_opts o = { .target = addr, .ca_pem = ca_pem, .cert_pem = cert,
					     .key_pem = key, .server_service = "policy" };
		int rc = rpc_client_new(&o, &policy, err, sizeof err);
		free(cert);
		free(key);
		if (rc != 0) {
			fprintf(stderr, "agent_sim: %s\n", err);
			exit(1);
		}
	}
	Slipway__V1__EnrollAgentRequest req = SLIPWAY__V1__ENROLL_AGENT_REQUEST__INIT;
	req.agent_id = (char *)uri;
	req.app = (char *)app;
	req.environment = (char *)env;
	ProtobufCMessage *m = NULL;
	struct rpc_call_opts co = { .timeout_ms = 10000 };
	if (rpc_call(policy, &slipway__v1__enrollments__descriptor, "EnrollAgent", &req.base, &m,
		     &co, err, sizeof err) != 0) {
		fprintf(stderr, "agent_sim: enroll %s: %s\n", uri, err);
		exit(1);
	}
	protobuf_c_message_free_unpacked(m, NULL);
}
static int orch_pid, pg_pid, echo_mode;
static long long poll_wait_ms = 25000, interval_ms = 1000;
static grpc_completion_queue *cq;
static grpc_slice m_reg, m_hb, m_poll, m_rep, m_say;

static struct agent *agents;
static int nstarted, nreg, reg_inflight;

/* growing */
static int grow_target, grow_active;
static char grow_app[64], grow_env[64];
static int64_t grow_start_ns;
static long long grow_errors;

/* the heartbeat window */
static int meas_active;
static int64_t meas_start_ns, meas_end_ns;
static long long meas_orch0, meas_pg0;
static double meas_self0;
static long long hb_ok, hb_err, hb_skipped, rereg;
static int64_t *lat;
static size_t nlat;

/* the rollback tracker */
static struct {
	int armed, done;
	char version[136];
	int fail_idx;
	char dep[64];
	int64_t fail_ns;
	uint8_t *touched;
	int64_t *rb_ns;
	int ntouched, nrb;
} rb;

static long long report_errors, tasks_received;
/* While a rollback dispatch is measured, the answers of the agents that
 * already have their rollback task wait here (see rollback_check). */
static struct timer *held;
static size_t nheld, capheld;
static long long inflight; /* calls started and not yet ended */

/* timers: a binary heap */
static struct timer *heap;
static size_t nheap, capheap;

/* commands from the reader thread */
static pthread_mutex_t cmd_mu = PTHREAD_MUTEX_INITIALIZER;
static char cmd_buf[64][256];
static int cmd_head, cmd_tail, stdin_eof;

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static double ms_of(int64_t ns)
{
	return (double)ns / 1e6;
}

static void emit(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void emit(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
}

/* ---------------------------------------------------------------- timers */

static void timer_add(int64_t due, int idx, int kind)
{
	if (nheap == capheap) {
		capheap = capheap ? capheap * 2 : 4096;
		heap = realloc(heap, capheap * sizeof *heap);
		if (heap == NULL) {
			fprintf(stderr, "agent_sim: out of memory\n");
			exit(1);
		}
	}
	size_t i = nheap++;
	heap[i] = (struct timer){ due, idx, kind };
	while (i > 0) {
		size_t p = (i - 1) / 2;
		if (heap[p].due <= heap[i].due)
			break;
		struct timer t = heap[p];
		heap[p] = heap[i];
		heap[i] = t;
		i = p;
	}
}

static struct timer timer_pop(void)
{
	struct timer top = heap[0];
	heap[0] = heap[--nheap];
	size_t i = 0;
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, m = i;
		if (l < nheap && heap[l].due < heap[m].due)
			m = l;
		if (r < nheap && heap[r].due < heap[m].due)
			m = r;
		if (m == i)
			break;
		struct timer t = heap[m];
		heap[m] = heap[i];
		heap[i] = t;
		i = m;
	}
	return top;
}

/* ---------------------------------------------------------------- /proc */

/* utime + stime of pid in clock ticks, and its parent in *ppid; -1 when gone. */
static long long proc_ticks(int pid, int *ppid)
{
	char path[64], buf[1024];
	snprintf(path, sizeof path, "/proc/%d/stat", pid);
	FILE *f = fopen(path, "r");
	if (f == NULL)
		return -1;
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = '\0';
	char *p = strrchr(buf, ')');
	unsigned long long ut = 0, st = 0;
	int pp = 0;
	if (p == NULL ||
	    sscanf(p + 2, "%*c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &pp, &ut, &st) != 3)
		return -1;
	if (ppid != NULL)
		*ppid = pp;
	return (long long)(ut + st);
}

/* A process and its children (PostgreSQL: the postmaster and its backends). */
static long long tree_ticks(int pid)
{
	if (pid <= 0)
		return 0;
	long long sum = proc_ticks(pid, NULL);
	if (sum < 0)
		sum = 0;
	DIR *d = opendir("/proc");
	struct dirent *e;
	while (d != NULL && (e = readdir(d)) != NULL) {
		long long p = 0;
		if (cfg_parse_ll(e->d_name, &p) != 0 || p <= 0 || p > 1 << 30)
			continue;
		int pp = 0;
		long long t = proc_ticks((int)p, &pp);
		if (t > 0 && pp == pid)
			sum += t;
	}
	if (d != NULL)
		closedir(d);
	return sum;
}

static double self_cpu_s(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
	       (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* ---------------------------------------------------------------- calls */

static void call_start(struct call *c, grpc_slice method, const ProtobufCMessage *m,
		       const uint8_t *raw, size_t rawlen, int64_t timeout_ms)
{
	struct agent *a = c->a;
	size_t len = m != NULL ? protobuf_c_message_get_packed_size(m) : rawlen;
	grpc_slice s = grpc_slice_malloc(len);
	if (m != NULL)
		protobuf_c_message_pack(m, GRPC_SLICE_START_PTR(s));
	else if (len > 0)
		memcpy(GRPC_SLICE_START_PTR(s), raw, len);
	c->send = grpc_raw_byte_buffer_create(&s, 1);
	grpc_slice_unref(s);
	c->recv = NULL;
	c->status = GRPC_STATUS_OK;
	c->details = grpc_empty_slice();
	grpc_metadata_array_init(&c->init_md);
	grpc_metadata_array_init(&c->trail_md);
	c->start_ns = now_ns();
	gpr_timespec dl = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
				       gpr_time_from_millis(timeout_ms, GPR_TIMESPAN));
	c->call = grpc_channel_create_call(a->ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq, method, NULL, dl,
					   NULL);
	grpc_op ops[6];
	memset(ops, 0, sizeof ops);
	ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
	ops[0].flags = GRPC_INITIAL_METADATA_WAIT_FOR_READY;
	ops[1].op = GRPC_OP_SEND_MESSAGE;
	ops[1].data.send_message.send_message = c->send;
	ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
	ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
	ops[3].data.recv_initial_metadata.recv_initial_metadata = &c->init_md;
	ops[4].op = GRPC_OP_RECV_MESSAGE;
	ops[4].data.recv_message.recv_message = &c->recv;
	ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
	ops[5].data.recv_status_on_client.trailing_metadata = &c->trail_md;
	ops[5].data.recv_status_on_client.status = &c->status;
	ops[5].data.recv_status_on_client.status_details = &c->details;
	if (c->call == NULL || grpc_call_start_batch(c->call, ops, 6, c, NULL) != GRPC_CALL_OK) {
		fprintf(stderr, "agent_sim: cannot start a call\n");
		exit(1);
	}
	c->busy = 1;
	inflight++;
}

/* Ends a completed call; returns its unpacked answer (NULL on error or
 * when d is NULL; c->status and c->why tell why). */
static ProtobufCMessage *call_end(struct call *c, const ProtobufCMessageDescriptor *d)
{
	ProtobufCMessage *m = NULL;
	c->why[0] = '\0';
	if (c->status == GRPC_STATUS_OK && c->recv != NULL && d != NULL) {
		grpc_byte_buffer_reader r;
		if (grpc_byte_buffer_reader_init(&r, c->recv)) {
			grpc_slice s = grpc_byte_buffer_reader_readall(&r);
			grpc_byte_buffer_reader_destroy(&r);
			m = protobuf_c_message_unpack(d, NULL, GRPC_SLICE_LENGTH(s), GRPC_SLICE_START_PTR(s));
			grpc_slice_unref(s);
		}
		if (m == NULL) {
			c->status = GRPC_STATUS_INTERNAL;
			snprintf(c->why, sizeof c->why, "undecodable answer");
		}
	} else if (c->status != GRPC_STATUS_OK) {
		snprintf(c->why, sizeof c->why, "%.*s", (int)GRPC_SLICE_LENGTH(c->details),
			 (const char *)GRPC_SLICE_START_PTR(c->details));
	}
	grpc_byte_buffer_destroy(c->send);
	if (c->recv != NULL)
		grpc_byte_buffer_destroy(c->recv);
	grpc_slice_unref(c->details);
	grpc_metadata_array_destroy(&c->init_md);
	grpc_metadata_array_destroy(&c->trail_md);
	grpc_call_unref(c->call);
	c->call = NULL;
	c->send = c->recv = NULL;
	c->busy = 0;
	inflight--;
	return m;
}

/* ---------------------------------------------------------------- agents */

static void fill_runtime(struct agent *a, Slipway__V1__AgentRuntime *rt)
{
	slipway__v1__agent_runtime__init(rt);
	rt->app = a->app;
	rt->version = a->version;
	rt->digest = a->digest;
	rt->process = a->digest[0] ? SLIPWAY__V1__PROCESS_STATE__PROCESS_RUNNING
				   : SLIPWAY__V1__PROCESS_STATE__PROCESS_NONE;
	rt->healthy = a->digest[0] != '\0';
	rt->health_detail = a->digest[0] ? "http 200" : "";
	rt->health_checked_unix_ms = (int64_t)time(NULL) * 1000;
	rt->endpoint = a->digest[0] ? "127.0.0.1:8080" : "";
}

static const uint8_t say_req[] = { 0x0a, 0x05, 'h', 'e', 'l', 'l', 'o' };

static void send_register(struct agent *a)
{
	if (a->reg.busy)
		return;
	if (echo_mode) { /* the first echo call stands for the registration */
		call_start(&a->reg, m_say, NULL, say_req, sizeof say_req, CALL_TIMEOUT_MS);
		return;
	}
	Slipway__V1__RegisterRequest req = SLIPWAY__V1__REGISTER_REQUEST__INIT;
	Slipway__V1__KeyValue kv[3], *kvp[3];
	const char *k[3] = { "app", "environment", "region" }, *v[3] = { a->app, a->env, "r1" };
	for (int i = 0; i < 3; i++) {
		slipway__v1__key_value__init(&kv[i]);
		kv[i].key = (char *)k[i];
		kv[i].value = (char *)v[i];
		kvp[i] = &kv[i];
	}
	Slipway__V1__AgentRuntime rt;
	fill_runtime(a, &rt);
	req.n_labels = 3;
	req.labels = kvp;
	req.seal_public_key.data = a->seal;
	req.seal_public_key.len = sizeof a->seal;
	req.hostname = a->host;
	req.agent_version = "bench-sim";
	req.runtime = &rt;
	call_start(&a->reg, m_reg, &req.base, NULL, 0, CALL_TIMEOUT_MS);
}

static void send_heartbeat(struct agent *a)
{
	if (echo_mode) {
		call_start(&a->hb, m_say, NULL, say_req, sizeof say_req, CALL_TIMEOUT_MS);
		return;
	}
	Slipway__V1__HeartbeatRequest req = SLIPWAY__V1__HEARTBEAT_REQUEST__INIT;
	Slipway__V1__AgentRuntime rt;
	fill_runtime(a, &rt);
	req.runtime = &rt;
	req.highest_generation = a->highest;
	call_start(&a->hb, m_hb, &req.base, NULL, 0, CALL_TIMEOUT_MS);
}

static void send_poll(struct agent *a, struct call *c, int64_t wait)
{
	Slipway__V1__PollTasksRequest req = SLIPWAY__V1__POLL_TASKS_REQUEST__INIT;
	req.wait_ms = wait;
	req.highest_generation = a->highest;
	call_start(c, m_poll, &req.base, NULL, 0, wait + 5000);
}

static void send_report(struct agent *a)
{
	Slipway__V1__TaskReport rep = SLIPWAY__V1__TASK_REPORT__INIT;
	Slipway__V1__AgentRuntime rt;
	fill_runtime(a, &rt);
	rep.task_id = a->cur.id;
	rep.generation = a->cur.gen;
	rep.runtime = &rt;
	if (!a->rep_final) {
		rep.result = SLIPWAY__V1__TASK_RESULT__TASK_STARTED;
	} else if (a->rep_failed) {
		rep.result = SLIPWAY__V1__TASK_RESULT__TASK_FAILED;
		rep.message = "health check failed (simulated)";
		if (rb.armed && rb.fail_ns == 0)
			rb.fail_ns = now_ns();
	} else {
		rep.result = SLIPWAY__V1__TASK_RESULT__TASK_SUCCEEDED;
		rt.version = a->cur.version;
		rt.digest = a->cur.digest;
		rt.process = SLIPWAY__V1__PROCESS_STATE__PROCESS_RUNNING;
		rt.healthy = 1;
	}
	call_start(&a->rep, m_rep, &rep.base, NULL, 0, CALL_TIMEOUT_MS);
}

static void begin_task(struct agent *a, const struct task *t)
{
	a->cur = *t;
	a->have_cur = 1;
	a->rep_final = 0;
	a->rep_failed = rb.armed && a->idx == rb.fail_idx && t->kind == SLIPWAY__V1__TASK_KIND__TASK_DEPLOY &&
			strcmp(t->version, rb.version) == 0;
	send_report(a);
}

static void rollback_check(int64_t now)
{
	if (!rb.armed || rb.done || rb.fail_ns == 0)
		return;
	int timed_out = now - rb.fail_ns > (int64_t)ROLLBACK_TIMEOUT_S * 1000000000;
	if (rb.nrb < rb.ntouched && !timed_out)
		return;
	/* Receive times relative to the FAILED report, sorted. */
	int64_t *d = calloc((size_t)(rb.nrb ? rb.nrb : 1), sizeof *d);
	int n = 0;
	for (int i = 0; i < MAX_AGENTS && d != NULL; i++)
		if (rb.rb_ns[i] != 0)
			d[n++] = rb.rb_ns[i] - rb.fail_ns;
	for (int i = 1; i < n; i++)
		for (int k = i; k > 0 && d[k - 1] > d[k]; k--) {
			int64_t x = d[k];
			d[k] = d[k - 1];
			d[k - 1] = x;
		}
	emit("{\"event\": \"rollback\", \"version\": \"%s\", \"fail_index\": %d, \"deployment\": \"%s\","
	     " \"touched\": %d, \"received\": %d, \"complete\": %s, \"first_ms\": %.1f,"
	     " \"p50_ms\": %.1f, \"max_ms\": %.1f}",
	     rb.version, rb.fail_idx, rb.dep, rb.ntouched, rb.nrb, rb.nrb >= rb.ntouched ? "true" : "false",
	     n ? ms_of(d[0]) : 0.0, n ? ms_of(d[(n - 1) / 2]) : 0.0, n ? ms_of(d[n - 1]) : 0.0);
	free(d);
	rb.done = 1;
	rb.armed = 0;
	for (size_t i = 0; i < nheld; i++)
		timer_add(now, held[i].idx, held[i].kind);
	nheld = 0;
}

/* Whether the answer of an agent that has its rollback task (its reports,
 * its next poll) waits until every touched agent has one: one process
 * plays every agent, and answering the first rollback tasks would delay
 * its own receipt of the later ones, which real agents, each on its own
 * host, do not suffer. */
static int hold(struct timer t)
{
	if (!rb.armed || rb.done || rb.fail_ns == 0 || rb.rb_ns[t.idx] == 0)
		return 0; /* an agent still waiting for its rollback task polls */
	if (nheld == capheld) {
		capheld = capheld ? capheld * 2 : 1024;
		held = realloc(held, capheld * sizeof *held);
		if (held == NULL) {
			fprintf(stderr, "agent_sim: out of memory\n");
			exit(1);
		}
	}
	held[nheld++] = t;
	return 1;
}

static void got_task(struct agent *a, const Slipway__V1__Task *in)
{
	struct task t;
	memset(&t, 0, sizeof t);
	snprintf(t.id, sizeof t.id, "%s", in->task_id);
	snprintf(t.dep, sizeof t.dep, "%s", in->deployment_id);
	snprintf(t.version, sizeof t.version, "%s", in->version);
	snprintf(t.digest, sizeof t.digest, "%s", in->digest);
	t.gen = in->generation;
	t.kind = (int)in->kind;
	tasks_received++;
	int64_t now = now_ns();
	if (rb.armed && t.kind == SLIPWAY__V1__TASK_KIND__TASK_DEPLOY &&
	    strcmp(t.version, rb.version) == 0) {
		if (rb.dep[0] == '\0')
			snprintf(rb.dep, sizeof rb.dep, "%s", t.dep);
		if (strcmp(rb.dep, t.dep) == 0 && !rb.touched[a->idx]) {
			rb.touched[a->idx] = 1;
			rb.ntouched++;
		}
	}
	if (rb.armed && t.kind == SLIPWAY__V1__TASK_KIND__TASK_ROLLBACK && strcmp(rb.dep, t.dep) == 0 &&
	    rb.rb_ns[a->idx] == 0) {
		rb.rb_ns[a->idx] = now;
		rb.nrb++;
		if (!rb.touched[a->idx]) { /* dispatched, but superseded before we saw it */
			rb.touched[a->idx] = 1;
			rb.ntouched++;
		}
		rollback_check(now);
	}
	/* Start it (and poll again) once the completion queue is drained, so
	 * that the receive times of a burst of tasks are not delayed by the
	 * calls this process makes in answer to the first ones. */
	a->next = t;
	a->have_next = 1;
	timer_add(now, a->idx, T_TASK);
}

static void start_agent(int idx)
{
	struct agent *a = &agents[idx];
	char prefix[4096], crt[4200], key[4200], uri[256], err[256];
	struct stat st;
	a->idx = idx;
	snprintf(a->host, sizeof a->host, "h%05d", idx);
	snprintf(a->app, sizeof a->app, "%s", grow_app);
	snprintf(a->env, sizeof a->env, "%s", grow_env);
	snprintf(prefix, sizeof prefix, "%s/%s", cert_dir, a->host);
	snprintf(crt, sizeof crt, "%s.crt", prefix);
	snprintf(key, sizeof key, "%s.key", prefix);
	if (stat(crt, &st) != 0 || stat(key, &st) != 0) {
		struct pki_issue_req r;
		memset(&r, 0, sizeof r);
		snprintf(uri, sizeof uri, "spiffe://%s/agent/r1/%s", trust_domain, a->host);
		r.dir = pki_dir;
		r.out_prefix = prefix;
		r.common_name = a->host;
		r.uris[0] = uri;
		if (pki_issue(&r, err, sizeof err) != 0) {
			fprintf(stderr, "agent_sim: issue %s: %s\n", a->host, err);
			exit(1);
		}
	}
	snprintf(uri, sizeof uri, "spiffe://%s/agent/r1/%s", trust_domain, a->host);
	enroll(uri, a->app, a->env);
	char *cert_pem = NULL, *key_pem = NULL;
	if (tls_read_pem(crt, &cert_pem, err, sizeof err) != 0 ||
	    tls_read_pem(key, &key_pem, err, sizeof err) != 0) {
		fprintf(stderr, "agent_sim: %s\n", err);
		exit(1);
	}
	grpc_channel_credentials *cc = tls_client_creds(ca_pem, cert_pem, key_pem, NULL, NULL) /* a benchmark: no pin */;
	free(cert_pem);
	free(key_pem);
	/* Like lib/rpc_client: own connection, keepalive, no retries. */
	grpc_arg args[6];
	memset(args, 0, sizeof args);
	const char *keys[6] = { GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, GRPC_ARG_KEEPALIVE_TIME_MS,
				GRPC_ARG_KEEPALIVE_TIMEOUT_MS,	    GRPC_ARG_ENABLE_RETRIES,
				GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, GRPC_ARG_MAX_RECONNECT_BACKOFF_MS };
	int vals[6] = { 1, 30000, 10000, 0, 200, 5000 };
	for (int i = 0; i < 6; i++) {
		args[i].type = GRPC_ARG_INTEGER;
		args[i].key = (char *)keys[i];
		args[i].value.integer = vals[i];
	}
	grpc_channel_args ca = { 6, args };
	a->ch = grpc_channel_create(target, cc, &ca);
	grpc_channel_credentials_release(cc);
	if (getrandom(a->seal, sizeof a->seal, 0) != (ssize_t)sizeof a->seal)
		memset(a->seal, 7, sizeof a->seal);
	struct call *calls[5] = { &a->reg, &a->hb, &a->poll, &a->rep, &a->probe };
	int kinds[5] = { K_REG, K_HB, K_POLL, K_REP, K_PROBE };
	for (int i = 0; i < 5; i++) {
		calls[i]->a = a;
		calls[i]->kind = kinds[i];
	}
	reg_inflight++;
	send_register(a);
}

/* ---------------------------------------------------------------- events */

static void on_register(struct agent *a)
{
	ProtobufCMessage *m = call_end(&a->reg, echo_mode ? NULL : &slipway__v1__register_response__descriptor);
	int first = !a->registered;
	if (a->reg.status != GRPC_STATUS_OK) {
		if (++grow_errors <= 5)
			fprintf(stderr, "agent_sim: register %s: %d %s\n", a->host, a->reg.status, a->reg.why);
		timer_add(now_ns() + 500000000, a->idx, T_REG);
		return;
	}
	if (m != NULL) {
		Slipway__V1__RegisterResponse *r = (void *)m;
		if (r->heartbeat_interval_ms >= 100 && r->heartbeat_interval_ms <= 600000)
			interval_ms = r->heartbeat_interval_ms;
		protobuf_c_message_free_unpacked(m, NULL);
	}
	a->registered = 1;
	if (first) {
		nreg++;
		reg_inflight--;
		/* Spread the beats over the interval, like agents started at random times. */
		uint32_t r = 0;
		if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r)
			r = (uint32_t)a->idx * 2654435761u;
		a->hb_due_ns = now_ns() + (int64_t)(r % (uint32_t)interval_ms) * 1000000;
		timer_add(a->hb_due_ns, a->idx, T_HB);
	}
	if (!echo_mode && !a->poll.busy && !a->stopped)
		send_poll(a, &a->poll, poll_wait_ms);
	if (grow_active && nreg >= grow_target) {
		emit("{\"event\": \"grow\", \"agents\": %d, \"seconds\": %.2f, \"errors\": %lld,"
		     " \"interval_ms\": %lld}",
		     nreg, (double)(now_ns() - grow_start_ns) / 1e9, grow_errors, interval_ms);
		grow_active = 0;
	}
}

static void on_heartbeat(struct agent *a)
{
	ProtobufCMessage *m = call_end(&a->hb, echo_mode ? NULL : &slipway__v1__heartbeat_response__descriptor);
	int64_t t = now_ns();
	int in_window = meas_active && t >= meas_start_ns && t < meas_end_ns;
	if (a->hb.status != GRPC_STATUS_OK) {
		if (in_window)
			hb_err++;
		if (hb_err <= 5 && in_window)
			fprintf(stderr, "agent_sim: heartbeat %s: %d %s\n", a->host, a->hb.status, a->hb.why);
		return;
	}
	a->last_hb_ns = a->hb.start_ns;
	if (in_window) {
		hb_ok++;
		if (nlat < LAT_CAP)
			lat[nlat++] = t - a->hb.start_ns;
	}
	if (m != NULL) {
		Slipway__V1__HeartbeatResponse *r = (void *)m;
		if (r->reregister && !a->stopped) {
			rereg++;
			send_register(a);
		}
		protobuf_c_message_free_unpacked(m, NULL);
	}
}

static void on_poll(struct agent *a)
{
	ProtobufCMessage *m = call_end(&a->poll, &slipway__v1__poll_tasks_response__descriptor);
	if (a->stopped) {
		if (m != NULL)
			protobuf_c_message_free_unpacked(m, NULL);
		return;
	}
	if (m == NULL) {
		if (a->poll.status == GRPC_STATUS_FAILED_PRECONDITION) {
			rereg++;
			send_register(a); /* polls again once registered */
		} else {
			timer_add(now_ns() + 200000000, a->idx, T_POLL);
		}
		return;
	}
	Slipway__V1__PollTasksResponse *r = (void *)m;
	const Slipway__V1__Task *best = NULL;
	for (size_t i = 0; i < r->n_tasks; i++)
		if (r->tasks[i]->generation > a->highest &&
		    (best == NULL || r->tasks[i]->generation > best->generation))
			best = r->tasks[i];
	if (best != NULL) {
		a->highest = best->generation;
		got_task(a, best);
	}
	protobuf_c_message_free_unpacked(m, NULL);
	timer_add(now_ns(), a->idx, T_POLL);
}

static void on_report(struct agent *a)
{
	ProtobufCMessage *m = call_end(&a->rep, &slipway__v1__report_task_response__descriptor);
	int superseded = 0;
	if (m == NULL) {
		grpc_status_code st = a->rep.status;
		if (++report_errors <= 5)
			fprintf(stderr, "agent_sim: report %s: %d %s\n", a->host, st, a->rep.why);
		/* Like the real agent: an answer that retrying cannot change, or a
		 * newer task, ends this one; anything else is retried. */
		int final = st == GRPC_STATUS_NOT_FOUND || st == GRPC_STATUS_INVALID_ARGUMENT ||
			    st == GRPC_STATUS_PERMISSION_DENIED || st == GRPC_STATUS_FAILED_PRECONDITION ||
			    st == GRPC_STATUS_ALREADY_EXISTS || st == GRPC_STATUS_UNIMPLEMENTED;
		if (!final && !(a->have_next && a->next.gen > a->cur.gen)) {
			timer_add(now_ns() + 200000000, a->idx, T_REP); /* the same report again */
			return;
		}
		superseded = 1;
	} else {
		superseded = ((Slipway__V1__ReportTaskResponse *)m)->superseded;
		protobuf_c_message_free_unpacked(m, NULL);
	}
	/* A newer task waiting supersedes this one before it "runs". */
	if (!a->rep_final && a->have_next && a->next.gen > a->cur.gen)
		superseded = 1;
	if (!superseded && !a->rep_final) {
		a->rep_final = 1;
		send_report(a);
		return;
	}
	if (!superseded && !a->rep_failed) {
		snprintf(a->version, sizeof a->version, "%s", a->cur.version);
		snprintf(a->digest, sizeof a->digest, "%s", a->cur.digest);
	}
	a->have_cur = 0;
	if (a->have_next) {
		a->have_next = 0;
		begin_task(a, &a->next);
	}
}

static void on_probe(struct agent *a)
{
	call_end(&a->probe, &slipway__v1__poll_tasks_response__descriptor);
	int64_t t = now_ns();
	if (a->lost_reported)
		return;
	if (a->probe.status == GRPC_STATUS_FAILED_PRECONDITION) {
		a->lost_reported = 1;
		double iv = (double)interval_ms * 1e6;
		emit("{\"event\": \"lost\", \"index\": %d, \"interval_ms\": %lld,"
		     " \"from_stop_ms\": %.1f, \"from_last_heartbeat_ms\": %.1f,"
		     " \"from_stop_intervals\": %.3f, \"from_last_heartbeat_intervals\": %.3f}",
		     a->idx, interval_ms, ms_of(t - a->stop_ns), ms_of(t - a->last_hb_ns),
		     (double)(t - a->stop_ns) / iv, (double)(t - a->last_hb_ns) / iv);
		return;
	}
	timer_add(a->probe.start_ns + (int64_t)PROBE_MS * 1000000, a->idx, T_PROBE);
}

static void on_timer(struct timer t, int64_t now)
{
	struct agent *a = &agents[t.idx];
	switch (t.kind) {
	case T_HB:
		if (a->stopped) {
			if (a->stop_ns == 0)
				a->stop_ns = t.due; /* the first beat not sent */
			timer_add(a->stop_ns, a->idx, T_PROBE);
			return;
		}
		if (a->hb.busy) {
			if (meas_active && now >= meas_start_ns && now < meas_end_ns)
				hb_skipped++;
		} else {
			send_heartbeat(a);
		}
		a->hb_due_ns = t.due + interval_ms * 1000000;
		if (a->hb_due_ns < now)
			a->hb_due_ns = now + interval_ms * 1000000;
		timer_add(a->hb_due_ns, a->idx, T_HB);
		break;
	case T_REG:
		send_register(a);
		break;
	case T_POLL:
		if (hold(t))
			break;
		if (!a->poll.busy && !a->stopped)
			send_poll(a, &a->poll, poll_wait_ms);
		break;
	case T_REP:
		if (!a->rep.busy && a->have_cur)
			send_report(a);
		break;
	case T_PROBE:
		if (!a->probe.busy && !a->lost_reported)
			send_poll(a, &a->probe, 0);
		break;
	case T_TASK:
		if (hold(t))
			break;
		if (!a->rep.busy && a->have_next) {
			a->have_next = 0;
			begin_task(a, &a->next);
		}
		break;
	}
}

/* ---------------------------------------------------------------- commands */

static void *reader_main(void *arg)
{
	(void)arg;
	char line[256];
	while (fgets(line, sizeof line, stdin) != NULL) {
		line[strcspn(line, "\r\n")] = '\0';
		for (;;) {
			pthread_mutex_lock(&cmd_mu);
			if ((cmd_tail + 1) % 64 != cmd_head) {
				snprintf(cmd_buf[cmd_tail], sizeof cmd_buf[cmd_tail], "%s", line);
				cmd_tail = (cmd_tail + 1) % 64;
				pthread_mutex_unlock(&cmd_mu);
				break;
			}
			pthread_mutex_unlock(&cmd_mu);
			usleep(10000);
		}
	}
	pthread_mutex_lock(&cmd_mu);
	stdin_eof = 1;
	pthread_mutex_unlock(&cmd_mu);
	return NULL;
}

static int next_command(char *out, size_t len, int *eof)
{
	int got = 0;
	pthread_mutex_lock(&cmd_mu);
	if (cmd_head != cmd_tail) {
		snprintf(out, len, "%s", cmd_buf[cmd_head]);
		cmd_head = (cmd_head + 1) % 64;
		got = 1;
	}
	*eof = stdin_eof && !got;
	pthread_mutex_unlock(&cmd_mu);
	return got;
}

static int cmp64(const void *x, const void *y)
{
	int64_t a = *(const int64_t *)x, b = *(const int64_t *)y;
	return (a > b) - (a < b);
}

static void measure_end(void)
{
	double secs = (double)(meas_end_ns - meas_start_ns) / 1e9;
	long hz = sysconf(_SC_CLK_TCK);
	long long orch = orch_pid > 0 ? proc_ticks(orch_pid, NULL) : 0;
	long long pg = tree_ticks(pg_pid);
	double self = self_cpu_s();
	double orch_s = orch_pid > 0 ? (double)(orch - meas_orch0) / (double)hz : 0;
	double pg_s = (double)(pg - meas_pg0) / (double)hz;
	int active = 0;
	for (int i = 0; i < nstarted; i++)
		active += agents[i].registered && !agents[i].stopped;
	qsort(lat, nlat, sizeof *lat, cmp64);
	double p50 = nlat ? (double)lat[nlat / 2] / 1000.0 : 0;
	double p99 = nlat ? (double)lat[(size_t)((double)nlat * 0.99)] / 1000.0 : 0;
	emit("{\"event\": \"measure\", \"agents\": %d, \"seconds\": %.3f, \"calls\": %lld,"
	     " \"calls_per_s\": %.1f, \"errors\": %lld, \"skipped\": %lld, \"reregistered\": %lld,"
	     " \"orch_cpu_s\": %.2f, \"orch_cpu_frac\": %.4f, \"orch_us_per_call\": %.1f,"
	     " \"pg_cpu_frac\": %.4f, \"sim_cpu_frac\": %.4f, \"p50_us\": %.1f, \"p99_us\": %.1f}",
	     active, secs, hb_ok, (double)hb_ok / secs, hb_err, hb_skipped, rereg, orch_s,
	     orch_s / secs, hb_ok ? orch_s * 1e6 / (double)hb_ok : 0.0, pg_s / secs,
	     (self - meas_self0) / secs, p50, p99);
	meas_active = 0;
}

/* Returns 1 on quit. */
static int command(const char *line)
{
	char verb[32] = "", a1[160] = "", a2[160] = "", a3[160] = "";
	int n = sscanf(line, "%31s %159s %159s %159s", verb, a1, a2, a3);
	long long v = 0;
	if (n < 1)
		return 0;
	if (strcmp(verb, "quit") == 0)
		return 1;
	if (strcmp(verb, "grow") == 0 && n == 4 && cfg_parse_ll(a1, &v) == 0 && v >= 1 &&
	    v <= MAX_AGENTS && !grow_active) {
		snprintf(grow_app, sizeof grow_app, "%s", a2);
		snprintf(grow_env, sizeof grow_env, "%s", a3);
		grow_target = (int)v;
		grow_start_ns = now_ns();
		grow_errors = 0;
		if (nreg >= grow_target)
			emit("{\"event\": \"grow\", \"agents\": %d, \"seconds\": 0, \"errors\": 0,"
			     " \"interval_ms\": %lld}", nreg, interval_ms);
		else
			grow_active = 1;
		return 0;
	}
	if (strcmp(verb, "measure") == 0 && n == 2 && cfg_parse_ll(a1, &v) == 0 && v >= 1 &&
	    !meas_active) {
		meas_active = 1;
		hb_ok = hb_err = hb_skipped = rereg = 0;
		nlat = 0;
		meas_orch0 = orch_pid > 0 ? proc_ticks(orch_pid, NULL) : 0;
		meas_pg0 = tree_ticks(pg_pid);
		meas_self0 = self_cpu_s();
		meas_start_ns = now_ns();
		meas_end_ns = meas_start_ns + v * 1000000000LL;
		return 0;
	}
	if (strcmp(verb, "fail") == 0 && n == 3 && cfg_parse_ll(a2, &v) == 0 && v >= 0 &&
	    v < MAX_AGENTS) {
		memset(rb.touched, 0, MAX_AGENTS);
		memset(rb.rb_ns, 0, MAX_AGENTS * sizeof *rb.rb_ns);
		rb.ntouched = rb.nrb = 0;
		rb.dep[0] = '\0';
		rb.fail_ns = 0;
		rb.done = 0;
		snprintf(rb.version, sizeof rb.version, "%s", a1);
		rb.fail_idx = (int)v;
		rb.armed = 1;
		emit("{\"event\": \"armed\", \"version\": \"%s\", \"fail_index\": %d}", rb.version,
		     rb.fail_idx);
		return 0;
	}
	if (strcmp(verb, "stop") == 0 && n == 2 && cfg_parse_ll(a1, &v) == 0 && v >= 0 &&
	    v < nstarted && agents[v].registered && !agents[v].stopped) {
		agents[v].stopped = 1; /* the heartbeat timer notes the first missed beat */
		return 0;
	}
	emit("{\"event\": \"error\", \"command\": \"%s\"}", verb);
	return 0;
}

/* ---------------------------------------------------------------- main */

int main(int argc, char **argv)
{
	const char *ca = NULL;
	char err[256];
	for (int i = 1; i < argc; i++) {
		const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		long long x = 0;
		if (strcmp(k, "--echo") == 0) {
			echo_mode = 1;
			continue;
		}
		if (v == NULL)
			goto usage;
		i++;
		if (strcmp(k, "--target") == 0)
			target = v;
		else if (strcmp(k, "--ca") == 0)
			ca = v;
		else if (strcmp(k, "--pki-dir") == 0)
			pki_dir = v;
		else if (strcmp(k, "--cert-dir") == 0)
			cert_dir = v;
		else if (strcmp(k, "--orch-pid") == 0 && cfg_parse_ll(v, &x) == 0 && x > 0)
			orch_pid = (int)x;
		else if (strcmp(k, "--pg-pid") == 0 && cfg_parse_ll(v, &x) == 0 && x > 0)
			pg_pid = (int)x;
		else if (strcmp(k, "--poll-wait-ms") == 0 && cfg_parse_ll(v, &x) == 0 && x >= 1000)
			poll_wait_ms = x;
		else if (strcmp(k, "--interval-ms") == 0 && cfg_parse_ll(v, &x) == 0 && x >= 100)
			interval_ms = x;
		else
			goto usage;
	}
	if (target == NULL || ca == NULL || pki_dir == NULL || cert_dir == NULL)
		goto usage;
	if (tls_read_pem(ca, &ca_pem, err, sizeof err) != 0 ||
	    pki_trust_domain(pki_dir, trust_domain, sizeof trust_domain, err, sizeof err) != 0) {
		fprintf(stderr, "agent_sim: %s\n", err);
		return 1;
	}
	agents = calloc(MAX_AGENTS, sizeof *agents);
	lat = malloc(LAT_CAP * sizeof *lat);
	rb.touched = calloc(MAX_AGENTS, 1);
	rb.rb_ns = calloc(MAX_AGENTS, sizeof *rb.rb_ns);
	if (agents == NULL || lat == NULL || rb.touched == NULL || rb.rb_ns == NULL) {
		fprintf(stderr, "agent_sim: out of memory\n");
		return 1;
	}
	grpc_init();
	cq = grpc_completion_queue_create_for_next(NULL);
	m_reg = grpc_slice_from_static_string("/slipway.v1.AgentControl/RegisterAgent");
	m_hb = grpc_slice_from_static_string("/slipway.v1.AgentControl/Heartbeat");
	m_poll = grpc_slice_from_static_string("/slipway.v1.AgentControl/PollTasks");
	m_rep = grpc_slice_from_static_string("/slipway.v1.AgentControl/ReportTask");
	m_say = grpc_slice_from_static_string("/slipway.test.v1.Echo/Say");
	pthread_t reader;
	if (pthread_create(&reader, NULL, reader_main, NULL) != 0)
		return 1;
	pthread_detach(reader);

	int quit = 0;
	while (!quit) {
		int64_t now = now_ns();
		while (nheap > 0 && heap[0].due <= now)
			on_timer(timer_pop(), now);
		char line[256];
		int eof = 0;
		while (next_command(line, sizeof line, &eof))
			if (command(line))
				quit = 1;
		if (eof)
			quit = 1;
		for (int k = 0; grow_active && k < STARTS_PER_ROUND && nstarted < grow_target &&
				reg_inflight < REG_WINDOW;
		     k++)
			start_agent(nstarted++);
		if (meas_active && now >= meas_end_ns)
			measure_end();
		rollback_check(now);
		/* Sleep until the next timer (at most 10 ms, for commands). */
		int64_t wait = 10000000;
		if (nheap > 0 && heap[0].due - now < wait)
			wait = heap[0].due - now > 0 ? heap[0].due - now : 0;
		if (grow_active && nstarted < grow_target && reg_inflight < REG_WINDOW)
			wait = 0;
		gpr_timespec dl = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
					       gpr_time_from_nanos(wait, GPR_TIMESPAN));
		for (int k = 0; k < 65536; k++) { /* drain what is ready before the timers */
			grpc_event ev = grpc_completion_queue_next(cq, dl, NULL);
			if (ev.type != GRPC_OP_COMPLETE)
				break;
			struct call *c = ev.tag;
			switch (c->kind) {
			case K_REG: on_register(c->a); break;
			case K_HB: on_heartbeat(c->a); break;
			case K_POLL: on_poll(c->a); break;
			case K_REP: on_report(c->a); break;
			case K_PROBE: on_probe(c->a); break;
			}
			dl = gpr_inf_past(GPR_CLOCK_MONOTONIC); /* drain what is ready */
		}
	}
	fprintf(stderr, "agent_sim: quitting: %d agents, %lld tasks received, %lld report errors\n",
		nstarted, tasks_received, report_errors);
	/* Cancel what is in flight, then drain the queue. */
	for (int i = 0; i < nstarted; i++) {
		struct call *calls[5] = { &agents[i].reg, &agents[i].hb, &agents[i].poll, &agents[i].rep,
					  &agents[i].probe };
		for (int k = 0; k < 5; k++)
			if (calls[k]->busy)
				grpc_call_cancel(calls[k]->call, NULL);
	}
	while (inflight > 0) {
		grpc_event ev = grpc_completion_queue_next(
			cq, gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(5000, GPR_TIMESPAN)),
			NULL);
		if (ev.type != GRPC_OP_COMPLETE)
			break;
		struct call *c = ev.tag;
		call_end(c, NULL);
	}
	for (int i = 0; i < nstarted; i++)
		grpc_channel_destroy(agents[i].ch);
	grpc_completion_queue_shutdown(cq);
	while (grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL).type !=
	       GRPC_QUEUE_SHUTDOWN)
		;
	grpc_completion_queue_destroy(cq);
	grpc_shutdown();
	free(agents);
	free(lat);
	free(heap);
	free(rb.touched);
	free(rb.rb_ns);
	free(held);
	free(ca_pem);
	return 0;
usage:
	fprintf(stderr, "usage: bench-agent_sim --target A --ca F --pki-dir D --cert-dir D"
			" [--orch-pid P] [--pg-pid P] [--poll-wait-ms MS] [--interval-ms MS] [--echo]\n");
	return 2;
}
