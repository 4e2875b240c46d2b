/*
 * store.c - secrets and their versions in PostgreSQL (schema "secrets"):
 * migrations, the keyring check at start-up, Put with check-and-set, the
 * version lifecycle, listing, and master key rotation.
 *
 * Every change commits its audit event in the same transaction (outbox).
 * Ciphertexts and wrapped keys travel as binary parameters, never as text.
 */
#include "secrets.h"

#include "err.h"
#include "log.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Serializes Put against master key retirement across replicas: puts hold
 * it shared for their transaction, retirement exclusively. */
#define ROTATION_LOCK "7305729741"
/* Held (session level) by the one rotation that may run at a time across
 * replicas. */
#define ROTATE_ONE_LOCK "7305729742"

const struct db_migration sec_migrations[] = {
	{ 1, "outbox", OUTBOX_MIGRATION_SQL },
	{ 2, "master keys, secrets, versions, grants",
	  "CREATE TABLE master_keys ("
	  " version integer PRIMARY KEY CHECK (version > 0),"
	  " kcv bytea NOT NULL,"
	  " created_at timestamptz NOT NULL DEFAULT now(),"
	  " retired_at timestamptz);"
	  "CREATE TABLE secrets ("
	  " id bigserial PRIMARY KEY,"
	  " app text NOT NULL,"
	  " env text NOT NULL,"
	  " name text NOT NULL,"
	  " current_version integer NOT NULL DEFAULT 0,"
	  " latest_version integer NOT NULL DEFAULT 0,"
	  " created_at timestamptz NOT NULL DEFAULT now(),"
	  " updated_at timestamptz NOT NULL DEFAULT now(),"
	  " UNIQUE (app, env, name));"
	  "CREATE TABLE versions ("
	  " secret_id bigint NOT NULL REFERENCES secrets (id),"
	  " version integer NOT NULL CHECK (version > 0),"
	  " state smallint NOT NULL CHECK (state IN (1, 2, 3)),"
	  " master_version integer REFERENCES master_keys (version),"
	  " wrapped_key bytea,"
	  " ciphertext bytea,"
	  " size_bytes integer NOT NULL,"
	  " created_by text NOT NULL,"
	  " created_at timestamptz NOT NULL DEFAULT now(),"
	  " state_changed_at timestamptz,"
	  " PRIMARY KEY (secret_id, version),"
	  " CHECK ((state = 3) = (ciphertext IS NULL)),"
	  " CHECK ((state = 3) = (wrapped_key IS NULL)),"
	  " CHECK ((state = 3) = (master_version IS NULL)));"
	  "CREATE INDEX versions_by_master ON versions (master_version)"
	  " WHERE master_version IS NOT NULL;"
	  "CREATE TABLE grants ("
	  " id text PRIMARY KEY,"
	  " deployment_id text NOT NULL,"
	  " agent text NOT NULL,"
	  " agent_key bytea NOT NULL,"
	  " app text NOT NULL,"
	  " env text NOT NULL,"
	  " expires_ms bigint NOT NULL,"
	  " created_by text NOT NULL,"
	  " created_ms bigint NOT NULL);"
	  "CREATE INDEX grants_by_deployment ON grants (deployment_id, agent, created_ms DESC);"
	  "CREATE TABLE grant_secrets ("
	  " grant_id text NOT NULL REFERENCES grants (id) ON DELETE CASCADE,"
	  " ord integer NOT NULL,"
	  " secret_id bigint NOT NULL REFERENCES secrets (id),"
	  " version integer NOT NULL,"
	  " name text NOT NULL,"
	  " PRIMARY KEY (grant_id, ord))" },
	{ 3, "outbox trace (outbox.h)", OUTBOX_TRACE_SQL },
};
const size_t sec_nmigrations = sizeof sec_migrations / sizeof sec_migrations[0];

#define META_COLS                                                                          \
	"s.app, s.env, s.name, v.version, v.state, coalesce(v.master_version, 0),"          \
	" v.size_bytes, v.created_by, (extract(epoch FROM v.created_at) * 1000)::bigint,"   \
	" v.version = s.current_version"

