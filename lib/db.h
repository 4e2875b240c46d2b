/*
 * db.h - PostgreSQL access for every service (libpq).
 *
 * A small pool of connections, each with its search_path set to the
 * service's own schema and its timeouts set (statement, lock, idle in
 * transaction; TCP keepalives and user timeout on the socket); reconnect
 * with bounded retries; versioned, idempotent schema migrations applied at
 * start-up under an advisory lock (so replicas may start together); a
 * transaction helper that retries serialization failures, deadlocks and
 * lock timeouts; and parameterized queries only: there is no API that puts
 * a value into SQL text.
 *
 * Outages: a connection the server closed (a restart, a crash, a failover,
 * pg_terminate_backend) is never handed out. db_acquire checks each idle
 * connection's socket before lending it (one poll(2), no round trip), and
 * once any connection was found lost, every connection opened before that
 * loss is replaced on its next acquire instead of being trusted. So the
 * first statement after the database returns works, and a health probe
 * built on db_ping answers for the database, not for a stale socket.
 */
#ifndef SLIPWAY_DB_H
#define SLIPWAY_DB_H

#include <libpq-fe.h>
#include <stddef.h>
#include <stdint.h>

struct db;
struct db_conn;

/* Timeouts: 0 picks the default shown; a negative value turns the setting
 * off (PostgreSQL's 0) where that makes sense. The session settings are
 * applied with set_config on every new connection; the TCP ones are libpq
 * connection parameters, which the URL may override (they only matter for
 * TCP connections and are ignored on Unix sockets). */
struct db_opts {
	const char *url;            /* libpq connection string or URI */
	const char *sslmode;        /* libpq sslmode; NULL, "" or "prefer": the
				     * URL's (default prefer); any other value
				     * (require, verify-ca, verify-full, allow,
				     * disable) overrides the URL */
	const char *schema;         /* [a-z_][a-z0-9_]{0,62}: the service's schema */
	const char *app_name;       /* application_name, e.g. "slipway-audit" */
	int pool_size;              /* connections (>= 1); 0 = 4 */
	int connect_timeout_s;      /* per attempt; 0 = 5 */
	int retries;                /* reconnect attempts per acquire; 0 = 3 */
	int statement_timeout_ms;   /* statement_timeout; 0 = 30000, < 0 = off */
	int lock_timeout_ms;        /* lock_timeout: a statement waiting longer for
				     * a lock fails SW_EABORTED (55P03), which db_tx
				     * retries; 0 = 5000, < 0 = off */
	int idle_in_tx_timeout_ms;  /* idle_in_transaction_session_timeout: the
				     * server ends a session idle inside a
				     * transaction (its locks go with it);
				     * 0 = 30000, < 0 = off */
	int tcp_user_timeout_ms;    /* tcp_user_timeout: unacknowledged data fails
				     * the connection after this; 0 = 10000, < 0 = off */
	int keepalives_idle_s;      /* keepalives=1 with keepalives_idle; 0 = 10 */
	int keepalives_interval_s;  /* keepalives_interval; 0 = 5 */
	int keepalives_count;       /* keepalives_count; 0 = 3 */
};

struct db_migration {
	int version;                /* strictly increasing from 1 */
	const char *name;
	const char *sql;            /* constant SQL, may hold several statements */
};

/* Whether s is a libpq sslmode (disable, allow, prefer, require,
 * verify-ca, verify-full), or NULL/"". */
int db_sslmode_ok(const char *s);

/* One plain libpq connection (for LISTEN) with sslmode applied as db_open
 * does. Returns what PQconnectdbParams returns (check PQstatus). */
void *db_connect_plain(const char *url, const char *sslmode);

/* Creates the pool. Connections are made lazily; call db_migrate or
 * db_ping to connect now. Returns 0 and *out (free with db_close), or
 * SW_EINVAL (no URL, a bad schema name or sslmode). */
int db_open(const struct db_opts *o, struct db **out, char *err, size_t errlen);
void db_close(struct db *db);

