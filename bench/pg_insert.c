/*
 * pg_insert.c - the baseline of `bench/run audit`: one client commits
 * single-row INSERTs (one transaction per row, synchronous_commit on) of a
 * row shaped like an audit entry for S seconds. Prints one JSON object.
 *
 *   bench-pg_insert --url PGURL [--seconds S]
 */
#include "cfg.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	const char *url = NULL;
	long long secs = 5;
	for (int i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--url"))
			url = argv[i + 1];
		else if (!strcmp(argv[i], "--seconds") && cfg_parse_ll(argv[i + 1], &secs) == 0)
			;
		else
			return 2;
	}
	if (url == NULL)
		return 2;
	PGconn *c = PQconnectdb(url);
	if (PQstatus(c) != CONNECTION_OK) {
		fprintf(stderr, "%s", PQerrorMessage(c));
		return 1;
	}
	PQclear(PQexec(c, "DROP TABLE IF EXISTS bench_rows"));
	PQclear(PQexec(c, "CREATE TABLE bench_rows (id bigserial PRIMARY KEY, event_id text UNIQUE,"
			  " actor text, action text, resource text, details json, hash bytea)"));
	PQclear(PQexec(c, "SET synchronous_commit = on"));
	long long n = 0;
	double end = now_s() + (double)secs;
	char id[64];
	while (now_s() < end) {
		snprintf(id, sizeof id, "row-%lld", n);
		const char *v[6] = { id, "spiffe://slipway/user/bench", "bench.append",
				     "release/web@1.2.3", "[]", "\\x00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff" };
		PGresult *r = PQexecParams(c,
					   "INSERT INTO bench_rows (event_id, actor, action, resource,"
					   " details, hash) VALUES ($1, $2, $3, $4, $5, $6)",
					   6, NULL, v, NULL, NULL, 0);
		if (PQresultStatus(r) != PGRES_COMMAND_OK) {
			fprintf(stderr, "%s", PQresultErrorMessage(r));
			PQclear(r);
			return 1;
		}
		PQclear(r);
		n++;
	}
	PQclear(PQexec(c, "DROP TABLE bench_rows"));
	PQfinish(c);
	printf("{\"commits_per_s\": %.1f}\n", (double)n / (double)secs);
	return 0;
}
