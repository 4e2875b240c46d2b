/*
 * db.c - the libpq pool, migrations and transactions of db.h.
 *
 * Pool life cycle of a connection: opened lazily by db_acquire (libpq
 * keepalive and TCP user-timeout parameters, then the session settings);
 * checked on every acquire (state, generation, and a zero-timeout poll of
 * its socket: an idle connection whose socket is readable holds either a
 * notice or the server's goodbye, and PQconsumeInput tells which); marked
 * broken by any statement that failed for connection reasons, whatever
 * PQstatus still says (libpq may report CONNECTION_OK after "server closed
 * the connection unexpectedly" when only the write failed); replaced on
 * the next acquire when broken or older than the pool's last known loss.
 */
#include "db.h"
#include "clock.h"
#include "err.h"
#include "log.h"
#include "metrics.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Statements prepared on one connection (db_exec_prepared), by name. */
#define DB_MAX_PREPARED 32

struct db_conn {
	struct db *db;
	PGconn *pg;
	int in_use;
	int broken;
	uint64_t gen; /* db->gen when this connection was opened */
	int nprepared;
	const char *prepared[DB_MAX_PREPARED]; /* names (the caller's constants) */
};

struct db {
	char *url, *schema, *app_name, *sslmode;
	int connect_timeout_s, retries, statement_timeout_ms, lock_timeout_ms, idle_tx_ms;
	int tcp_user_timeout_ms, ka_idle_s, ka_interval_s, ka_count;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	/* Bumped (under mu) when a connection of the current generation is
	 * found lost: the server restarted or failed over, so every connection
	 * opened before is suspect and is replaced on its next acquire. */
	uint64_t gen;
	int n;
	struct db_conn *conns;
	/* metrics (metrics.h), labelled pool=<schema> */
	struct metrics_child *m_size, *m_in_use, *m_wait, *m_query;
};

/* opt == 0: def; opt < 0: off (0 for PostgreSQL); else opt. */
static int tmo(int opt, int def)
{
	return opt == 0 ? def : opt < 0 ? 0 : opt;
}

static double seconds_since(const struct timespec *t0)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)(t.tv_sec - t0->tv_sec) + (double)(t.tv_nsec - t0->tv_nsec) / 1e9;
}

static int schema_ok(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 63 || !((s[0] >= 'a' && s[0] <= 'z') || s[0] == '_'))
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
			return 0;
	return 1;
}

int db_sslmode_ok(const char *s)
{
	static const char *const modes[] = { "",	"disable",   "allow",
					     "prefer",	"require",   "verify-ca",
					     "verify-full" };
	if (s == NULL)
		return 1;
	for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++)
		if (strcmp(s, modes[i]) == 0)
			return 1;
	return 0;
}

/* Whether an sslmode given by the operator overrides the URL's: anything
 * but the default. */
static int sslmode_forced(const char *m)
{
	return m != NULL && m[0] != '\0' && strcmp(m, "prefer") != 0;
}

void *db_connect_plain(const char *url, const char *sslmode)
{
	const char *keys[] = { "dbname", "sslmode", NULL };
	const char *vals[] = { url, sslmode, NULL };
	if (!sslmode_forced(sslmode))
		keys[1] = NULL;
	return PQconnectdbParams(keys, vals, 1);
}

static void pool_metrics(struct db *db);