static void meta_from(const PGresult *r, int row, int col, struct sec_version_meta *m)
{
	snprintf(m->app, sizeof m->app, "%s", db_text(r, row, col + 0));
	snprintf(m->env, sizeof m->env, "%s", db_text(r, row, col + 1));
	snprintf(m->name, sizeof m->name, "%s", db_text(r, row, col + 2));
	m->version = (uint32_t)db_int64(r, row, col + 3);
	m->state = (int)db_int64(r, row, col + 4);
	m->master_version = (uint32_t)db_int64(r, row, col + 5);
	m->size_bytes = (uint32_t)db_int64(r, row, col + 6);
	snprintf(m->created_by, sizeof m->created_by, "%s", db_text(r, row, col + 7));
	m->created_ms = db_int64(r, row, col + 8);
	m->current = db_bool(r, row, col + 9);
}

static int meta_load(struct db_conn *c, int64_t secret_id, uint32_t version,
		     struct sec_version_meta *m, char *err, size_t errlen)
{
	char a[24], b[24];
	PGresult *r = NULL;
	const char *v[2] = { db_i64(a, secret_id), db_i64(b, version) };
	int rc = db_q(c,
		      "SELECT " META_COLS " FROM secrets s JOIN versions v ON v.secret_id = s.id"
		      " WHERE s.id = $1 AND v.version = $2",
		      2, v, &r, err, errlen);
	if (rc != 0)
		return rc;
	if (PQntuples(r) != 1)
		rc = sw_errf(err, errlen, SW_EINTERNAL, "version vanished");
	else
		meta_from(r, 0, 0, m);
	PQclear(r);
	return rc;
}

static const char *state_name(int st)
{
	return st == SEC_ENABLED ? "enabled" : st == SEC_DISABLED ? "disabled" : "destroyed";
}

/* ---------------------------------------------------------------- keys at start-up */

int sec_store_master_count(struct db *db, int64_t *n, char *err, size_t errlen)
{
	struct db_conn *c = NULL;
	PGresult *r = NULL;
	int rc = db_acquire(db, &c, 10000, err, errlen);
	if (rc != 0)
		return rc;
	rc = db_q(c, "SELECT count(*) FROM master_keys", 0, NULL, &r, err, errlen);
	if (rc == 0)
		*n = db_int64(r, 0, 0);
	PQclear(r);
	db_release(db, c);
	return rc;
}

static int check_keys_tx(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	struct sec *s = arg;
	uint32_t vs[SEC_MAX_MASTER];
	size_t n = sec_keys_versions(s->keys, vs, SEC_MAX_MASTER);
	PGresult *r = NULL;
	int rc = 0;

	for (size_t i = 0; i < n && rc == 0; i++) {
		uint8_t kcv[16], stored[16];
		char vb[24];
		const char *v[2] = { db_i64(vb, vs[i]), (const char *)kcv };
		int lens[2] = { 0, 16 }, fmts[2] = { 0, 1 };
		sec_keys_kcv(s->keys, vs[i], kcv);
		rc = db_q(c, "SELECT kcv FROM master_keys WHERE version = $1", 1, v, &r, err, errlen);
		if (rc != 0)
			break;
		if (PQntuples(r) == 0) {
			rc = db_exec(c, "INSERT INTO master_keys (version, kcv) VALUES ($1, $2)", 2,
				     v, lens, fmts, 0, NULL, err, errlen);
		} else if (db_bytea(r, 0, 0, stored, sizeof stored) != 16 ||
			   sodium_memcmp(stored, kcv, 16) != 0) {
			rc = sw_errf(err, errlen, SW_EPRECOND,
				     "master key %u in the keyring is not the key the database "
				     "knows as version %u: wrong keyring file",
				     vs[i], vs[i]);
		}
		PQclear(r);
		r = NULL;
	}
	if (rc != 0)
		return rc;
	rc = db_q(c,
		  "SELECT master_version, count(*) FROM versions WHERE master_version IS NOT NULL"
		  " GROUP BY 1 ORDER BY 1",
		  0, NULL, &r, err, errlen);
	if (rc != 0)
		return rc;
	for (int i = 0; i < PQntuples(r) && rc == 0; i++) {
		uint32_t v = (uint32_t)db_int64(r, i, 0);
		int held = 0;
		for (size_t j = 0; j < n; j++)
			held |= vs[j] == v;
		if (!held)
			rc = sw_errf(err, errlen, SW_EPRECOND,
				     "%lld data keys are wrapped by master key %u, which the keyring "
				     "does not hold: restore it",
				     (long long)db_int64(r, i, 1), v);
	}
	PQclear(r);
	return rc;
}

