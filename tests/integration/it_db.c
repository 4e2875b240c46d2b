/*
 * it_db.c - lib/db against the stack's real PostgreSQL: migrations,
 * transactions, error mapping, reconnect, a database that is down, and one
 * that crashes and comes back (the stack's own PostgreSQL, stopped with
 * pg_ctl -m immediate: every service must be SERVING again without a
 * restart); statements prepared once per connection; and the outbox's
 * group commit.
 */
#include "db.h"
#include "err.h"
#include "harness.h"
#include "outbox.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

static const struct db_migration migs_v1[] = {
	{ 1, "things", "CREATE TABLE things (id bigint PRIMARY KEY, name text NOT NULL UNIQUE)" },
};
static const struct db_migration migs_v2[] = {
	{ 1, "things", "CREATE TABLE things (id bigint PRIMARY KEY, name text NOT NULL UNIQUE)" },
	{ 2, "things.size", "ALTER TABLE things ADD COLUMN size bigint NOT NULL DEFAULT 0" },
};

static struct db *open_db(const char *schema)
{
	struct db_opts o = { .url = h_env("SLIPWAY_PGURL"), .schema = schema, .pool_size = 3,
			     .app_name = "it_db" };
	struct db *db = NULL;
	char err[256];
	assert_int_equal(db_open(&o, &db, err, sizeof err), 0);
	return db;
}

static void test_migrations_versioned_and_idempotent(void **state)
{
	(void)state;
	struct db *db = open_db("it_db_mig");
	char err[256];
	assert_int_equal(db_migrate(db, migs_v1, 1, err, sizeof err), 0);
	assert_int_equal(db_migrate(db, migs_v1, 1, err, sizeof err), 0); /* again: no-op */
	assert_int_equal(db_migrate(db, migs_v2, 2, err, sizeof err), 0); /* adds v2 only */
	struct db_conn *c;
	PGresult *r;
	assert_int_equal(db_acquire(db, &c, 1000, err, sizeof err), 0);
	assert_int_equal(db_q(c, "SELECT count(*), max(version) FROM schema_migrations", 0, NULL, &r,
			      err, sizeof err),
			 0);
	assert_int_equal(db_int64(r, 0, 0), 2);
	assert_int_equal(db_int64(r, 0, 1), 2);
	PQclear(r);
	/* The tables live in the service's schema (search_path). */
	assert_int_equal(db_q(c, "SELECT size FROM it_db_mig.things", 0, NULL, NULL, err, sizeof err),
			 0);
	db_release(db, c);
	/* A failing migration changes nothing and says which one. */
	static const struct db_migration bad[] = {
		migs_v2[0], migs_v2[1], { 3, "broken", "ALTER TABLE nope ADD COLUMN x int" },
	};
	assert_int_not_equal(db_migrate(db, bad, 3, err, sizeof err), 0);
	assert_non_null(strstr(err, "migration 3 (broken)"));
	assert_int_equal(db_acquire(db, &c, 1000, err, sizeof err), 0);
	assert_int_equal(db_q(c, "SELECT max(version) FROM schema_migrations", 0, NULL, &r, err,
			      sizeof err),
			 0);
	assert_int_equal(db_int64(r, 0, 0), 2);
	PQclear(r);
	db_release(db, c);
	db_close(db);
}

struct ins {
	const char *id, *name;
	int fail_after;
};

static int insert_tx(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	struct ins *a = arg;
	const char *v[2] = { a->id, a->name };
	int rc = db_q(c, "INSERT INTO things (id, name) VALUES ($1, $2)", 2, v, NULL, err, errlen);
	if (rc == 0 && a->fail_after)
		rc = sw_errf(err, errlen, SW_EPRECOND, "changed my mind");
	return rc;
}

static int64_t count_things(struct db *db)
{
	struct db_conn *c;
	PGresult *r;
	char err[256];
	assert_int_equal(db_acquire(db, &c, 1000, err, sizeof err), 0);
	assert_int_equal(db_q(c, "SELECT count(*) FROM things", 0, NULL, &r, err, sizeof err), 0);
	int64_t n = db_int64(r, 0, 0);
	PQclear(r);
	db_release(db, c);
	return n;
}

