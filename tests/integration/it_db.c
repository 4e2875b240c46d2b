/*
 * it_db.c - lib/db against the stack's real PostgreSQL: migrations,
 * transactions, error mapping, reconnect, and a database that is down.
 */
#include "db.h"
#include "err.h"
#include "harness.h"

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

static void test_reconnect_after_connection_loss(void **state)
{
	(void)state;
	struct db *db = open_db("it_db_tx");
	char err[256];
	struct db_conn *c;
	PGresult *r;
	assert_int_equal(db_acquire(db, &c, 1000, err, sizeof err), 0);
	assert_int_equal(db_q(c, "SELECT pg_backend_pid()", 0, NULL, &r, err, sizeof err), 0);
	char pid[24];
	snprintf(pid, sizeof pid, "%s", db_text(r, 0, 0));
	PQclear(r);
	db_release(db, c);
	/* Kill that backend from another connection, as a restart would. */
	struct db *admin = open_db("public");
	assert_int_equal(db_acquire(admin, &c, 1000, err, sizeof err), 0);
	const char *v[1] = { pid };
	assert_int_equal(db_q(c, "SELECT pg_terminate_backend($1::int)", 1, v, NULL, err, sizeof err),
			 0);
	db_release(admin, c);
	db_close(admin);
	h_sleep_ms(100);
	/* The next statement on the dead connection fails UNAVAILABLE... */
	assert_int_equal(db_acquire(db, &c, 1000, err, sizeof err), 0);
	assert_int_equal(db_q(c, "SELECT 1", 0, NULL, NULL, err, sizeof err), SW_EUNAVAIL);
	db_release(db, c);
	/* ...and the pool reconnects on the next acquire. */
	assert_int_equal(db_acquire(db, &c, 1000, err, sizeof err), 0);
	assert_int_equal(db_q(c, "SELECT 1", 0, NULL, NULL, err, sizeof err), 0);
	db_release(db, c);
	assert_int_equal(db_ping(db, err, sizeof err), 0);
	db_close(db);
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

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_migrations_versioned_and_idempotent),
		cmocka_unit_test(test_transactions_and_error_mapping),
		cmocka_unit_test(test_reconnect_after_connection_loss),
		cmocka_unit_test(test_database_down_is_unavailable),
	};
	return cmocka_run_group_tests_name("it_db", tests, NULL, NULL);
}
