/*
 * slipway-policy - the policy service: RBAC (roles, bindings, guardrails),
 * approval policy per environment, approvals, and recorded decisions.
 *
 * This file holds start-up, signals and shutdown only: config -> logging
 * -> server -> database, policy, watcher, writer, relay -> serve -> wait ->
 * stop -> tear-down in reverse. See README.md next to it.
 */
#include "db.h"
#include "err.h"
#include "log.h"
#include "outbox.h"
#include "policy.h"
#include "rpc.h"
#include "svc.h"
#include "tls.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct config {
	struct svc_config c;
	char *pg_url;
	char *pg_sslmode;
	char *audit_addr;
	char *admins;
	long long db_pool;
	long long max_watchers;
	long long denials_per_minute;
	long long denial_principals;
};

static int probe(void *arg, char *why, size_t whylen)
{
	struct pol_service *s = arg;
	return db_ping(s->db, why, whylen);
}

static void on_drain(void *arg)
{
	struct pol_service *s = arg;
	pthread_mutex_lock(&s->mu);
	s->draining = 1;
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
	pol_watch_end_all(s);
}

/* Splits the comma-separated --bootstrap-admins into a new array. */
static int split_admins(const char *list, char ***out, size_t *n, char *err, size_t errlen)
{
	char **v = calloc(POL_MAX_ADMINS + 1, sizeof *v);
	int rc = 0;
	*out = NULL;
	*n = 0;
	if (v == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	for (const char *p = list ? list : ""; *p;) {
		const char *end = strchr(p, ',');
		size_t l = end ? (size_t)(end - p) : strlen(p);
		const char *t = p;
		p += l + (end != NULL);
		while (l > 0 && *t == ' ')
			t++, l--;
		while (l > 0 && t[l - 1] == ' ')
			l--;
		if (l == 0)
			continue;
		if (*n == POL_MAX_ADMINS) {
			rc = sw_errf(err, errlen, SW_EINVAL, "--bootstrap-admins: more than %d",
				     POL_MAX_ADMINS);
			goto out;
		}
		if ((v[(*n)++] = strndup(t, l)) == NULL) {
			rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
			goto out;
		}
	}
	*out = v;
	v = NULL;
out:
	if (v != NULL)
		for (size_t i = 0; i < *n; i++)
			free(v[i]);
	free(v);
	return rc;
}

int main(int argc, char **argv)
{
	static struct config cf;
	static struct pol_service s;
	struct cfg_opt opts[] = {
		SVC_COMMON_OPTS(&cf.c),
		{ "pg-url", CFG_STR, NULL, 0, 0, CFG_REQUIRED | CFG_NO_PASSWORD,
		  "PostgreSQL connection URL (the service owns schema 'policy')", &cf.pg_url },
		{ "pg-sslmode", CFG_STR, "prefer", 0, 0, 0,
		  "TLS to PostgreSQL (libpq sslmode): prefer yields to the URL; require, "
		  "verify-ca, verify-full (or disable, allow) override it", &cf.pg_sslmode },
		{ "audit-addr", CFG_STR, NULL, 0, 0, 0,
		  "audit service address; empty: audit events wait in the outbox", &cf.audit_addr },
		{ "bootstrap-admins", CFG_STR, NULL, 0, 0, 0,
		  "comma-separated SPIFFE IDs that hold admin globally, whatever the document",
		  &cf.admins },
		{ "db-pool", CFG_INT, "8", 1, 256, 0, "database connections", &cf.db_pool },
		{ "max-watchers", CFG_INT, "0", 0, 1024, 0,
		  "concurrent WatchRevision streams (deferred: no thread each); 0 = workers/2",
		  &cf.max_watchers },
		{ "denials-per-minute", CFG_INT, "20", 0, 100000, 0,
		  "Authorize denials recorded per principal and minute (the rest are counted in "
		  "a summary audit event); 0 = record every denial",
		  &cf.denials_per_minute },
		{ "denial-principals", CFG_INT, "4096", 16, 100000, 0,
		  "principals whose recorded denials are counted at once (least recently used "
		  "evicted first)",
		  &cf.denial_principals },
	};
	size_t nopts = sizeof opts / sizeof opts[0];
	char err[1024];
	int code = 2, exit_code, relay_ok = 0;
	struct svc *sv = NULL;
	struct rpc_client *audit = NULL;
	char *ca = NULL, *cert = NULL, *key = NULL, **admins = NULL;
	size_t nadmins = 0;
	struct pol_policy *p = NULL;

	/* This service answers every other service's checks: it starts with
	 * more handler threads. (WatchRevision streams, one per client service
	 * replica, are deferred and hold none.) */
	for (size_t i = 0; i < nopts; i++)
		if (strcmp(opts[i].name, "workers") == 0)
			opts[i].def = "32";
	pthread_mutex_init(&s.mu, NULL);
	pthread_cond_init(&s.cv, NULL);
	if (svc_configure("policy", "POLICY", opts, nopts, argc, argv, &exit_code, err,
			  sizeof err) != 0) {
		fprintf(stderr, "slipway-policy: %s\n", err);
		goto out;
	}
	if (exit_code >= 0) {
		code = exit_code;
		goto out;
	}
	if (split_admins(cf.admins, &admins, &nadmins, err, sizeof err) != 0)
		goto fail;
	s.bopts.trust_domain = cf.c.trust_domain;
	s.bopts.admins = (const char *const *)admins;
	s.bopts.nadmins = nadmins;
	s.pg_url = cf.pg_url;
	s.pg_sslmode = cf.pg_sslmode;
	s.max_watchers = cf.max_watchers > 0 ? (int)cf.max_watchers
					     : (int)(cf.c.workers / 2 > 0 ? cf.c.workers / 2 : 1);

	if (svc_new("policy", &cf.c, probe, &s, &sv, err, sizeof err) != 0)
		goto fail;
	svc_on_drain(sv, on_drain, &s);

	struct db_opts dbo = { .url = cf.pg_url, .sslmode = cf.pg_sslmode, .schema = "policy", .app_name = "slipway-policy",
			       .pool_size = (int)cf.db_pool };
	if (db_open(&dbo, &s.db, err, sizeof err) != 0 ||
	    pol_store_migrate(s.db, err, sizeof err) != 0)
		goto fail;
	/* The bootstrap admins are checked here, so a typo stops start-up. */
	if (pol_store_load(&s, 0, &p, err, sizeof err) != 0)
		goto fail;
	s.cur = p;
	p = NULL;
	log_info("policy loaded", "revision=%llu bootstrap_admins=%zu",
		 (unsigned long long)s.cur->revision, nadmins);
	if (cf.denials_per_minute > 0 &&
	    pol_limiter_new((uint32_t)cf.denials_per_minute, (size_t)cf.denial_principals,
			    &s.limiter) != 0) {
		snprintf(err, sizeof err, "out of memory for the denial limiter");
		goto fail;
	}
	if (pol_watcher_start(&s, err, sizeof err) != 0 || pol_writer_start(&s, err, sizeof err) != 0)
		goto fail;
	if (cf.audit_addr != NULL && cf.audit_addr[0] != '\0') {
		if (tls_read_pem(cf.c.ca, &ca, err, sizeof err) != 0 ||
		    tls_read_pem(cf.c.cert, &cert, err, sizeof err) != 0 ||
		    tls_read_pem(cf.c.key, &key, err, sizeof err) != 0)
			goto fail;
		struct rpc_client_opts co = { .target = cf.audit_addr, .ca_pem = ca,
					      .cert_pem = cert, .key_pem = key,
					      .server_service = "audit", .reloadable = 1 };
		struct outbox_relay_opts ro = { .db = s.db };
		if (rpc_client_new(&co, &audit, err, sizeof err) != 0)
			goto fail;
		ro.audit = audit;
		if (outbox_relay_start(&ro, &s.relay, err, sizeof err) != 0)
			goto fail;
		relay_ok = 1;
	} else {
		log_warn("no --audit-addr: audit events wait in the outbox", NULL);
	}
	if (pol_rpc_register(&s, svc_server(sv), err, sizeof err) != 0 ||
	    pol_enroll_register(&s, svc_server(sv), err, sizeof err) != 0 ||
	    svc_start(sv, err, sizeof err) != 0)
		goto fail;

	svc_wait(sv);
	svc_stop(sv);
	code = 0;
	goto out;
fail:
	log_error("start-up failed", "error=%s", err);
	fprintf(stderr, "slipway-policy: %s\n", err);
	if (sv != NULL)
		svc_stop(sv);
out:
	/* Tear-down in reverse: the writer finishes deferred calls during
	 * svc_stop, so it stops after it. */
	pol_writer_stop(&s);
	pol_limiter_free(s.limiter);
	pol_watcher_stop(&s);
	if (relay_ok)
		outbox_relay_stop(s.relay, 2000);
	rpc_client_free(audit);
	svc_free(sv);
	pol_unref(s.cur);
	pol_unref(p);
	db_close(s.db);
	if (key != NULL) {
		memset(key, 0, strlen(key));
		free(key);
	}
	free(ca);
	free(cert);
	for (size_t i = 0; i < nadmins; i++)
		free(admins[i]);
	free(admins);
	cfg_free(opts, nopts);
	rpc_shutdown();
	pthread_mutex_destroy(&s.mu);
	pthread_cond_destroy(&s.cv);
	return code;
}