static void test_transactions_and_error_mapping(void **state)
{
	(void)state;
	struct db *db = open_db("it_db_tx");
	char err[256];
	assert_int_equal(db_migrate(db, migs_v1, 1, err, sizeof err), 0);
	struct ins a = { "1", "alpha", 0 };
	assert_int_equal(db_tx(db, NULL, insert_tx, &a, err, sizeof err), 0);
	assert_int_equal(count_things(db), 1);
	/* Unique violation maps to ALREADY_EXISTS and rolls back. */
	struct ins b = { "2", "alpha", 0 };
	assert_int_equal(db_tx(db, NULL, insert_tx, &b, err, sizeof err), SW_EEXIST);
	/* A body that fails rolls back what it did. */
	struct ins c = { "3", "gamma", 1 };
	assert_int_equal(db_tx(db, NULL, insert_tx, &c, err, sizeof err), SW_EPRECOND);
	assert_int_equal(count_things(db), 1);
	/* Bad data is INVALID_ARGUMENT; a hostile value is only ever a value. */
	struct ins d = { "not a number", "delta", 0 };
	assert_int_equal(db_tx(db, NULL, insert_tx, &d, err, sizeof err), SW_EINVAL);
	struct ins e = { "4", "x'); DROP TABLE things; --", 0 };
	assert_int_equal(db_tx(db, NULL, insert_tx, &e, err, sizeof err), 0);
	assert_int_equal(count_things(db), 2);
	db_close(db);
}

#define PREP_NAME "it_db_things_by_id"
#define PREP_SQL "SELECT name FROM things WHERE id = $1"

static int64_t prepared_here(struct db_conn *c)
{
	PGresult *r;
	char err[256];
	assert_int_equal(db_q(c, "SELECT count(*) FROM pg_prepared_statements WHERE name = '" PREP_NAME
				 "'",
			      0, NULL, &r, err, sizeof err),
			 0);
	int64_t n = db_int64(r, 0, 0);
	PQclear(r);
	return n;
}

static void prepared_name(struct db_conn *c, const char *id, const char *want, int want_rc)
{
	PGresult *r = NULL;
	char err[256];
	const char *v[1] = { id };
	assert_int_equal(db_exec_prepared(c, PREP_NAME, PREP_SQL, 1, v, NULL, NULL, 0, &r, err,
					  sizeof err),
			 want_rc);
	if (want_rc == 0)
		assert_string_equal(db_text(r, 0, 0), want);
	else
		assert_null(r);
	PQclear(r);
}

static void terminate_backend(const char *pid);
static void backend_pid(struct db_conn *c, char pid[24]);

/* db_exec_prepared: prepared once per session, used again and again;
 * prepared afresh on a new session (after a loss) and when the session
 * dropped it (DEALLOCATE); errors mapped as db_exec maps them. */
static void test_prepared_statements(void **state)
{
	(void)state;
	struct db *db = open_db("it_db_tx");
	char err[256], pid[24];
	struct db_conn *c;
	assert_int_equal(db_migrate(db, migs_v1, 1, err, sizeof err), 0);
	struct ins a = { "101", "prepared", 0 };
	assert_int_equal(db_tx(db, NULL, insert_tx, &a, err, sizeof err), 0);
	assert_int_equal(db_acquire(db, &c, 1000, err, sizeof err), 0);
	assert_int_equal(prepared_here(c), 0);
	for (int i = 0; i < 3; i++)
		prepared_name(c, "101", "prepared", 0);
	assert_int_equal(prepared_here(c), 1);
	prepared_name(c, "not a number", NULL, SW_EINVAL);
	prepared_name(c, "101", "prepared", 0);
	/* The session forgets it: prepared again. */
	assert_int_equal(db_q(c, "DEALLOCATE ALL", 0, NULL, NULL, err, sizeof err), 0);
	assert_int_equal(prepared_here(c), 0);
	prepared_name(c, "101", "prepared", 0);
	assert_int_equal(prepared_here(c), 1);
	/* The session is lost: the next one prepares it again. */
	backend_pid(c, pid);
	db_release(db, c);
	terminate_backend(pid);
	assert_int_equal(db_acquire(db, &c, 1000, err, sizeof err), 0);
	assert_int_equal(prepared_here(c), 0);
	prepared_name(c, "101", "prepared", 0);
	assert_int_equal(prepared_here(c), 1);
	db_release(db, c);
	db_close(db);
}

