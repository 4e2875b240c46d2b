/*
 * grants.c - the way out: grants created by the orchestrator when it
 * dispatches a deployment to an agent, and Fetch, which hands that agent
 * its bundle signed by the service and sealed to the agent's key.
 *
 * A grant pins concrete versions when it is created (version 0 resolves
 * to the current version then), so every fetch of a deployment delivers
 * the same values; a version disabled or destroyed afterwards is no longer
 * delivered. A grant is usable by its agent only, for its deployment only,
 * until it expires; Fetch picks the caller's newest unexpired grant.
 *
 * Fetch is the hot path: one prepared query reads the grant, its
 * references and their ciphertexts; data keys come from the bounded-time
 * cache or are unwrapped; values are decrypted into per-thread secure
 * scratch, packed, signed and sealed; the fetch's audit event is committed
 * before the bundle is returned (a bundle whose delivery is not on record
 * is never handed out), group-committed with those of concurrent fetches;
 * and every buffer that held plaintext is wiped.
 */
#include "secrets.h"

#include "err.h"
#include "log.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The audit detail listing the secrets ("A@3 B@1 ..."): the audit service
 * takes detail values of at most 1024 bytes, so long lists end with
 * " ...(+N more)" (the count detail has the total). */
#define LIST_MAX 1000

static void list_add(char *list, size_t *off, const char *name, uint32_t version, size_t *more)
{
	if (*more) {
		(*more)++;
		return;
	}
	int n = snprintf(list + *off, LIST_MAX - *off, "%s%s@%u", *off ? " " : "", name, version);
	if (n < 0 || (size_t)n >= LIST_MAX - *off - 24) {
		list[*off] = '\0';
		*more = 1;
		return;
	}
	*off += (size_t)n;
}

static void list_end(char *list, size_t off, size_t more)
{
	if (more)
		snprintf(list + off, LIST_MAX - off, " ...(+%zu more)", more);
}

/* ---------------------------------------------------------------- CreateGrant */

struct grant_tx {
	struct sec *s;
	struct sec_grant_req *g;
	char list[LIST_MAX];
};