int db_open(const struct db_opts *o, struct db **out, char *err, size_t errlen)
{
	*out = NULL;
	if (o->url == NULL || o->url[0] == '\0')
		return sw_errf(err, errlen, SW_EINVAL, "no database URL configured");
	if (o->schema == NULL || !schema_ok(o->schema))
		return sw_errf(err, errlen, SW_EINVAL, "invalid schema name");
	if (!db_sslmode_ok(o->sslmode))
		return sw_errf(err, errlen, SW_EINVAL,
			       "--pg-sslmode: want disable, allow, prefer, require, verify-ca or "
			       "verify-full");
	struct db *db = calloc(1, sizeof *db);
	if (db == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	db->n = o->pool_size > 0 ? o->pool_size : 4;
	db->conns = calloc((size_t)db->n, sizeof *db->conns);
	db->url = strdup(o->url);
	db->schema = strdup(o->schema);
	db->app_name = strdup(o->app_name ? o->app_name : "slipway");
	db->sslmode = strdup(o->sslmode ? o->sslmode : "");
	db->connect_timeout_s = o->connect_timeout_s > 0 ? o->connect_timeout_s : 5;
	db->retries = o->retries > 0 ? o->retries : 3;
	db->statement_timeout_ms = tmo(o->statement_timeout_ms, 30000);
	db->lock_timeout_ms = tmo(o->lock_timeout_ms, 5000);
	db->idle_tx_ms = tmo(o->idle_in_tx_timeout_ms, 30000);
	db->tcp_user_timeout_ms = tmo(o->tcp_user_timeout_ms, 10000);
	db->ka_idle_s = o->keepalives_idle_s > 0 ? o->keepalives_idle_s : 10;
	db->ka_interval_s = o->keepalives_interval_s > 0 ? o->keepalives_interval_s : 5;
	db->ka_count = o->keepalives_count > 0 ? o->keepalives_count : 3;
	if (!db->conns || !db->url || !db->schema || !db->app_name || !db->sslmode) {
		db_close(db);
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	}
	for (int i = 0; i < db->n; i++)
		db->conns[i].db = db;
	pthread_mutex_init(&db->mu, NULL);
	pthread_cond_init(&db->cv, NULL);
	pool_metrics(db);
	metrics_add(db->m_size, db->n);
	*out = db;
	return 0;
}

/* The pool's series; several pools of one schema share them (sums). */
static void pool_metrics(struct db *db)
{
	static const double query_b[] = { 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
					  0.1,    0.25,  0.5,    1,     2.5,  5,     10, 30 };
	db->m_size = metrics_with(metrics_gauge("slipway_db_pool_connections",
						"Connections the PostgreSQL pool may hold.", "pool"),
				  db->schema);
	db->m_in_use = metrics_with(metrics_gauge("slipway_db_pool_connections_in_use",
						  "Pool connections lent out right now.", "pool"),
				    db->schema);
	db->m_wait = metrics_with(metrics_histogram("slipway_db_pool_wait_seconds",
						    "Time spent waiting for a free pool "
						    "connection (db_acquire), reconnects included.",
						    "pool", NULL, 0),
				  db->schema);
	db->m_query = metrics_with(metrics_histogram("slipway_db_query_duration_seconds",
						     "Time of one statement, round trip included "
						     "(db_exec).",
						     "pool", query_b, sizeof query_b / sizeof query_b[0]),
				   db->schema);
}

void db_close(struct db *db)
{
	if (db == NULL)
		return;
	metrics_add(db->m_size, db->conns != NULL ? -db->n : 0);
	for (int i = 0; db->conns && i < db->n; i++)
		if (db->conns[i].pg)
			PQfinish(db->conns[i].pg);
	free(db->conns);
	if (db->url) {
		memset(db->url, 0, strlen(db->url)); /* may hold a password */
		free(db->url);
		free(db->sslmode);
	}
	free(db->schema);
	free(db->app_name);
	pthread_mutex_destroy(&db->mu);
	pthread_cond_destroy(&db->cv);
	free(db);
}

int db_err_from_sqlstate(const char *st)
{
	if (st == NULL || strlen(st) != 5)
		return SW_EUNAVAIL; /* no SQLSTATE: the connection failed */
	if (strncmp(st, "08", 2) == 0 || strcmp(st, "57P01") == 0 || strcmp(st, "57P02") == 0 ||
	    strcmp(st, "57P03") == 0 || strcmp(st, "53300") == 0)
		return SW_EUNAVAIL;
	/* Serialization failure, deadlock, lock timeout (lock_not_available):
	 * nothing was changed, the whole transaction may simply run again. */
	if (strcmp(st, "40001") == 0 || strcmp(st, "40P01") == 0 || strcmp(st, "55P03") == 0)
		return SW_EABORTED;
	if (strcmp(st, "23505") == 0)
		return SW_EEXIST;
	if (strcmp(st, "57014") == 0)
		return SW_ETIMEDOUT;
	if (strncmp(st, "22", 2) == 0 || strncmp(st, "23", 2) == 0)
		return SW_EINVAL;
	return SW_EINTERNAL;
}

static void sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

/* Sets the session's search_path and timeouts (parameterized; values in
 * milliseconds, 0 = off). */
static int session_setup(struct db *db, PGconn *pg, char *err, size_t errlen)
{
	char st[24], lt[24], it[24];
	snprintf(st, sizeof st, "%d", db->statement_timeout_ms);
	snprintf(lt, sizeof lt, "%d", db->lock_timeout_ms);
	snprintf(it, sizeof it, "%d", db->idle_tx_ms);
	const char *vals[4] = { db->schema, st, lt, it };
	PGresult *r = PQexecParams(pg,
				   "SELECT set_config('search_path', $1, false), "
				   "set_config('statement_timeout', $2, false), "
				   "set_config('lock_timeout', $3, false), "
				   "set_config('idle_in_transaction_session_timeout', $4, false)",
				   4, NULL, vals, NULL, NULL, 0);
	int ok = PQresultStatus(r) == PGRES_TUPLES_OK;
	if (!ok)
		sw_errf(err, errlen, 0, "session set-up: %s", PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY)
								    ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY)
								    : PQerrorMessage(pg));
	PQclear(r);
	return ok ? 0 : SW_EUNAVAIL;
}

