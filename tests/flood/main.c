/*
 * slipway-flood - a test-only client that opens many streams at once and
 * leaves them silent, as a certificate holder trying to exhaust a service
 * would (tests/security/stream_flood.sh). The CLI cannot hold raw streams
 * open, so this does. Built into build/tests, never installed.
 *
 *   slipway-flood --addr HOST:PORT [--watch N] [--push N]
 *                 [--partial APP@VERSION] [--hold] [--timeout-ms MS]
 *                 [--watch-timeout-ms MS]
 *
 * TLS material comes from SLIPWAY_CA, SLIPWAY_CERT and SLIPWAY_KEY (as for
 * the CLI). All streams share one connection.
 *
 *  --watch N    opens N grpc.health.v1.Health/Watch streams and waits for
 *               each one's first answer: "watch I open" (a status arrived)
 *               or "watch I refused STATUS MESSAGE".
 *  --push N     opens N slipway.v1.Artifact/Push streams that send nothing.
 *  --partial A@V  opens one Push that sends a header for A@V (1 MiB
 *               announced) and one 1 KiB chunk, then nothing.
 *  --hold       once every watch answered, prints "ready" and waits for
 *               stdin to close; then half-closes the pushes and reports
 *               how each ended ("push I end STATUS MESSAGE"). Without it
 *               the pushes wait for the server to end them.
 *  --timeout-ms the deadline of every stream (default 120000).
 *  --watch-timeout-ms  the deadline of the watches (default: --timeout-ms),
 *               so that a server that queues them instead of answering
 *               or refusing them lets the flood go on with the pushes.
 *
 * Exit status 0 once everything is reported, 2 on bad usage.
 */
#include "err.h"
#include "rpc.h"
#include "tls.h"

#include "grpc/health/v1/health.pb-c.h"
#include "slipway/v1/artifact.pb-c.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum kind { K_WATCH, K_PUSH, K_PARTIAL };

struct job {
	pthread_t t;
	enum kind kind;
	int i;
};

static struct rpc_client *client;
static int64_t timeout_ms = 120000;
static int64_t watch_timeout_ms;
static int hold;
static char partial_app[64], partial_version[128];

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int answered; /* watches that answered */
static int released; /* stdin closed */

