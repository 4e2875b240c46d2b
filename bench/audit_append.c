/*
 * audit_append.c - load for `bench/run audit`: C clients, each on its own
 * mTLS connection, append unique events for S seconds (or, with --fill N,
 * append in batches of 1000 until the log holds N entries). Prints one JSON
 * object. Benchmarks only.
 *
 *   bench-audit_append --target A --ca F --cert F --key F --service NAME
 *                      [--clients C] [--seconds S] [--fill N]
 */
#include "cfg.h"
#include "err.h"
#include "rpc.h"
#include "tls.h"

#include "slipway/v1/audit.pb-c.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *target, *ca, *cert, *key, *service = "bench";
static long long clients = 1, seconds = 5, fill = 0;
static char *ca_pem, *cert_pem, *key_pem;
static int64_t t_end;

struct worker {
	int id;
	long long ok, errors;
	int64_t *lat;
	size_t nlat, cap;
};

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static struct rpc_client *client(void)
{
	struct rpc_client *c = NULL;
	char err[256];
	struct rpc_client_opts o = { .target = target, .ca_pem = ca_pem, .cert_pem = cert_pem,
				     .key_pem = key_pem, .own_connection = 1, .max_msg_bytes = 16u << 20,
				     .server_service = "audit" };
	if (rpc_client_new(&o, &c, err, sizeof err) != 0) {
		fprintf(stderr, "client: %s\n", err);
		exit(1);
	}
	return c;
}

static void event(Slipway__V1__AuditEvent *ev, char *id, size_t idlen, int w, long long n)
{
	static const char actor[] = "spiffe://slipway/user/bench";
	slipway__v1__audit_event__init(ev);
	snprintf(id, idlen, "b-%d-%lld-%lld", w, (long long)(now_ns() / 1000), n);
	ev->event_id = id;
	ev->actor = (char *)actor;
	ev->service = (char *)service;
	ev->action = "bench.append";
	ev->resource = "release/web@1.2.3";
	ev->outcome = SLIPWAY__V1__OUTCOME__OUTCOME_SUCCESS;
	ev->request_id = "bench";
	ev->time_unix_ms = (int64_t)time(NULL) * 1000;
}

static void *run(void *arg)
{
	struct worker *w = arg;
	struct rpc_client *c = client();
	char id[64], err[256];
	long long n = 0;
	while (now_ns() < t_end) {
		Slipway__V1__AuditEvent ev;
		Slipway__V1__AppendRequest req = SLIPWAY__V1__APPEND_REQUEST__INIT;
		event(&ev, id, sizeof id, w->id, n++);
		req.event = &ev;
		ProtobufCMessage *m = NULL;
		int64_t t0 = now_ns();
		if (rpc_call(c, &slipway__v1__audit__descriptor, "Append", &req.base, &m, NULL, err,
			     sizeof err) != 0) {
			w->errors++;
			if (w->errors < 3)
				fprintf(stderr, "append: %s\n", err);
			continue;
		}
		protobuf_c_message_free_unpacked(m, NULL);
		w->ok++;
		if (w->nlat == w->cap) {
			w->cap = w->cap ? w->cap * 2 : 4096;
			w->lat = realloc(w->lat, w->cap * sizeof *w->lat);
		}
		w->lat[w->nlat++] = now_ns() - t0;
	}
	rpc_client_free(c);
	return NULL;
}

static int cmp64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return (x > y) - (x < y);
}

static int do_fill(void)
{
	struct rpc_client *c = client();
	char err[256];
	static Slipway__V1__AuditEvent evs[1000];
	static Slipway__V1__AuditEvent *ptrs[1000];
	static char ids[1000][64];
	long long done = 0;
	int64_t t0 = now_ns();
	while (done < fill) {
		int n = fill - done < 1000 ? (int)(fill - done) : 1000;
		for (int i = 0; i < n; i++) {
			event(&evs[i], ids[i], sizeof ids[i], 0, done + i);
			ptrs[i] = &evs[i];
		}
		Slipway__V1__AppendBatchRequest req = SLIPWAY__V1__APPEND_BATCH_REQUEST__INIT;
		req.n_events = (size_t)n;
		req.events = ptrs;
		ProtobufCMessage *m = NULL;
		struct rpc_call_opts o = { .timeout_ms = 60000 };
		if (rpc_call(c, &slipway__v1__audit__descriptor, "AppendBatch", &req.base, &m, &o, err,
			     sizeof err) != 0) {
			fprintf(stderr, "fill: %s\n", err);
			return 1;
		}
		protobuf_c_message_free_unpacked(m, NULL);
		done += n;
	}
	double s = (double)(now_ns() - t0) / 1e9;
	printf("{\"filled\": %lld, \"seconds\": %.2f}\n", done, s);
	rpc_client_free(c);
	return 0;
}

int main(int argc, char **argv)
{
	for (int i = 1; i + 1 < argc; i += 2) {
		const char *k = argv[i], *v = argv[i + 1];
		if (!strcmp(k, "--target")) target = v;
		else if (!strcmp(k, "--ca")) ca = v;
		else if (!strcmp(k, "--cert")) cert = v;
		else if (!strcmp(k, "--key")) key = v;
		else if (!strcmp(k, "--service")) service = v;
		else if (!strcmp(k, "--clients")) { if (cfg_parse_ll(v, &clients) || clients < 1 || clients > 1024) return 2; }
		else if (!strcmp(k, "--seconds")) { if (cfg_parse_ll(v, &seconds) || seconds < 1) return 2; }
		else if (!strcmp(k, "--fill")) { if (cfg_parse_ll(v, &fill) || fill < 1) return 2; }
		else return 2;
	}
	char err[256];
	if (!target || !ca || !cert || !key || tls_read_pem(ca, &ca_pem, err, sizeof err) ||
	    tls_read_pem(cert, &cert_pem, err, sizeof err) || tls_read_pem(key, &key_pem, err, sizeof err)) {
		fprintf(stderr, "usage: bench-audit_append --target A --ca F --cert F --key F\n");
		return 2;
	}
	rpc_init();
	if (fill > 0)
		return do_fill();
	struct worker *w = calloc((size_t)clients, sizeof *w);
	pthread_t *th = calloc((size_t)clients, sizeof *th);
	t_end = now_ns() + seconds * 1000000000LL;
	for (long long i = 0; i < clients; i++) {
		w[i].id = (int)i;
		pthread_create(&th[i], NULL, run, &w[i]);
	}
	long long ok = 0, errors = 0;
	size_t total = 0;
	for (long long i = 0; i < clients; i++) {
		pthread_join(th[i], NULL);
		ok += w[i].ok;
		errors += w[i].errors;
		total += w[i].nlat;
	}
	int64_t *all = malloc((total ? total : 1) * sizeof *all);
	size_t k = 0;
	for (long long i = 0; i < clients; i++) {
		memcpy(all + k, w[i].lat, w[i].nlat * sizeof *all);
		k += w[i].nlat;
		free(w[i].lat);
	}
	qsort(all, total, sizeof *all, cmp64);
	printf("{\"rps\": %.1f, \"p50_us\": %.1f, \"p99_us\": %.1f, \"errors\": %lld}\n",
	       (double)ok / (double)seconds, total ? (double)all[total / 2] / 1e3 : 0,
	       total ? (double)all[(size_t)((double)total * 0.99)] / 1e3 : 0, errors);
	free(all);
	free(w);
	free(th);
	rpc_shutdown();
	return errors ? 1 : 0;
}