/* Server notices go to the log, never straight to stderr. */
static void on_notice(void *arg, const char *message)
{
	(void)arg;
	log_debug("database notice", "notice=%.*s", (int)strcspn(message, "\n"), message);
}

/* Records that c was found lost. If c belonged to the current generation,
 * the server probably went away for every connection (restart, crash,
 * failover): start a new generation, so that db_acquire replaces the
 * older connections before lending them instead of letting each fail one
 * statement. A loss on an already suspect connection changes nothing. */
static void note_lost(struct db_conn *c)
{
	struct db *db = c->db;
	c->broken = 1;
	pthread_mutex_lock(&db->mu);
	if (c->gen == db->gen)
		db->gen++;
	pthread_mutex_unlock(&db->mu);
}

/* Whether an idle connection can be lent without a round trip: libpq's
 * state is OK and its socket has nothing to read, or what it had was a
 * notice or notification. A server that closed the connection leaves its
 * goodbye and the end of the stream (or a reset) in the socket. */
static int idle_alive(PGconn *pg)
{
	if (PQstatus(pg) != CONNECTION_OK || PQtransactionStatus(pg) != PQTRANS_IDLE)
		return 0;
	struct pollfd p = { .fd = PQsocket(pg), .events = POLLIN };
	if (p.fd < 0)
		return 0;
	int n = poll(&p, 1, 0);
	if (n <= 0)
		return 1; /* nothing to read (or EINTR): as alive as we can tell */
	if (p.revents & (POLLERR | POLLHUP | POLLNVAL))
		return 0;
	if (!PQconsumeInput(pg) || PQstatus(pg) != CONNECTION_OK)
		return 0;
	PGnotify *nt;
	while ((nt = PQnotifies(pg)) != NULL)
		PQfreemem(nt);
	/* An error message while idle (FATAL before a close) goes to the
	 * notice processor; the close itself may not be read yet. */
	p.revents = 0;
	if (poll(&p, 1, 0) > 0 && (p.revents & (POLLERR | POLLHUP)))
		return 0;
	return 1;
}

/* Makes c->pg a healthy connection, retrying with backoff. The TCP
 * parameters come before the URL (expanded from dbname) so that the URL
 * may override them; connect_timeout and application_name after it, as
 * before. */