static int grant_tx(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	struct grant_tx *t = arg;
	const Slipway__V1__CreateGrantRequest *in = t->g->in;
	PGresult *r = NULL;
	size_t off = 0, more = 0;
	uint64_t total = 0;
	char eb[24], cb[24], nb[24], res[320];
	int rc = 0;
	int64_t *ids = calloc(in->n_secrets, sizeof *ids);
	uint32_t *vers = calloc(in->n_secrets, sizeof *vers);
	if (ids == NULL || vers == NULL) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < in->n_secrets; i++) {
		const Slipway__V1__SecretRef *ref = in->secrets[i];
		int scoped = ref->scope != NULL && ref->scope->app[0] != '\0';
		const char *env = scoped ? ref->scope->environment : in->environment;
		const char *k[3] = { in->app, env, ref->name };
		/* Unscoped references prefer the environment's secret over the app's. */
		rc = db_q(c,
			  scoped ? "SELECT id, current_version, env FROM secrets"
				   " WHERE app = $1 AND env = $2 AND name = $3"
				 : "SELECT id, current_version, env FROM secrets"
				   " WHERE app = $1 AND name = $3 AND env IN ($2, '')"
				   " ORDER BY env DESC LIMIT 1",
			  3, k, &r, err, errlen);
		if (rc != 0)
			goto out;
		if (PQntuples(r) == 0) {
			rc = sw_errf(err, errlen, SW_ENOTFOUND, "no secret %s for %s/%s", ref->name,
				     in->app, scoped && !*env ? "*" : env);
			goto out;
		}
		ids[i] = db_int64(r, 0, 0);
		vers[i] = ref->version ? ref->version : (uint32_t)db_int64(r, 0, 1);
		PQclear(r);
		r = NULL;
		char ib[24], vb[24];
		const char *kv[2] = { db_i64(ib, ids[i]), db_i64(vb, vers[i]) };
		rc = db_q(c,
			  "SELECT state, size_bytes FROM versions WHERE secret_id = $1 AND version = $2"
			  " FOR SHARE",
			  2, kv, &r, err, errlen);
		if (rc != 0)
			goto out;
		if (PQntuples(r) == 0) {
			rc = sw_errf(err, errlen, SW_ENOTFOUND, "secret %s has no version %u",
				     ref->name, vers[i]);
			goto out;
		}
		int st = (int)db_int64(r, 0, 0);
		total += (uint64_t)db_int64(r, 0, 1) + strlen(ref->name) + 32;
		PQclear(r);
		r = NULL;
		if (st != SEC_ENABLED) {
			rc = sw_errf(err, errlen, SW_EPRECOND, "version %u of secret %s is %s",
				     vers[i], ref->name, st == SEC_DISABLED ? "disabled" : "destroyed");
			goto out;
		}
		list_add(t->list, &off, ref->name, vers[i], &more);
	}
	list_end(t->list, off, more);
	if (total + 1024 > t->s->max_bundle) {
		rc = sw_errf(err, errlen, SW_ELIMIT,
			     "the bundle would hold about %llu bytes; the limit is %zu",
			     (unsigned long long)total, t->s->max_bundle);
		goto out;
	}

	uint8_t rnd[16];
	if (in->request_id[0] != '\0') {
		/* An idempotent request: its grant id is derived from the caller
		 * and the request id, and a grant already made is the answer. */
		crypto_generichash_state h;
		crypto_generichash_init(&h, NULL, 0, sizeof rnd);
		crypto_generichash_update(&h, (const uint8_t *)t->g->actor, strlen(t->g->actor) + 1);
		crypto_generichash_update(&h, (const uint8_t *)in->request_id, strlen(in->request_id));
		crypto_generichash_final(&h, rnd, sizeof rnd);
		sodium_bin2hex(t->g->grant_id, sizeof t->g->grant_id, rnd, sizeof rnd);
		rc = db_q(c, "SELECT deployment_id = $2 AND agent = $3, expires_ms FROM grants WHERE id = $1",
			  3, (const char *[]){ t->g->grant_id, in->deployment_id, in->agent }, &r, err,
			  errlen);
		if (rc != 0)
			goto out;
		if (PQntuples(r) == 1) {
			int same = db_bool(r, 0, 0);
			t->g->expires_ms = db_int64(r, 0, 1);
			t->g->existed = 1;
			rc = same ? 0
				  : sw_errf(err, errlen, SW_EEXIST,
					    "request_id %s was used for another deployment or agent",
					    in->request_id);
			goto out;
		}
		PQclear(r);
		r = NULL;
	} else {
		randombytes_buf(rnd, sizeof rnd);
		sodium_bin2hex(t->g->grant_id, sizeof t->g->grant_id, rnd, sizeof rnd);
	}
	const char *gv[9] = { t->g->grant_id,  in->deployment_id, in->agent,
			      (const char *)in->agent_public_key.data, in->app, in->environment,
			      db_i64(eb, t->g->expires_ms), t->g->actor, db_i64(cb, sec_now_ms()) };
	int lens[9] = { 0, 0, 0, (int)in->agent_public_key.len, 0, 0, 0, 0, 0 };
	int fmts[9] = { 0, 0, 0, 1, 0, 0, 0, 0, 0 };
	rc = db_exec(c,
		     "INSERT INTO grants (id, deployment_id, agent, agent_key, app, env, expires_ms,"
		     " created_by, created_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
		     9, gv, lens, fmts, 0, NULL, err, errlen);
	if (rc != 0)
		goto out;
	for (size_t i = 0; i < in->n_secrets; i++) {
		char ob[24], ib[24], vb[24];
		const char *v[5] = { t->g->grant_id, db_i64(ob, (int64_t)i), db_i64(ib, ids[i]),
				     db_i64(vb, vers[i]), in->secrets[i]->name };
		rc = db_q(c,
			  "INSERT INTO grant_secrets (grant_id, ord, secret_id, version, name)"
			  " VALUES ($1, $2, $3, $4, $5)",
			  5, v, NULL, err, errlen);
		if (rc != 0)
			goto out;
	}
	snprintf(res, sizeof res, "secret-grant/%s", in->deployment_id);
	struct outbox_event e = { .actor = t->g->actor, .action = "secret.grant", .resource = res,
				  .outcome = SLIPWAY__V1__OUTCOME__OUTCOME_SUCCESS };
	outbox_detail(&e, "deployment", in->deployment_id);
	outbox_detail(&e, "agent", in->agent);
	outbox_detail(&e, "grant", t->g->grant_id);
	outbox_detail(&e, "app", in->app);
	outbox_detail(&e, "environment", in->environment);
	outbox_detail(&e, "expires_unix_ms", eb);
	outbox_detail(&e, "count", db_i64(nb, (int64_t)in->n_secrets));
	outbox_detail(&e, "secrets", t->list);
	rc = sec_audit_add(c, &e, err, errlen);