/* ---- outbox group commit ---- */

static const struct db_migration outbox_migs[] = {
	{ 1, "outbox", OUTBOX_MIGRATION_SQL },
	{ 2, "outbox trace", OUTBOX_TRACE_SQL },
};

struct gc_arg {
	struct outbox_group *g;
	pthread_t t;
	int rc, done;
	char id[33], err[256];
};

static void *gc_main(void *arg)
{
	struct gc_arg *a = arg;
	struct outbox_event e = { .event_id = a->id, .actor = "spiffe://it.test/agent/x",
				  .action = "thing.use", .resource = "thing/1",
				  .outcome = SLIPWAY__V1__OUTCOME__OUTCOME_SUCCESS };
	a->rc = outbox_group_commit(a->g, &e, a->err, sizeof a->err);
	__atomic_store_n(&a->done, 1, __ATOMIC_SEQ_CST);
	return NULL;
}

static int64_t outbox_rows(struct db *db, const char *where)
{
	struct db_conn *c;
	PGresult *r;
	char err[256], q[256];
	snprintf(q, sizeof q, "SELECT count(*) FROM outbox WHERE %s", where);
	assert_int_equal(db_acquire(db, &c, 1000, err, sizeof err), 0);
	assert_int_equal(db_q(c, q, 0, NULL, &r, err, sizeof err), 0);
	int64_t n = db_int64(r, 0, 0);
	PQclear(r);
	db_release(db, c);
	return n;
}

/* outbox_group_commit returns only after its event committed; callers
 * that arrive while a commit is in progress share the next transaction;
 * every committed row has its commit-order seq; a batch that fails fails
 * every caller in it and leaves no row. The test stops commits by holding
 * the commit-order lock of the schema from another session. */
static void test_outbox_group_commit(void **state)
{
	(void)state;
	enum { N = 8 };
	struct db *db = open_db("it_db_outbox"), *admin = open_db("public");
	struct outbox_group *g = NULL;
	struct db_conn *lk;
	char err[256];
	assert_int_equal(db_migrate(db, outbox_migs, 2, err, sizeof err), 0);
	assert_int_equal(outbox_group_new(db, "it", 0, &g, err, sizeof err), 0);
	assert_int_equal(db_acquire(admin, &lk, 1000, err, sizeof err), 0);
	assert_int_equal(db_q(lk, "SELECT pg_advisory_lock(hashtext('slipway.outbox.commit.it_db_outbox'))",
			      0, NULL, NULL, err, sizeof err),
			 0);
	struct gc_arg a[N];
	memset(a, 0, sizeof a);
	for (int i = 0; i < N; i++) {
		a[i].g = g;
		snprintf(a[i].id, sizeof a[i].id, "it-db-gc-%d", i);
		assert_int_equal(pthread_create(&a[i].t, NULL, gc_main, &a[i]), 0);
	}
	h_sleep_ms(500);
	for (int i = 0; i < N; i++)
		assert_int_equal(__atomic_load_n(&a[i].done, __ATOMIC_SEQ_CST), 0);
	assert_int_equal(outbox_rows(db, "true"), 0); /* nothing visible: not committed */
	assert_int_equal(db_q(lk, "SELECT pg_advisory_unlock(hashtext('slipway.outbox.commit.it_db_outbox'))",
			      0, NULL, NULL, err, sizeof err),
			 0);
	db_release(admin, lk);
	for (int i = 0; i < N; i++) {
		assert_int_equal(pthread_join(a[i].t, NULL), 0);
		if (a[i].rc != 0)
			fail_msg("group commit %d: %s", i, a[i].err);
	}
	unsigned long long commits = 0, events = 0;
	outbox_group_stats(g, &commits, &events);
	assert_int_equal(events, N);
	assert_true(commits < N); /* the ones that queued shared a transaction */
	assert_int_equal(outbox_rows(db, "event_id LIKE 'it-db-gc-%' AND seq IS NOT NULL"), N);
	/* A batch that fails: no row, the caller told why. */
	assert_int_equal(db_acquire(db, &lk, 1000, err, sizeof err), 0);
	assert_int_equal(db_q(lk, "ALTER TABLE outbox ADD CONSTRAINT no_poison CHECK (event_id <> 'poison')",
			      0, NULL, NULL, err, sizeof err),
			 0);
	db_release(db, lk);
	struct gc_arg p = { .g = g };
	snprintf(p.id, sizeof p.id, "poison");
	gc_main(&p);
	assert_int_equal(p.rc, SW_EINVAL);
	assert_non_null(strstr(p.err, "no_poison"));
	assert_int_equal(outbox_rows(db, "event_id = 'poison'"), 0);
	outbox_group_free(g);
	db_close(admin);
	db_close(db);
}

