/*
 * it_audit.c - the audit service over the real stack: appends and their
 * identity rule, idempotency, bad input, concurrency (group commit), the
 * append-only database role, and the transactional outbox across an audit
 * outage. Reads, proofs and tampering are in it_audit_verify.sh.
 */
#include "auditlog.h"
#include "db.h"
#include "err.h"
#include "harness.h"
#include "log.h"
#include "outbox.h"
#include "pki.h"
#include "rpc.h"

#include "slipway/v1/audit.pb-c.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

static char dir[256], ca[300], td[128];
static char svc_crt[300], svc_key[300], user_crt[300], user_key[300];
static char prod_crt[300], prod_key[300];

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void issue(const char *name, const char *kind, char *crt, char *key)
{
	char prefix[280], uri[256];
	snprintf(prefix, sizeof prefix, "%s/%s", dir, name);
	snprintf(uri, sizeof uri, "spiffe://%s/%s/%s", td, kind, name);
	h_issue(h_env("SLIPWAY_PKI_DIR"), prefix, uri, NULL, 0);
	snprintf(crt, 300, "%s.crt", prefix);
	snprintf(key, 300, "%s.key", prefix);
}

static int setup(void **state)
{
	(void)state;
	char err[256];
	snprintf(dir, sizeof dir, "%s", h_tmpdir("it_audit"));
	snprintf(ca, sizeof ca, "%s", h_env("SLIPWAY_CA"));
	if (pki_trust_domain(h_env("SLIPWAY_PKI_DIR"), td, sizeof td, err, sizeof err) != 0)
		return -1;
	issue("shipper", "service", svc_crt, svc_key);
	issue("testprod", "service", prod_crt, prod_key);
	issue("eve", "user", user_crt, user_key);
	return 0;
}

static struct rpc_client *audit_as(const char *crt, const char *key)
{
	return h_client(h_env("SLIPWAY_AUDIT_ADDR"), ca, crt, key);
}

static void fill_event(Slipway__V1__AuditEvent *ev, const char *id, const char *service)
{
	static char actor[256];
	slipway__v1__audit_event__init(ev);
	snprintf(actor, sizeof actor, "spiffe://%s/user/alice", td);
	ev->event_id = (char *)id;
	ev->actor = actor;
	ev->service = (char *)service;
	ev->action = "release.create";
	ev->resource = "release/web@1.0.0";
	ev->outcome = SLIPWAY__V1__OUTCOME__OUTCOME_SUCCESS;
	ev->request_id = "rid-1";
	ev->time_unix_ms = now_ms();
}

static int append(struct rpc_client *c, Slipway__V1__AuditEvent *ev, uint64_t *seq, int *dup,
		  char *err, size_t errlen)
{
	Slipway__V1__AppendRequest req = SLIPWAY__V1__APPEND_REQUEST__INIT;
	req.event = ev;
	ProtobufCMessage *m = NULL;
	int rc = rpc_call(c, &slipway__v1__audit__descriptor, "Append", &req.base, &m, NULL, err,
			  errlen);
	if (rc == 0) {
		Slipway__V1__AppendResponse *r = (void *)m;
		if (seq)
			*seq = r->seq;
		if (dup)
			*dup = r->duplicate;
		protobuf_c_message_free_unpacked(m, NULL);
	}
	return rc;
}

static int64_t sql_int(const char *sql)
{
	struct db_opts o = { .url = h_env("SLIPWAY_PGURL"), .schema = "audit", .pool_size = 1 };
	struct db *db = NULL;
	struct db_conn *c = NULL;
	PGresult *r = NULL;
	char err[256];
	assert_int_equal(db_open(&o, &db, err, sizeof err), 0);
	assert_int_equal(db_acquire(db, &c, 5000, err, sizeof err), 0);
	assert_int_equal(db_q(c, sql, 0, NULL, &r, err, sizeof err), 0);
	int64_t v = db_int64(r, 0, 0);
	PQclear(r);
	db_release(db, c);
	db_close(db);
	return v;
}

