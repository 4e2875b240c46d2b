/*
 * slipway-secrets - encrypted, versioned, scoped secrets, sealed end to
 * end: values arrive sealed to the service's X25519 key and leave only
 * signed by its Ed25519 key and sealed to the agent that runs an approved
 * deployment. See README.md in this folder.
 *
 * This file holds start-up, signals and shutdown only.
 */
#include "err.h"
#include "log.h"
#include "rpc.h"
#include "secrets.h"
#include "svc.h"
#include "tls.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>

struct opts {
	struct svc_config c;
	char *pg_url, *pg_sslmode, *audit_addr, *policy_addr, *state_dir;
	char *keyring, *seal_key, *sign_key, *grantors;
	int generate_keys;
	long long db_pool, max_value, grant_ttl, grant_max_ttl, bundle_ttl, max_grant_secrets;
	long long dk_cache_ttl, dk_cache_entries, fetch_batch;
};

static int probe(void *arg, char *why, size_t whylen)
{
	struct sec *s = arg;
	return db_ping(s->db, why, whylen);
}

/* path = flag, else <state-dir>/<file>. */
static int key_path(char *out, size_t cap, const char *flag, const char *state_dir,
		    const char *file, char *err, size_t errlen)
{
	if (flag != NULL && flag[0] != '\0') {
		snprintf(out, cap, "%s", flag);
		return 0;
	}
	if (state_dir == NULL || state_dir[0] == '\0')
		return sw_errf(err, errlen, SW_EINVAL, "--state-dir (or --%s) is required",
			       strcmp(file, "master.keyring") == 0 ? "master-keyring"
			       : strcmp(file, "seal.key") == 0	   ? "seal-key"
								   : "sign-key");
	if (snprintf(out, cap, "%s/%s", state_dir, file) >= (int)cap)
		return sw_errf(err, errlen, SW_EINVAL, "--state-dir is too long");
	return 0;
}

static int client(const char *addr, const char *service, const char *ca, const char *cert,
		  const char *key, struct rpc_client **out, char *err, size_t errlen)
{
	struct rpc_client_opts o = { .target = addr, .ca_pem = ca, .cert_pem = cert,
				     .key_pem = key, .server_service = service, .reloadable = 1 };
	return rpc_client_new(&o, out, err, errlen);
}