static void terminate_backend(const char *pid)
{
	struct db *admin = open_db("public");
	struct db_conn *c;
	char err[256];
	assert_int_equal(db_acquire(admin, &c, 1000, err, sizeof err), 0);
	const char *v[1] = { pid };
	assert_int_equal(db_q(c, "SELECT pg_terminate_backend($1::int)", 1, v, NULL, err, sizeof err),
			 0);
	db_release(admin, c);
	db_close(admin);
	h_sleep_ms(100);
}

static void backend_pid(struct db_conn *c, char pid[24])
{
	PGresult *r;
	char err[256];
	assert_int_equal(db_q(c, "SELECT pg_backend_pid()", 0, NULL, &r, err, sizeof err), 0);
	snprintf(pid, 24, "%s", db_text(r, 0, 0));
	PQclear(r);
}

static void test_reconnect_after_connection_loss(void **state)
{
	(void)state;
	struct db *db = open_db("it_db_tx");
	char err[256], pid[24], pid2[24];
	struct db_conn *c;
	/* Killed while borrowed: the statement fails UNAVAILABLE... */
	assert_int_equal(db_acquire(db, &c, 1000, err, sizeof err), 0);
	backend_pid(c, pid);
	terminate_backend(pid); /* as a restart would */
	assert_int_equal(db_q(c, "SELECT 1", 0, NULL, NULL, err, sizeof err), SW_EUNAVAIL);
	db_release(db, c);
	/* ...and the pool reconnects on the next acquire. */
	assert_int_equal(db_acquire(db, &c, 1000, err, sizeof err), 0);
	assert_int_equal(db_q(c, "SELECT 1", 0, NULL, NULL, err, sizeof err), 0);
	backend_pid(c, pid2);
	assert_string_not_equal(pid, pid2);
	/* Killed while idle in the pool: never lent out, replaced first. */
	db_release(db, c);
	terminate_backend(pid2);
	assert_int_equal(db_acquire(db, &c, 1000, err, sizeof err), 0);
	assert_int_equal(db_q(c, "SELECT 1", 0, NULL, NULL, err, sizeof err), 0);
	backend_pid(c, pid);
	assert_string_not_equal(pid, pid2);
	db_release(db, c);
	assert_int_equal(db_ping(db, err, sizeof err), 0);
	db_close(db);
}

static void show(struct db_conn *c, const char *sql, const char *want)
{
	PGresult *r;
	char err[256];
	assert_int_equal(db_q(c, sql, 0, NULL, &r, err, sizeof err), 0);
	assert_string_equal(db_text(r, 0, 0), want);
	PQclear(r);
}

/* The value of a libpq connection parameter of c ("" when unset). */
static void conninfo(struct db_conn *c, const char *key, char *out, size_t cap)
{
	PQconninfoOption *o = PQconninfo(db_pg(c));
	out[0] = '\0';
	for (PQconninfoOption *p = o; p && p->keyword; p++)
		if (strcmp(p->keyword, key) == 0 && p->val)
			snprintf(out, cap, "%s", p->val);
	PQconninfoFree(o);
}