int sec_store_check_keys(struct sec *s, char *err, size_t errlen)
{
	return db_tx(s->db, NULL, check_keys_tx, s, err, errlen);
}

/* ---------------------------------------------------------------- put */

struct put_tx {
	struct sec *s;
	struct sec_put *p;
	uint8_t *ct;
};

static int put_tx(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	struct put_tx *t = arg;
	struct sec_put *p = t->p;
	PGresult *r = NULL;
	char idb[24], vb[24], mkb[24], szb[24], res[320];
	uint8_t wrapped[SEC_WRAPPED_BYTES];
	uint32_t mk = 0;
	int rc;

	rc = db_q(c, "SELECT pg_advisory_xact_lock_shared(" ROTATION_LOCK ")", 0, NULL, NULL, err,
		  errlen);
	if (rc != 0)
		return rc;
	const char *k3[3] = { p->app, p->env, p->name };
	rc = db_q(c,
		  "INSERT INTO secrets (app, env, name) VALUES ($1, $2, $3)"
		  " ON CONFLICT (app, env, name) DO NOTHING",
		  3, k3, NULL, err, errlen);
	if (rc != 0)
		return rc;
	rc = db_q(c,
		  "SELECT id, latest_version, current_version FROM secrets"
		  " WHERE app = $1 AND env = $2 AND name = $3 FOR UPDATE",
		  3, k3, &r, err, errlen);
	if (rc != 0)
		return rc;
	int64_t id = db_int64(r, 0, 0);
	uint32_t latest = (uint32_t)db_int64(r, 0, 1), current = (uint32_t)db_int64(r, 0, 2);
	PQclear(r);
	r = NULL;
	if (p->cas && latest != p->expected_version)
		return sw_errf(err, errlen, SW_EPRECOND,
			       "check-and-set failed: the latest version of %s is %u, not %u",
			       p->name, latest, p->expected_version);
	if (latest >= INT32_MAX)
		return sw_errf(err, errlen, SW_ELIMIT, "%s has no versions left", p->name);
	uint32_t version = latest + 1;
	struct sec_ident ident = { p->app, p->env, p->name, version };
	rc = sec_env_seal(t->s->keys, &ident, p->value, p->len, t->ct, wrapped, &mk, err, errlen);
	if (rc != 0)
		return rc;
	const char *v[7] = { db_i64(idb, id), db_i64(vb, version), db_i64(mkb, mk),
			     (const char *)wrapped, (const char *)t->ct, db_i64(szb, (int64_t)p->len),
			     p->actor };
	int lens[7] = { 0, 0, 0, SEC_WRAPPED_BYTES, (int)(p->len + SEC_CT_OVERHEAD), 0, 0 };
	int fmts[7] = { 0, 0, 0, 1, 1, 0, 0 };
	rc = db_exec(c,
		     "INSERT INTO versions (secret_id, version, state, master_version, wrapped_key,"
		     " ciphertext, size_bytes, created_by) VALUES ($1, $2, 1, $3, $4, $5, $6, $7)",
		     7, v, lens, fmts, 0, NULL, err, errlen);
	if (rc != 0)
		return rc;
	int promote = !p->keep_current || current == 0;
	const char *u[3] = { idb, vb, promote ? "true" : "false" };
	rc = db_q(c,
		  "UPDATE secrets SET latest_version = $2, updated_at = now(),"
		  " current_version = CASE WHEN $3::bool THEN $2 ELSE current_version END"
		  " WHERE id = $1",
		  3, u, NULL, err, errlen);
	if (rc != 0)
		return rc;
	struct outbox_event e = { .actor = p->actor, .action = "secret.put",
				  .resource = sec_resource(res, sizeof res, p->app, p->env, p->name),
				  .outcome = SLIPWAY__V1__OUTCOME__OUTCOME_SUCCESS };
	outbox_detail(&e, "app", p->app);
	outbox_detail(&e, "environment", p->env);
	outbox_detail(&e, "name", p->name);
	outbox_detail(&e, "version", vb);
	outbox_detail(&e, "master_key_version", mkb);
	outbox_detail(&e, "size_bytes", szb);
	outbox_detail(&e, "current", promote ? "true" : "false");
	if (p->cas)
		outbox_detail(&e, "check_and_set", "true");
	rc = sec_audit_add(c, &e, err, errlen);
	if (rc != 0)
		return rc;
	return meta_load(c, id, version, &p->out, err, errlen);
}