static void test_append_and_idempotency(void **state)
{
	(void)state;
	struct rpc_client *c = audit_as(svc_crt, svc_key);
	Slipway__V1__AuditEvent ev;
	Slipway__V1__KeyValue kv1 = SLIPWAY__V1__KEY_VALUE__INIT, kv2 = SLIPWAY__V1__KEY_VALUE__INIT;
	Slipway__V1__KeyValue *kvs[2] = { &kv2, &kv1 };
	kv1.key = "app";
	kv1.value = "web";
	kv2.key = "digest";
	kv2.value = "sha256:abc";
	char err[256], id[64];
	uint64_t s1, s2;
	int dup;
	snprintf(id, sizeof id, "it-audit-idem-%lld", (long long)now_ms());
	fill_event(&ev, id, "shipper");
	ev.n_details = 2;
	ev.details = kvs;
	assert_int_equal(append(c, &ev, &s1, &dup, err, sizeof err), 0);
	assert_int_equal(dup, 0);
	int64_t size = sql_int("SELECT size FROM audit.head");
	/* A retry returns the original sequence number and changes nothing. */
	ev.time_unix_ms += 5;
	assert_int_equal(append(c, &ev, &s2, &dup, err, sizeof err), 0);
	assert_int_equal(s2, s1);
	assert_int_equal(dup, 1);
	assert_int_equal(sql_int("SELECT size FROM audit.head"), size);
	assert_int_equal(sql_int("SELECT count(*) FROM audit.entries"), size);
	rpc_client_free(c);
}

static void test_identity_rule(void **state)
{
	(void)state;
	char err[256];
	Slipway__V1__AuditEvent ev;
	int64_t size = sql_int("SELECT size FROM audit.head");
	/* A user may not append, whatever the event says. */
	struct rpc_client *u = audit_as(user_crt, user_key);
	fill_event(&ev, "it-audit-user-1", "shipper");
	assert_int_equal(append(u, &ev, NULL, NULL, err, sizeof err), SW_EPERM);
	rpc_client_free(u);
	/* A service may append only as itself. */
	struct rpc_client *c = audit_as(svc_crt, svc_key);
	fill_event(&ev, "it-audit-spoof-1", "artifact");
	assert_int_equal(append(c, &ev, NULL, NULL, err, sizeof err), SW_EPERM);
	assert_non_null(strstr(err, "not the calling service"));
	rpc_client_free(c);
	assert_int_equal(sql_int("SELECT size FROM audit.head"), size);
}

static void test_bad_input_changes_nothing(void **state)
{
	(void)state;
	struct rpc_client *c = audit_as(svc_crt, svc_key);
	char err[256];
	int64_t size = sql_int("SELECT size FROM audit.head");
	Slipway__V1__AuditEvent ev;

	fill_event(&ev, "", "shipper");
	assert_int_equal(append(c, &ev, NULL, NULL, err, sizeof err), SW_EINVAL);
	assert_non_null(strstr(err, "event_id"));
	fill_event(&ev, "it-audit-bad-1", "shipper");
	ev.outcome = 99;
	assert_int_equal(append(c, &ev, NULL, NULL, err, sizeof err), SW_EINVAL);
	assert_non_null(strstr(err, "outcome"));
	fill_event(&ev, "it-audit-bad-2", "shipper");
	ev.resource = "";
	assert_int_equal(append(c, &ev, NULL, NULL, err, sizeof err), SW_EINVAL);
	fill_event(&ev, "it-audit-bad-3", "shipper");
	ev.actor = "alice";
	assert_int_equal(append(c, &ev, NULL, NULL, err, sizeof err), SW_EINVAL);
	fill_event(&ev, "it-audit-bad-4", "shipper");
	ev.resource = "line\nbreak";
	assert_int_equal(append(c, &ev, NULL, NULL, err, sizeof err), SW_EINVAL);
	/* oversize details: 20 values of 1000 bytes */
	static char big[1001];
	memset(big, 'x', 1000);
	Slipway__V1__KeyValue kv[20], *kvp[20];
	char keys[20][8];
	for (int i = 0; i < 20; i++) {
		slipway__v1__key_value__init(&kv[i]);
		snprintf(keys[i], sizeof keys[i], "k%d", i);
		kv[i].key = keys[i];
		kv[i].value = big;
		kvp[i] = &kv[i];
	}
	fill_event(&ev, "it-audit-bad-5", "shipper");
	ev.n_details = 20;
	ev.details = kvp;
	assert_int_equal(append(c, &ev, NULL, NULL, err, sizeof err), SW_EINVAL);
	assert_non_null(strstr(err, "details"));
	/* duplicate detail keys */
	kv[1].key = "k0";
	kv[0].value = kv[1].value = "v";
	ev.n_details = 2;
	assert_int_equal(append(c, &ev, NULL, NULL, err, sizeof err), SW_EINVAL);
	assert_non_null(strstr(err, "duplicate"));
	/* a batch with one bad event is refused whole */
	Slipway__V1__AuditEvent good, bad, *evs[2] = { &good, &bad };
	fill_event(&good, "it-audit-batch-good", "shipper");
	fill_event(&bad, "it-audit-batch-bad", "shipper");
	bad.action = "Not Valid";
	Slipway__V1__AppendBatchRequest breq = SLIPWAY__V1__APPEND_BATCH_REQUEST__INIT;
	breq.n_events = 2;
	breq.events = evs;
	ProtobufCMessage *m = NULL;
	assert_int_equal(rpc_call(c, &slipway__v1__audit__descriptor, "AppendBatch", &breq.base, &m,
				  NULL, err, sizeof err),
			 SW_EINVAL);
	assert_non_null(strstr(err, "events[1]"));
	assert_int_equal(sql_int("SELECT size FROM audit.head"), size);
	rpc_client_free(c);
}