static int connect_conn(struct db *db, struct db_conn *c, char *err, size_t errlen)
{
	char ct[16], ut[16], ki[16], kv[16], kc[16];
	snprintf(ct, sizeof ct, "%d", db->connect_timeout_s);
	snprintf(ut, sizeof ut, "%d", db->tcp_user_timeout_ms);
	snprintf(ki, sizeof ki, "%d", db->ka_idle_s);
	snprintf(kv, sizeof kv, "%d", db->ka_interval_s);
	snprintf(kc, sizeof kc, "%d", db->ka_count);
	/* sslmode after dbname, so that a required TLS cannot be lowered by
	 * the URL; the default (prefer) is left to the URL. */
	const char *keys[] = { "keepalives",	      "keepalives_idle", "keepalives_interval",
			       "keepalives_count",    "tcp_user_timeout", "dbname",
			       "connect_timeout",     "application_name", "sslmode", NULL };
	const char *vals[] = { "1", ki, kv, kc, ut, db->url, ct, db->app_name, db->sslmode, NULL };
	if (!sslmode_forced(db->sslmode))
		keys[8] = NULL;
	int backoff = 100;
	pthread_mutex_lock(&db->mu);
	uint64_t gen = db->gen;
	pthread_mutex_unlock(&db->mu);
	for (int attempt = 0; attempt < db->retries; attempt++) {
		if (c->pg != NULL) {
			PQfinish(c->pg);
			c->pg = NULL;
		}
		c->pg = PQconnectdbParams(keys, vals, 1);
		if (c->pg != NULL)
			PQsetNoticeProcessor(c->pg, on_notice, NULL);
		if (c->pg != NULL && PQstatus(c->pg) == CONNECTION_OK &&
		    session_setup(db, c->pg, err, errlen) == 0) {
			c->broken = 0;
			c->gen = gen;
			c->nprepared = 0; /* a new session has none */
			return 0;
		}
		if (c->pg != NULL && PQstatus(c->pg) != CONNECTION_OK) {
			/* First line only: libpq's message names host and port, not secrets. */
			const char *m = PQerrorMessage(c->pg);
			sw_errf(err, errlen, 0, "database unreachable: %.*s", (int)strcspn(m, "\n"), m);
		}
		if (attempt + 1 < db->retries) {
			sleep_ms(backoff);
			backoff *= 2;
		}
	}
	if (c->pg != NULL) {
		PQfinish(c->pg);
		c->pg = NULL;
	}
	return SW_EUNAVAIL;
}

int db_acquire(struct db *db, struct db_conn **out, int64_t timeout_ms, char *err, size_t errlen)
{
	struct timespec dl = clock_after(CLOCK_REALTIME, timeout_ms);
	struct db_conn *c = NULL;
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	pthread_mutex_lock(&db->mu);
	for (;;) {
		for (int i = 0; i < db->n && c == NULL; i++)
			if (!db->conns[i].in_use)
				c = &db->conns[i];
		if (c != NULL)
			break;
		if (pthread_cond_timedwait(&db->cv, &db->mu, &dl) == ETIMEDOUT) {
			pthread_mutex_unlock(&db->mu);
			return sw_errf(err, errlen, SW_ETIMEDOUT, "no free database connection");
		}
	}
	c->in_use = 1;
	int stale = c->gen != db->gen;
	pthread_mutex_unlock(&db->mu);
	metrics_add(db->m_in_use, 1);

	if (c->pg == NULL || c->broken || stale || !idle_alive(c->pg)) {
		int rc = connect_conn(db, c, err, errlen);
		if (rc != 0) {
			db_release(db, c);
			return rc;
		}
	}
	metrics_observe(db->m_wait, seconds_since(&t0));
	*out = c;
	return 0;
}

void db_release(struct db *db, struct db_conn *c)
{
	if (c == NULL)
		return;
	/* A lost connection (also one a caller used with raw libpq calls) is
	 * noted; one left inside a transaction (a bug) is not reused. */
	if (c->pg != NULL && PQstatus(c->pg) != CONNECTION_OK && !c->broken)
		note_lost(c);
	if (c->pg != NULL && PQtransactionStatus(c->pg) != PQTRANS_IDLE)
		c->broken = 1;
	pthread_mutex_lock(&db->mu);
	c->in_use = 0;
	pthread_cond_signal(&db->cv);
	pthread_mutex_unlock(&db->mu);
	metrics_add(db->m_in_use, -1);
}

PGconn *db_pg(struct db_conn *c)
{
	return c->pg;
}

/* Takes r (any PGresult, NULL too): on success hands it to *res (or clears
 * it) and returns 0; otherwise maps the failure as db_exec documents,
 * marks a lost connection, clears r and returns the code. */
static int finish(struct db_conn *c, PGresult *r, PGresult **res, char *err, size_t errlen)
{
	ExecStatusType st = PQresultStatus(r);
	if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
		if (res != NULL)
			*res = r;
		else
			PQclear(r);
		return 0;
	}
	const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
	const char *msg = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
	int code = db_err_from_sqlstate(state);
	/* No SQLSTATE (libpq's own "server closed the connection"), a
	 * connection-class one, or a bad state: never trust this connection
	 * again, even if PQstatus still says OK. */
	if (PQstatus(c->pg) != CONNECTION_OK)
		code = SW_EUNAVAIL;
	if (code == SW_EUNAVAIL && !c->broken)
		note_lost(c);
	if (msg == NULL) {
		const char *m = PQerrorMessage(c->pg);
		sw_errf(err, errlen, 0, "database: %.*s", (int)strcspn(m, "\n"), m);
	} else {
		sw_errf(err, errlen, 0, "database: %s (%s)", msg, state ? state : "?");
	}
	if (code == SW_EINTERNAL)
		log_error("database error", "sqlstate=%s message=%s", state ? state : "?",
			  msg ? msg : "?");
	PQclear(r);
	return code;
}

