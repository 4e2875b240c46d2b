/*
 * main.c - slipway-orchestrator: start-up, signals and shutdown only.
 *
 * Order: configuration -> logging -> mTLS server (with health) -> database
 * (migrations) -> clients (artifact, policy, secrets, audit relay) ->
 * agent registry, long-poll waiters, deployment watches, engine -> serve.
 * On SIGTERM: parked polls are answered at once and open watches ended
 * (UNAVAILABLE: watch again), in-flight calls drain, then the engine, the
 * watcher thread, the waiters and the registry (a last heartbeat flush)
 * stop and the outbox delivers what it can.
 */
#include "err.h"
#include "log.h"
#include "orch.h"
#include "spiffe.h"
#include "watch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int probe(void *arg, char *why, size_t whylen)
{
	struct orch *o = arg;
	return db_ping(o->db, why, whylen);
}

int main(int argc, char **argv)
{
	static struct orch o;
	struct orch_config *c = &o.c;
	long long max_watchers = 0;
	struct cfg_opt opts[] = {
		SVC_COMMON_OPTS(&c->svc),
		{ "pg-url", CFG_STR, NULL, 0, 0, CFG_REQUIRED | CFG_NO_PASSWORD,
		  "PostgreSQL connection string (schema 'orchestrator')", &c->pg_url },
		{ "pg-sslmode", CFG_STR, "prefer", 0, 0, 0,
		  "TLS to PostgreSQL (libpq sslmode): prefer yields to the URL; require, "
		  "verify-ca, verify-full (or disable, allow) override it", &c->pg_sslmode },
		{ "db-pool", CFG_INT, "12", 4, 256, 0, "database connections", &c->db_pool },
		{ "audit-addr", CFG_STR, NULL, 0, 0, CFG_REQUIRED, "audit service host:port",
		  &c->audit_addr },
		{ "policy-addr", CFG_STR, NULL, 0, 0, CFG_REQUIRED, "policy service host:port",
		  &c->policy_addr },
		{ "artifact-addr", CFG_STR, NULL, 0, 0, CFG_REQUIRED, "artifact service host:port",
		  &c->artifact_addr },
		{ "secrets-addr", CFG_STR, NULL, 0, 0, 0,
		  "secrets service host:port (without it no secrets are granted)", &c->secrets_addr },
		{ "replica", CFG_STR, NULL, 0, 0, 0,
		  "this replica's name for leases (default host-pid)", &c->replica },
		{ "heartbeat-interval", CFG_MS, "2s", 100, 600000, 0,
		  "how often agents heartbeat; 3 missed marks an agent lost", &c->heartbeat_ms },
		{ "lease", CFG_MS, "3s", 500, 600000, 0,
		  "deployment lease: another replica takes over this long after a crash", &c->lease_ms },
		{ "tick", CFG_MS, "200ms", 10, 60000, 0, "scheduler period (notifications wake it sooner)",
		  &c->tick_ms },
		{ "max-running", CFG_INT, "20", 1, 100000, 0, "deployments running at once, in all",
		  &c->max_running },
		{ "max-queued", CFG_INT, "200", 1, 1000000, 0,
		  "deployments waiting (queued or for approval) before RESOURCE_EXHAUSTED",
		  &c->max_queue },
		{ "max-watchers", CFG_INT, "1000", 1, 1000000, 0,
		  "WatchDeployment streams open at once before RESOURCE_EXHAUSTED", &max_watchers },
		{ "poll-max", CFG_MS, "25s", 100, 300000, 0, "longest long poll", &c->poll_max_ms },
		{ "grant-ttl", CFG_MS, "1h", 1000, 86400000, 0, "lifetime of secrets grants",
		  &c->grant_ttl_ms },
	};
	size_t nopts = sizeof opts / sizeof opts[0];
	char err[512];
	int code = 2, exit_code, reg = 0, waiters = 0, engine = 0, watch = 0, metrics = 0;
	struct svc *s = NULL;

	pthread_mutex_init(&o.mu, NULL);
	pthread_cond_init(&o.cv, NULL);
	if (svc_configure("orchestrator", "ORCHESTRATOR", opts, nopts, argc, argv, &exit_code, err,
			  sizeof err) != 0) {
		fprintf(stderr, "slipway-orchestrator: %s\n", err);
		goto out;
	}
	if (exit_code >= 0) {
		code = exit_code;
		goto out;
	}
	snprintf(o.trust_domain, sizeof o.trust_domain, "%s", c->svc.trust_domain);
	if (spiffe_format(o.self_id, sizeof o.self_id, o.trust_domain, SPIFFE_SERVICE, "orchestrator") != 0) {
		snprintf(err, sizeof err, "invalid trust domain");
		goto fail;
	}
	if (c->replica && c->replica[0]) {
		snprintf(o.replica, sizeof o.replica, "%s", c->replica);
	} else {
		char host[64] = "host";
		gethostname(host, sizeof host - 1);
		snprintf(o.replica, sizeof o.replica, "%.40s-%d", host, (int)getpid());
	}
	struct db_opts dbo = { .url = c->pg_url, .sslmode = c->pg_sslmode, .schema = "orchestrator",
			       .app_name = "slipway-orchestrator", .pool_size = (int)c->db_pool };
	if (svc_new("orchestrator", &c->svc, probe, &o, &s, err, sizeof err) != 0 ||
	    db_open(&dbo, &o.db, err, sizeof err) != 0 ||
	    db_migrate(o.db, orch_migrations, orch_nmigrations, err, sizeof err) != 0 ||
	    orch_clients_open(&o, err, sizeof err) != 0)
		goto fail;
	if (orch_metrics_start(&o) != 0) {
		snprintf(err, sizeof err, "cannot register the metrics collector");
		goto fail;
	}
	metrics = 1;
	if (orch_registry_start(&o, err, sizeof err) != 0)
		goto fail;
	reg = 1;
	if (orch_waiters_start(&o, err, sizeof err) != 0)
		goto fail;
	waiters = 1;
	svc_on_drain(s, orch_waiters_drain, &o);
	if (orch_watch_start(&o, (int)max_watchers, err, sizeof err) != 0)
		goto fail;
	watch = 1;
	svc_on_drain(s, orch_watch_drain, &o);
	if (orch_rpc_register(&o, svc_server(s), err, sizeof err) != 0 ||
	    svc_start(s, err, sizeof err) != 0)
		goto fail;
	/* The engine starts once the server listens: its first decisions may
	 * need agents' heartbeats and reports. */
	if (orch_engine_start(&o, err, sizeof err) != 0)
		goto fail;
	engine = 1;
	log_info("replica ready", "replica=%s", o.replica);
	svc_wait(s);
	svc_stop(s);
	code = 0;
	goto out;
fail:
	log_error("start-up failed", "error=%s", err);
	fprintf(stderr, "slipway-orchestrator: %s\n", err);
	code = 1;
out:
	atomic_store(&o.stopping, 1);
	if (engine)
		orch_engine_stop(&o);
	if (watch)
		orch_watch_stop(&o);
	if (waiters)
		orch_waiters_stop(&o);
	if (reg)
		orch_registry_stop(&o);
	svc_free(s);
	if (metrics)
		orch_metrics_stop(&o);
	orch_clients_close(&o);
	db_close(o.db);
	cfg_free(opts, nopts);
	rpc_shutdown();
	return code;
}