struct worker {
	int id, n, failures;
	uint64_t seqs[200];
};

static void *appender(void *arg)
{
	struct worker *w = arg;
	struct rpc_client *c = audit_as(svc_crt, svc_key);
	for (int i = 0; i < w->n; i++) {
		Slipway__V1__AuditEvent ev;
		char id[64], err[256];
		snprintf(id, sizeof id, "it-audit-conc-%lld-%d-%d", (long long)now_ms(), w->id, i);
		fill_event(&ev, id, "shipper");
		if (append(c, &ev, &w->seqs[i], NULL, err, sizeof err) != 0)
			w->failures++;
	}
	rpc_client_free(c);
	return NULL;
}

static void test_concurrent_appends_form_one_chain(void **state)
{
	(void)state;
	enum { T = 8, N = 100 };
	static struct worker w[T];
	pthread_t th[T];
	int64_t before = sql_int("SELECT size FROM audit.head");
	for (int i = 0; i < T; i++) {
		w[i].id = i;
		w[i].n = N;
		pthread_create(&th[i], NULL, appender, &w[i]);
	}
	for (int i = 0; i < T; i++) {
		pthread_join(th[i], NULL);
		assert_int_equal(w[i].failures, 0);
	}
	/* Every acknowledged append got its own place in one gap-free log. */
	static char seen[T * N];
	memset(seen, 0, sizeof seen);
	for (int i = 0; i < T; i++)
		for (int j = 0; j < N; j++) {
			uint64_t s = w[i].seqs[j];
			assert_true(s >= (uint64_t)before && s < (uint64_t)before + T * N);
			assert_int_equal(seen[s - (uint64_t)before], 0);
			seen[s - (uint64_t)before] = 1;
		}
	assert_int_equal(sql_int("SELECT size FROM audit.head"), before + T * N);
	assert_int_equal(sql_int("SELECT count(*) FROM audit.entries"), before + T * N);
	/* Each entry links to the one before it. */
	assert_int_equal(sql_int("SELECT count(*) FROM audit.entries e JOIN audit.entries p"
				 " ON p.seq = e.seq - 1 WHERE e.prev_hash <> p.entry_hash"),
			 0);
	/* Group commit: fewer tree nodes than 2 per entry means whole batches. */
	assert_true(sql_int("SELECT count(*) FROM audit.tree_nodes") <= 2 * (before + T * N));
}

