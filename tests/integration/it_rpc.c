/*
 * it_rpc.c - integration tests of lib/rpc, lib/tls and the daemon skeleton
 * with the real test service binary (build/tests/slipway-testsvc) over mTLS
 * on 127.0.0.1, using certificates from the stack's real PKI.
 */
#include "err.h"
#include "harness.h"
#include "pki.h"
#include "rpc.h"

#include "grpc/health/v1/health.pb-c.h"
#include "slipway/test/v1/echo.pb-c.h"

#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

static char dir[256], pki[256], ca[600], svc_crt[600], svc_key[600], alice_crt[600],
	alice_key[600], two_crt[600], two_key[600], rogue_crt[600], rogue_key[600],
	foreign_crt[600], foreign_key[600], addr[64], logpath[600];
static struct h_proc svc;

static const char *testsvc_bin(void)
{
	const char *b = getenv("SLIPWAY_TESTSVC");
	return b ? b : "build/tests/slipway-testsvc";
}

/* Starts a test service with extra flags; returns 0 on success. */
static int start_testsvc(struct h_proc *p, const char *log, const char *listen, ...)
{
	char *argv[32];
	int n = 0;
	static char portfile[8][600];
	static int next;
	char *pf = portfile[next++ % 8];
	snprintf(pf, 600, "%s/port.%d", dir, next);
	argv[n++] = (char *)testsvc_bin();
	argv[n++] = "--listen";
	argv[n++] = (char *)listen;
	argv[n++] = "--port-file";
	argv[n++] = pf;
	argv[n++] = "--ca";
	argv[n++] = ca;
	argv[n++] = "--cert";
	argv[n++] = svc_crt;
	argv[n++] = "--key";
	argv[n++] = svc_key;
	argv[n++] = "--log-level";
	argv[n++] = "debug";
	va_list ap;
	va_start(ap, listen);
	const char *a;
	while ((a = va_arg(ap, const char *)) != NULL && n < 30)
		argv[n++] = (char *)a;
	va_end(ap);
	argv[n] = NULL;
	return h_start(p, argv, pf, log);
}

static int group_setup(void **state)
{
	(void)state;
	snprintf(dir, sizeof dir, "%s", h_tmpdir("it_rpc"));
	snprintf(pki, sizeof pki, "%s", h_env("SLIPWAY_PKI_DIR"));
	snprintf(ca, sizeof ca, "%s/ca.crt", pki);
	char td[128], uri[256], err[256];
	if (pki_trust_domain(pki, td, sizeof td, err, sizeof err) != 0)
		return -1;
	snprintf(svc_crt, sizeof svc_crt, "%s/testsvc.crt", dir);
	snprintf(svc_key, sizeof svc_key, "%s/testsvc.key", dir);
	char prefix[400];
	snprintf(prefix, sizeof prefix, "%s/testsvc", dir);
	snprintf(uri, sizeof uri, "spiffe://%s/service/testsvc", td);
	h_issue(pki, prefix, uri, NULL, 1);
	static char testsvc_id[256];
	snprintf(testsvc_id, sizeof testsvc_id, "%s", uri);
	h_server_id = testsvc_id; /* every server here is a testsvc */
	snprintf(prefix, sizeof prefix, "%s/alice", dir);
	snprintf(uri, sizeof uri, "spiffe://%s/user/alice", td);
	h_issue(pki, prefix, uri, NULL, 0);
	snprintf(alice_crt, sizeof alice_crt, "%s.crt", prefix);
	snprintf(alice_key, sizeof alice_key, "%s.key", prefix);
	/* Two URI SANs: chains to the right CA, but names two principals. */
	snprintf(prefix, sizeof prefix, "%s/two", dir);
	char uri2[256];
	snprintf(uri2, sizeof uri2, "spiffe://%s/user/mallory", td);
	h_issue(pki, prefix, uri, uri2, 0);
	snprintf(two_crt, sizeof two_crt, "%s.crt", prefix);
	snprintf(two_key, sizeof two_key, "%s.key", prefix);
	/* A certificate from another CA with a plausible identity. */
	char rogue_dir[600];
	snprintf(rogue_dir, sizeof rogue_dir, "%s/rogue-ca", dir);
	if (pki_init(rogue_dir, td, 30, err, sizeof err) != 0)
		return -1;
	snprintf(prefix, sizeof prefix, "%s/rogue", dir);
	h_issue(rogue_dir, prefix, uri, NULL, 0);
	snprintf(rogue_crt, sizeof rogue_crt, "%s.crt", prefix);
	snprintf(rogue_key, sizeof rogue_key, "%s.key", prefix);
	/* Right CA, foreign trust domain. */
	snprintf(prefix, sizeof prefix, "%s/foreign", dir);
	h_issue(pki, prefix, "spiffe://elsewhere/user/alice", NULL, 0);
	snprintf(foreign_crt, sizeof foreign_crt, "%s.crt", prefix);
	snprintf(foreign_key, sizeof foreign_key, "%s.key", prefix);

	snprintf(logpath, sizeof logpath, "%s/testsvc.log", dir);
	if (start_testsvc(&svc, logpath, "127.0.0.1:0", "--max-msg", "64KiB", "--workers", "4",
			  NULL) != 0)
		return -1;
	snprintf(addr, sizeof addr, "127.0.0.1:%d", svc.port);
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	if (svc.pid > 0)
		h_stop(&svc, SIGTERM, 10000);
	return 0;
}

