/*
 * outbox.h - the transactional outbox: audit events written in the same
 * transaction as the state change they describe, delivered to the audit
 * service later by a relay thread.
 *
 * A service adds OUTBOX_MIGRATION_SQL to its migrations, calls outbox_add()
 * inside its transactions, and runs one relay. The relay sends pending
 * events in commit order with AppendBatch (idempotent by event id, so a
 * retry after a lost reply changes nothing), deletes them once the audit
 * service acknowledged them, and backs off while the audit service is
 * unreachable: audit downtime delays the log but loses nothing. Events
 * written under different traces go in separate batches, each sent under
 * its trace (OUTBOX_TRACE_SQL). Replicas
 * share the outbox; a session advisory lock lets one relay at a time
 * deliver, which keeps each producer's events in order.
 *
 * Commit order: the bigserial id is taken at INSERT time, so a transaction
 * that took id 5 may commit after the one that took id 6; relaying by id
 * would put 5 before 6 in the log although every reader saw 6's change
 * first (and a 6 read by 5's transaction would appear after its effect).
 * So each row also gets `seq`, assigned at
 * commit time by a deferred constraint trigger that first takes a
 * transaction-scoped advisory lock (one per schema) and then draws from a
 * sequence. The lock is held until the commit is complete and visible
 * (PostgreSQL releases locks after making the transaction visible), so
 * seq order is commit order among outbox writers, and a reader that sees
 * seq n sees every committed seq < n: relaying by seq neither reorders nor
 * skips. The cost: commits of outbox-writing transactions of one schema
 * are serialized for the length of the trigger plus the commit itself.
 * (xid8 plus pg_snapshot_xmin would avoid that, but orders by transaction
 * id, which is not commit order either.)
 */
#ifndef SLIPWAY_OUTBOX_H
#define SLIPWAY_OUTBOX_H

#include "db.h"
#include "rpc.h"

#include "slipway/v1/audit.pb-c.h"

#include <stddef.h>
#include <stdint.h>

/* The commit-order machinery (see above), idempotent. Part of
 * OUTBOX_MIGRATION_SQL; the relay also applies it at start-up to an outbox
 * created by an earlier version (rows that predate it have no seq and go
 * first, in id order). */
#define OUTBOX_COMMIT_ORDER_SQL                                                 \
	"ALTER TABLE outbox ADD COLUMN IF NOT EXISTS seq bigint;"               \
	"CREATE SEQUENCE IF NOT EXISTS outbox_seq;"                             \
	"CREATE INDEX IF NOT EXISTS outbox_relay_order ON outbox"               \
	" (seq NULLS FIRST, id);"                                               \
	"CREATE OR REPLACE FUNCTION outbox_seq_at_commit() RETURNS trigger"     \
	" LANGUAGE plpgsql AS $$ BEGIN"                                         \
	" PERFORM pg_advisory_xact_lock(hashtext('slipway.outbox.commit.'"      \
	"  || TG_TABLE_SCHEMA));"                                               \
	" EXECUTE format('UPDATE %I.outbox SET seq = nextval(%L) WHERE id = $1'," \
	"  TG_TABLE_SCHEMA, quote_ident(TG_TABLE_SCHEMA) || '.outbox_seq')"     \
	"  USING NEW.id;"                                                       \
	" RETURN NULL; END $$;"                                                 \
	"DROP TRIGGER IF EXISTS outbox_commit_order ON outbox;"                 \
	"CREATE CONSTRAINT TRIGGER outbox_commit_order AFTER INSERT ON outbox"  \
	" DEFERRABLE INITIALLY DEFERRED FOR EACH ROW"                           \
	" EXECUTE FUNCTION outbox_seq_at_commit()"

/* The outbox table, for a service's migration list. */
#define OUTBOX_MIGRATION_SQL                                                   \
	"CREATE TABLE outbox ("                                                \
	" id bigserial PRIMARY KEY,"                                           \
	" event_id text NOT NULL UNIQUE,"                                      \
	" event bytea NOT NULL,"                                               \
	" created_at timestamptz NOT NULL DEFAULT now());"                     \
	OUTBOX_COMMIT_ORDER_SQL

/* Tracing (trace.h): each event keeps the trace id current when it was
 * written, and the relay delivers it under that trace, so the audit
 * service's log lines for it carry the same trace_id. A migration of its
 * own in each service, after OUTBOX_MIGRATION_SQL. */
#define OUTBOX_TRACE_SQL "ALTER TABLE outbox ADD COLUMN IF NOT EXISTS trace_id text NOT NULL DEFAULT ''"

#define OUTBOX_MAX_DETAILS 32

