/*
 * load.c - the unary load generator of the benchmarks: keeps C calls in
 * flight on one mTLS channel for a fixed time and reports calls/s and
 * latency percentiles as one JSON object. One completion-queue thread; the
 * request is packed once. Benchmarks only.
 *
 *   bench-load --target A --ca F --cert F --key F --method /pkg.Svc/M
 *              [--concurrency C] [--seconds S] [--warmup S] [--payload-hex HEX]
 */
#include "cfg.h"
#include "tls.h"

#include <grpc/byte_buffer.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct slot {
	grpc_call *call;
	grpc_metadata_array init_md, trail_md;
	grpc_byte_buffer *send, *recv;
	grpc_status_code status;
	grpc_slice details;
	int64_t start_ns;
};

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static grpc_channel *ch;
static grpc_completion_queue *cq;
static grpc_slice method, payload;

static void start(struct slot *s)
{
	memset(s, 0, sizeof *s);
	grpc_metadata_array_init(&s->init_md);
	grpc_metadata_array_init(&s->trail_md);
	s->send = grpc_raw_byte_buffer_create(&payload, 1);
	s->start_ns = now_ns();
	gpr_timespec dl = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
				       gpr_time_from_seconds(10, GPR_TIMESPAN));
	s->call = grpc_channel_create_call(ch, NULL, 0, cq, method, NULL, dl, NULL);
	grpc_op ops[6];
	memset(ops, 0, sizeof ops);
	ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
	ops[1].op = GRPC_OP_SEND_MESSAGE;
	ops[1].data.send_message.send_message = s->send;
	ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
	ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
	ops[3].data.recv_initial_metadata.recv_initial_metadata = &s->init_md;
	ops[4].op = GRPC_OP_RECV_MESSAGE;
	ops[4].data.recv_message.recv_message = &s->recv;
	ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
	ops[5].data.recv_status_on_client.trailing_metadata = &s->trail_md;
	ops[5].data.recv_status_on_client.status = &s->status;
	ops[5].data.recv_status_on_client.status_details = &s->details;
	if (grpc_call_start_batch(s->call, ops, 6, s, NULL) != GRPC_CALL_OK) {
		fprintf(stderr, "bench-load: start_batch failed\n");
		exit(1);
	}
}

static void finish(struct slot *s)
{
	grpc_byte_buffer_destroy(s->send);
	if (s->recv)
		grpc_byte_buffer_destroy(s->recv);
	grpc_slice_unref(s->details);
	grpc_metadata_array_destroy(&s->init_md);
	grpc_metadata_array_destroy(&s->trail_md);
	grpc_call_unref(s->call);
}

static int cmp64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return (x > y) - (x < y);
}

static int hexval(char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

int main(int argc, char **argv)
{
	const char *target = NULL, *ca = NULL, *cert = NULL, *key = NULL, *m = NULL, *hex = "";
	long long conc = 32, secs = 3, warm = 1;
	for (int i = 1; i + 1 < argc; i += 2) {
		const char *k = argv[i], *v = argv[i + 1];
		if (!strcmp(k, "--target")) target = v;
		else if (!strcmp(k, "--ca")) ca = v;
		else if (!strcmp(k, "--cert")) cert = v;
		else if (!strcmp(k, "--key")) key = v;
		else if (!strcmp(k, "--method")) m = v;
		else if (!strcmp(k, "--payload-hex")) hex = v;
		else if (!strcmp(k, "--concurrency")) { if (cfg_parse_ll(v, &conc) || conc < 1 || conc > 4096) return 2; }
		else if (!strcmp(k, "--seconds")) { if (cfg_parse_ll(v, &secs) || secs < 1) return 2; }
		else if (!strcmp(k, "--warmup")) { if (cfg_parse_ll(v, &warm) || warm < 0) return 2; }
		else { fprintf(stderr, "bench-load: unknown %s\n", k); return 2; }
	}
	if (!target || !ca || !cert || !key || !m) {
		fprintf(stderr, "usage: bench-load --target A --ca F --cert F --key F --method PATH\n");
		return 2;
	}
	char *ca_pem, *cert_pem, *key_pem, err[256];
	if (tls_read_pem(ca, &ca_pem, err, sizeof err) || tls_read_pem(cert, &cert_pem, err, sizeof err) ||
	    tls_read_pem(key, &key_pem, err, sizeof err)) {
		fprintf(stderr, "bench-load: %s\n", err);
		return 1;
	}
	size_t hl = strlen(hex);
	uint8_t *pb = malloc(hl / 2 + 1);
	for (size_t i = 0; i + 1 < hl; i += 2)
		pb[i / 2] = (uint8_t)(hexval(hex[i]) << 4 | hexval(hex[i + 1]));
	grpc_init();
	payload = grpc_slice_from_copied_buffer((const char *)pb, hl / 2);
	method = grpc_slice_from_copied_string(m);
	grpc_channel_credentials *cc = tls_client_creds(ca_pem, cert_pem, key_pem, NULL, NULL) /* a benchmark: no pin */;
	ch = grpc_channel_create(target, cc, NULL);
	grpc_channel_credentials_release(cc);
	cq = grpc_completion_queue_create_for_next(NULL);

	struct slot *slots = calloc((size_t)conc, sizeof *slots);
	size_t cap = 1 << 22, n = 0;
	int64_t *lat = malloc(cap * sizeof *lat);
	long long errors = 0;
	int64_t t_start = now_ns();
	int64_t t_measure = t_start + warm * 1000000000LL;
	int64_t t_end = t_measure + secs * 1000000000LL;
	for (long long i = 0; i < conc; i++)
		start(&slots[i]);
	long long live = conc;
	while (live > 0) {
		grpc_event ev = grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
		if (ev.type != GRPC_OP_COMPLETE)
			continue;
		struct slot *s = ev.tag;
		int64_t t = now_ns();
		if (s->status != GRPC_STATUS_OK)
			errors++;
		else if (t >= t_measure && t < t_end && n < cap)
			lat[n++] = t - s->start_ns;
		finish(s);
		if (t < t_end)
			start(s);
		else
			live--;
	}
	double dur = (double)secs;
	qsort(lat, n, sizeof *lat, cmp64);
	double p50 = n ? (double)lat[n / 2] / 1000.0 : 0;
	double p99 = n ? (double)lat[(size_t)((double)n * 0.99)] / 1000.0 : 0;
	printf("{\"rps\": %.1f, \"p50_us\": %.1f, \"p99_us\": %.1f, \"calls\": %zu, \"errors\": %lld}\n",
	       (double)n / dur, p50, p99, n, errors);
	grpc_channel_destroy(ch);
	grpc_completion_queue_shutdown(cq);
	while (grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL).type !=
	       GRPC_QUEUE_SHUTDOWN)
		;
	grpc_completion_queue_destroy(cq);
	grpc_slice_unref(payload);
	grpc_slice_unref(method);
	grpc_shutdown();
	free(slots);
	free(lat);
	free(pb);
	free(ca_pem);
	free(cert_pem);
	free(key_pem);
	return errors > 0 ? 1 : 0;
}