int db_exec(struct db_conn *c, const char *sql, int n, const char *const *vals,
	    const int *lens, const int *fmts, int binary_result, PGresult **res, char *err,
	    size_t errlen)
{
	if (res != NULL)
		*res = NULL;
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	PGresult *r = PQexecParams(c->pg, sql, n, NULL, vals, lens, fmts, binary_result);
	metrics_observe(c->db->m_query, seconds_since(&t0));
	return finish(c, r, res, err, errlen);
}

static int prepared_index(const struct db_conn *c, const char *name)
{
	for (int i = 0; i < c->nprepared; i++)
		if (c->prepared[i] == name || strcmp(c->prepared[i], name) == 0)
			return i;
	return -1;
}

static int is_sqlstate(const PGresult *r, const char *want)
{
	const char *st = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
	return st != NULL && strcmp(st, want) == 0;
}

int db_exec_prepared(struct db_conn *c, const char *name, const char *sql, int n,
		     const char *const *vals, const int *lens, const int *fmts, int binary_result,
		     PGresult **res, char *err, size_t errlen)
{
	if (res != NULL)
		*res = NULL;
	int known = prepared_index(c, name) >= 0;
	for (int attempt = 0; attempt < 2; attempt++) {
		if (!known) {
			PGresult *p = PQprepare(c->pg, name, sql, n, NULL);
			/* 42P05: prepared on this session already (by an earlier
			 * attempt whose answer was lost to us): usable. */
			if (PQresultStatus(p) != PGRES_COMMAND_OK && !is_sqlstate(p, "42P05"))
				return finish(c, p, NULL, err, errlen);
			PQclear(p);
			if (prepared_index(c, name) < 0 && c->nprepared < DB_MAX_PREPARED)
				c->prepared[c->nprepared++] = name;
			known = 1;
		}
		struct timespec t0;
		clock_gettime(CLOCK_MONOTONIC, &t0);
		PGresult *r = PQexecPrepared(c->pg, name, n, vals, lens, fmts, binary_result);
		metrics_observe(c->db->m_query, seconds_since(&t0));
		/* 26000: the session lost it (DISCARD ALL by hand, a pooler that
		 * switched sessions): prepare again, once. */
		if (attempt == 0 && is_sqlstate(r, "26000")) {
			PQclear(r);
			int i = prepared_index(c, name);
			if (i >= 0)
				c->prepared[i] = c->prepared[--c->nprepared];
			known = 0;
			continue;
		}
		return finish(c, r, res, err, errlen);
	}
	return sw_errf(err, errlen, SW_EINTERNAL, "statement %s could not be prepared", name);
}

int db_q(struct db_conn *c, const char *sql, int n, const char *const *vals, PGresult **res,
	 char *err, size_t errlen)
{
	return db_exec(c, sql, n, vals, NULL, NULL, 0, res, err, errlen);
}

int db_tx(struct db *db, const char *isolation, db_tx_fn fn, void *arg, char *err,
	  size_t errlen)
{
	int rc = 0, begin_lost = 0;
	for (int attempt = 0; attempt < 5; attempt++) {
		struct db_conn *c = NULL;
		rc = db_acquire(db, &c, 10000, err, errlen);
		if (rc != 0)
			return rc;
		const char *begin = isolation && strcmp(isolation, "serializable") == 0
					    ? "BEGIN ISOLATION LEVEL SERIALIZABLE"
					    : "BEGIN";
		rc = db_q(c, begin, 0, NULL, NULL, err, errlen);
		if (rc == SW_EUNAVAIL && !begin_lost) {
			/* Lost before anything ran: once, at once, on a fresh one. */
			begin_lost = 1;
			db_release(db, c);
			attempt--;
			continue;
		}
		if (rc == 0)
			rc = fn(c, arg, err, errlen);
		if (rc == 0) {
			rc = db_q(c, "COMMIT", 0, NULL, NULL, err, errlen);
			if (rc == SW_EUNAVAIL)
				sw_errf(err, errlen, 0, "database connection lost during commit: "
							"outcome unknown");
		} else if (PQstatus(c->pg) == CONNECTION_OK) {
			char ignored[64];
			db_q(c, "ROLLBACK", 0, NULL, NULL, ignored, sizeof ignored);
		}
		db_release(db, c);
		if (rc != SW_EABORTED)
			return rc;
		sleep_ms(5 << attempt);
	}
	return rc;
}

