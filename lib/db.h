/*
 * db.h - PostgreSQL access for every service (libpq).
 *
 * A small pool of connections, each with its search_path set to the
 * service's own schema; reconnect with bounded retries; versioned,
 * idempotent schema migrations applied at start-up under an advisory lock
 * (so replicas may start together); a transaction helper that retries
 * serialization failures; and parameterized queries only: there is no API
 * that puts a value into SQL text.
 */
#ifndef SLIPWAY_DB_H
#define SLIPWAY_DB_H

#include <libpq-fe.h>
#include <stddef.h>
#include <stdint.h>

struct db;
struct db_conn;

struct db_opts {
	const char *url;            /* libpq connection string or URI */
	const char *schema;         /* [a-z_][a-z0-9_]{0,62}: the service's schema */
	const char *app_name;       /* application_name, e.g. "slipway-audit" */
	int pool_size;              /* connections (>= 1) */
	int connect_timeout_s;      /* per attempt; 0 = 5 */
	int retries;                /* reconnect attempts per acquire; 0 = 3 */
	int statement_timeout_ms;   /* 0 = 30000 */
};

struct db_migration {
	int version;                /* strictly increasing from 1 */
	const char *name;
	const char *sql;            /* constant SQL, may hold several statements */
};

/* Creates the pool. Connections are made lazily; call db_migrate or
 * db_ping to connect now. Returns 0 and *out (free with db_close). */
int db_open(const struct db_opts *o, struct db **out, char *err, size_t errlen);
void db_close(struct db *db);

/* Creates the schema if needed and applies the migrations whose version is
 * newer than the schema's recorded version, each in its own transaction.
 * Idempotent; safe to run from several replicas at once. */
int db_migrate(struct db *db, const struct db_migration *m, size_t n, char *err,
	       size_t errlen);

/* Borrows a healthy connection, waiting up to timeout_ms for a free one.
 * Returns 0, SW_EUNAVAIL (database down after the retries) or SW_ETIMEDOUT.
 * Any thread; give it back with db_release. */
int db_acquire(struct db *db, struct db_conn **out, int64_t timeout_ms, char *err,
	       size_t errlen);
void db_release(struct db *db, struct db_conn *c);
PGconn *db_pg(struct db_conn *c);

/* Runs a parameterized statement. vals[i] are text parameters, or binary
 * ones when lens/fmts are given (fmts[i] = 1). Result columns are text, or
 * binary when binary_result. On success returns 0 and *res (PQclear it;
 * res may be NULL to discard). On failure returns the mapped SW_E* code
 * (unique violation -> SW_EEXIST, connection lost -> SW_EUNAVAIL,
 * serialization failure/deadlock -> SW_EABORTED, statement timeout ->
 * SW_ETIMEDOUT, bad data -> SW_EINVAL) with the primary message in err. */
int db_exec(struct db_conn *c, const char *sql, int n, const char *const *vals,
	    const int *lens, const int *fmts, int binary_result, PGresult **res, char *err,
	    size_t errlen);

/* Text-parameter shorthand for db_exec. */
int db_q(struct db_conn *c, const char *sql, int n, const char *const *vals, PGresult **res,
	 char *err, size_t errlen);

/* The body of a transaction. It may run more than once (on serialization
 * failures), so it must have no side effects outside the database. */
typedef int (*db_tx_fn)(struct db_conn *c, void *arg, char *err, size_t errlen);

/* Runs fn inside BEGIN ... COMMIT on a pooled connection, retrying up to 5
 * times on SW_EABORTED. If fn fails, rolls back and returns its code. If
 * the connection is lost during COMMIT the outcome is unknown: returns
 * SW_EUNAVAIL. `isolation` is NULL (read committed) or "serializable". */
int db_tx(struct db *db, const char *isolation, db_tx_fn fn, void *arg, char *err,
	  size_t errlen);

/* Checks that the database answers (SELECT 1). */
int db_ping(struct db *db, char *err, size_t errlen);

/* Result helpers (text results). Missing or NULL values read as "" / 0. */
const char *db_text(const PGresult *r, int row, int col);
int64_t db_int64(const PGresult *r, int row, int col);
int db_bool(const PGresult *r, int row, int col);
int db_isnull(const PGresult *r, int row, int col);
/* Decodes a bytea column in text form (\x...) into out[cap]; returns the
 * length or -1 when it does not fit or is malformed. */
int db_bytea(const PGresult *r, int row, int col, uint8_t *out, size_t cap);

/* Builds "<head> ($1,$2),($3,$4) <tail>" for a multi-row statement of
 * rows x cols parameters (placeholders only, never values) into a new
 * string (free()). NULL when out of memory. */
char *db_values_sql(const char *head, size_t rows, size_t cols, const char *tail);

/* Formats an int64 for use as a text parameter into buf[24]. */
const char *db_i64(char buf[24], int64_t v);

/* Maps a failed result's SQLSTATE to an SW_E* code. */
int db_err_from_sqlstate(const char *sqlstate);

#endif