static void test_session_timeouts_in_force(void **state)
{
	(void)state;
	struct db *db = open_db("public");
	struct db_conn *c;
	char err[256], v[64];
	assert_int_equal(db_acquire(db, &c, 1000, err, sizeof err), 0);
	show(c, "SHOW lock_timeout", "5s");
	show(c, "SHOW idle_in_transaction_session_timeout", "30s");
	show(c, "SHOW statement_timeout", "30s");
	/* TCP parameters are set on every connection (libpq accepts them on a
	 * Unix socket and ignores them there). */
	conninfo(c, "keepalives", v, sizeof v);
	assert_string_equal(v, "1");
	conninfo(c, "keepalives_idle", v, sizeof v);
	assert_string_equal(v, "10");
	conninfo(c, "keepalives_interval", v, sizeof v);
	assert_string_equal(v, "5");
	conninfo(c, "keepalives_count", v, sizeof v);
	assert_string_equal(v, "3");
	conninfo(c, "tcp_user_timeout", v, sizeof v);
	assert_string_equal(v, "10000");
	db_release(db, c);
	db_close(db);

	/* A caller overrides them through the open options. */
	struct db_opts o = { .url = h_env("SLIPWAY_PGURL"), .schema = "public", .pool_size = 1,
			     .lock_timeout_ms = 250, .idle_in_tx_timeout_ms = 300,
			     .statement_timeout_ms = -1, .tcp_user_timeout_ms = 4000,
			     .keepalives_idle_s = 7 };
	assert_int_equal(db_open(&o, &db, err, sizeof err), 0);
	assert_int_equal(db_acquire(db, &c, 1000, err, sizeof err), 0);
	show(c, "SHOW lock_timeout", "250ms");
	show(c, "SHOW idle_in_transaction_session_timeout", "300ms");
	show(c, "SHOW statement_timeout", "0");
	conninfo(c, "tcp_user_timeout", v, sizeof v);
	assert_string_equal(v, "4000");
	conninfo(c, "keepalives_idle", v, sizeof v);
	assert_string_equal(v, "7");
	/* A session idle inside a transaction is ended by the server: its
	 * locks are not held forever by a stuck caller. */
	assert_int_equal(db_q(c, "BEGIN", 0, NULL, NULL, err, sizeof err), 0);
	h_sleep_ms(800);
	assert_int_equal(db_q(c, "SELECT 1", 0, NULL, NULL, err, sizeof err), SW_EUNAVAIL);
	db_release(db, c);
	assert_int_equal(db_ping(db, err, sizeof err), 0); /* replaced */
	db_close(db);
}

struct holder {
	struct db *db;
	struct db_conn *c;
	int hold_ms;
};

static void *release_later(void *arg)
{
	struct holder *h = arg;
	char err[256];
	h_sleep_ms(h->hold_ms);
	db_q(h->c, "COMMIT", 0, NULL, NULL, err, sizeof err);
	return NULL;
}

static int touch_tx(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	int *runs = arg;
	(*runs)++;
	return db_q(c, "UPDATE things SET name = name WHERE id = 1", 0, NULL, NULL, err, errlen);
}

/* A statement blocked by a lock held longer than lock_timeout fails with a
 * clear error instead of hanging (up to statement_timeout, 30 s); db_tx
 * retries it like a serialization failure, so a lock held for less than
 * the retries' total is ridden out. */