static void report(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void report(const char *fmt, ...)
{
	va_list ap;
	pthread_mutex_lock(&mu);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
	pthread_mutex_unlock(&mu);
}

static const char *status_of(int rc)
{
	return rc == 0 ? "OK" : sw_grpc_status_name(sw_err_to_grpc(rc));
}

static void wait_release(void)
{
	pthread_mutex_lock(&mu);
	while (!released)
		pthread_cond_wait(&cv, &mu);
	pthread_mutex_unlock(&mu);
}

static void *watch_main(struct job *j)
{
	struct rpc_call_opts o = { .timeout_ms = watch_timeout_ms ? watch_timeout_ms : timeout_ms };
	struct rpc_stream *s = NULL;
	char err[512] = "";
	int rc = rpc_stream_open(client, &grpc__health__v1__health__descriptor, "Watch", &o, &s, err,
				 sizeof err);
	if (rc != 0) {
		report("watch %d refused %s %s", j->i, status_of(rc), err);
		goto out;
	}
	Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
	ProtobufCMessage *m = NULL;
	rpc_stream_send(s, &req.base);
	rpc_stream_close_send(s);
	if (rpc_stream_recv(s, &m) == 1) {
		protobuf_c_message_free_unpacked(m, NULL);
		report("watch %d open", j->i);
		pthread_mutex_lock(&mu);
		answered++;
		pthread_cond_broadcast(&cv);
		pthread_mutex_unlock(&mu);
		if (hold)
			wait_release();
		rpc_stream_cancel(s);
		rpc_stream_finish(s, err, sizeof err);
		return NULL;
	}
	rc = rpc_stream_finish(s, err, sizeof err);
	report("watch %d refused %s %s", j->i, status_of(rc), err);
out:
	pthread_mutex_lock(&mu);
	answered++;
	pthread_cond_broadcast(&cv);
	pthread_mutex_unlock(&mu);
	return NULL;
}

static void *push_main(struct job *j)
{
	struct rpc_call_opts o = { .timeout_ms = timeout_ms };
	struct rpc_stream *s = NULL;
	char err[512] = "";
	int rc = rpc_stream_open(client, &slipway__v1__artifact__descriptor, "Push", &o, &s, err,
				 sizeof err);
	if (rc != 0) {
		report("%s %d end %s %s", j->kind == K_PARTIAL ? "partial" : "push", j->i,
		       status_of(rc), err);
		return NULL;
	}
	if (j->kind == K_PARTIAL) {
		Slipway__V1__PushHeader h = SLIPWAY__V1__PUSH_HEADER__INIT;
		h.app = partial_app;
		h.version = partial_version;
		h.size_hint = 1u << 20;
		Slipway__V1__PushRequest req = SLIPWAY__V1__PUSH_REQUEST__INIT;
		req.msg_case = SLIPWAY__V1__PUSH_REQUEST__MSG_HEADER;
		req.header = &h;
		rpc_stream_send(s, &req.base);
		static uint8_t chunk[1024];
		Slipway__V1__PushRequest data = SLIPWAY__V1__PUSH_REQUEST__INIT;
		data.msg_case = SLIPWAY__V1__PUSH_REQUEST__MSG_CHUNK;
		data.chunk.data = chunk;
		data.chunk.len = sizeof chunk;
		rpc_stream_send(s, &data.base);
		report("partial %d sent", j->i);
	} else if (hold) {
		wait_release();
		rpc_stream_close_send(s);
	}
	/* The status is delivered once what came before it was read. */
	ProtobufCMessage *m = NULL;
	if (rpc_stream_recv(s, &m) == 1)
		protobuf_c_message_free_unpacked(m, NULL);
	rc = rpc_stream_finish(s, err, sizeof err);
	report("%s %d end %s %s", j->kind == K_PARTIAL ? "partial" : "push", j->i, status_of(rc),
	       err);
	return NULL;
}

static void *job_main(void *arg)
{
	struct job *j = arg;
	return j->kind == K_WATCH ? watch_main(j) : push_main(j);
}

static int usage(void)
{
	fprintf(stderr, "usage: slipway-flood --addr HOST:PORT [--watch N] [--push N] "
			"[--partial APP@VERSION] [--hold] [--timeout-ms MS] "
			"[--watch-timeout-ms MS]\n");
	return 2;
}

static int parse_count(const char *s, int *out)
{
	char *end;
	long v = strtol(s, &end, 10);
	if (*s == '\0' || *end != '\0' || v < 0 || v > 10000)
		return -1;
	*out = (int)v;
	return 0;
}

int main(int argc, char **argv)
{
	const char *addr = NULL, *partial = NULL;
	int nwatch = 0, npush = 0;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (strcmp(a, "--hold") == 0) {
			hold = 1;
			continue;
		}
		if (i + 1 >= argc)
			return usage();
		const char *v = argv[++i];
		if (strcmp(a, "--addr") == 0)
			addr = v;
		else if (strcmp(a, "--partial") == 0)
			partial = v;
		else if (strcmp(a, "--watch") == 0 && parse_count(v, &nwatch) == 0)
			;
		else if (strcmp(a, "--push") == 0 && parse_count(v, &npush) == 0)
			;
		else if (strcmp(a, "--timeout-ms") == 0 && (timeout_ms = strtoll(v, NULL, 10)) > 0)
			;
		else if (strcmp(a, "--watch-timeout-ms") == 0 &&
			 (watch_timeout_ms = strtoll(v, NULL, 10)) > 0)
			;
		else
			return usage();
	}
	if (addr == NULL)
		return usage();
	if (partial != NULL) {
		const char *at = strchr(partial, '@');
		if (at == NULL || (size_t)(at - partial) >= sizeof partial_app ||
		    strlen(at + 1) >= sizeof partial_version)
			return usage();
		snprintf(partial_app, sizeof partial_app, "%.*s", (int)(at - partial), partial);
		snprintf(partial_version, sizeof partial_version, "%s", at + 1);
	}
	const char *caf = getenv("SLIPWAY_CA"), *crtf = getenv("SLIPWAY_CERT"),
		   *keyf = getenv("SLIPWAY_KEY");
	if (caf == NULL || crtf == NULL || keyf == NULL) {
		fprintf(stderr, "slipway-flood: SLIPWAY_CA, SLIPWAY_CERT and SLIPWAY_KEY are needed\n");
		return 2;
	}
	char err[512];
	char *ca = NULL, *crt = NULL, *key = NULL;
	if (tls_read_pem(caf, &ca, err, sizeof err) != 0 ||
	    tls_read_pem(crtf, &crt, err, sizeof err) != 0 ||
	    tls_read_pem(keyf, &key, err, sizeof err) != 0) {
		fprintf(stderr, "slipway-flood: %s\n", err);
		return 2;
	}
	rpc_init();
	/* It floods an artifact service (Health/Watch and Push): pinned as one. */
	struct rpc_client_opts co = { .target = addr, .ca_pem = ca, .cert_pem = crt,
				      .key_pem = key, .server_service = "artifact" };
	if (rpc_client_new(&co, &client, err, sizeof err) != 0) {
		fprintf(stderr, "slipway-flood: %s\n", err);
		return 2;
	}
	int n = nwatch + npush + (partial != NULL);
	struct job *jobs = calloc((size_t)n + 1, sizeof *jobs);
	if (jobs == NULL)
		return 2;
	for (int i = 0; i < n; i++) {
		jobs[i].kind = i < nwatch ? K_WATCH : i < nwatch + npush ? K_PUSH : K_PARTIAL;
		jobs[i].i = i < nwatch ? i : i - nwatch;
		pthread_create(&jobs[i].t, NULL, job_main, &jobs[i]);
	}
	pthread_mutex_lock(&mu);
	while (answered < nwatch)
		pthread_cond_wait(&cv, &mu);
	pthread_mutex_unlock(&mu);
	if (hold) {
		report("ready");
		char buf[256];
		while (read(0, buf, sizeof buf) > 0)
			;
		pthread_mutex_lock(&mu);
		released = 1;
		pthread_cond_broadcast(&cv);
		pthread_mutex_unlock(&mu);
	}
	for (int i = 0; i < n; i++)
		pthread_join(jobs[i].t, NULL);
	report("done");
	free(jobs);
	rpc_client_free(client);
	free(ca);
	free(crt);
	free(key);
	rpc_shutdown();
	return 0;
}