/* Creates the schema if needed and applies the migrations whose version is
 * newer than the schema's recorded version, each in its own transaction.
 * Idempotent; safe to run from several replicas at once. Waits for locks
 * (the migration lock, DDL behind busy transactions) without lock_timeout;
 * statement_timeout still applies. */
int db_migrate(struct db *db, const struct db_migration *m, size_t n, char *err,
	       size_t errlen);

/* Borrows a healthy connection, waiting up to timeout_ms for a free one. A
 * connection the server has closed, or one opened before another
 * connection of the pool was found lost, is replaced first. Returns 0,
 * SW_EUNAVAIL (database down after the retries) or SW_ETIMEDOUT. Any
 * thread; give it back with db_release. */
int db_acquire(struct db *db, struct db_conn **out, int64_t timeout_ms, char *err,
	       size_t errlen);
void db_release(struct db *db, struct db_conn *c);
PGconn *db_pg(struct db_conn *c);

/* Runs a parameterized statement. vals[i] are text parameters, or binary
 * ones when lens/fmts are given (fmts[i] = 1). Result columns are text, or
 * binary when binary_result. On success returns 0 and *res (PQclear it;
 * res may be NULL to discard). On failure returns the mapped SW_E* code
 * (unique violation -> SW_EEXIST, connection lost -> SW_EUNAVAIL,
 * serialization failure/deadlock/lock timeout -> SW_EABORTED, statement
 * timeout -> SW_ETIMEDOUT, bad data -> SW_EINVAL) with the primary message
 * and SQLSTATE in err (a lock timeout reads "canceling statement due to
 * lock timeout (55P03)"). */
int db_exec(struct db_conn *c, const char *sql, int n, const char *const *vals,
	    const int *lens, const int *fmts, int binary_result, PGresult **res, char *err,
	    size_t errlen);

/* db_exec through a statement prepared once per connection: the first
 * call on a connection prepares `sql` under `name` (one more round trip),
 * later ones only bind and execute it, so PostgreSQL neither parses nor
 * plans it again (for a join, planning can cost more than running). The
 * same name must always come with the same sql; both are borrowed for the
 * pool's lifetime (string constants). A connection remembers up to 32
 * names (more still work, prepared each time a name is missing from the
 * session). A reconnected session starts empty, and a session that lost
 * the statement (26000) gets it prepared again, once. Errors as db_exec. */
int db_exec_prepared(struct db_conn *c, const char *name, const char *sql, int n,
		     const char *const *vals, const int *lens, const int *fmts, int binary_result,
		     PGresult **res, char *err, size_t errlen);

/* Text-parameter shorthand for db_exec. */
int db_q(struct db_conn *c, const char *sql, int n, const char *const *vals, PGresult **res,
	 char *err, size_t errlen);

/* The body of a transaction. It may run more than once (on serialization
 * failures, deadlocks and lock timeouts), so it must have no side effects
 * outside the database. */
typedef int (*db_tx_fn)(struct db_conn *c, void *arg, char *err, size_t errlen);

/* Runs fn inside BEGIN ... COMMIT on a pooled connection, retrying up to 5
 * times on SW_EABORTED (serialization failure, deadlock, lock timeout), and
 * once more at once when the connection turns out lost at BEGIN (nothing
 * was sent yet). If fn fails, rolls back and returns its code. If the
 * connection is lost during COMMIT the outcome is unknown: returns
 * SW_EUNAVAIL. `isolation` is NULL (read committed) or "serializable". */
int db_tx(struct db *db, const char *isolation, db_tx_fn fn, void *arg, char *err,
	  size_t errlen);

/* Runs fn in a READ ONLY transaction bounded for callers that must not
 * wait long (metrics collectors): a free connection is waited for at most
 * timeout_ms, and each statement runs under a statement_timeout of
 * timeout_ms. No retries. Returns 0, fn's code, SW_ETIMEDOUT or
 * SW_EUNAVAIL. Any thread. */
int db_read_bounded(struct db *db, int timeout_ms, db_tx_fn fn, void *arg, char *err,
		    size_t errlen);

/* Checks that the database answers (SELECT 1), on a fresh connection if
 * the pooled one turns out lost, so that the answer is about the database
 * (for health probes). Any thread. */
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
