/*
 * main.c - slipway-audit: start-up, signals and shutdown only.
 *
 * Order: configuration -> logging -> mTLS server (with health) -> database
 * (migrations), S3, signing key, policy client -> append pipeline and
 * checkpoint timer -> serve -> on SIGTERM: drain calls, stop the timer and
 * the pipeline, close everything in reverse.
 */
#include "audit.h"
#include "err.h"
#include "log.h"
#include "spiffe.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const struct db_migration migrations[] = {
	{ 1, "log",
	  "CREATE TABLE entries ("
	  " seq bigint PRIMARY KEY CHECK (seq >= 0),"
	  " event_id text NOT NULL UNIQUE,"
	  " actor text NOT NULL, service text NOT NULL, action text NOT NULL,"
	  " resource text NOT NULL, outcome smallint NOT NULL, request_id text NOT NULL,"
	  " time_ms bigint NOT NULL, logged_ms bigint NOT NULL, details json NOT NULL,"
	  " prev_hash bytea NOT NULL, entry_hash bytea NOT NULL);"
	  "CREATE INDEX entries_logged ON entries (logged_ms);"
	  "CREATE INDEX entries_actor ON entries (actor, seq);"
	  "CREATE INDEX entries_service_action ON entries (service, action, seq);"
	  "CREATE INDEX entries_request ON entries (request_id);"
	  "CREATE TABLE tree_nodes (level smallint NOT NULL, idx bigint NOT NULL,"
	  " hash bytea NOT NULL, PRIMARY KEY (level, idx));"
	  "CREATE TABLE checkpoints (size bigint PRIMARY KEY, root bytea NOT NULL,"
	  " note text NOT NULL, signed_ms bigint NOT NULL);"
	  "CREATE TABLE head (id int PRIMARY KEY CHECK (id = 1), size bigint NOT NULL,"
	  " last_hash bytea NOT NULL);"
	  "INSERT INTO head VALUES (1, 0, decode(repeat('00', 32), 'hex'));"
	  /* Append-only by construction: no UPDATE, DELETE or TRUNCATE on the
	   * log tables, for this role or anyone else, and a trigger in case a
	   * privilege is ever granted back. */
	  "CREATE FUNCTION append_only() RETURNS trigger LANGUAGE plpgsql AS $$"
	  " BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$;"
	  "CREATE TRIGGER entries_append_only BEFORE UPDATE OR DELETE ON entries"
	  " FOR EACH ROW EXECUTE FUNCTION append_only();"
	  "CREATE TRIGGER entries_no_truncate BEFORE TRUNCATE ON entries"
	  " FOR EACH STATEMENT EXECUTE FUNCTION append_only();"
	  "CREATE TRIGGER nodes_append_only BEFORE UPDATE OR DELETE ON tree_nodes"
	  " FOR EACH ROW EXECUTE FUNCTION append_only();"
	  "CREATE TRIGGER nodes_no_truncate BEFORE TRUNCATE ON tree_nodes"
	  " FOR EACH STATEMENT EXECUTE FUNCTION append_only();"
	  "CREATE TRIGGER checkpoints_append_only BEFORE UPDATE OR DELETE ON checkpoints"
	  " FOR EACH ROW EXECUTE FUNCTION append_only();"
	  "CREATE TRIGGER checkpoints_no_truncate BEFORE TRUNCATE ON checkpoints"
	  " FOR EACH STATEMENT EXECUTE FUNCTION append_only();"
	  "REVOKE UPDATE, DELETE, TRUNCATE ON entries, tree_nodes, checkpoints FROM PUBLIC;"
	  "REVOKE UPDATE, DELETE, TRUNCATE ON entries, tree_nodes, checkpoints FROM CURRENT_USER;"
	  "REVOKE DELETE, TRUNCATE ON head FROM CURRENT_USER" },
	/* App and environment of each entry, for an auditor's search by app and
	 * environment (ListEntries filter.app, filter.environment). They are
	 * derived from the entry's own details ("app", "environment"), which
	 * the hashes cover, so they cannot disagree with the signed log; as
	 * stored generated columns they are filled for the existing rows by
	 * the table rewrite of ALTER TABLE (no UPDATE, which the append-only
	 * triggers would reject) and for every new row by PostgreSQL itself. */
	{ 2, "app_env",
	  "CREATE FUNCTION detail(d json, k text) RETURNS text LANGUAGE sql IMMUTABLE"
	  " PARALLEL SAFE AS $$ SELECT p->>1 FROM json_array_elements(d) AS p"
	  " WHERE p->>0 = k LIMIT 1 $$;"
	  "ALTER TABLE entries"
	  " ADD COLUMN app text GENERATED ALWAYS AS (coalesce(detail(details, 'app'), '')) STORED,"
	  " ADD COLUMN env text GENERATED ALWAYS AS"
	  " (coalesce(detail(details, 'environment'), '')) STORED;"
	  "CREATE INDEX entries_app_env ON entries (app, env, seq);"
	  "CREATE INDEX entries_env ON entries (env, seq)" },
};