static void test_service_role_cannot_update_or_delete(void **state)
{
	(void)state;
	char url[1024];
	const char *pg = h_env("SLIPWAY_PGURL");
	/* The service's own role (what slipway-audit connects as). */
	snprintf(url, sizeof url, "%s", pg);
	char *u = strstr(url, "user=postgres");
	assert_non_null(u);
	snprintf(u, sizeof url - (size_t)(u - url), "user=slipway_audit");
	struct db_opts o = { .url = url, .schema = "audit", .pool_size = 1 };
	struct db *db = NULL;
	struct db_conn *c = NULL;
	char err[256];
	assert_int_equal(db_open(&o, &db, err, sizeof err), 0);
	assert_int_equal(db_acquire(db, &c, 5000, err, sizeof err), 0);
	assert_int_not_equal(db_q(c, "UPDATE entries SET actor = 'x' WHERE seq = 0", 0, NULL, NULL,
				  err, sizeof err),
			     0);
	assert_non_null(strstr(err, "permission denied"));
	assert_int_not_equal(db_q(c, "DELETE FROM entries WHERE seq = 0", 0, NULL, NULL, err,
				  sizeof err),
			     0);
	assert_int_not_equal(db_q(c, "TRUNCATE entries", 0, NULL, NULL, err, sizeof err), 0);
	assert_int_not_equal(db_q(c, "DELETE FROM tree_nodes", 0, NULL, NULL, err, sizeof err), 0);
	assert_int_not_equal(db_q(c, "DELETE FROM checkpoints", 0, NULL, NULL, err, sizeof err), 0);
	/* Even the owner of the tables hits the trigger if it re-grants. */
	db_release(db, c);
	db_close(db);
	assert_true(sql_int("SELECT count(*) FROM audit.entries WHERE actor = 'x'") == 0);
}

/* The outbox: events committed while the audit service is down arrive
 * exactly once, in order, once it is back. */
static const struct db_migration outbox_migs[] = { { 1, "outbox", OUTBOX_MIGRATION_SQL },
						    { 2, "outbox trace", OUTBOX_TRACE_SQL } };

struct produce_arg {
	int from, to;
};

static int produce_tx(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	struct produce_arg *p = arg;
	for (int i = p->from; i < p->to; i++) {
		char id[64], res[64], actor[256];
		snprintf(id, sizeof id, "it-outbox-%d", i);
		snprintf(res, sizeof res, "thing/%05d", i);
		snprintf(actor, sizeof actor, "spiffe://%s/user/alice", td);
		struct outbox_event e = { .event_id = id, .actor = actor, .action = "thing.create",
					  .resource = res,
					  .outcome = SLIPWAY__V1__OUTCOME__OUTCOME_SUCCESS };
		outbox_detail(&e, "index", res + 6);
		int rc = outbox_add(c, "testprod", &e, err, errlen);
		if (rc != 0)
			return rc;
	}
	return 0;
}

