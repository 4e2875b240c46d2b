/*
 * slipway-testsvc - a test-only service (slipway.test.v1.Echo) on the real
 * RPC layer and daemon skeleton, used by the RPC integration tests and the
 * `rpc` benchmark. It is built into build/tests, never installed.
 */
#include "err.h"
#include "log.h"
#include "rpc.h"
#include "svc.h"
#include "spiffe.h"
#include "tls.h"

#include "slipway/test/v1/echo.pb-c.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct app {
	struct svc_config c;
	pthread_mutex_t mu;
	char *downstream;
	struct rpc_client *client;
	char *ca, *cert, *key;
	/* The downstream's pinned identity: its instances run with our own
	 * certificate (it_rpc), so our own SPIFFE ID. */
	char downstream_id[SPIFFE_ID_MAX + 2];
};

static void sleep_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) != 0)
		;
}

static void fill(struct rpc_ctx *ctx, const Slipway__Test__V1__EchoRequest *req,
		 Slipway__Test__V1__EchoResponse *resp)
{
	resp->text = req->text;
	resp->blob = req->blob;
	resp->peer = (char *)rpc_peer(ctx);
	resp->request_id = (char *)rpc_request_id(ctx);
	int64_t left = rpc_remaining_ms(ctx);
	resp->remaining_ms = left == INT64_MAX ? -1 : left;
}

static int say(struct rpc_ctx *ctx, const ProtobufCMessage *reqm, ProtobufCMessage *respm,
	       void *data)
{
	(void)data;
	fill(ctx, (const void *)reqm, (void *)respm);
	return 0;
}

static int work(struct rpc_ctx *ctx, const ProtobufCMessage *reqm, ProtobufCMessage *respm,
		void *data)
{
	(void)data;
	const Slipway__Test__V1__EchoRequest *req = (const void *)reqm;
	fill(ctx, req, (void *)respm);
	if (req->sleep_ms) {
		log_info("work started", "sleep_ms=%u", (unsigned)req->sleep_ms); /* tests wait for it */
		sleep_ms(req->sleep_ms);
	}
	if (req->fail_code)
		return rpc_errorf(ctx, sw_err_from_grpc((int)req->fail_code), "failed as asked: %s",
				  req->text);
	return 0;
}

static int chain(struct rpc_ctx *ctx, const ProtobufCMessage *reqm, ProtobufCMessage *respm,
		 void *data)
{
	struct app *a = data;
	const Slipway__Test__V1__EchoRequest *req = (const void *)reqm;
	Slipway__Test__V1__EchoResponse *resp = (void *)respm;
	char err[256];
	int rc = 0;

	pthread_mutex_lock(&a->mu);
	if (a->client == NULL || a->downstream == NULL || strcmp(a->downstream, req->downstream)) {
		rpc_client_free(a->client);
		a->client = NULL;
		free(a->downstream);
		a->downstream = strdup(req->downstream);
		struct rpc_client_opts o = { .target = req->downstream, .ca_pem = a->ca,
					     .cert_pem = a->cert, .key_pem = a->key,
					     .server_id = a->downstream_id };
		rc = rpc_client_new(&o, &a->client, err, sizeof err);
	}
	struct rpc_client *cli = a->client;
	pthread_mutex_unlock(&a->mu);
	if (rc != 0)
		return rpc_errorf(ctx, rc, "downstream: %s", err);

	Slipway__Test__V1__EchoRequest down = SLIPWAY__TEST__V1__ECHO_REQUEST__INIT;
	down.text = req->text;
	down.sleep_ms = req->sleep_ms;
	struct rpc_call_opts co = { .timeout_ms = 60000, .parent = ctx };
	ProtobufCMessage *out = NULL;
	rc = rpc_call(cli, &slipway__test__v1__echo__descriptor, "Work", &down.base, &out, &co,
		      err, sizeof err);
	if (rc != 0)
		return rpc_errorf(ctx, rc, "downstream: %s", err);
	Slipway__Test__V1__EchoResponse *d = (void *)out;
	resp->text = rpc_strdup(ctx, d->text);
	resp->peer = rpc_strdup(ctx, d->peer);
	resp->request_id = rpc_strdup(ctx, d->request_id);
	resp->remaining_ms = d->remaining_ms;
	protobuf_c_message_free_unpacked(out, NULL);
	return 0;
}

static int download(struct rpc_ctx *ctx, const ProtobufCMessage *reqm, ProtobufCMessage *respm,
		    void *data)
{
	(void)respm;
	(void)data;
	const Slipway__Test__V1__EchoRequest *req = (const void *)reqm;
	for (uint32_t i = 0; i < req->repeat; i++) {
		Slipway__Test__V1__EchoResponse r = SLIPWAY__TEST__V1__ECHO_RESPONSE__INIT;
		r.text = req->text;
		r.blob = req->blob;
		r.count = i;
		int rc = rpc_send(ctx, &r.base);
		if (rc != 0)
			return rpc_errorf(ctx, rc, "send %u failed", i);
		if (req->sleep_ms)
			sleep_ms(req->sleep_ms);
	}
	return 0;
}