static int probe(void *arg, char *why, size_t whylen)
{
	struct aud *a = arg;
	if (atomic_load(&a->integrity_failed))
		return sw_errf(why, whylen, SW_EDATALOSS, "integrity check failed: %s",
			       a->integrity_why);
	int rc = db_ping(a->db, why, whylen);
	if (rc == 0)
		rc = s3_ping(a->s3, why, whylen);
	return rc;
}

int main(int argc, char **argv)
{
	static struct aud a;
	struct aud_config *c = &a.c;
	struct cfg_opt opts[] = {
		SVC_COMMON_OPTS(&c->svc),
		{ "pg-url", CFG_STR, NULL, 0, 0, CFG_REQUIRED | CFG_NO_PASSWORD,
		  "PostgreSQL connection string (schema 'audit')", &c->pg_url },
		{ "pg-sslmode", CFG_STR, "prefer", 0, 0, 0,
		  "TLS to PostgreSQL (libpq sslmode): prefer yields to the URL; require, "
		  "verify-ca, verify-full (or disable, allow) override it", &c->pg_sslmode },
		{ "db-pool", CFG_INT, "8", 2, 256, 0, "database connections", &c->db_pool },
		{ "s3-host", CFG_STR, NULL, 0, 0, CFG_REQUIRED, "S3 endpoint host:port", &c->s3_host },
		{ "s3-bucket", CFG_STR, NULL, 0, 0, CFG_REQUIRED, "S3 bucket for checkpoints",
		  &c->s3_bucket },
		{ "s3-access-key", CFG_STR, NULL, 0, 0, CFG_REQUIRED, "S3 access key id",
		  &c->s3_access_key },
		{ "s3-secret-key", CFG_STR, NULL, 0, 0, CFG_REQUIRED | CFG_SECRET, "S3 secret key",
		  &c->s3_secret_key },
		{ "s3-https", CFG_BOOL, "false", 0, 0, 0, "talk to S3 over HTTPS (TLS)",
		  &c->s3_https },
		{ "policy-addr", CFG_STR, NULL, 0, 0, 0,
		  "policy service host:port (without it every read is denied)", &c->policy_addr },
		{ "state-dir", CFG_PATH, NULL, 0, 0, 0, "directory for the signing key",
		  &c->state_dir },
		{ "generate-keys", CFG_BOOL, "false", 0, 0, 0,
		  "create the signing key on first start when missing", &c->generate_keys },
		{ "signing-key", CFG_PATH, NULL, 0, 0, 0,
		  "checkpoint signing key file (default <state-dir>/audit-signing.key)",
		  &c->signing_key },
		{ "origin", CFG_STR, "slipway.local/audit", 0, 0, 0, "checkpoint origin line",
		  &c->origin },
		{ "key-name", CFG_STR, "slipway-audit", 0, 0, 0, "name of a newly generated key",
		  &c->key_name },
		{ "checkpoint-prefix", CFG_STR, "checkpoints/", 0, 0, 0,
		  "S3 key prefix for published checkpoints (several logs may share a bucket)",
		  &c->cp_prefix },
		{ "checkpoint-dir", CFG_PATH, NULL, 0, 0, 0,
		  "also publish every signed checkpoint as a file here (a mount auditors read "
		  "and the log's operators cannot rewrite)",
		  &c->cp_dir },
		{ "checkpoint-interval", CFG_MS, "10s", 100, 86400000, 0,
		  "how often to sign a checkpoint when the log grew", &c->checkpoint_ms },
		{ "max-pending", CFG_INT, "20000", 1, 10000000, 0,
		  "appends waiting for commit before RESOURCE_EXHAUSTED", &c->max_pending },
		{ "batch-max", CFG_INT, "1000", 1, 2000, 0, "entries per group commit",
		  &c->batch_max },
	};
	size_t nopts = sizeof opts / sizeof opts[0];
	char err[512];
	int code = 2, exit_code, store = 0, cps = 0, metrics = 0;
	struct svc *s = NULL;

	if (svc_configure("audit", "AUDIT", opts, nopts, argc, argv, &exit_code, err, sizeof err) != 0) {
		fprintf(stderr, "slipway-audit: %s\n", err);
		goto out;
	}
	if (exit_code >= 0) {
		code = exit_code;
		goto out;
	}
	if (sodium_init() < 0 || s3_global_init(err, sizeof err) != 0) {
		snprintf(err, sizeof err, "crypto or S3 library initialisation failed");
		goto fail;
	}
	snprintf(a.trust_domain, sizeof a.trust_domain, "%s", c->svc.trust_domain);
	if (c->cp_dir != NULL && c->cp_dir[0] != '\0' &&
	    (c->cp_dir[0] != '/' || access(c->cp_dir, W_OK | X_OK) != 0)) {
		snprintf(err, sizeof err, "--checkpoint-dir must be an absolute path of a writable "
					  "directory");
		goto fail;
	}
	size_t pl = strlen(c->cp_prefix);
	char probe_key[300];
	snprintf(probe_key, sizeof probe_key, "%slatest", c->cp_prefix);
	if (pl == 0 || pl > 200 || c->cp_prefix[pl - 1] != '/' || !s3_key_ok(probe_key)) {
		snprintf(err, sizeof err, "--checkpoint-prefix must be a key prefix of [a-z0-9/._-] ending in '/'");
		goto fail;
	}
	if (!note_name_ok(c->key_name) || c->origin[0] == '\0' || strchr(c->origin, '\n')) {
		snprintf(err, sizeof err, "--origin and --key-name must be single printable words");
		goto fail;
	}
	struct db_opts dbo = { .url = c->pg_url, .sslmode = c->pg_sslmode, .schema = "audit", .app_name = "slipway-audit",
			       .pool_size = (int)c->db_pool };
	struct s3_opts so = { .host = c->s3_host, .bucket = c->s3_bucket,
			      .access_key = c->s3_access_key, .secret_key = c->s3_secret_key,
			      .https = c->s3_https };
	if (svc_new("audit", &c->svc, probe, &a, &s, err, sizeof err) != 0 ||
	    db_open(&dbo, &a.db, err, sizeof err) != 0 ||
	    db_migrate(a.db, migrations, sizeof migrations / sizeof migrations[0], err, sizeof err) != 0 ||
	    s3_new(&so, &a.s3, err, sizeof err) != 0 || aud_keys_load(&a, err, sizeof err) != 0)
		goto fail;
	if (c->policy_addr && c->policy_addr[0]) {
		struct authz_opts ao = { 0 };
		if (svc_client(&c->svc, c->policy_addr, "policy", &a.policy, err, sizeof err) != 0)
			goto fail;
		ao.policy = a.policy;
		if (authz_new(&ao, &a.authz, err, sizeof err) != 0)
			goto fail;
	} else {
		log_warn("no --policy-addr: every read of the log will be denied", NULL);
	}
	if (aud_store_start(&a, err, sizeof err) != 0)
		goto fail;
	store = 1;
	if (aud_metrics_start(&a) != 0) {
		snprintf(err, sizeof err, "cannot register the metrics collector");
		goto fail;
	}
	metrics = 1;
	if (aud_checkpoint_start(&a, err, sizeof err) != 0)
		goto fail;
	cps = 1;
	if (aud_rpc_register(&a, svc_server(s), err, sizeof err) != 0 ||
	    svc_start(s, err, sizeof err) != 0)
		goto fail;

	svc_wait(s);
	svc_stop(s);
	code = 0;
	goto out;
fail:
	log_error("start-up failed", "error=%s", err);
	fprintf(stderr, "slipway-audit: %s\n", err);
	code = 1;
out:
	if (cps)
		aud_checkpoint_stop(&a);
	if (store)
		aud_store_stop(&a);
	svc_free(s);
	if (metrics)
		aud_metrics_stop(&a);
	authz_free(a.authz);
	rpc_client_free(a.policy);
	note_signer_free(a.signer);
	s3_free(a.s3);
	db_close(a.db);
	cfg_free(opts, nopts);
	rpc_shutdown();
	return code;
}