static void test_lock_timeout_fails_clearly_and_is_retried(void **state)
{
	(void)state;
	struct db *holder_db = open_db("it_db_tx");
	struct db_opts o = { .url = h_env("SLIPWAY_PGURL"), .schema = "it_db_tx", .pool_size = 1,
			     .lock_timeout_ms = 200 };
	struct db *db = NULL;
	char err[256];
	assert_int_equal(db_open(&o, &db, err, sizeof err), 0);
	struct holder h = { holder_db, NULL, 0 };
	assert_int_equal(db_acquire(holder_db, &h.c, 1000, err, sizeof err), 0);

	/* Held for good: every attempt times out on the lock. */
	assert_int_equal(db_q(h.c, "BEGIN", 0, NULL, NULL, err, sizeof err), 0);
	assert_int_equal(db_q(h.c, "LOCK TABLE things IN ACCESS EXCLUSIVE MODE", 0, NULL, NULL, err,
			      sizeof err),
			 0);
	int runs = 0;
	long long t0 = h_now_ms();
	assert_int_equal(db_tx(db, NULL, touch_tx, &runs, err, sizeof err), SW_EABORTED);
	fprintf(stderr, "it_db: blocked by a held lock: %s after %d attempts, %lld ms\n", err, runs,
		h_now_ms() - t0);
	assert_non_null(strstr(err, "lock timeout"));
	assert_non_null(strstr(err, "55P03"));
	assert_int_equal(runs, 5);
	assert_int_equal(db_q(h.c, "COMMIT", 0, NULL, NULL, err, sizeof err), 0);

	/* Held for a while: a retry gets through. */
	assert_int_equal(db_q(h.c, "BEGIN", 0, NULL, NULL, err, sizeof err), 0);
	assert_int_equal(db_q(h.c, "LOCK TABLE things IN ACCESS EXCLUSIVE MODE", 0, NULL, NULL, err,
			      sizeof err),
			 0);
	h.hold_ms = 300;
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, release_later, &h), 0);
	runs = 0;
	assert_int_equal(db_tx(db, NULL, touch_tx, &runs, err, sizeof err), 0);
	pthread_join(t, NULL);
	assert_true(runs >= 2);

	/* Migrations wait for their locks instead (DDL behind a busy table),
	 * and the pool's setting is back afterwards. */
	assert_int_equal(db_q(h.c, "BEGIN", 0, NULL, NULL, err, sizeof err), 0);
	assert_int_equal(db_q(h.c, "LOCK TABLE things IN ACCESS EXCLUSIVE MODE", 0, NULL, NULL, err,
			      sizeof err),
			 0);
	h.hold_ms = 600;
	assert_int_equal(pthread_create(&t, NULL, release_later, &h), 0);
	assert_int_equal(db_migrate(db, migs_v2, 2, err, sizeof err), 0);
	pthread_join(t, NULL);
	struct db_conn *c;
	assert_int_equal(db_acquire(db, &c, 1000, err, sizeof err), 0);
	show(c, "SHOW lock_timeout", "200ms");
	show(c, "SELECT max(version)::text FROM schema_migrations", "2");
	db_release(db, c);
	db_release(holder_db, h.c);
	db_close(db);
	db_close(holder_db);
}

static void test_database_down_is_unavailable(void **state)
{
	(void)state;
	struct db_opts o = { .url = "postgresql:///slipway?host=/nonexistent-dir&port=5432",
			     .schema = "x", .retries = 2, .connect_timeout_s = 1 };
	struct db *db = NULL;
	char err[256];
	assert_int_equal(db_open(&o, &db, err, sizeof err), 0);
	long long t0 = h_now_ms();
	assert_int_equal(db_ping(db, err, sizeof err), SW_EUNAVAIL);
	assert_true(h_now_ms() - t0 < 3000);
	assert_non_null(strstr(err, "unreachable"));
	db_close(db);
	/* Invalid schema names are refused before any SQL is built. */
	o.schema = "x; DROP";
	assert_int_equal(db_open(&o, &db, err, sizeof err), SW_EINVAL);
}

/* Every connection of a pool of n is opened and used at once (so that all
 * n exist), then given back. */
static int use_all(struct db *db, int n)
{
	struct db_conn *c[8];
	char err[256];
	int failed = 0;
	for (int i = 0; i < n; i++)
		assert_int_equal(db_acquire(db, &c[i], 5000, err, sizeof err), 0);
	for (int i = 0; i < n; i++) {
		if (db_q(c[i], "SELECT 1", 0, NULL, NULL, err, sizeof err) != 0) {
			fprintf(stderr, "it_db: connection %d: %s\n", i, err);
			failed++;
		}
	}
	for (int i = 0; i < n; i++)
		db_release(db, c[i]);
	return failed;
}