int db_read_bounded(struct db *db, int timeout_ms, db_tx_fn fn, void *arg, char *err,
		    size_t errlen)
{
	struct db_conn *c = NULL;
	char ms[24];
	int rc = db_acquire(db, &c, timeout_ms, err, errlen);
	if (rc != 0)
		return rc;
	const char *v[1] = { db_i64(ms, timeout_ms > 0 ? timeout_ms : 1) };
	if ((rc = db_q(c, "BEGIN READ ONLY", 0, NULL, NULL, err, errlen)) == 0 &&
	    (rc = db_q(c, "SELECT set_config('statement_timeout', $1, true)", 1, v, NULL, err,
		       errlen)) == 0)
		rc = fn(c, arg, err, errlen);
	if (PQtransactionStatus(db_pg(c)) != PQTRANS_IDLE) {
		char e2[128];
		int crc = db_q(c, rc == 0 ? "COMMIT" : "ROLLBACK", 0, NULL, NULL, e2, sizeof e2);
		if (rc == 0)
			rc = crc;
	}
	db_release(db, c);
	return rc;
}

int db_ping(struct db *db, char *err, size_t errlen)
{
	struct db_conn *c = NULL;
	int rc = db_acquire(db, &c, 2000, err, errlen);
	if (rc != 0)
		return rc;
	rc = db_q(c, "SELECT 1", 0, NULL, NULL, err, errlen);
	db_release(db, c);
	if (rc != SW_EUNAVAIL)
		return rc;
	/* That connection was lost (and is now marked so): ask again on a
	 * fresh one, so that the answer is about the database. */
	if ((rc = db_acquire(db, &c, 2000, err, errlen)) != 0)
		return rc;
	rc = db_q(c, "SELECT 1", 0, NULL, NULL, err, errlen);
	db_release(db, c);
	return rc;
}

int db_migrate(struct db *db, const struct db_migration *m, size_t n, char *err, size_t errlen)
{
	struct db_conn *c = NULL;
	PGresult *r = NULL;
	char *ident = NULL, sql[512], lockkey[96];
	int lock_timeout_off = 0;
	int rc = db_acquire(db, &c, 10000, err, errlen);
	if (rc != 0)
		return rc;
	ident = PQescapeIdentifier(c->pg, db->schema, strlen(db->schema));
	if (ident == NULL) {
		rc = sw_errf(err, errlen, SW_EINTERNAL, "cannot quote the schema name");
		goto out;
	}
	snprintf(lockkey, sizeof lockkey, "slipway.migrate.%s", db->schema);
	const char *lk[1] = { lockkey };
	/* Migrations wait for locks as long as they need (another replica
	 * migrating, DDL behind busy transactions): no lock_timeout here. A
	 * connection that keeps this setting is not handed out again (below). */
	if ((rc = db_q(c, "SELECT set_config('lock_timeout', '0', false)", 0, NULL, NULL, err,
		       errlen)) != 0)
		goto out;
	lock_timeout_off = 1;
	if ((rc = db_q(c, "SELECT pg_advisory_lock(hashtext($1))", 1, lk, NULL, err, errlen)) != 0)
		goto out;
	/* The schema name is a validated identifier, quoted by libpq: the only
	 * non-constant SQL text in the tree. */
	snprintf(sql, sizeof sql,
		 "CREATE SCHEMA IF NOT EXISTS %s; "
		 "CREATE TABLE IF NOT EXISTS %s.schema_migrations ("
		 " version integer PRIMARY KEY, name text NOT NULL,"
		 " applied_at timestamptz NOT NULL DEFAULT now())",
		 ident, ident);
	r = PQexec(c->pg, sql);
	if (PQresultStatus(r) != PGRES_COMMAND_OK) {
		rc = sw_errf(err, errlen, SW_EUNAVAIL, "create schema %s: %s", db->schema,
			     PQresultErrorMessage(r));
		goto unlock;
	}
	PQclear(r);
	r = NULL;
	if ((rc = db_q(c, "SELECT coalesce(max(version), 0) FROM schema_migrations", 0, NULL, &r,
		       err, errlen)) != 0)
		goto unlock;
	int64_t have = db_int64(r, 0, 0);
	PQclear(r);
	r = NULL;
	for (size_t i = 0; i < n; i++) {
		if (m[i].version <= have)
			continue;
		if ((rc = db_q(c, "BEGIN", 0, NULL, NULL, err, errlen)) != 0)
			goto unlock;
		r = PQexec(c->pg, m[i].sql);
		if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
			rc = sw_errf(err, errlen, SW_EINTERNAL, "migration %d (%s): %s", m[i].version,
				     m[i].name, PQresultErrorMessage(r));
			PQclear(r);
			r = NULL;
			db_q(c, "ROLLBACK", 0, NULL, NULL, NULL, 0);
			goto unlock;
		}
		PQclear(r);
		r = NULL;
		char v[24];
		const char *vals[2] = { db_i64(v, m[i].version), m[i].name };
		rc = db_q(c, "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", 2, vals,
			  NULL, err, errlen);
		if (rc == 0)
			rc = db_q(c, "COMMIT", 0, NULL, NULL, err, errlen);
		if (rc != 0) {
			db_q(c, "ROLLBACK", 0, NULL, NULL, NULL, 0);
			goto unlock;
		}
		log_info("migration applied", "schema=%s version=%d name=%s", db->schema,
			 m[i].version, m[i].name);
	}