static void test_outbox_survives_audit_outage(void **state)
{
	(void)state;
	char err[256], cmd[1024];
	struct db_opts o = { .url = h_env("SLIPWAY_PGURL"), .schema = "it_producer", .pool_size = 3 };
	struct db *db = NULL;
	assert_int_equal(db_open(&o, &db, err, sizeof err), 0);
	assert_int_equal(db_migrate(db, outbox_migs, 2, err, sizeof err), 0);
	struct rpc_client *c = h_service_client(h_env("SLIPWAY_AUDIT_ADDR"), h_env("SLIPWAY_CA"),
						prod_crt, prod_key);
	struct outbox_relay_opts ro = { .db = db, .audit = c, .batch = 7, .idle_ms = 50,
					.max_backoff_ms = 300 };
	struct outbox_relay *r = NULL;

	/* Audit down. */
	snprintf(cmd, sizeof cmd, "scripts/stack stop '%s' audit", h_env("SLIPWAY_STACK_DIR"));
	assert_int_equal(system(cmd), 0);
	assert_int_equal(outbox_relay_start(&ro, &r, err, sizeof err), 0);
	for (int i = 0; i < 100; i += 10) {
		struct produce_arg p = { i, i + 10 };
		assert_int_equal(db_tx(db, NULL, produce_tx, &p, err, sizeof err), 0);
		outbox_relay_kick(r);
	}
	h_sleep_ms(500);
	assert_int_equal(outbox_relay_delivered(r), 0);
	/* Audit back: everything arrives. */
	snprintf(cmd, sizeof cmd, "scripts/stack start '%s' audit", h_env("SLIPWAY_STACK_DIR"));
	assert_int_equal(system(cmd), 0);
	for (int i = 0; i < 200 && outbox_relay_delivered(r) < 100; i++)
		h_sleep_ms(50);
	assert_int_equal(outbox_relay_delivered(r), 100);
	/* A retried batch (the relay lost a reply) would not duplicate. */
	struct produce_arg again = { 95, 100 };
	struct db_conn *conn = NULL;
	assert_int_equal(db_acquire(db, &conn, 5000, err, sizeof err), 0);
	assert_int_equal(db_q(conn, "BEGIN", 0, NULL, NULL, err, sizeof err), 0);
	assert_int_equal(produce_tx(conn, &again, err, sizeof err), 0);
	assert_int_equal(db_q(conn, "COMMIT", 0, NULL, NULL, err, sizeof err), 0);
	db_release(db, conn);
	outbox_relay_kick(r);
	for (int i = 0; i < 200 && outbox_relay_delivered(r) < 105; i++)
		h_sleep_ms(50);
	outbox_relay_stop(r, 2000);
	assert_int_equal(sql_int("SELECT count(*) FROM it_producer.outbox"), 0);
	/* Exactly once, in order. */
	assert_int_equal(sql_int("SELECT count(*) FROM audit.entries WHERE service = 'testprod'"), 100);
	assert_int_equal(sql_int("SELECT count(DISTINCT event_id) FROM audit.entries"
				 " WHERE service = 'testprod'"),
			 100);
	assert_int_equal(sql_int("SELECT count(*) FROM (SELECT resource, lag(resource) OVER"
				 " (ORDER BY seq) AS prev FROM audit.entries WHERE service ="
				 " 'testprod') x WHERE prev IS NOT NULL AND prev > resource"),
			 0);
	rpc_client_free(c);
	db_close(db);
}

static int produce_messy_tx(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	(void)arg;
	static char resource[1000], value[5000];
	char actor[256];
	memset(resource, 'r', sizeof resource - 1);
	resource[10] = '\n';
	memset(value, 'v', sizeof value - 1);
	value[3] = '\x01';
	snprintf(actor, sizeof actor, "spiffe://%s/user/alice", td);
	struct outbox_event e = { .event_id = "it-outbox-messy", .actor = actor,
				  .action = "thing.create", .resource = resource,
				  .outcome = SLIPWAY__V1__OUTCOME__OUTCOME_FAILURE };
	outbox_detail(&e, "error", value);
	outbox_detail(&e, "more", value);
	return outbox_add(c, "testprod", &e, err, errlen);
}

/* Free text of any length or content is fitted to the log's caps before it
 * enters the outbox, so it can never block the relay. */
static void test_outbox_fits_free_text(void **state)
{
	(void)state;
	char err[256];
	struct db_opts o = { .url = h_env("SLIPWAY_PGURL"), .schema = "it_producer", .pool_size = 3 };
	struct db *db = NULL;
	assert_int_equal(db_open(&o, &db, err, sizeof err), 0);
	assert_int_equal(db_migrate(db, outbox_migs, 2, err, sizeof err), 0);
	assert_int_equal(db_tx(db, NULL, produce_messy_tx, NULL, err, sizeof err), 0);
	struct rpc_client *c = h_service_client(h_env("SLIPWAY_AUDIT_ADDR"), h_env("SLIPWAY_CA"),
						prod_crt, prod_key);
	struct outbox_relay_opts ro = { .db = db, .audit = c, .idle_ms = 50 };
	struct outbox_relay *r = NULL;
	assert_int_equal(outbox_relay_start(&ro, &r, err, sizeof err), 0);
	for (int i = 0; i < 100 && outbox_relay_delivered(r) < 1; i++)
		h_sleep_ms(50);
	outbox_relay_stop(r, 2000);
	assert_int_equal(sql_int("SELECT count(*) FROM audit.entries WHERE event_id = 'it-outbox-messy'"
				 " AND length(resource) = 512 AND position(chr(10) in resource) = 0"
				 " AND details::text LIKE '%truncated%'"),
			 1);
	rpc_client_free(c);
	db_close(db);
}