static const char *const service_addr_env[] = {
	"SLIPWAY_AUDIT_ADDR", "SLIPWAY_POLICY_ADDR", "SLIPWAY_SECRETS_ADDR",
	"SLIPWAY_ARTIFACT_ADDR", "SLIPWAY_ORCHESTRATOR_ADDR",
};
#define NSVC (sizeof service_addr_env / sizeof service_addr_env[0])

/* Regression: after PostgreSQL restarted, pooled connections that were idle
 * during the outage still looked healthy to libpq and each failed its next
 * statement ("server closed the connection unexpectedly"), one by one; the
 * health probe was one of their victims, so services answered NOT_SERVING
 * well after the database was back. Now a connection the server closed is
 * replaced before it is handed out: the first statement after the return
 * works, on every connection, and every service is SERVING at once. */
static void test_pool_and_services_recover_after_postgres_restart(void **state)
{
	(void)state;
	struct db *db = open_db("public"); /* pool of 3 */
	char err[256];
	assert_int_equal(use_all(db, 3), 0);
	for (size_t i = 0; i < NSVC; i++)
		if (getenv(service_addr_env[i]) != NULL)
			assert_int_equal(h_health(getenv(service_addr_env[i])), 1);

	assert_int_equal(h_pg_stop("immediate"), 0);
	long long t_down = h_now_ms();
	/* Down is UNAVAILABLE, quickly (no query hangs on a dead server). */
	assert_int_equal(db_ping(db, err, sizeof err), SW_EUNAVAIL);
	fprintf(stderr, "it_db: while down: %s (%lld ms)\n", err, h_now_ms() - t_down);
	h_sleep_ms(3000); /* an outage; no health checks meanwhile */
	assert_int_equal(h_pg_start(), 0);
	long long t_up = h_now_ms();

	/* The first statement on each pooled connection works (checked at the
	 * end, so that the services are checked in any case). */
	int ping = db_ping(db, err, sizeof err);
	if (ping != 0)
		fprintf(stderr, "it_db: first ping after the return: %s\n", err);
	int stale = use_all(db, 3);
	db_close(db);

	/* Every service: SERVING within 10 s of the return, and no NOT_SERVING
	 * answer at all once the database is back (such an answer would come
	 * from a stale connection, not from the database). */
	int seen[NSVC], bad[NSVC], pending = 0;
	long long at[NSVC];
	for (size_t i = 0; i < NSVC; i++) {
		seen[i] = getenv(service_addr_env[i]) == NULL;
		bad[i] = 0;
		at[i] = 0;
		pending += !seen[i];
	}
	while (pending > 0 && h_now_ms() - t_up < 10000) {
		for (size_t i = 0; i < NSVC; i++) {
			if (seen[i])
				continue;
			int h = h_health(getenv(service_addr_env[i]));
			if (h == 1) {
				seen[i] = 1;
				at[i] = h_now_ms() - t_up;
				pending--;
			} else {
				bad[i]++;
			}
		}
		if (pending > 0)
			h_sleep_ms(100);
	}
	for (size_t i = 0; i < NSVC; i++) {
		if (getenv(service_addr_env[i]) == NULL)
			continue;
		fprintf(stderr, "it_db: %s: %s after %lld ms, %d answers before\n",
			service_addr_env[i], at[i] ? "SERVING" : "not SERVING", at[i], bad[i]);
	}
	assert_int_equal(ping, 0);
	assert_int_equal(stale, 0);
	for (size_t i = 0; i < NSVC; i++) {
		assert_true(seen[i]);
		assert_int_equal(bad[i], 0);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_migrations_versioned_and_idempotent),
		cmocka_unit_test(test_transactions_and_error_mapping),
		cmocka_unit_test(test_reconnect_after_connection_loss),
		cmocka_unit_test(test_prepared_statements),
		cmocka_unit_test(test_outbox_group_commit),
		cmocka_unit_test(test_session_timeouts_in_force),
		cmocka_unit_test(test_lock_timeout_fails_clearly_and_is_retried),
		cmocka_unit_test(test_database_down_is_unavailable),
		cmocka_unit_test(test_pool_and_services_recover_after_postgres_restart),
	};
	rpc_init();
	int rc = cmocka_run_group_tests_name("it_db", tests, NULL, NULL);
	rpc_shutdown();
	return rc;
}