int main(int argc, char **argv)
{
	static struct opts o;
	static struct sec s;
	struct cfg_opt opts[] = {
		SVC_COMMON_OPTS(&o.c),
		{ "pg-url", CFG_STR, NULL, 0, 0, CFG_REQUIRED | CFG_NO_PASSWORD,
		  "PostgreSQL connection string (the service's own role)", &o.pg_url },
		{ "pg-sslmode", CFG_STR, "prefer", 0, 0, 0,
		  "TLS to PostgreSQL (libpq sslmode): prefer yields to the URL; require, "
		  "verify-ca, verify-full (or disable, allow) override it", &o.pg_sslmode },
		{ "db-pool", CFG_INT, "16", 2, 256, 0, "database connections", &o.db_pool },
		{ "audit-addr", CFG_STR, NULL, 0, 0, 0,
		  "audit service address (empty: events wait in the outbox)", &o.audit_addr },
		{ "policy-addr", CFG_STR, NULL, 0, 0, 0,
		  "policy service address (empty: every authorized RPC is refused)",
		  &o.policy_addr },
		{ "state-dir", CFG_PATH, NULL, 0, 0, 0, "private directory holding the key files",
		  &o.state_dir },
		{ "generate-keys", CFG_BOOL, "false", 0, 0, 0,
		  "create missing key files (0600) on first start", &o.generate_keys },
		{ "master-keyring", CFG_PATH, NULL, 0, 0, 0,
		  "versioned master keys (default <state-dir>/master.keyring)", &o.keyring },
		{ "seal-key", CFG_PATH, NULL, 0, 0, 0,
		  "X25519 key values are sealed to (default <state-dir>/seal.key)", &o.seal_key },
		{ "sign-key", CFG_PATH, NULL, 0, 0, 0,
		  "Ed25519 seed that signs bundles (default <state-dir>/sign.key)", &o.sign_key },
		{ "max-value", CFG_SIZE, "64KiB", 1, SEC_MAX_VALUE_CAP, 0,
		  "largest secret value accepted", &o.max_value },
		{ "grant-ttl", CFG_MS, "15m", 1000, 7LL * 24 * 3600 * 1000, 0,
		  "grant lifetime when the request gives no expiry", &o.grant_ttl },
		{ "grant-max-ttl", CFG_MS, "24h", 1000, 30LL * 24 * 3600 * 1000, 0,
		  "longest grant lifetime accepted", &o.grant_max_ttl },
		{ "bundle-ttl", CFG_MS, "10m", 1000, 24LL * 3600 * 1000, 0,
		  "lifetime of a fetched bundle (never past its grant)", &o.bundle_ttl },
		{ "max-grant-secrets", CFG_INT, "256", 1, SEALED_MAX_ITEMS, 0,
		  "secrets one grant may reference", &o.max_grant_secrets },
		{ "dk-cache-ttl", CFG_MS, "60s", 0, 3600LL * 1000, 0,
		  "how long an unwrapped data key is kept in locked memory for later "
		  "fetches (0: off); rotation and destroy wipe the cache", &o.dk_cache_ttl },
		{ "dk-cache-entries", CFG_INT, "4096", 0, 1 << 20, 0,
		  "data keys the cache holds (0: off)", &o.dk_cache_entries },
		{ "fetch-batch", CFG_INT, "64", 1, OUTBOX_GROUP_MAX, 0,
		  "fetch audit events committed together at most (group commit)",
		  &o.fetch_batch },
		{ "grantors", CFG_STR, NULL, 0, 0, 0,
		  "comma-separated principals allowed to create grants "
		  "(default spiffe://<trust-domain>/service/orchestrator)",
		  &o.grantors },
	};
	size_t nopts = sizeof opts / sizeof opts[0];
	char err[512], keyring[4096], seal[4096], sign[4096];
	char *ca = NULL, *cert = NULL, *key = NULL;
	struct rpc_client *policy = NULL, *audit = NULL;
	struct svc *sv = NULL;
	int code = 2, exit_code;

	pthread_mutex_init(&s.rotate_mu, NULL);
	/* Key material and values live in this process: no core files, no
	 * ptrace by other processes of the same user. */
	prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
	if (sealed_init() != 0) {
		fprintf(stderr, "slipway-secrets: libsodium failed to initialise\n");
		goto out;
	}
	if (svc_configure(SEC_SERVICE, "SECRETS", opts, nopts, argc, argv, &exit_code, err,
			  sizeof err) != 0) {
		fprintf(stderr, "slipway-secrets: %s\n", err);
		goto out;
	}
	if (exit_code >= 0) {
		code = exit_code;
		goto out;
	}
	code = 1;
	s.trust_domain = o.c.trust_domain;
	s.max_value = (size_t)o.max_value;
	s.grant_ttl_ms = o.grant_ttl;
	s.grant_max_ttl_ms = o.grant_max_ttl;
	s.bundle_ttl_ms = o.bundle_ttl;
	s.max_grant_secrets = (size_t)o.max_grant_secrets;
	s.max_bundle = (size_t)o.c.max_msg - 1024;
	if (o.grantors != NULL && o.grantors[0] != '\0') {
		s.grantors = strdup(o.grantors);
	} else {
		char id[SPIFFE_ID_MAX + 1];
		if (spiffe_format(id, sizeof id, o.c.trust_domain, SPIFFE_SERVICE, "orchestrator") != 0) {
			snprintf(err, sizeof err, "bad --trust-domain");
			goto fail;
		}
		s.grantors = strdup(id);
	}
	if (s.grantors == NULL || s.grant_ttl_ms > s.grant_max_ttl_ms) {
		snprintf(err, sizeof err, "--grant-ttl must not exceed --grant-max-ttl");
		goto fail;
	}
	if (key_path(keyring, sizeof keyring, o.keyring, o.state_dir, "master.keyring", err,
		     sizeof err) != 0 ||
	    key_path(seal, sizeof seal, o.seal_key, o.state_dir, "seal.key", err, sizeof err) != 0 ||
	    key_path(sign, sizeof sign, o.sign_key, o.state_dir, "sign.key", err, sizeof err) != 0)
		goto fail;
	if (tls_read_pem(o.c.ca, &ca, err, sizeof err) != 0 ||
	    tls_read_pem(o.c.cert, &cert, err, sizeof err) != 0 ||
	    tls_read_pem(o.c.key, &key, err, sizeof err) != 0)
		goto fail;

	sec_metrics_init();
	if (svc_new(SEC_SERVICE, &o.c, probe, &s, &sv, err, sizeof err) != 0)
		goto fail;

	/* Own start-up: database, keys (checked against the database),
	 * clients, relay. */
	struct db_opts dbo = { .url = o.pg_url, .sslmode = o.pg_sslmode, .schema = "secrets", .app_name = "slipway-secrets",
			       .pool_size = (int)o.db_pool };
	int64_t known_keys = 0;
	if (db_open(&dbo, &s.db, err, sizeof err) != 0 ||
	    db_migrate(s.db, sec_migrations, sec_nmigrations, err, sizeof err) != 0 ||
	    sec_store_master_count(s.db, &known_keys, err, sizeof err) != 0)
		goto fail;
	struct sec_keys_opts ko = { .keyring_path = keyring, .seal_path = seal, .sign_path = sign,
				    .generate = o.generate_keys,
				    .keyring_may_be_new = known_keys == 0 };
	if (sec_keys_load(&ko, &s.keys, err, sizeof err) != 0 ||
	    sec_store_check_keys(&s, err, sizeof err) != 0 ||
	    outbox_group_new(s.db, SEC_SERVICE, (int)o.fetch_batch, &s.fetch_log, err,
			     sizeof err) != 0 ||
	    sec_dkcache_new((size_t)o.dk_cache_entries, o.dk_cache_ttl, &s.dkcache, err,
			    sizeof err) != 0)
		goto fail;
	{
		uint8_t spk[32], gpk[32];
		char kid[SEALED_KEY_ID_MAX];
		sec_keys_public(s.keys, spk, gpk, kid);
		log_info("keys loaded", "master_key_version=%u sign_key_id=%s",
			 sec_keys_current(s.keys), kid);
	}
	if (o.policy_addr != NULL && o.policy_addr[0] != '\0') {
		struct authz_opts ao = { 0 };
		if (client(o.policy_addr, "policy", ca, cert, key, &policy, err, sizeof err) != 0)
			goto fail;
		ao.policy = policy;
		s.policy = policy;
		if (authz_new(&ao, &s.authz, err, sizeof err) != 0)
			goto fail;
	} else {
		log_warn("no policy service: every authorized RPC will be refused", NULL);
	}
	if (o.audit_addr != NULL && o.audit_addr[0] != '\0') {
		struct outbox_relay_opts ro = { .db = s.db };
		if (client(o.audit_addr, "audit", ca, cert, key, &audit, err, sizeof err) != 0)
			goto fail;
		ro.audit = audit;
		if (outbox_relay_start(&ro, &s.relay, err, sizeof err) != 0)
			goto fail;
	} else {
		log_warn("no audit service: audit events wait in the outbox", NULL);
	}

	if (rpc_server_add_service(svc_server(sv), &slipway__v1__secrets__descriptor, sec_methods,
				   sec_nmethods, &s, err, sizeof err) != 0 ||
	    svc_start(sv, err, sizeof err) != 0)
		goto fail;
	svc_wait(sv);
	svc_stop(sv);
	code = 0;
	goto out;
fail:
	log_error("start-up failed", "error=%s", err);
	fprintf(stderr, "slipway-secrets: %s\n", err);
	code = 1;
out:
	outbox_relay_stop(s.relay, 2000);
	authz_free(s.authz);
	rpc_client_free(audit);
	rpc_client_free(policy);
	sec_dkcache_free(s.dkcache);
	outbox_group_free(s.fetch_log);
	sec_keys_free(s.keys);
	db_close(s.db);
	svc_free(sv);
	free(s.grantors);
	free(ca);
	free(cert);
	if (key != NULL) {
		memset(key, 0, strlen(key));
		free(key);
	}
	cfg_free(opts, nopts);
	rpc_shutdown();
	pthread_mutex_destroy(&s.rotate_mu);
	return code;
}