static void add_one(struct db_conn *c, const char *id)
{
	char err[256], actor[256];
	snprintf(actor, sizeof actor, "spiffe://%s/user/alice", td);
	struct outbox_event e = { .event_id = id, .actor = actor, .action = "thing.create",
				  .resource = id, .outcome = SLIPWAY__V1__OUTCOME__OUTCOME_SUCCESS };
	assert_int_equal(outbox_add(c, "testprod", &e, err, sizeof err), 0);
}

/* Regression: the relay delivered by the bigserial id, which is taken at
 * INSERT time. Two transactions that commit in the other order than they
 * inserted (T1 takes the lower id, T2 commits first) reached the log in id
 * order, not in the order the database made them visible. Now it is
 * commit order, and an event committed while the relay runs is not
 * skipped. */
static void test_outbox_relays_in_commit_order(void **state)
{
	(void)state;
	char err[256];
	struct db_opts o = { .url = h_env("SLIPWAY_PGURL"), .schema = "it_order", .pool_size = 3 };
	struct db *db = NULL;
	assert_int_equal(db_open(&o, &db, err, sizeof err), 0);
	assert_int_equal(db_migrate(db, outbox_migs, 2, err, sizeof err), 0);
	struct db_conn *t1 = NULL, *t2 = NULL;
	assert_int_equal(db_acquire(db, &t1, 5000, err, sizeof err), 0);
	assert_int_equal(db_acquire(db, &t2, 5000, err, sizeof err), 0);

	/* Round 1, no relay running: T1 inserts first, T2 commits first. */
	assert_int_equal(db_q(t1, "BEGIN", 0, NULL, NULL, err, sizeof err), 0);
	add_one(t1, "it-order-1-inserted-first");
	assert_int_equal(db_q(t2, "BEGIN", 0, NULL, NULL, err, sizeof err), 0);
	add_one(t2, "it-order-1-committed-first");
	assert_int_equal(db_q(t2, "COMMIT", 0, NULL, NULL, err, sizeof err), 0);
	assert_int_equal(db_q(t1, "COMMIT", 0, NULL, NULL, err, sizeof err), 0);

	struct rpc_client *c = h_service_client(h_env("SLIPWAY_AUDIT_ADDR"), h_env("SLIPWAY_CA"),
						prod_crt, prod_key);
	struct outbox_relay_opts ro = { .db = db, .audit = c, .idle_ms = 50 };
	struct outbox_relay *r = NULL;
	assert_int_equal(outbox_relay_start(&ro, &r, err, sizeof err), 0);
	for (int i = 0; i < 200 && outbox_relay_delivered(r) < 2; i++)
		h_sleep_ms(50);
	assert_int_equal(outbox_relay_delivered(r), 2);

	/* Round 2, relay running: T2's event goes out while T1 is still open;
	 * T1's, committed later, is not skipped. */
	assert_int_equal(db_q(t1, "BEGIN", 0, NULL, NULL, err, sizeof err), 0);
	add_one(t1, "it-order-2-inserted-first");
	assert_int_equal(db_q(t2, "BEGIN", 0, NULL, NULL, err, sizeof err), 0);
	add_one(t2, "it-order-2-committed-first");
	assert_int_equal(db_q(t2, "COMMIT", 0, NULL, NULL, err, sizeof err), 0);
	outbox_relay_kick(r);
	for (int i = 0; i < 200 && outbox_relay_delivered(r) < 3; i++)
		h_sleep_ms(50);
	assert_int_equal(db_q(t1, "COMMIT", 0, NULL, NULL, err, sizeof err), 0);
	outbox_relay_kick(r);
	for (int i = 0; i < 200 && outbox_relay_delivered(r) < 4; i++)
		h_sleep_ms(50);
	assert_int_equal(outbox_relay_delivered(r), 4);
	outbox_relay_stop(r, 2000);
	db_release(db, t1);
	db_release(db, t2);

	assert_int_equal(sql_int("SELECT count(*) FROM it_order.outbox"), 0);
	/* The log holds them in commit order. */
	const char *order[4] = { "it-order-1-committed-first", "it-order-1-inserted-first",
				 "it-order-2-committed-first", "it-order-2-inserted-first" };
	for (int i = 0; i + 1 < 4; i++) {
		char q[512];
		snprintf(q, sizeof q,
			 "SELECT ((SELECT seq FROM audit.entries WHERE event_id = '%s') <"
			 " (SELECT seq FROM audit.entries WHERE event_id = '%s'))::int",
			 order[i], order[i + 1]);
		int64_t before = sql_int(q);
		if (before != 1)
			fprintf(stderr, "it_audit: %s was logged after %s\n", order[i], order[i + 1]);
		assert_int_equal(before, 1);
	}
	rpc_client_free(c);
	db_close(db);
}