out:
	PQclear(r);
	free(ids);
	free(vers);
	return rc;
}

int sec_grant_create(struct sec *s, struct sec_grant_req *g, char *err, size_t errlen)
{
	struct grant_tx *t = calloc(1, sizeof *t);
	if (t == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	t->s = s;
	t->g = g;
	int rc = db_tx(s->db, NULL, grant_tx, t, err, errlen);
	if (rc == 0 && g->existed) {
		log_info("grant request repeated: the first grant answers", "deployment=%s agent=%s grant=%s",
			 g->in->deployment_id, g->in->agent, g->grant_id);
	} else if (rc == 0) {
		sec_audit_kick(s);
		log_info("grant created", "deployment=%s agent=%s grant=%s secrets=%s",
			 g->in->deployment_id, g->in->agent, g->grant_id, t->list);
	}
	free(t);
	return rc;
}

/* ---------------------------------------------------------------- Fetch */

static uint32_t be32(const char *p)
{
	const unsigned char *u = (const unsigned char *)p;
	return (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 | (uint32_t)u[2] << 8 | u[3];
}

static int64_t be64(const char *p)
{
	const unsigned char *u = (const unsigned char *)p;
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v = v << 8 | u[i];
	return (int64_t)v;
}

static int16_t be16(const char *p)
{
	const unsigned char *u = (const unsigned char *)p;
	return (int16_t)(u[0] << 8 | u[1]);
}

struct fetch_fail {
	const char *reason;
	const char *grant;
	const char *secret;
};

static void fetch_audit_failure(struct sec *s, const char *agent, const char *deployment,
				const struct fetch_fail *f, int code)
{
	char res[320];
	snprintf(res, sizeof res, "secret-grant/%s", deployment);
	struct outbox_event e = { .actor = agent, .action = "secret.fetch", .resource = res,
				  .outcome = code == SW_EPERM ? SLIPWAY__V1__OUTCOME__OUTCOME_DENIED
							      : SLIPWAY__V1__OUTCOME__OUTCOME_FAILURE };
	outbox_detail(&e, "deployment", deployment);
	outbox_detail(&e, "agent", agent);
	outbox_detail(&e, "status", sw_grpc_status_name(sw_err_to_grpc(code)));
	outbox_detail(&e, "reason", f->reason);
	if (f->grant)
		outbox_detail(&e, "grant", f->grant);
	if (f->secret)
		outbox_detail(&e, "secret", f->secret);
	sec_audit_alone(s, &e);
}

/* Why the caller has no usable grant: none at all, someone else's, or its
 * own expired one (sec_fetch_no_grant decides from the closest row). */
static int classify_missing(struct db_conn *c, const char *agent, const char *deployment,
			    int64_t now, struct fetch_fail *f, char *err, size_t errlen)
{
	PGresult *r = NULL;
	const char *v[2] = { deployment, agent };
	int rc = db_q(c,
		      "SELECT agent = $2, expires_ms FROM grants WHERE deployment_id = $1"
		      " ORDER BY (agent = $2) DESC, expires_ms DESC LIMIT 1",
		      2, v, &r, err, errlen);
	if (rc != 0)
		return rc;
	struct sec_grant_seen g = { 0 };
	if (PQntuples(r) > 0) {
		g.found = 1;
		g.mine = db_bool(r, 0, 0);
		g.expires_ms = db_int64(r, 0, 1);
	}
	PQclear(r);
	return sec_fetch_no_grant(&g, deployment, agent, now, &f->reason, err, errlen);
}

/* The grant, its references and their ciphertexts in one query (binary
 * results). It is prepared once per connection: planning this join costs
 * more than running it. */
#define FETCH_STMT "slipway_secrets_fetch"
#define FETCH_SQL                                                                          \
	"SELECT g.id, g.app, g.env, g.expires_ms, g.agent_key, gs.name, gs.version,"        \
	" v.state, v.master_version, v.wrapped_key, v.ciphertext, s.app, s.env"             \
	" FROM (SELECT * FROM grants WHERE deployment_id = $1 AND agent = $2"               \
	"       AND expires_ms > $3::bigint ORDER BY created_ms DESC LIMIT 1) g"            \
	" JOIN grant_secrets gs ON gs.grant_id = g.id"                                      \
	" JOIN secrets s ON s.id = gs.secret_id"                                            \
	" LEFT JOIN versions v ON v.secret_id = gs.secret_id AND v.version = gs.version"    \
	" ORDER BY gs.ord"

int sec_grant_fetch(struct sec *s, struct rpc_ctx *ctx, const char *agent,
		    const char *deployment, uint8_t **box, size_t *boxlen, char *err, size_t errlen)
{
	struct db_conn *c = NULL;
	PGresult *r = NULL;
	struct sealed_item *items = NULL;
	struct fetch_fail f = { 0 };
	char why[512], nowb[24], grant[40] = "", list[LIST_MAX], secret[200] = "";
	size_t off = 0, more = 0, total = 0, work_len = 0, out_len = 0;
	uint8_t *values = NULL, *work = NULL;
	int rc;

	*box = NULL;
	*boxlen = 0;
	list[0] = '\0';
	rc = db_acquire(s->db, &c, 10000, err, errlen);
	if (rc != 0)
		return rc;
	int64_t now = sec_now_ms();
	const char *v[3] = { deployment, agent, db_i64(nowb, now) };
	rc = db_exec_prepared(c, FETCH_STMT, FETCH_SQL, 3, v, NULL, NULL, 1, &r, err, errlen);
	if (rc != 0)
		goto out;
	int n = PQntuples(r);
	if (n == 0) {
		rc = classify_missing(c, agent, deployment, now, &f, err, errlen);
		goto fail;
	}
	snprintf(grant, sizeof grant, "%s", PQgetvalue(r, 0, 0));
	f.grant = grant;
	const char *app = PQgetvalue(r, 0, 1), *env = PQgetvalue(r, 0, 2);
	int64_t gexp = be64(PQgetvalue(r, 0, 3));
	if (PQgetlength(r, 0, 4) != SEALED_X25519_BYTES) {
		f.reason = "stored agent key is malformed";
		rc = sw_errf(err, errlen, SW_EDATALOSS, "the grant's agent key is malformed");
		goto fail;
	}
	/* Policy may narrow what agents fetch (by app and environment). */
	db_release(s->db, c);
	c = NULL;
	rc = sec_authorize(s, ctx, agent, "fetch", "secret.fetch", app, env, "", err, errlen);
	if (rc != 0)
		goto out; /* audited as a denial */

	items = calloc((size_t)n, sizeof *items);
	if (items == NULL) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		goto out;
	}
	for (int i = 0; i < n; i++) {
		const char *name = PQgetvalue(r, i, 5);
		uint32_t ver = be32(PQgetvalue(r, i, 6));
		snprintf(secret, sizeof secret, "%s@%u", name, ver);
		int has_state = !PQgetisnull(r, i, 7);
		rc = sec_fetch_version_ok(has_state, has_state ? be16(PQgetvalue(r, i, 7)) : 0, name,
					  ver, &f.reason, err, errlen);
		if (rc != 0) {
			f.secret = secret;
			goto fail;
		}
		if (PQgetlength(r, i, 9) != SEC_WRAPPED_BYTES ||
		    PQgetlength(r, i, 10) < SEC_CT_OVERHEAD) {
			f.reason = "stored ciphertext malformed";
			f.secret = secret;
			rc = sw_errf(err, errlen, SW_EDATALOSS,
				     "secret %s: stored ciphertext is malformed", secret);
			goto fail;
		}
		items[i].name = name;
		items[i].version = ver;
		items[i].len = (size_t)PQgetlength(r, i, 10) - SEC_CT_OVERHEAD;
		total += items[i].len;
		list_add(list, &off, name, ver, &more);
	}
	list_end(list, off, more);

	values = sec_scratch(SEC_SCRATCH_DATA, total ? total : 1);
	if (values == NULL) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of secure memory");
		goto out;
	}
	size_t pos = 0;
	for (int i = 0; i < n; i++) {
		struct sec_ident id = { PQgetvalue(r, i, 11), PQgetvalue(r, i, 12), items[i].name,
					items[i].version };
		rc = sec_env_open(s->keys, s->dkcache, &id, (const uint8_t *)PQgetvalue(r, i, 10),
				  (size_t)PQgetlength(r, i, 10), (const uint8_t *)PQgetvalue(r, i, 9),
				  be32(PQgetvalue(r, i, 8)), values + pos, why, sizeof why);
		if (rc != 0) {
			snprintf(secret, sizeof secret, "%s@%u", items[i].name, items[i].version);
			f.reason = rc == SW_EDATALOSS ? "stored value does not authenticate"
						      : "master key unavailable";
			f.secret = secret;
			log_error("cannot decrypt a granted secret", "secret=%s deployment=%s error=%s",
				  secret, deployment, why);
			rc = sw_errf(err, errlen, rc, "secret %s: %s", secret, why);
			goto fail;
		}
		items[i].value = values + pos;
		pos += items[i].len;
	}

	int64_t bexp = sec_bundle_expiry(now, s->bundle_ttl_ms, gexp);
	char key_id[SEALED_KEY_ID_MAX];
	uint8_t seal_pk[32], sign_pk[32];
	sec_keys_public(s->keys, seal_pk, sign_pk, key_id);
	struct sealed_build_req br = { .deployment_id = deployment, .agent = agent,
				       .expires_unix_ms = bexp, .issued_unix_ms = now,
				       .items = items, .nitems = (size_t)n,
				       .sign_sk = sec_keys_sign_sk(s->keys), .key_id = key_id,
				       .agent_pk = (const uint8_t *)PQgetvalue(r, 0, 4) };
	rc = sealed_build_size(&br, &work_len, &out_len, err, errlen);
	if (rc == 0 && out_len > s->max_bundle)
		rc = sw_errf(err, errlen, SW_ELIMIT, "the bundle is %zu bytes; the limit is %zu",
			     out_len, s->max_bundle);
	if (rc == 0) {
		work = sec_scratch(SEC_SCRATCH_WORK, work_len);
		*box = rpc_alloc(ctx, out_len);
		if (work == NULL || *box == NULL)
			rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	}
	if (rc == 0)
		rc = sealed_build(&br, work, work_len, *box, out_len, boxlen, err, errlen);
	if (rc != 0) {
		*box = NULL;
		*boxlen = 0;
		f.reason = "bundle could not be built";
		goto fail;
	}

	/* On record before it leaves: the fetch event commits first. */
	char eb[24], cnt[24], res[320];
	snprintf(res, sizeof res, "secret-grant/%s", deployment);
	struct outbox_event e = { .actor = agent, .action = "secret.fetch", .resource = res,
				  .outcome = SLIPWAY__V1__OUTCOME__OUTCOME_SUCCESS };
	outbox_detail(&e, "deployment", deployment);
	outbox_detail(&e, "agent", agent);
	outbox_detail(&e, "grant", grant);
	outbox_detail(&e, "app", app);
	outbox_detail(&e, "environment", env);
	outbox_detail(&e, "count", db_i64(cnt, n));
	outbox_detail(&e, "secrets", list);
	outbox_detail(&e, "bundle_expires_unix_ms", db_i64(eb, bexp));
	/* Group commit: concurrent fetches' events share one transaction, and
	 * this call returns only once the one holding ours has committed. */
	rc = outbox_group_commit(s->fetch_log, &e, why, sizeof why);
	if (rc != 0) {
		*box = NULL;
		*boxlen = 0;
		rc = sw_errf(err, errlen, SW_EUNAVAIL,
			     "cannot record the fetch, so not delivering: %s", why);
		goto out;
	}
	/* No kick: the event is durable in the outbox and the relay's next poll
	 * (every 200 ms) ships fetch events in batches instead of one delivery
	 * cycle per fetch. */
	goto out;

fail:
	if (c != NULL) {
		db_release(s->db, c);
		c = NULL;
	}
	fetch_audit_failure(s, agent, deployment, &f, rc);
out:
	if (values != NULL)
		sec_scratch_wipe(SEC_SCRATCH_DATA);
	if (work != NULL)
		sec_scratch_wipe(SEC_SCRATCH_WORK);
	free(items);
	PQclear(r);
	if (c != NULL)
		db_release(s->db, c);
	return rc;
}