static int say(struct rpc_client *c, const char *method, const char *rid, const char *text,
	       size_t blob, unsigned sleep_ms, int64_t timeout_ms,
	       Slipway__Test__V1__EchoResponse **out, char *err, size_t errlen)
{
	Slipway__Test__V1__EchoRequest req = SLIPWAY__TEST__V1__ECHO_REQUEST__INIT;
	req.text = (char *)text;
	req.sleep_ms = sleep_ms;
	uint8_t *b = NULL;
	if (blob) {
		b = calloc(1, blob);
		req.blob.data = b;
		req.blob.len = blob;
	}
	struct rpc_call_opts o = { .timeout_ms = timeout_ms, .request_id = rid };
	ProtobufCMessage *resp = NULL;
	int rc = rpc_call(c, &slipway__test__v1__echo__descriptor, method, &req.base, &resp, &o,
			  err, errlen);
	free(b);
	if (out != NULL)
		*out = (void *)resp;
	else if (resp != NULL)
		protobuf_c_message_free_unpacked(resp, NULL);
	return rc;
}

static void test_health_over_mtls(void **state)
{
	(void)state;
	struct rpc_client *c = h_client(addr, ca, alice_crt, alice_key);
	Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
	ProtobufCMessage *resp = NULL;
	char err[256];
	int rc = rpc_call(c, &grpc__health__v1__health__descriptor, "Check", &req.base, &resp, NULL,
			  err, sizeof err);
	assert_int_equal(rc, 0);
	assert_int_equal(((Grpc__Health__V1__HealthCheckResponse *)resp)->status,
			 GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
	protobuf_c_message_free_unpacked(resp, NULL);
	/* An unknown service name is NOT_FOUND, as the protocol says. */
	req.service = "nope";
	rc = rpc_call(c, &grpc__health__v1__health__descriptor, "Check", &req.base, &resp, NULL, err,
		      sizeof err);
	assert_int_equal(rc, SW_ENOTFOUND);
	rpc_client_free(c);
}

static void test_handler_sees_exact_spiffe_id(void **state)
{
	(void)state;
	struct rpc_client *c = h_client(addr, ca, alice_crt, alice_key);
	Slipway__Test__V1__EchoResponse *r = NULL;
	char err[256];
	assert_int_equal(say(c, "Say", "rid-exact-1", "hi", 0, 0, 5000, &r, err, sizeof err), 0);
	char td[128];
	pki_trust_domain(pki, td, sizeof td, err, sizeof err);
	char want[256];
	snprintf(want, sizeof want, "spiffe://%s/user/alice", td);
	assert_string_equal(r->peer, want);
	assert_string_equal(r->request_id, "rid-exact-1");
	assert_string_equal(r->text, "hi");
	protobuf_c_message_free_unpacked(&r->base, NULL);
	/* The same from the worker pool. */
	assert_int_equal(say(c, "Work", NULL, "pool", 0, 0, 5000, &r, err, sizeof err), 0);
	assert_string_equal(r->peer, want);
	assert_int_equal(strlen(r->request_id), 32); /* generated */
	protobuf_c_message_free_unpacked(&r->base, NULL);
	rpc_client_free(c);
}

static void test_no_client_cert_never_reaches_handler(void **state)
{
	(void)state;
	struct rpc_client *c = h_client(addr, ca, NULL, NULL);
	char err[256];
	int rc = say(c, "Say", "rid-nocert-7", "x", 0, 0, 3000, NULL, err, sizeof err);
	assert_int_equal(rc, SW_EUNAVAIL);
	rpc_client_free(c);
	h_sleep_ms(100);
	assert_int_equal(h_grep_count(logpath, "rid-nocert-7"), 0);
}

static void test_other_ca_rejected(void **state)
{
	(void)state;
	struct rpc_client *c = h_client(addr, ca, rogue_crt, rogue_key);
	char err[256];
	int rc = say(c, "Say", "rid-rogue-7", "x", 0, 0, 3000, NULL, err, sizeof err);
	assert_int_equal(rc, SW_EUNAVAIL);
	rpc_client_free(c);
	h_sleep_ms(100);
	assert_int_equal(h_grep_count(logpath, "rid-rogue-7"), 0);
}

static void test_two_uri_sans_unauthenticated(void **state)
{
	(void)state;
	struct rpc_client *c = h_client(addr, ca, two_crt, two_key);
	char err[256];
	int rc = say(c, "Say", "rid-two-7", "x", 0, 0, 3000, NULL, err, sizeof err);
	assert_int_equal(rc, SW_EUNAUTH);
	assert_non_null(strstr(err, "exactly one"));
	rpc_client_free(c);
}

static void test_foreign_trust_domain_unauthenticated(void **state)
{
	(void)state;
	struct rpc_client *c = h_client(addr, ca, foreign_crt, foreign_key);
	char err[256];
	int rc = say(c, "Say", NULL, "x", 0, 0, 3000, NULL, err, sizeof err);
	assert_int_equal(rc, SW_EUNAUTH);
	rpc_client_free(c);
}

static void test_deadline_exceeded(void **state)
{
	(void)state;
	struct rpc_client *c = h_client(addr, ca, alice_crt, alice_key);
	char err[256];
	long long t0 = h_now_ms();
	int rc = say(c, "Work", NULL, "slow", 0, 800, 100, NULL, err, sizeof err);
	assert_int_equal(rc, SW_ETIMEDOUT);
	assert_true(h_now_ms() - t0 < 700);
	rpc_client_free(c);
}

static void test_oversize_resource_exhausted(void **state)
{
	(void)state;
	struct rpc_client *c = h_client(addr, ca, alice_crt, alice_key);
	char err[256];
	/* The server takes at most 64 KiB per message. */
	int rc = say(c, "Say", NULL, "big", 100 * 1024, 0, 5000, NULL, err, sizeof err);
	assert_int_equal(rc, SW_ELIMIT);
	rc = say(c, "Work", NULL, "big", 100 * 1024, 0, 5000, NULL, err, sizeof err);
	assert_int_equal(rc, SW_ELIMIT);
	/* Just under the cap is fine. */
	rc = say(c, "Say", NULL, "ok", 60 * 1024, 0, 5000, NULL, err, sizeof err);
	assert_int_equal(rc, 0);
	rpc_client_free(c);
}

static void test_unknown_method_unimplemented(void **state)
{
	(void)state;
	/* A descriptor naming a method the server does not have. */
	static const ProtobufCMethodDescriptor methods[1] = {
		{ "Nope", &slipway__test__v1__echo_request__descriptor,
		  &slipway__test__v1__echo_response__descriptor },
	};
	static const unsigned indices[1] = { 0 };
	ProtobufCServiceDescriptor sd = slipway__test__v1__echo__descriptor;
	sd.n_methods = 1;
	sd.methods = methods;
	sd.method_indices_by_name = indices;
	struct rpc_client *c = h_client(addr, ca, alice_crt, alice_key);
	Slipway__Test__V1__EchoRequest req = SLIPWAY__TEST__V1__ECHO_REQUEST__INIT;
	ProtobufCMessage *resp = NULL;
	char err[256];
	long long t0 = h_now_ms();
	struct rpc_call_opts o = { .timeout_ms = 5000 };
	int rc = rpc_call(c, &sd, "Nope", &req.base, &resp, &o, err, sizeof err);
	assert_int_equal(rc, SW_EUNIMPL);
	assert_true(h_now_ms() - t0 < 2000); /* at once, not at the deadline */
	rpc_client_free(c);
}

static void test_server_stream(void **state)
{
	(void)state;
	struct rpc_client *c = h_client(addr, ca, alice_crt, alice_key);
	struct rpc_stream *s = NULL;
	char err[256];
	assert_int_equal(rpc_stream_open(c, &slipway__test__v1__echo__descriptor, "Download", NULL,
					 &s, err, sizeof err),
			 0);
	Slipway__Test__V1__EchoRequest req = SLIPWAY__TEST__V1__ECHO_REQUEST__INIT;
	req.text = "chunk";
	req.repeat = 200;
	assert_int_equal(rpc_stream_send(s, &req.base), 0);
	assert_int_equal(rpc_stream_close_send(s), 0);
	uint64_t n = 0;
	ProtobufCMessage *m;
	while (rpc_stream_recv(s, &m) == 1) {
		Slipway__Test__V1__EchoResponse *r = (void *)m;
		assert_int_equal(r->count, n);
		n++;
		protobuf_c_message_free_unpacked(m, NULL);
	}
	assert_int_equal(rpc_stream_finish(s, err, sizeof err), 0);
	assert_int_equal(n, 200);
	rpc_client_free(c);
}

static void test_client_stream(void **state)
{
	(void)state;
	struct rpc_client *c = h_client(addr, ca, alice_crt, alice_key);
	struct rpc_stream *s = NULL;
	char err[256];
	assert_int_equal(rpc_stream_open(c, &slipway__test__v1__echo__descriptor, "Upload", NULL, &s,
					 err, sizeof err),
			 0);
	uint8_t blob[1000];
	memset(blob, 7, sizeof blob);
	for (int i = 0; i < 50; i++) {
		Slipway__Test__V1__EchoRequest req = SLIPWAY__TEST__V1__ECHO_REQUEST__INIT;
		req.blob.data = blob;
		req.blob.len = sizeof blob;
		assert_int_equal(rpc_stream_send(s, &req.base), 0);
	}
	assert_int_equal(rpc_stream_close_send(s), 0);
	ProtobufCMessage *m = NULL;
	assert_int_equal(rpc_stream_recv(s, &m), 1);
	Slipway__Test__V1__EchoResponse *r = (void *)m;
	assert_int_equal(r->count, 50);
	assert_string_equal(r->text, "50000 bytes");
	protobuf_c_message_free_unpacked(m, NULL);
	assert_int_equal(rpc_stream_finish(s, err, sizeof err), 0);
	rpc_client_free(c);
}

static void test_client_stream_cancel(void **state)
{
	(void)state;
	struct rpc_client *c = h_client(addr, ca, alice_crt, alice_key);
	struct rpc_stream *s = NULL;
	char err[256];
	struct rpc_call_opts o = { .timeout_ms = 10000, .request_id = "rid-cancel-up" };
	assert_int_equal(rpc_stream_open(c, &slipway__test__v1__echo__descriptor, "Upload", &o, &s,
					 err, sizeof err),
			 0);
	Slipway__Test__V1__EchoRequest req = SLIPWAY__TEST__V1__ECHO_REQUEST__INIT;
	req.text = "part";
	assert_int_equal(rpc_stream_send(s, &req.base), 0);
	rpc_stream_cancel(s);
	assert_int_equal(rpc_stream_finish(s, err, sizeof err), SW_ECANCELLED);
	rpc_client_free(c);
	/* The handler saw the cancellation and the call ended CANCELLED. */
	for (int i = 0; i < 100 && h_grep_count(logpath, "rid-cancel-up") == 0; i++)
		h_sleep_ms(20);
	assert_int_equal(h_grep_count(logpath, "rid-cancel-up"), 1);
}

static void test_deferred_call(void **state)
{
	(void)state;
	struct rpc_client *c = h_client(addr, ca, alice_crt, alice_key);
	Slipway__Test__V1__EchoResponse *r = NULL;
	char err[256];
	assert_int_equal(say(c, "Later", NULL, "afterwards", 0, 50, 5000, &r, err, sizeof err), 0);
	assert_string_equal(r->text, "afterwards");
	protobuf_c_message_free_unpacked(&r->base, NULL);
	rpc_client_free(c);
}

static void test_request_id_and_deadline_propagate(void **state)
{
	(void)state;
	/* Chain calls Work on a second server, passing the call as parent. */
	struct h_proc down;
	char log2[600];
	snprintf(log2, sizeof log2, "%s/downstream.log", dir);
	assert_int_equal(start_testsvc(&down, log2, "127.0.0.1:0", NULL), 0);
	char daddr[64];
	snprintf(daddr, sizeof daddr, "127.0.0.1:%d", down.port);
	struct rpc_client *c = h_client(addr, ca, alice_crt, alice_key);
	Slipway__Test__V1__EchoRequest req = SLIPWAY__TEST__V1__ECHO_REQUEST__INIT;
	req.text = "via";
	req.downstream = daddr;
	struct rpc_call_opts o = { .timeout_ms = 3000, .request_id = "rid-chain-1" };
	ProtobufCMessage *resp = NULL;
	char err[256];
	assert_int_equal(rpc_call(c, &slipway__test__v1__echo__descriptor, "Chain", &req.base,
				  &resp, &o, err, sizeof err),
			 0);
	Slipway__Test__V1__EchoResponse *r = (void *)resp;
	assert_string_equal(r->request_id, "rid-chain-1");
	assert_true(r->remaining_ms > 0 && r->remaining_ms <= 3000);
	assert_non_null(strstr(r->peer, "/service/testsvc")); /* the hop calls as the service */
	protobuf_c_message_free_unpacked(resp, NULL);
	/* The downstream call dies with the caller's deadline. */
	req.sleep_ms = 2000;
	o.timeout_ms = 300;
	o.request_id = "rid-chain-2";
	long long t0 = h_now_ms();
	assert_int_equal(rpc_call(c, &slipway__test__v1__echo__descriptor, "Chain", &req.base,
				  &resp, &o, err, sizeof err),
			 SW_ETIMEDOUT);
	assert_true(h_now_ms() - t0 < 1500);
	rpc_client_free(c);
	h_sleep_ms(2200);
	assert_true(h_grep_count(log2, "rid-chain-2") >= 1);
	assert_true(h_grep_count(log2, "rid-chain-1") >= 1);
	assert_int_equal(h_stop(&down, SIGTERM, 10000), 0);
}

struct inflight_arg {
	int rc;
	char err[256];
	unsigned sleep_ms; /* in the handler; 0 = 1000 */
};

static void *inflight_call(void *arg)
{
	struct inflight_arg *a = arg;
	struct rpc_client *c = h_client(addr, ca, alice_crt, alice_key);
	a->rc = say(c, "Work", NULL, "finish me", 0, a->sleep_ms ? a->sleep_ms : 1000, 15000, NULL,
		    a->err, sizeof a->err);
	rpc_client_free(c);
	return NULL;
}

static void test_busy_server_resource_exhausted(void **state)
{
	(void)state;
	/* One worker and room for one queued call: the third concurrent call
	 * is refused at once instead of waiting. (The same caller makes all
	 * three: --max-calls-per-peer lets it have two, so that the queue is
	 * what refuses.) */
	struct h_proc p;
	char log2[600];
	snprintf(log2, sizeof log2, "%s/busy.log", dir);
	assert_int_equal(start_testsvc(&p, log2, "127.0.0.1:0", "--workers", "1", "--max-queue", "1",
				       "--max-calls-per-peer", "2", NULL),
			 0);
	char a2[64];
	snprintf(a2, sizeof a2, "127.0.0.1:%d", p.port);
	struct rpc_client *c = h_client(a2, ca, alice_crt, alice_key);
	char err[256];
	struct inflight_arg args[2];
	pthread_t t[2];
	/* Occupy the worker and the queue slot through the shared address. */
	static char saved[64];
	snprintf(saved, sizeof saved, "%s", addr);
	snprintf(addr, sizeof addr, "%s", a2);
	memset(args, 0, sizeof args);
	args[0].sleep_ms = args[1].sleep_ms = 4000;
	pthread_create(&t[0], NULL, inflight_call, &args[0]);
	for (int i = 0; i < 1000 && h_grep_count(log2, "work started") < 1; i++)
		h_sleep_ms(10); /* the first call holds the worker */
	pthread_create(&t[1], NULL, inflight_call, &args[1]);
	/* The second waits in the queue: not observable from here, so give its
	 * connection ample time (the first holds the worker for 4 s). */
	h_sleep_ms(1500);
	int rc = say(c, "Work", NULL, "third", 0, 0, 5000, NULL, err, sizeof err);
	assert_int_equal(rc, SW_ELIMIT);
	for (int i = 0; i < 2; i++) {
		pthread_join(t[i], NULL);
		assert_int_equal(args[i].rc, 0);
	}
	snprintf(addr, sizeof addr, "%s", saved);
	rpc_client_free(c);
	assert_int_equal(h_stop(&p, SIGTERM, 10000), 0);
}

static void test_sigterm_lets_inflight_calls_finish(void **state)
{
	(void)state;
	struct h_proc p;
	char log2[600];
	snprintf(log2, sizeof log2, "%s/sigterm.log", dir);
	assert_int_equal(start_testsvc(&p, log2, "127.0.0.1:0", NULL), 0);
	static char saved[64];
	snprintf(saved, sizeof saved, "%s", addr);
	snprintf(addr, sizeof addr, "127.0.0.1:%d", p.port);
	struct inflight_arg args[4];
	pthread_t t[4];
	memset(args, 0, sizeof args);
	for (int i = 0; i < 4; i++)
		pthread_create(&t[i], NULL, inflight_call, &args[i]);
	/* Signal only once all four calls are in their handlers. */
	for (int i = 0; i < 1000 && h_grep_count(log2, "work started") < 4; i++)
		h_sleep_ms(10);
	assert_int_equal(h_grep_count(log2, "work started"), 4);
	long long t0 = h_now_ms();
	kill(p.pid, SIGTERM);
	for (int i = 0; i < 4; i++) {
		pthread_join(t[i], NULL);
		assert_int_equal(args[i].rc, 0);
	}
	int st = h_wait(&p, 10000);
	assert_int_equal(st, 0);
	assert_true(h_now_ms() - t0 < 5000);
	/* After the signal the server accepts no new calls. */
	struct rpc_client *c = h_client(addr, ca, alice_crt, alice_key);
	char err[256];
	assert_int_equal(say(c, "Say", NULL, "late", 0, 0, 1000, NULL, err, sizeof err),
			 SW_EUNAVAIL);
	rpc_client_free(c);
	snprintf(addr, sizeof addr, "%s", saved);
}

static void test_second_server_same_port_fails(void **state)
{
	(void)state;
	struct h_proc p;
	char log2[600];
	snprintf(log2, sizeof log2, "%s/second.log", dir);
	assert_int_not_equal(start_testsvc(&p, log2, addr, NULL), 0);
	if (p.pid > 0)
		assert_int_not_equal(h_wait(&p, 5000), 0);
	assert_true(h_grep_count(log2, "cannot listen") >= 1);
	/* And the first server still answers, alone. */
	struct rpc_client *c = h_client(addr, ca, alice_crt, alice_key);
	char err[256];
	assert_int_equal(say(c, "Say", NULL, "still me", 0, 0, 3000, NULL, err, sizeof err), 0);
	rpc_client_free(c);
}

static void test_check_config_and_help(void **state)
{
	(void)state;
	struct h_proc p;
	char log2[600];
	snprintf(log2, sizeof log2, "%s/check.log", dir);
	char *argv1[] = { (char *)testsvc_bin(), "--ca", ca, "--cert", svc_crt, "--key", svc_key,
			  "--check-config", NULL };
	assert_int_equal(h_start(&p, argv1, NULL, log2), 0);
	assert_int_equal(h_wait(&p, 5000), 0);
	assert_true(h_grep_count(log2, "configuration ok") == 1);
	char *argv2[] = { (char *)testsvc_bin(), "--workers", "0", "--ca", ca, "--cert", svc_crt,
			  "--key", svc_key, NULL };
	assert_int_equal(h_start(&p, argv2, NULL, log2), 0);
	assert_int_equal(h_wait(&p, 5000), 2);
	assert_true(h_grep_count(log2, "--workers must be between") == 1);
	char *argv3[] = { (char *)testsvc_bin(), "--help", NULL };
	assert_int_equal(h_start(&p, argv3, NULL, log2), 0);
	assert_int_equal(h_wait(&p, 5000), 0);
	assert_true(h_grep_count(log2, "SLIPWAY_TESTSVC_WORKERS") == 1);
	/* A private key readable by others is refused. */
	char loose[600], cmd[2048];
	snprintf(loose, sizeof loose, "%s/loose.key", dir);
	snprintf(cmd, sizeof cmd, "cp '%s' '%s' && chmod 644 '%s'", svc_key, loose, loose);
	assert_int_equal(system(cmd), 0);
	char *argv4[] = { (char *)testsvc_bin(), "--ca", ca, "--cert", svc_crt, "--key", loose, NULL };
	assert_int_equal(h_start(&p, argv4, NULL, log2), 0);
	assert_int_equal(h_wait(&p, 5000), 2);
	assert_true(h_grep_count(log2, "readable by others") >= 1);
}

/* A service's client (no fail_fast) calling a peer that is down: the call
 * fails with UNAVAILABLE at once, through the fast path, instead of holding
 * its thread for its whole deadline; a call that insists (wait_for_ready)
 * still waits; and calls work again once the peer is back. */
static void test_dead_peer_fails_fast(void **state)
{
	(void)state;
	struct h_proc p;
	char log2[600], a2[64], listen[64], err[256];
	snprintf(log2, sizeof log2, "%s/deadpeer.log", dir);
	assert_int_equal(start_testsvc(&p, log2, "127.0.0.1:0", NULL), 0);
	int port = p.port;
	snprintf(a2, sizeof a2, "127.0.0.1:%d", port);
	struct rpc_client *c = h_service_client(a2, ca, alice_crt, alice_key);
	assert_int_equal(say(c, "Work", NULL, "up", 0, 0, 5000, NULL, err, sizeof err), 0);
	assert_int_equal(rpc_client_fast_failures(c), 0);
	assert_int_equal(h_stop(&p, SIGTERM, 10000), 0);

	/* The peer went away while the channel was READY, and after. */
	for (int i = 0; i < 2; i++) {
		long long t0 = h_now_ms();
		int rc = say(c, "Work", NULL, "down", 0, 0, 5000, NULL, err, sizeof err);
		fprintf(stderr, "it_rpc: call %d to a dead peer (deadline 5000 ms): %s after %lld ms\n",
			i, err, h_now_ms() - t0);
		assert_int_equal(rc, SW_EUNAVAIL);
		assert_non_null(strstr(err, "failing fast"));
		assert_int_equal(rpc_client_fast_failures(c), (unsigned long long)i + 1);
	}
	/* A stream to it: opened already failed, finish says why. */
	struct rpc_stream *st = NULL;
	struct rpc_call_opts so = { .timeout_ms = 5000 };
	long long ts0 = h_now_ms();
	assert_int_equal(rpc_stream_open(c, &slipway__test__v1__echo__descriptor, "Upload", &so,
					 &st, err, sizeof err),
			 0);
	assert_int_equal(rpc_stream_close_send(st), SW_ECANCELLED);
	assert_int_equal(rpc_stream_finish(st, err, sizeof err), SW_EUNAVAIL);
	fprintf(stderr, "it_rpc: stream to a dead peer: %s after %lld ms\n", err, h_now_ms() - ts0);
	assert_non_null(strstr(err, "failing fast"));
	assert_int_equal(rpc_client_fast_failures(c), 3);
	/* A new channel to it: its first call learns and fails fast too. */
	struct rpc_client *fresh = h_service_client(a2, ca, alice_crt, alice_key);
	long long t0 = h_now_ms();
	assert_int_equal(say(fresh, "Work", NULL, "down", 0, 0, 5000, NULL, err, sizeof err),
			 SW_EUNAVAIL);
	fprintf(stderr, "it_rpc: first call of a new channel to a dead peer: %lld ms\n",
		h_now_ms() - t0);
	assert_int_equal(rpc_client_fast_failures(fresh), 1);
	rpc_client_free(fresh);
	/* wait_for_ready: waits for the peer until the deadline. */
	Slipway__Test__V1__EchoRequest req = SLIPWAY__TEST__V1__ECHO_REQUEST__INIT;
	req.text = "patient";
	struct rpc_call_opts o = { .timeout_ms = 600, .wait_for_ready = 1 };
	ProtobufCMessage *resp = NULL;
	assert_int_equal(rpc_call(c, &slipway__test__v1__echo__descriptor, "Work", &req.base, &resp,
				  &o, err, sizeof err),
			 SW_ETIMEDOUT);
	assert_int_equal(rpc_client_fast_failures(c), 3);

	/* Back on the same port: the channel reconnects by itself. */
	snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
	assert_int_equal(start_testsvc(&p, log2, listen, NULL), 0);
	t0 = h_now_ms();
	int rc = -1;
	while (rc != 0 && h_now_ms() - t0 < 15000) {
		rc = say(c, "Work", NULL, "back", 0, 0, 5000, NULL, err, sizeof err);
		if (rc != 0)
			h_sleep_ms(200);
	}
	fprintf(stderr, "it_rpc: calls work again %lld ms after the peer's return\n",
		h_now_ms() - t0);
	assert_int_equal(rc, 0);
	rpc_client_free(c);
	assert_int_equal(h_stop(&p, SIGTERM, 10000), 0);
}

int main(void)
{
	rpc_init();
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_health_over_mtls),
		cmocka_unit_test(test_handler_sees_exact_spiffe_id),
		cmocka_unit_test(test_no_client_cert_never_reaches_handler),
		cmocka_unit_test(test_other_ca_rejected),
		cmocka_unit_test(test_two_uri_sans_unauthenticated),
		cmocka_unit_test(test_foreign_trust_domain_unauthenticated),
		cmocka_unit_test(test_deadline_exceeded),
		cmocka_unit_test(test_oversize_resource_exhausted),
		cmocka_unit_test(test_unknown_method_unimplemented),
		cmocka_unit_test(test_server_stream),
		cmocka_unit_test(test_client_stream),
		cmocka_unit_test(test_client_stream_cancel),
		cmocka_unit_test(test_deferred_call),
		cmocka_unit_test(test_request_id_and_deadline_propagate),
		cmocka_unit_test(test_busy_server_resource_exhausted),
		cmocka_unit_test(test_sigterm_lets_inflight_calls_finish),
		cmocka_unit_test(test_second_server_same_port_fails),
		cmocka_unit_test(test_check_config_and_help),
		cmocka_unit_test(test_dead_peer_fails_fast),
	};
	int rc = cmocka_run_group_tests_name("it_rpc", tests, group_setup, group_teardown);
	rpc_shutdown();
	return rc;
}