unlock:
	db_q(c, "SELECT pg_advisory_unlock(hashtext($1))", 1, lk, NULL, NULL, 0);
out:
	if (lock_timeout_off) {
		char lt[24];
		const char *v[1] = { lt };
		snprintf(lt, sizeof lt, "%d", db->lock_timeout_ms);
		if (db_q(c, "SELECT set_config('lock_timeout', $1, false)", 1, v, NULL, NULL, 0) != 0)
			c->broken = 1;
	}
	PQclear(r);
	PQfreemem(ident);
	db_release(db, c);
	return rc;
}

const char *db_text(const PGresult *r, int row, int col)
{
	if (r == NULL || row >= PQntuples(r) || col >= PQnfields(r) || PQgetisnull(r, row, col))
		return "";
	return PQgetvalue(r, row, col);
}

int db_isnull(const PGresult *r, int row, int col)
{
	return r == NULL || row >= PQntuples(r) || col >= PQnfields(r) || PQgetisnull(r, row, col);
}

int64_t db_int64(const PGresult *r, int row, int col)
{
	const char *s = db_text(r, row, col);
	if (*s == '\0')
		return 0;
	return strtoll(s, NULL, 10);
}

int db_bool(const PGresult *r, int row, int col)
{
	return db_text(r, row, col)[0] == 't';
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int db_bytea(const PGresult *r, int row, int col, uint8_t *out, size_t cap)
{
	const char *s = db_text(r, row, col);
	if (s[0] != '\\' || s[1] != 'x')
		return s[0] == '\0' ? 0 : -1;
	s += 2;
	size_t n = strlen(s);
	if (n % 2 != 0 || n / 2 > cap)
		return -1;
	for (size_t i = 0; i < n / 2; i++) {
		int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return -1;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return (int)(n / 2);
}

char *db_values_sql(const char *head, size_t rows, size_t cols, const char *tail)
{
	size_t cap = strlen(head) + strlen(tail) + rows * (cols * 9 + 4) + 8;
	char *sql = malloc(cap);
	if (sql == NULL)
		return NULL;
	size_t off = (size_t)snprintf(sql, cap, "%s ", head);
	size_t k = 1;
	for (size_t r = 0; r < rows; r++) {
		sql[off++] = r ? ',' : '(';
		if (r)
			sql[off++] = '(';
		for (size_t c = 0; c < cols; c++)
			off += (size_t)snprintf(sql + off, cap - off, "%s$%zu", c ? "," : "", k++);
		sql[off++] = ')';
	}
	snprintf(sql + off, cap - off, " %s", tail);
	return sql;
}

const char *db_i64(char buf[24], int64_t v)
{
	snprintf(buf, 24, "%lld", (long long)v);
	return buf;
}