int sec_store_put(struct sec *s, struct sec_put *p, char *err, size_t errlen)
{
	/* The ciphertext is not secret: ordinary memory. */
	struct put_tx t = { s, p, malloc(p->len + SEC_CT_OVERHEAD) };
	if (t.ct == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	int rc = db_tx(s->db, NULL, put_tx, &t, err, errlen);
	free(t.ct);
	if (rc == 0)
		sec_audit_kick(s);
	return rc;
}

/* ---------------------------------------------------------------- lifecycle */

static const char *act_event(enum sec_action a)
{
	switch (a) {
	case SEC_ACT_DISABLE: return "secret.disable";
	case SEC_ACT_ENABLE: return "secret.enable";
	case SEC_ACT_DESTROY: return "secret.destroy";
	case SEC_ACT_SET_CURRENT: return "secret.set_current";
	}
	return "secret.unknown";
}

static int version_tx(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	struct sec_version_op *op = arg;
	PGresult *r = NULL;
	char vb[24], idb[24], prevb[24], res[320];
	int rc;

	op->changed = 0;
	const char *k[4] = { op->app, op->env, op->name, db_i64(vb, op->version) };
	rc = db_q(c,
		  "SELECT s.id, s.current_version, v.state FROM secrets s"
		  " LEFT JOIN versions v ON v.secret_id = s.id AND v.version = $4"
		  " WHERE s.app = $1 AND s.env = $2 AND s.name = $3 FOR UPDATE OF s",
		  4, k, &r, err, errlen);
	if (rc != 0)
		return rc;
	if (PQntuples(r) == 0) {
		PQclear(r);
		return sw_errf(err, errlen, SW_ENOTFOUND, "no secret %s in scope %s%s%s", op->name,
			       op->app, *op->env ? "/" : "", op->env);
	}
	int64_t id = db_int64(r, 0, 0);
	uint32_t current = (uint32_t)db_int64(r, 0, 1);
	int missing = db_isnull(r, 0, 2), st = (int)db_int64(r, 0, 2);
	PQclear(r);
	if (missing)
		return sw_errf(err, errlen, SW_ENOTFOUND, "secret %s has no version %u", op->name,
			       op->version);
	db_i64(idb, id);
	db_i64(prevb, current);
	const char *iv[2] = { idb, vb };
	switch (op->act) {
	case SEC_ACT_DISABLE:
		if (st == SEC_DESTROYED)
			return sw_errf(err, errlen, SW_EPRECOND, "version %u of %s is destroyed",
				       op->version, op->name);
		if (op->version == current)
			return sw_errf(err, errlen, SW_EPRECOND,
				       "version %u is the current version of %s: make another "
				       "version current first",
				       op->version, op->name);
		if (st == SEC_ENABLED) {
			rc = db_q(c,
				  "UPDATE versions SET state = 2, state_changed_at = now()"
				  " WHERE secret_id = $1 AND version = $2",
				  2, iv, NULL, err, errlen);
			op->changed = 1;
		}
		break;
	case SEC_ACT_ENABLE:
		if (st == SEC_DESTROYED)
			return sw_errf(err, errlen, SW_EPRECOND,
				       "version %u of %s is destroyed and cannot be enabled",
				       op->version, op->name);
		if (st == SEC_DISABLED) {
			rc = db_q(c,
				  "UPDATE versions SET state = 1, state_changed_at = now()"
				  " WHERE secret_id = $1 AND version = $2",
				  2, iv, NULL, err, errlen);
			op->changed = 1;
		}
		break;
	case SEC_ACT_DESTROY:
		if (op->version == current)
			return sw_errf(err, errlen, SW_EPRECOND,
				       "version %u is the current version of %s: make another "
				       "version current first",
				       op->version, op->name);
		if (st != SEC_DESTROYED) {
			rc = db_q(c,
				  "UPDATE versions SET state = 3, ciphertext = NULL, wrapped_key = NULL,"
				  " master_version = NULL, state_changed_at = now()"
				  " WHERE secret_id = $1 AND version = $2",
				  2, iv, NULL, err, errlen);
			op->changed = 1;
		}
		break;
	case SEC_ACT_SET_CURRENT:
		if (st != SEC_ENABLED)
			return sw_errf(err, errlen, SW_EPRECOND,
				       "version %u of %s is %s; only an enabled version can be current",
				       op->version, op->name, state_name(st));
		if (current != op->version) {
			rc = db_q(c,
				  "UPDATE secrets SET current_version = $2, updated_at = now()"
				  " WHERE id = $1",
				  2, iv, NULL, err, errlen);
			op->changed = 1;
		}
		break;
	}
	if (rc != 0)
		return rc;
	if (op->changed) {
		struct outbox_event e = {
			.actor = op->actor, .action = act_event(op->act),
			.resource = sec_resource(res, sizeof res, op->app, op->env, op->name),
			.outcome = SLIPWAY__V1__OUTCOME__OUTCOME_SUCCESS
		};
		outbox_detail(&e, "app", op->app);
		outbox_detail(&e, "environment", op->env);
		outbox_detail(&e, "name", op->name);
		outbox_detail(&e, "version", vb);
		outbox_detail(&e, "previous_state", state_name(st));
		if (op->act == SEC_ACT_SET_CURRENT)
			outbox_detail(&e, "previous_current", prevb);
		rc = sec_audit_add(c, &e, err, errlen);
		if (rc != 0)
			return rc;
	}
	return meta_load(c, id, op->version, &op->out, err, errlen);
}

int sec_store_version_op(struct sec *s, struct sec_version_op *op, char *err, size_t errlen)
{
	int rc = db_tx(s->db, NULL, version_tx, op, err, errlen);
	if (rc == 0 && op->changed)
		sec_audit_kick(s);
	/* A destroyed version's data key must not outlive its ciphertext in
	 * our memory either (crypto-shredding): wipe the cache. */
	if (rc == 0 && op->changed && op->act == SEC_ACT_DESTROY)
		sec_dkcache_clear(s->dkcache);
	return rc;
}

/* ---------------------------------------------------------------- listing */

static int each_row(PGresult *r, sec_meta_fn fn, void *arg)
{
	for (int i = 0; i < PQntuples(r); i++) {
		struct sec_version_meta m;
		meta_from(r, i, 0, &m);
		if (fn(&m, arg) != 0)
			break;
	}
	return 0;
}

int sec_store_list(struct sec *s, const char *app, const char *env, int app_given,
		   const char *after_app, const char *after_env, const char *after_name,
		   int limit, sec_meta_fn fn, void *arg, char *err, size_t errlen)
{
	struct db_conn *c = NULL;
	PGresult *r = NULL;
	char lb[24];
	int rc = db_acquire(s->db, &c, 10000, err, errlen);
	if (rc != 0)
		return rc;
	const char *v[7] = { app_given ? app : "", env, *env ? "true" : "false", after_app,
			     after_env, after_name, db_i64(lb, limit) };
	rc = db_q(c,
		  "SELECT " META_COLS " FROM secrets s"
		  " JOIN versions v ON v.secret_id = s.id AND v.version = s.current_version"
		  " WHERE ($1 = '' OR s.app = $1) AND (NOT $3::bool OR s.env = $2)"
		  " AND (s.app, s.env, s.name) > ($4, $5, $6)"
		  " ORDER BY s.app, s.env, s.name LIMIT $7::int",
		  7, v, &r, err, errlen);
	db_release(s->db, c);
	if (rc != 0)
		return rc;
	each_row(r, fn, arg);
	PQclear(r);
	return 0;
}

int sec_store_versions(struct sec *s, const char *app, const char *env, const char *name,
		       sec_meta_fn fn, void *arg, char *err, size_t errlen)
{
	struct db_conn *c = NULL;
	PGresult *r = NULL;
	int rc = db_acquire(s->db, &c, 10000, err, errlen);
	if (rc != 0)
		return rc;
	const char *v[3] = { app, env, name };
	rc = db_q(c,
		  "SELECT " META_COLS " FROM secrets s JOIN versions v ON v.secret_id = s.id"
		  " WHERE s.app = $1 AND s.env = $2 AND s.name = $3 ORDER BY v.version",
		  3, v, &r, err, errlen);
	db_release(s->db, c);
	if (rc != 0)
		return rc;
	if (PQntuples(r) == 0)
		rc = sw_errf(err, errlen, SW_ENOTFOUND, "no secret %s in scope %s%s%s", name, app,
			     *env ? "/" : "", env);
	else
		each_row(r, fn, arg);
	PQclear(r);
	return rc;
}

/* ---------------------------------------------------------------- rotation */

#define REWRAP_BATCH 256

struct rewrap_tx {
	struct sec *s;
	uint32_t to;      /* 0: verify only (unwrap every key, change nothing) */
	int64_t after_id; /* keyset position */
	int64_t after_ver;
	int rows;
	uint64_t done;
	char bad[320];    /* the resource that failed */
};

/* One batch: reads up to REWRAP_BATCH versions wrapped by another master
 * key than t->to (or, to verify, every live version after the position)
 * and rewraps them. */
static int rewrap_tx(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	struct rewrap_tx *t = arg;
	PGresult *r = NULL;
	char tb[24], ab[24], vb[24], lb[24];
	int rc;
	t->rows = 0;
	t->done = 0;
	if (t->to == 0) {
		const char *v[3] = { db_i64(ab, t->after_id), db_i64(vb, t->after_ver),
				     db_i64(lb, REWRAP_BATCH) };
		rc = db_exec(c,
			     "SELECT v.secret_id, v.version, s.app, s.env, s.name, v.master_version,"
			     " v.wrapped_key FROM versions v JOIN secrets s ON s.id = v.secret_id"
			     " WHERE v.state <> 3 AND (v.secret_id, v.version) > ($1, $2)"
			     " ORDER BY v.secret_id, v.version LIMIT $3::int",
			     3, v, NULL, NULL, 0, &r, err, errlen);
	} else {
		const char *v[2] = { db_i64(tb, t->to), db_i64(lb, REWRAP_BATCH) };
		rc = db_exec(c,
			     "SELECT v.secret_id, v.version, s.app, s.env, s.name, v.master_version,"
			     " v.wrapped_key FROM versions v JOIN secrets s ON s.id = v.secret_id"
			     " WHERE v.state <> 3 AND v.master_version <> $1"
			     " ORDER BY v.secret_id, v.version LIMIT $2::int FOR UPDATE OF v",
			     2, v, NULL, NULL, 0, &r, err, errlen);
	}
	if (rc != 0)
		return rc;
	for (int i = 0; i < PQntuples(r) && rc == 0; i++) {
		uint8_t old[SEC_WRAPPED_BYTES], neu[SEC_WRAPPED_BYTES];
		struct sec_ident id = { db_text(r, i, 2), db_text(r, i, 3), db_text(r, i, 4),
					(uint32_t)db_int64(r, i, 1) };
		uint32_t from = (uint32_t)db_int64(r, i, 5);
		t->after_id = db_int64(r, i, 0);
		t->after_ver = db_int64(r, i, 1);
		t->rows++;
		if (db_bytea(r, i, 6, old, sizeof old) != SEC_WRAPPED_BYTES) {
			rc = sw_errf(err, errlen, SW_EDATALOSS, "the wrapped data key is malformed");
		} else if (t->to == 0) {
			uint8_t *dk = sec_scratch(SEC_SCRATCH_WORK, SEC_KEY_BYTES);
			char kerr[128];
			rc = dk ? 0 : sw_errf(err, errlen, SW_ENOMEM, "out of secure memory");
			/* Unwrapping proves the key and its identity binding. */
			if (rc == 0) {
				uint32_t cur = sec_keys_current(t->s->keys);
				rc = sec_env_rewrap(t->s->keys, &id, old, from, neu, cur, kerr,
						    sizeof kerr);
				if (rc != 0)
					sw_errf(err, errlen, rc, "%s", kerr);
			}
			sec_scratch_wipe(SEC_SCRATCH_WORK);
		} else {
			rc = sec_env_rewrap(t->s->keys, &id, old, from, neu, t->to, err, errlen);
			if (rc == 0) {
				char sb[24], vb2[24];
				const char *u[4] = { (const char *)neu, db_i64(tb, t->to),
						     db_i64(sb, t->after_id), db_i64(vb2, t->after_ver) };
				int lens[4] = { SEC_WRAPPED_BYTES, 0, 0, 0 }, fmts[4] = { 1, 0, 0, 0 };
				rc = db_exec(c,
					     "UPDATE versions SET wrapped_key = $1, master_version = $2"
					     " WHERE secret_id = $3 AND version = $4",
					     4, u, lens, fmts, 0, NULL, err, errlen);
				if (rc == 0)
					t->done++;
			}
		}
		if (rc != 0)
			snprintf(t->bad, sizeof t->bad, "%s/%s/%s@%u", id.app, *id.env ? id.env : "*",
				 id.name, id.version);
	}
	PQclear(r);
	return rc;
}

struct retire_tx {
	struct sec *s;
	struct sec_rotation *r;
	uint32_t held[SEC_MAX_MASTER];
	size_t nheld;
	int64_t left;
};

/* The final step: with every Put excluded, checks that nothing is wrapped
 * by an older key any more, retires older keys when asked, and records
 * the rotation's event. */
static int retire_tx(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	struct retire_tx *t = arg;
	PGresult *r = NULL;
	char nb[24], cb[24], list[256] = "";
	int rc = db_q(c, "SELECT pg_advisory_xact_lock(" ROTATION_LOCK ")", 0, NULL, NULL, err,
		      errlen);
	if (rc != 0)
		return rc;
	const char *v[1] = { db_i64(nb, t->r->new_version) };
	rc = db_q(c,
		  "SELECT count(*) FROM versions WHERE master_version IS NOT NULL"
		  " AND master_version <> $1",
		  1, v, &r, err, errlen);
	if (rc != 0)
		return rc;
	t->left = db_int64(r, 0, 0);
	PQclear(r);
	if (t->left != 0)
		return 0; /* a Put raced the rewrap: the caller runs another pass */
	if (t->r->retire) {
		size_t off = 0;
		for (size_t i = 0; i < t->nheld; i++)
			if (t->held[i] != t->r->new_version && off < sizeof list)
				off += (size_t)snprintf(list + off, sizeof list - off, "%s%u",
							off ? "," : "", t->held[i]);
		rc = db_q(c,
			  "UPDATE master_keys SET retired_at = now()"
			  " WHERE version <> $1 AND retired_at IS NULL",
			  1, v, NULL, err, errlen);
		if (rc != 0)
			return rc;
	}
	struct outbox_event e = { .actor = t->r->actor, .action = "secret.rotate_master",
				  .resource = "secret-master-key",
				  .outcome = SLIPWAY__V1__OUTCOME__OUTCOME_SUCCESS };
	outbox_detail(&e, "new_master_key_version", nb);
	outbox_detail(&e, "rewrapped", db_i64(cb, (int64_t)t->r->rewrapped));
	outbox_detail(&e, "retired_versions", t->r->retire ? list : "");
	rc = sec_audit_add(c, &e, err, errlen);
	if (rc != 0)
		return rc;
	/* Forget the old keys while Puts are still excluded; the commit
	 * follows. If it fails, nothing references the old keys any more. */
	if (t->r->retire && list[0] != '\0') {
		rc = sec_keys_retire_except(t->s->keys, t->r->new_version, err, errlen);
		if (rc == 0)
			t->r->retired = 1;
	}
	return rc;
}

static int record_key_tx(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	struct sec *s = ((void **)arg)[0];
	uint32_t v = *(uint32_t *)((void **)arg)[1];
	uint8_t kcv[16];
	char vb[24];
	sec_keys_kcv(s->keys, v, kcv);
	const char *vals[2] = { db_i64(vb, v), (const char *)kcv };
	int lens[2] = { 0, 16 }, fmts[2] = { 0, 1 };
	/* A row for this version already means another key claims it: fail. */
	return db_exec(c, "INSERT INTO master_keys (version, kcv) VALUES ($1, $2)", 2, vals, lens,
		       fmts, 0, NULL, err, errlen);
}

int sec_store_rotate(struct sec *s, struct sec_rotation *r, char *err, size_t errlen)
{
	struct rewrap_tx t;
	struct db_conn *lock = NULL;
	PGresult *lr = NULL;
	int rc = 0;

	pthread_mutex_lock(&s->rotate_mu);
	/* One rotation at a time across replicas: they share the keyring file. */
	rc = db_acquire(s->db, &lock, 10000, err, errlen);
	if (rc == 0)
		rc = db_q(lock, "SELECT pg_try_advisory_lock(" ROTATE_ONE_LOCK ")", 0, NULL, &lr, err,
			  errlen);
	if (rc == 0 && !db_bool(lr, 0, 0))
		rc = sw_errf(err, errlen, SW_EABORTED,
			     "another master key rotation is running (another replica); retry later");
	PQclear(lr);
	if (rc != 0) {
		if (lock != NULL)
			db_release(s->db, lock);
		lock = NULL;
		goto out;
	}
	/* 1. Verify: every live data key must unwrap before anything changes. */
	memset(&t, 0, sizeof t);
	t.s = s;
	do {
		rc = db_tx(s->db, NULL, rewrap_tx, &t, err, errlen);
	} while (rc == 0 && t.rows == REWRAP_BATCH);
	if (rc != 0) {
		if (t.bad[0] != '\0') {
			char why[256];
			snprintf(why, sizeof why, "%s", err);
			sw_errf(err, errlen, rc, "secret %s: %s; nothing was changed", t.bad, why);
		}
		goto out;
	}
	/* 2. A new master key: on disk first, then known to the database. */
	rc = sec_keys_add(s->keys, &r->new_version, err, errlen);
	if (rc != 0)
		goto out;
	log_info("master key added", "version=%u", r->new_version);
	void *args[2] = { s, &r->new_version };
	rc = db_tx(s->db, NULL, record_key_tx, args, err, errlen);
	if (rc != 0)
		goto out;
	/* 3. Rewrap in batches until nothing is wrapped by an older key. */
	struct retire_tx rt;
	memset(&rt, 0, sizeof rt);
	rt.s = s;
	rt.r = r;
	for (int pass = 0; pass < 5; pass++) {
		memset(&t, 0, sizeof t);
		t.s = s;
		t.to = r->new_version;
		do {
			rc = db_tx(s->db, NULL, rewrap_tx, &t, err, errlen);
			r->rewrapped += rc == 0 ? t.done : 0;
		} while (rc == 0 && t.rows > 0);
		if (rc != 0) {
			if (t.bad[0] != '\0') {
				char why[256];
				snprintf(why, sizeof why, "%s", err);
				sw_errf(err, errlen, rc, "secret %s: %s", t.bad, why);
			}
			goto out;
		}
		/* 4. Retire (when asked) and record. */
		rt.nheld = sec_keys_versions(s->keys, rt.held, SEC_MAX_MASTER);
		rc = db_tx(s->db, NULL, retire_tx, &rt, err, errlen);
		if (rc != 0 || rt.left == 0)
			goto out;
	}
	rc = sw_errf(err, errlen, SW_EABORTED,
		     "writes kept racing the rewrap; %lld data keys still use older master keys",
		     (long long)rt.left);
out:
	if (lock != NULL) {
		char ignored[128];
		db_q(lock, "SELECT pg_advisory_unlock(" ROTATE_ONE_LOCK ")", 0, NULL, NULL, ignored,
		     sizeof ignored);
		db_release(s->db, lock);
	}
	pthread_mutex_unlock(&s->rotate_mu);
	/* Data keys unwrapped before the rotation go (a changed keyring also
	 * makes them misses: sec_keys_generation). */
	sec_dkcache_clear(s->dkcache);
	if (rc == 0)
		sec_audit_kick(s);
	return rc;
}
