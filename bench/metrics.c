/*
 * bench/metrics.c - the cost of lib/metrics on the RPC hot path:
 * nanoseconds per metrics_rpc_observe (what lib/rpc.c adds to every
 * finished call: one counter and one histogram update, found by label
 * values), on one thread and on several threads at once (all on the same
 * method: the most contended case; and each on its own method). The
 * baseline, measured in the same run, is one relaxed atomic increment of a
 * shared counter per call on as many threads: the floor for any shared
 * counter. Prints one JSON object.
 *
 *   bench-metrics [--seconds S] [--threads N]
 */
#include "metrics.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double secs = 1;
static atomic_int stop;
static _Atomic unsigned long long floor_counter;

struct worker {
	pthread_t t;
	int kind; /* 0 floor, 1 observe same method, 2 observe own method */
	int id;
	unsigned long long n;
};

static void *run(void *arg)
{
	struct worker *w = arg;
	static const char *const paths[] = { "/slipway.v1.Audit/Append", "/slipway.v1.Policy/Authorize",
					     "/slipway.v1.Secrets/Fetch", "/slipway.v1.Artifact/Resolve",
					     "/slipway.v1.Orchestrator/GetDeployment",
					     "/slipway.v1.AgentControl/Heartbeat",
					     "/slipway.v1.AgentControl/PollTasks",
					     "/slipway.v1.AgentControl/ReportTask" };
	const char *path = w->kind == 2 ? paths[w->id % 8] : paths[0];
	unsigned long long n = 0;
	while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
		for (int i = 0; i < 1000; i++) {
			if (w->kind == 0)
				atomic_fetch_add_explicit(&floor_counter, 1, memory_order_relaxed);
			else
				metrics_rpc_observe(path, "OK", 0.0001 * (i % 50));
		}
		n += 1000;
	}
	w->n = n;
	return NULL;
}

/* ns per operation per thread with `threads` threads doing `kind`. */
static double measure(int kind, int threads)
{
	struct worker w[64];
	atomic_store(&stop, 0);
	for (int i = 0; i < threads; i++) {
		w[i] = (struct worker){ .kind = kind, .id = i };
		pthread_create(&w[i].t, NULL, run, &w[i]);
	}
	struct timespec d = { (time_t)secs, (long)((secs - (double)(time_t)secs) * 1e9) };
	nanosleep(&d, NULL);
	atomic_store(&stop, 1);
	unsigned long long total = 0;
	for (int i = 0; i < threads; i++) {
		pthread_join(w[i].t, NULL);
		total += w[i].n;
	}
	return secs * 1e9 * threads / (double)total;
}

int main(int argc, char **argv)
{
	int threads = 4;
	for (int i = 1; i + 1 < argc; i += 2) {
		if (strcmp(argv[i], "--seconds") == 0)
			secs = strtod(argv[i + 1], NULL);
		else if (strcmp(argv[i], "--threads") == 0)
			threads = (int)strtol(argv[i + 1], NULL, 10);
	}
	if (secs <= 0 || threads < 1 || threads > 64) {
		fprintf(stderr, "usage: bench-metrics [--seconds S] [--threads 1-64]\n");
		return 2;
	}
	metrics_rpc_observe("/slipway.v1.Audit/Append", "OK", 0); /* families exist */
	double f1 = measure(0, 1), o1 = measure(1, 1);
	double fn = measure(0, threads), on_same = measure(1, threads), on_own = measure(2, threads);
	printf("{\"observe_ns_1\": %.1f, \"floor_ns_1\": %.1f, \"observe_ns_%d_same\": %.1f, "
	       "\"observe_ns_%d_own\": %.1f, \"floor_ns_%d\": %.1f}\n",
	       o1, f1, threads, on_same, threads, on_own, threads, fn);
	return 0;
}