/* A convenient way to build an event. Strings are borrowed. */
struct outbox_event {
	const char *event_id;   /* NULL: a random one is generated */
	const char *actor;      /* SPIFFE ID that caused it */
	const char *action;     /* "release.create" */
	const char *resource;   /* "release/web@1.2.0" */
	Slipway__V1__Outcome outcome;
	const char *request_id; /* NULL: the thread's (log_request_id) */
	int64_t time_unix_ms;   /* when it happened; 0: now */
	size_t ndetails;
	const char *keys[OUTBOX_MAX_DETAILS];
	const char *values[OUTBOX_MAX_DETAILS];
};

/* Copies free text into out[max + 1] as printable UTF-8 of at most max
 * bytes, as outbox_add fits resources and detail values: control
 * characters and broken sequences become '?', and a cut never splits a
 * character. Returns the length. Any thread. */
size_t outbox_fit_text(const char *in, char *out, size_t max);

/* Adds a detail key/value (borrowed) to e; ignored past the cap. */
void outbox_detail(struct outbox_event *e, const char *key, const char *value);

/*
 * Records the event in the outbox on connection c, which should be inside
 * the transaction that makes the change (db_tx). `service` is the producing
 * service's name. Free text (resource, detail values) is fitted to the
 * audit log's caps (printable UTF-8, lengths; a `truncated` detail says so)
 * and the event is checked against the log's rules, so that the audit
 * service never refuses it. Returns 0, or SW_EINVAL for an event no
 * fitting can fix (a bad actor, action or detail key: a bug), or another
 * SW_E* code with err.
 */
int outbox_add(struct db_conn *c, const char *service, const struct outbox_event *e, char *err,
	       size_t errlen);

/*
 * Group commit, for events that must be on record before the caller acts
 * on the decision they describe (the secrets service delivers a bundle
 * only once its fetch event is durable), with no change of its own to
 * commit alongside. outbox_group_commit returns only after the event's
 * transaction has committed (0), or with the error that kept it from
 * committing; meanwhile concurrent callers' events join the same
 * transaction. The first caller to find no commit in progress leads: it
 * takes every event queued (up to the batch cap), writes them as one
 * multi-row INSERT (its own transaction: one WAL flush and one turn of
 * the commit-order lock for all of them, instead of one each), and
 * answers each of them with the outcome; the next leader takes what
 * queued meanwhile. No extra thread; no caller waits for a timer.
 * All or nothing: a failed batch fails every event in it (SW_EUNAVAIL when
 * the database went away; the outcome is then unknown, so an event may be
 * on record for an action the caller did not take, never the reverse).
 */
#define OUTBOX_GROUP_MAX 128

struct outbox_group;

/* max_batch: events per transaction (0 = 64, at most OUTBOX_GROUP_MAX).
 * service is copied. Free with outbox_group_free (no caller may be inside
 * outbox_group_commit then). */
int outbox_group_new(struct db *db, const char *service, int max_batch,
		     struct outbox_group **out, char *err, size_t errlen);
void outbox_group_free(struct outbox_group *g);

/* Records e durably (see above). Blocks for about one commit, two when a
 * batch is being written as it arrives. Any thread, never while holding a
 * connection of the same pool (the leader needs one). 0 or an SW_E* code
 * with err. */
int outbox_group_commit(struct outbox_group *g, const struct outbox_event *e, char *err,
			size_t errlen);

/* Transactions committed and events in them since start (tests, bench). */
void outbox_group_stats(struct outbox_group *g, unsigned long long *commits,
			unsigned long long *events);

struct outbox_relay;

struct outbox_relay_opts {
	struct db *db;              /* the service's database (the outbox table) */
	struct rpc_client *audit;   /* channel to the audit service (borrowed) */
	int batch;                  /* events per AppendBatch; 0 = 256 */
	int idle_ms;                /* poll interval when idle; 0 = 200 */
	int max_backoff_ms;         /* 0 = 5000 */
};

/* Starts the relay thread. Returns 0 and *out (stop with outbox_relay_stop). */
int outbox_relay_start(const struct outbox_relay_opts *o, struct outbox_relay **out, char *err,
		       size_t errlen);

/* Wakes the relay now (call after committing events). Any thread. */
void outbox_relay_kick(struct outbox_relay *r);

/* Delivers what it can for up to timeout_ms, then stops the thread. NULL ok. */
void outbox_relay_stop(struct outbox_relay *r, int timeout_ms);

/* Number of events delivered since start (tests, metrics). */
unsigned long long outbox_relay_delivered(struct outbox_relay *r);

#endif
