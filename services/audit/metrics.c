/*
 * metrics.c - the audit service's Prometheus families (lib/metrics.h):
 * the size of the log and how old its newest signed checkpoint is.
 *
 * Both live in PostgreSQL, so a collector reads them at scrape time: on
 * the metrics HTTP thread, at most every AUD_METRICS_INTERVAL_MS, in one
 * read-only transaction bounded by AUD_METRICS_TIMEOUT_MS (pool wait and
 * statement), never on an RPC worker or the append pipeline.
 */
#include "audit.h"
#include "clock.h"
#include "log.h"
#include "metrics.h"

#define AUD_METRICS_INTERVAL_MS 2000
#define AUD_METRICS_TIMEOUT_MS 1000

static struct metrics_family *entries, *cp_size, *cp_age, *cp_time, *errors;

static int collect_tx(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	(void)arg;
	PGresult *r = NULL;
	int rc = db_q(c,
		      "SELECT (SELECT size FROM head WHERE id = 1),"
		      " COALESCE((SELECT max(size) FROM checkpoints), 0),"
		      " COALESCE((SELECT max(signed_ms) FROM checkpoints), 0)",
		      0, NULL, &r, err, errlen);
	if (rc != 0)
		return rc;
	int64_t size = db_int64(r, 0, 0), cps = db_int64(r, 0, 1), signed_ms = db_int64(r, 0, 2);
	PQclear(r);
	metrics_set(metrics_with(entries), (double)size);
	metrics_set(metrics_with(cp_size), (double)cps);
	if (signed_ms > 0) {
		int64_t age = clock_wall_ms() - signed_ms;
		metrics_set(metrics_with(cp_age), age > 0 ? (double)age / 1e3 : 0);
		metrics_set(metrics_with(cp_time), (double)signed_ms / 1e3);
	}
	return 0;
}

static void collect(void *arg)
{
	struct aud *a = arg;
	char err[256];
	if (db_read_bounded(a->db, AUD_METRICS_TIMEOUT_MS, collect_tx, a, err, sizeof err) != 0) {
		metrics_add(metrics_with(errors), 1);
		log_debug("metrics: cannot read the log's head", "error=%s", err);
	}
}

int aud_metrics_start(struct aud *a)
{
	entries = metrics_gauge("slipway_audit_log_entries", "Entries in the audit log (its size).",
				NULL);
	cp_size = metrics_gauge("slipway_audit_checkpoint_size_entries",
				"Log size covered by the newest signed checkpoint.", NULL);
	cp_age = metrics_gauge("slipway_audit_checkpoint_age_seconds",
			       "Time since the newest checkpoint was signed (0 until the first).",
			       NULL);
	cp_time = metrics_gauge("slipway_audit_checkpoint_timestamp_seconds",
				"When the newest checkpoint was signed, Unix seconds (0 until the "
				"first).",
				NULL);
	errors = metrics_counter("slipway_audit_metrics_collect_errors_total",
				 "Scrapes that could not read the database in time (the gauges keep "
				 "their last values).",
				 NULL);
	metrics_set(metrics_with(entries), 0);
	metrics_set(metrics_with(cp_size), 0);
	metrics_set(metrics_with(cp_age), 0);
	metrics_set(metrics_with(cp_time), 0);
	metrics_add(metrics_with(errors), 0);
	return metrics_collector_add(metrics_default(), collect, a, AUD_METRICS_INTERVAL_MS);
}

void aud_metrics_stop(struct aud *a)
{
	metrics_collector_remove(metrics_default(), collect, a);
}