static int upload(struct rpc_ctx *ctx, const ProtobufCMessage *reqm, ProtobufCMessage *respm,
		  void *data)
{
	(void)reqm;
	(void)data;
	Slipway__Test__V1__EchoResponse *resp = (void *)respm;
	uint64_t count = 0, bytes = 0;
	for (;;) {
		ProtobufCMessage *m = NULL;
		int rc = rpc_recv(ctx, &m);
		if (rc < 0)
			return rpc_errorf(ctx, rc, "upload interrupted after %llu messages",
					  (unsigned long long)count);
		if (rc == 0)
			break;
		Slipway__Test__V1__EchoRequest *r = (void *)m;
		count++;
		bytes += r->blob.len;
		if (r->sleep_ms)
			sleep_ms(r->sleep_ms);
		protobuf_c_message_free_unpacked(m, NULL);
	}
	resp->count = count;
	char text[64];
	snprintf(text, sizeof text, "%llu bytes", (unsigned long long)bytes);
	resp->text = rpc_strdup(ctx, text);
	resp->peer = (char *)rpc_peer(ctx);
	return 0;
}

struct later_job {
	struct rpc_ctx *ctx;
	unsigned ms;
	char *text;
};

static void *later_thread(void *arg)
{
	struct later_job *j = arg;
	sleep_ms(j->ms);
	Slipway__Test__V1__EchoResponse *resp = (void *)rpc_response(j->ctx);
	resp->text = j->text;
	resp->peer = (char *)rpc_peer(j->ctx);
	rpc_finish(j->ctx, 0);
	free(j);
	return NULL;
}

static int later(struct rpc_ctx *ctx, const ProtobufCMessage *reqm, ProtobufCMessage *respm,
		 void *data)
{
	(void)respm;
	(void)data;
	const Slipway__Test__V1__EchoRequest *req = (const void *)reqm;
	struct later_job *j = malloc(sizeof *j);
	if (j == NULL)
		return SW_ENOMEM;
	j->ctx = ctx;
	j->ms = req->sleep_ms;
	j->text = rpc_strdup(ctx, req->text);
	pthread_t t;
	rpc_defer(ctx);
	if (pthread_create(&t, NULL, later_thread, j) != 0) {
		free(j);
		rpc_finish(ctx, rpc_errorf(ctx, SW_EINTERNAL, "no thread"));
		return RPC_DEFERRED;
	}
	pthread_detach(t);
	return RPC_DEFERRED;
}

static const struct rpc_method methods[] = {
	{ "Say", RPC_UNARY, RPC_INLINE, say, RPC_PEER_ANY },
	{ "Work", RPC_UNARY, 0, work, RPC_PEER_ANY },
	{ "Chain", RPC_UNARY, 0, chain, RPC_PEER_ANY },
	{ "Download", RPC_SERVER_STREAM, 0, download, RPC_PEER_ANY },
	{ "Upload", RPC_CLIENT_STREAM, 0, upload, RPC_PEER_ANY },
	{ "Later", RPC_UNARY, 0, later, RPC_PEER_ANY },
};

int main(int argc, char **argv)
{
	static struct app a;
	struct cfg_opt opts[] = { SVC_COMMON_OPTS(&a.c) };
	size_t nopts = sizeof opts / sizeof opts[0];
	char err[512];
	int code = 2, exit_code;
	struct svc *s = NULL;

	pthread_mutex_init(&a.mu, NULL);
	if (svc_configure("testsvc", "TESTSVC", opts, nopts, argc, argv, &exit_code, err,
			  sizeof err) != 0) {
		fprintf(stderr, "slipway-testsvc: %s\n", err);
		goto out;
	}
	if (exit_code >= 0) {
		code = exit_code;
		goto out;
	}
	if (tls_read_pem(a.c.ca, &a.ca, err, sizeof err) != 0 ||
	    tls_read_pem(a.c.cert, &a.cert, err, sizeof err) != 0 ||
	    tls_read_pem(a.c.key, &a.key, err, sizeof err) != 0 ||
	    tls_cert_spiffe_id(a.cert, a.downstream_id, sizeof a.downstream_id, err, sizeof err) != 0 ||
	    svc_new("testsvc", &a.c, NULL, NULL, &s, err, sizeof err) != 0 ||
	    rpc_server_add_service(svc_server(s), &slipway__test__v1__echo__descriptor, methods,
				   sizeof methods / sizeof methods[0], &a, err, sizeof err) != 0 ||
	    svc_start(s, err, sizeof err) != 0) {
		log_error("start-up failed", "error=%s", err);
		fprintf(stderr, "slipway-testsvc: %s\n", err);
		goto out;
	}
	svc_wait(s);
	svc_stop(s);
	code = 0;
out:
	svc_free(s);
	rpc_client_free(a.client);
	free(a.downstream);
	free(a.ca);
	free(a.cert);
	free(a.key);
	cfg_free(opts, nopts);
	rpc_shutdown();
	return code;
}