/* An outbox created by an earlier version (no seq, no trigger) is upgraded
 * by the relay: its old rows are delivered, and later rows get their
 * commit-time seq. */
static void test_outbox_upgrades_an_old_outbox(void **state)
{
	(void)state;
	static const struct db_migration old[] = {
		{ 1, "outbox (before commit order)",
		  "CREATE TABLE outbox (id bigserial PRIMARY KEY, event_id text NOT NULL UNIQUE,"
		  " event bytea NOT NULL, created_at timestamptz NOT NULL DEFAULT now())" },
		{ 2, "outbox trace", OUTBOX_TRACE_SQL },
	};
	char err[256];
	struct db_opts o = { .url = h_env("SLIPWAY_PGURL"), .schema = "it_old_outbox",
			     .pool_size = 2 };
	struct db *db = NULL;
	assert_int_equal(db_open(&o, &db, err, sizeof err), 0);
	assert_int_equal(db_migrate(db, old, 2, err, sizeof err), 0);
	struct db_conn *c = NULL;
	assert_int_equal(db_acquire(db, &c, 5000, err, sizeof err), 0);
	add_one(c, "it-old-outbox-1");
	db_release(db, c);
	struct rpc_client *cl = h_service_client(h_env("SLIPWAY_AUDIT_ADDR"), h_env("SLIPWAY_CA"),
						 prod_crt, prod_key);
	struct outbox_relay_opts ro = { .db = db, .audit = cl, .idle_ms = 50 };
	struct outbox_relay *r = NULL;
	assert_int_equal(outbox_relay_start(&ro, &r, err, sizeof err), 0);
	for (int i = 0; i < 200 && outbox_relay_delivered(r) < 1; i++)
		h_sleep_ms(50);
	assert_int_equal(outbox_relay_delivered(r), 1);
	assert_int_equal(sql_int("SELECT count(*) FROM pg_trigger WHERE tgname ="
				 " 'outbox_commit_order' AND tgrelid = 'it_old_outbox.outbox'::regclass"),
			 1);
	outbox_relay_stop(r, 2000);
	/* A row added now gets its seq at commit. */
	assert_int_equal(db_acquire(db, &c, 5000, err, sizeof err), 0);
	add_one(c, "it-old-outbox-2");
	db_release(db, c);
	assert_int_equal(sql_int("SELECT count(*) FROM it_old_outbox.outbox WHERE seq IS NOT NULL"),
			 1);
	assert_int_equal(sql_int("SELECT count(*) FROM audit.entries WHERE event_id ="
				 " 'it-old-outbox-1'"),
			 1);
	rpc_client_free(cl);
	db_close(db);
}

int main(void)
{
	log_init("it_audit", LOG_INFO);
	rpc_init();
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_append_and_idempotency),
		cmocka_unit_test(test_identity_rule),
		cmocka_unit_test(test_bad_input_changes_nothing),
		cmocka_unit_test(test_concurrent_appends_form_one_chain),
		cmocka_unit_test(test_service_role_cannot_update_or_delete),
		cmocka_unit_test(test_outbox_survives_audit_outage),
		cmocka_unit_test(test_outbox_fits_free_text),
		cmocka_unit_test(test_outbox_relays_in_commit_order),
		cmocka_unit_test(test_outbox_upgrades_an_old_outbox),
	};
	int rc = cmocka_run_group_tests_name("it_audit", tests, setup, NULL);
	rpc_shutdown();
	return rc;
}
