/*
 * agent.c - the agent object: its root, its keys, its identity, the user
 * its applications run as, and its clients of the artifact, secrets and
 * orchestrator services. The supervised application is not the agent's to
 * stop on exit: agent_free leaves it running.
 */
#include "agent.h"
#include "err.h"
#include "log.h"
#include "sealed.h"
#include "tls.h"

#include <sodium.h>

#include <signal.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A client of the control-plane service `service`, pinned to its SPIFFE ID
 * in our own trust domain: an agent never talks to a server that is not
 * that service (another agent's key, say), even for the right address. */
static int new_client(const char *addr, const char *service, const char *ca, const char *cert,
		      const char *key, int own, struct rpc_client **out, char *err, size_t errlen)
{
	struct rpc_client_opts o = { .target = addr, .ca_pem = ca, .cert_pem = cert,
				     .key_pem = key, .max_msg_bytes = 8u << 20,
				     .own_connection = own, .server_service = service,
				     .reloadable = 1 };
	char e2[256];
	int rc = rpc_client_new(&o, out, e2, sizeof e2);
	if (rc != 0)
		return sw_errf(err, errlen, rc, "client for %s: %s", addr, e2);
	return 0;
}

/* One client per comma-separated orchestrator address (replicas). */
static int orch_clients(struct agent *a, const char *list, const char *ca, const char *cert,
			const char *key, char *err, size_t errlen)
{
	const char *p = list;
	while (*p != '\0') {
		size_t len = strcspn(p, ",");
		if (len > 0) {
			if (a->norch == AGENT_MAX_ORCH)
				return sw_errf(err, errlen, SW_ELIMIT,
					       "--orchestrator-addr: at most %d addresses", AGENT_MAX_ORCH);
			if (len >= sizeof a->orch_addr[0])
				return sw_errf(err, errlen, SW_EINVAL,
					       "--orchestrator-addr: address too long");
			char *addr = a->orch_addr[a->norch];
			memcpy(addr, p, len);
			addr[len] = '\0';
			int rc = new_client(addr, "orchestrator", ca, cert, key, 1, &a->orch[a->norch], err, errlen);
			if (rc != 0)
				return rc;
			a->norch++;
		}
		p += len;
		if (*p == ',')
			p++;
	}
	if (a->norch == 0)
		return sw_errf(err, errlen, SW_EINVAL, "--orchestrator-addr: no address");
	return 0;
}

int agent_new(const struct agent_config *cfg, struct agent **out, char *err, size_t errlen)
{
	int rc = 0;
	char *ca = NULL, *cert = NULL, *key = NULL;
	char path[AGENT_PATH_MAX];
	struct agent *a = NULL;

	*out = NULL;
	if (agent_labels_get(&cfg->labels, "app") == NULL ||
	    agent_labels_get(&cfg->labels, "environment") == NULL)
		return sw_errf(err, errlen, SW_EINVAL,
			       "labels app and environment are required (--label app=web "
			       "--label environment=prod, or SLIPWAY_AGENT_LABELS)");
	if (cfg->artifact_addr == NULL || cfg->artifact_addr[0] == '\0')
		return sw_errf(err, errlen, SW_EINVAL, "--artifact-addr is required");
	if (sealed_init() != 0)
		return sw_errf(err, errlen, SW_EINTERNAL, "libsodium did not initialise");
	if ((a = calloc(1, sizeof *a)) == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	a->cfg = cfg;
	a->store.lock_fd = -1;
	pthread_mutex_init(&a->mu, NULL);
	pthread_mutex_init(&a->probe_mu, NULL);
	pthread_mutex_init(&a->exec_mu, NULL);
	pthread_cond_init(&a->cond, NULL);
	atomic_init(&a->stopping, 0);

	if ((rc = agent_store_open(cfg->root, &a->store, err, errlen)) != 0)
		goto out;
	/* Who the applications run as, and their writable directory. */
	if ((rc = agent_user_resolve(cfg->app_user,
				     agent_labels_get(&cfg->labels, "environment"), &a->user, err,
				     errlen)) != 0 ||
	    (rc = agent_store_data_dir(&a->store, a->user.uid, a->user.gid, err, errlen)) != 0)
		goto out;
	if (cfg->hostname != NULL && cfg->hostname[0] != '\0')
		snprintf(a->hostname, sizeof a->hostname, "%s", cfg->hostname);
	else if (gethostname(a->hostname, sizeof a->hostname - 1) != 0)
		snprintf(a->hostname, sizeof a->hostname, "unknown");
	if ((rc = agent_cert_spiffe_id(cfg->cert, a->keys.self_id, sizeof a->keys.self_id, err,
				       errlen)) != 0)
		goto out;

	/* The X25519 key secrets are sealed to: created 0600 on first start. */
	if ((a->keys.seal_sk = sodium_malloc(SEALED_X25519_BYTES)) == NULL) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of secure memory");
		goto out;
	}
	if (cfg->seal_key != NULL && cfg->seal_key[0] != '\0') {
		snprintf(path, sizeof path, "%s", cfg->seal_key);
	} else {
		/* In keys/ (0700), which the application user cannot enter; a
		 * root laid out before keys/ existed had it at its top. */
		char old[AGENT_PATH_MAX];
		struct stat st;
		agent_store_path(&a->store, path, sizeof path, "keys/seal.key");
		agent_store_path(&a->store, old, sizeof old, "seal.key");
		if (lstat(path, &st) != 0 && errno == ENOENT && lstat(old, &st) == 0 &&
		    S_ISREG(st.st_mode) && rename(old, path) == 0)
			log_info("seal key moved into keys/", "path=%s", path);
	}
	if ((rc = sealed_x25519_load(path, 1, a->keys.seal_pk, a->keys.seal_sk, err, errlen)) != 0)
		goto out;

	/* Applications must not read the agent's keys, and must reach their
	 * releases: checked once, as the application user itself. */
	{
		char rel[AGENT_PATH_MAX];
		const char *keys[] = { cfg->key, path };
		agent_store_path(&a->store, rel, sizeof rel, "releases");
		if ((rc = agent_user_check(&a->user, keys, 2, rel, err, errlen)) != 0)
			goto out;
	}
	switch (a->user.mode) {
	case AGENT_USER_SWITCH:
		log_info("applications run as their own user", "user=%s uid=%u gid=%u",
			 a->user.name, (unsigned)a->user.uid, (unsigned)a->user.gid);
		break;
	case AGENT_USER_ROOT:
		log_warn("applications run as root (--app-user root): they can read the agent's "
			 "keys and everything on this host",
			 "user=%s", a->user.name);
		break;
	case AGENT_USER_SELF_UNPRIVILEGED:
		log_warn("THE AGENT CANNOT SWITCH USER: applications run as the agent's own user "
			 "and can read its TLS key and seal key; run the agent as root (or with "
			 "CAP_SETUID, CAP_SETGID and CAP_CHOWN) in production",
			 "uid=%u", (unsigned)a->user.uid);
		break;
	}

	/* Secrets are only ever accepted when signed by the pinned key. */
	if (cfg->secrets_sign_key != NULL && cfg->secrets_sign_key[0] != '\0') {
		if ((rc = agent_sign_key_parse(cfg->secrets_sign_key, a->keys.sign_pk, err,
					       errlen)) != 0)
			goto out;
		a->keys.have_sign_pk = 1;
	} else if (cfg->secrets_addr != NULL && cfg->secrets_addr[0] != '\0') {
		rc = sw_errf(err, errlen, SW_EINVAL,
			     "--secrets-addr is set but --secrets-sign-key is not: the agent "
			     "refuses secrets it cannot verify");
		goto out;
	}

	if ((rc = agent_provenance_init(a, err, errlen)) != 0)
		goto out;

	if ((rc = tls_read_pem(cfg->ca, &ca, err, errlen)) != 0 ||
	    (rc = tls_read_pem(cfg->cert, &cert, err, errlen)) != 0 ||
	    (rc = tls_read_pem(cfg->key, &key, err, errlen)) != 0)
		goto out;
	if ((rc = new_client(cfg->artifact_addr, "artifact", ca, cert, key, 0, &a->artifact, err, errlen)) != 0)
		goto out;
	if (cfg->secrets_addr != NULL && cfg->secrets_addr[0] != '\0' &&
	    (rc = new_client(cfg->secrets_addr, "secrets", ca, cert, key, 0, &a->secrets, err, errlen)) != 0)
		goto out;
	/* The long poll gets its own connection, so that a slow pull never
	 * shares a TCP connection with it. */
	if (cfg->orchestrator_addr != NULL && cfg->orchestrator_addr[0] != '\0' &&
	    (rc = orch_clients(a, cfg->orchestrator_addr, ca, cert, key, err, errlen)) != 0)
		goto out;
	*out = a;
	a = NULL;
out:
	if (key != NULL) {
		sodium_memzero(key, strlen(key));
		free(key);
	}
	free(ca);
	free(cert);
	agent_free(a);
	return rc;
}

void agent_crash_point(const char *point)
{
	/* Nothing in the agent calls setenv: getenv is safe from any thread. */
	const char *want = getenv("SLIPWAY_AGENT_CRASH_AT");
	if (want == NULL || strcmp(want, point) != 0)
		return;
	log_warn("test hook: the agent kills itself", "crash_at=%s", point);
	raise(SIGKILL);
}

void agent_free(struct agent *a)
{
	if (a == NULL)
		return;
	agent_sup_stop(a);
	for (size_t i = 0; i < a->norch; i++)
		rpc_client_free(a->orch[i]);
	rpc_client_free(a->secrets);
	rpc_client_free(a->artifact);
	agent_provenance_free(a);
	if (a->keys.seal_sk != NULL) {
		sodium_memzero(a->keys.seal_sk, SEALED_X25519_BYTES);
		sodium_free(a->keys.seal_sk);
	}
	/* Forget the live process without stopping it. */
	agent_manifest_free(a->live.m);
	agent_store_close(&a->store);
	pthread_cond_destroy(&a->cond);
	pthread_mutex_destroy(&a->exec_mu);
	pthread_mutex_destroy(&a->probe_mu);
	pthread_mutex_destroy(&a->mu);
	free(a);
}
