/*
 * it_audit_verify.c - the auditor's view of the real audit service: reads
 * through policy (auditor yes, stranger no), proofs, checkpoints, and
 * `slipway audit verify` catching every kind of tampering done directly in
 * PostgreSQL: a changed field, a deleted row, two swapped rows, a rewritten
 * history with a recomputed hash chain, a truncated tail, and the tables
 * rolled back to an older copy.
 */
#include "auditlog.h"
#include "db.h"
#include "err.h"
#include "harness.h"
#include "log.h"
#include "pki.h"
#include "rpc.h"

#include "slipway/v1/audit.pb-c.h"
#include "slipway/v1/policy.pb-c.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <cmocka.h>

static char dir[256], td[128], svc_crt[300], svc_key[300], aud_crt[300], aud_key[300];
static char eve_crt[300], eve_key[300], state[300];
static char inst_crt[300], inst_key[300], addr[64], verifier[300], pgurl[1024], portfile[300];
static struct rpc_client *svc;
static struct db *pg;
static struct h_proc inst;

/* This suite tampers with the database, so it runs its own audit service
 * on its own database and S3 prefix (same PostgreSQL, S3, PKI and policy
 * service as the stack), where no other service's events arrive. */
static int start_instance(void)
{
	char logf[300], sd[300];
	snprintf(logf, sizeof logf, "%s/audit-instance.log", dir);
	snprintf(sd, sizeof sd, "%s/audit-state", dir);
	snprintf(portfile, sizeof portfile, "%s/audit.port", dir);
	mkdir(sd, 0700);
	char *argv[] = { "build/bin/slipway-audit", "--listen", "127.0.0.1:0", "--port-file", portfile,
			 "--ca", (char *)h_env("SLIPWAY_CA"), "--cert", inst_crt, "--key", inst_key,
			 "--pg-url", pgurl, "--s3-host", (char *)h_env("SLIPWAY_S3_HOST"),
			 "--s3-bucket", (char *)h_env("SLIPWAY_S3_BUCKET"), "--s3-access-key",
			 (char *)h_env("SLIPWAY_S3_ACCESS_KEY"), "--policy-addr",
			 (char *)h_env("SLIPWAY_POLICY_ADDR"), "--state-dir", sd, "--generate-keys",
			 "--checkpoint-prefix", "tamper/checkpoints/", "--checkpoint-interval", "1h",
			 NULL };
	/* A secret never goes on a command line (the flag is refused). */
	setenv("SLIPWAY_AUDIT_S3_SECRET_KEY", h_env("SLIPWAY_S3_SECRET_KEY"), 1);
	if (h_start(&inst, argv, portfile, logf) != 0)
		return -1;
	snprintf(addr, sizeof addr, "127.0.0.1:%d", inst.port);
	char pub[400];
	snprintf(pub, sizeof pub, "%s/audit-signing.key.pub", sd);
	char *v = h_read_file(pub);
	if (v == NULL)
		return -1;
	v[strcspn(v, "\n")] = '\0';
	snprintf(verifier, sizeof verifier, "%s", v);
	free(v);
	return 0;
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

/* Runs SQL as the superuser (triggers off for this session: tampering). */
static void sql(const char *q)
{
	struct db_conn *c = NULL;
	char err[256];
	assert_int_equal(db_acquire(pg, &c, 5000, err, sizeof err), 0);
	assert_int_equal(db_q(c, "SET session_replication_role = replica", 0, NULL, NULL, err, sizeof err), 0);
	/* Several constant statements at once: the simple query protocol. */
	PGresult *r = PQexec(db_pg(c), q);
	int ok = PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK;
	if (!ok)
		fprintf(stderr, "sql failed: %s: %s\n", q, PQresultErrorMessage(r));
	PQclear(r);
	assert_true(ok);
	db_q(c, "SET session_replication_role = origin", 0, NULL, NULL, err, sizeof err);
	db_release(pg, c);
}

static int64_t sql_int(const char *q)
{
	struct db_conn *c = NULL;
	PGresult *r = NULL;
	char err[256];
	assert_int_equal(db_acquire(pg, &c, 5000, err, sizeof err), 0);
	assert_int_equal(db_q(c, q, 0, NULL, &r, err, sizeof err), 0);
	int64_t v = db_int64(r, 0, 0);
	PQclear(r);
	db_release(pg, c);
	return v;
}

/* Runs the CLI; returns its exit status and its output in out. */
static int cli(char *out, size_t outlen, const char *crt, const char *key, const char *fmt, ...)
{
	char args[1024], cmd[4096];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(args, sizeof args, fmt, ap);
	va_end(ap);
	snprintf(cmd, sizeof cmd,
		 "SLIPWAY_AUDIT_ADDR='%s' SLIPWAY_AUDIT_VERIFIER_KEY='%s' SLIPWAY_CERT='%s'"
		 " SLIPWAY_KEY='%s' build/bin/slipway %s 2>&1",
		 addr, verifier, crt, key, args);
	FILE *p = popen(cmd, "r");
	assert_non_null(p);
	size_t n = fread(out, 1, outlen - 1, p);
	out[n] = '\0';
	int st = pclose(p);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int verify(char *out, size_t outlen)
{
	return cli(out, outlen, h_env("SLIPWAY_CERT"), h_env("SLIPWAY_KEY"), "audit verify --s3-prefix tamper/checkpoints/ --state '%s'", state);
}

static void append_n(int n, const char *tag)
{
	Slipway__V1__AuditEvent evs[50], *ptrs[50];
	char ids[50][64], actor[256], res[50][64];
	snprintf(actor, sizeof actor, "spiffe://%s/user/alice", td);
	assert_true(n <= 50);
	for (int i = 0; i < n; i++) {
		slipway__v1__audit_event__init(&evs[i]);
		snprintf(ids[i], sizeof ids[i], "verify-%s-%d-%ld", tag, i, (long)time(NULL));
		snprintf(res[i], sizeof res[i], "thing/%s-%d", tag, i);
		evs[i].event_id = ids[i];
		evs[i].actor = actor;
		evs[i].service = "ledger";
		evs[i].action = "thing.create";
		evs[i].resource = res[i];
		evs[i].outcome = SLIPWAY__V1__OUTCOME__OUTCOME_SUCCESS;
		evs[i].time_unix_ms = (int64_t)time(NULL) * 1000;
		ptrs[i] = &evs[i];
	}
	Slipway__V1__AppendBatchRequest req = SLIPWAY__V1__APPEND_BATCH_REQUEST__INIT;
	req.n_events = (size_t)n;
	req.events = ptrs;
	ProtobufCMessage *m = NULL;
	char err[256];
	assert_int_equal(rpc_call(svc, &slipway__v1__audit__descriptor, "AppendBatch", &req.base, &m,
				  NULL, err, sizeof err),
			 0);
	protobuf_c_message_free_unpacked(m, NULL);
}

static void sign(void)
{
	char out[8192];
	assert_int_equal(cli(out, sizeof out, h_env("SLIPWAY_CERT"), h_env("SLIPWAY_KEY"),
			     "audit checkpoint --sign"),
			 0);
	assert_non_null(strstr(out, "signature verified"));
}

static void restart_audit(void)
{
	assert_int_equal(h_stop(&inst, SIGTERM, 10000), 0);
	assert_int_equal(start_instance(), 0);
	rpc_client_free(svc);
	svc = h_client(addr, h_env("SLIPWAY_CA"), svc_crt, svc_key);
}

static int setup(void **st)
{
	(void)st;
	char err[256];
	snprintf(dir, sizeof dir, "%s", h_tmpdir("it_audit_verify"));
	snprintf(state, sizeof state, "%s/audit-state.json", dir);
	if (pki_trust_domain(h_env("SLIPWAY_PKI_DIR"), td, sizeof td, err, sizeof err) != 0)
		return -1;
	issue("ledger", "service", svc_crt, svc_key);
	issue("ada", "user", aud_crt, aud_key);
	issue("eve", "user", eve_crt, eve_key);
	char prefix[280], uri[256];
	snprintf(prefix, sizeof prefix, "%s/audit", dir);
	snprintf(uri, sizeof uri, "spiffe://%s/service/audit", td);
	h_issue(h_env("SLIPWAY_PKI_DIR"), prefix, uri, NULL, 1);
	snprintf(inst_crt, sizeof inst_crt, "%s.crt", prefix);
	snprintf(inst_key, sizeof inst_key, "%s.key", prefix);
	/* Its own database. */
	struct db_opts admin = { .url = h_env("SLIPWAY_PGURL"), .schema = "public", .pool_size = 1 };
	struct db *adb = NULL;
	struct db_conn *ac = NULL;
	if (db_open(&admin, &adb, err, sizeof err) != 0 || db_acquire(adb, &ac, 5000, err, sizeof err) != 0 ||
	    db_q(ac, "CREATE DATABASE slipway_tamper", 0, NULL, NULL, err, sizeof err) != 0)
		return -1;
	db_release(adb, ac);
	db_close(adb);
	const char *base = h_env("SLIPWAY_PGURL");
	const char *q = strstr(base, "/slipway?");
	if (q == NULL)
		return -1;
	snprintf(pgurl, sizeof pgurl, "%.*s/slipway_tamper?%s", (int)(q - base), base, q + 9);
	if (start_instance() != 0)
		return -1;
	svc = h_client(addr, h_env("SLIPWAY_CA"), svc_crt, svc_key);
	struct db_opts o = { .url = pgurl, .schema = "audit", .pool_size = 2 };
	if (db_open(&o, &pg, err, sizeof err) != 0)
		return -1;
	/* ada is an auditor; eve holds nothing. */
	char doc[1024], path[300], out[4096];
	snprintf(path, sizeof path, "%s/policy.json", dir);
	snprintf(doc, sizeof doc,
		 "{\"version\": 1, \"bindings\": [{\"role\": \"auditor\", \"principal\":"
		 " \"spiffe://%s/user/ada\"}]}",
		 td);
	FILE *f = fopen(path, "w");
	fputs(doc, f);
	fclose(f);
	if (cli(out, sizeof out, h_env("SLIPWAY_CERT"), h_env("SLIPWAY_KEY"), "policy apply '%s'",
		path) != 0) {
		fprintf(stderr, "policy apply: %s\n", out);
		return -1;
	}
	append_n(40, "base");
	sign();
	return 0;
}

static int teardown(void **st)
{
	(void)st;
	rpc_client_free(svc);
	db_close(pg);
	h_stop(&inst, SIGTERM, 10000);
	return 0;
}

static void test_auditor_reads_stranger_does_not(void **st)
{
	(void)st;
	char out[16384];
	assert_int_equal(cli(out, sizeof out, aud_crt, aud_key, "audit log --service ledger --limit 5"), 0);
	assert_non_null(strstr(out, "thing.create"));
	assert_int_equal(cli(out, sizeof out, eve_crt, eve_key, "audit log --limit 5"), 3); /* exit 3: denied */
	assert_non_null(strstr(out, "PERMISSION_DENIED"));
	/* filters: outcome, resource prefix, json */
	assert_int_equal(cli(out, sizeof out, aud_crt, aud_key,
			     "-o json audit log --resource thing/base-1 --limit 100"),
			 0);
	assert_non_null(strstr(out, "\"resource\": \"thing/base-10\""));
	assert_null(strstr(out, "thing/base-2\""));
	assert_int_equal(cli(out, sizeof out, aud_crt, aud_key, "audit log --outcome denied --service ledger"), 0);
	assert_null(strstr(out, "thing.create"));
	assert_int_equal(cli(out, sizeof out, aud_crt, aud_key, "audit log --outcome maybe"), 2);
}

static void test_proofs_and_checkpoints(void **st)
{
	(void)st;
	char out[16384];
	int64_t seq = sql_int("SELECT max(seq) FROM audit.entries WHERE service = 'ledger'");
	assert_int_equal(cli(out, sizeof out, aud_crt, aud_key, "audit proof %lld", (long long)seq), 0);
	assert_non_null(strstr(out, "inclusion:   verified"));
	assert_int_equal(cli(out, sizeof out, aud_crt, aud_key, "audit show %lld", (long long)seq), 0);
	assert_non_null(strstr(out, "thing.create"));
	assert_int_equal(cli(out, sizeof out, aud_crt, aud_key, "-o json audit checkpoint"), 0);
	assert_non_null(strstr(out, "\"verified\": true"));
	/* A proof for a size beyond the tree is OUT_OF_RANGE. */
	Slipway__V1__GetInclusionProofRequest req = SLIPWAY__V1__GET_INCLUSION_PROOF_REQUEST__INIT;
	struct rpc_client *a = h_client(addr, h_env("SLIPWAY_CA"), aud_crt, aud_key);
	ProtobufCMessage *m = NULL;
	char err[256];
	req.seq = 0;
	req.tree_size = 1000000000;
	assert_int_equal(rpc_call(a, &slipway__v1__audit__descriptor, "GetInclusionProof", &req.base,
				  &m, NULL, err, sizeof err),
			 SW_ERANGE);
	req.seq = 5;
	req.tree_size = 3;
	assert_int_equal(rpc_call(a, &slipway__v1__audit__descriptor, "GetInclusionProof", &req.base,
				  &m, NULL, err, sizeof err),
			 SW_ERANGE);
	Slipway__V1__GetConsistencyProofRequest cq = SLIPWAY__V1__GET_CONSISTENCY_PROOF_REQUEST__INIT;
	cq.old_size = 10;
	cq.new_size = 5;
	assert_int_equal(rpc_call(a, &slipway__v1__audit__descriptor, "GetConsistencyProof", &cq.base,
				  &m, NULL, err, sizeof err),
			 SW_ERANGE);
	cq.old_size = 0;
	assert_int_equal(rpc_call(a, &slipway__v1__audit__descriptor, "GetConsistencyProof", &cq.base,
				  &m, NULL, err, sizeof err),
			 SW_EINVAL);
	/* An auditor reads, and can never write: no write RPC exists, and
	 * appends are for services only. */
	Slipway__V1__AppendRequest ar = SLIPWAY__V1__APPEND_REQUEST__INIT;
	Slipway__V1__AuditEvent ev = SLIPWAY__V1__AUDIT_EVENT__INIT;
	ar.event = &ev;
	assert_int_equal(rpc_call(a, &slipway__v1__audit__descriptor, "Append", &ar.base, &m, NULL,
				  err, sizeof err),
			 SW_EPERM);
	rpc_client_free(a);
}

static void test_verify_clean_log(void **st)
{
	(void)st;
	char out[8192];
	assert_int_equal(verify(out, sizeof out), 0);
	assert_non_null(strstr(out, "OK:"));
	assert_non_null(strstr(out, "hash chain intact"));
}

/* The stored columns of audit.entries (app and env are generated from the
 * details and cannot be written). */
#define ENTRY_COLS                                                                               \
	"seq, event_id, actor, service, action, resource, outcome, request_id, time_ms, "         \
	"logged_ms, details, prev_hash, entry_hash"

static void snapshot(const char *suffix)
{
	char q[1024];
	snprintf(q, sizeof q,
		 "DROP TABLE IF EXISTS audit.entries_%s, audit.nodes_%s, audit.head_%s, audit.cp_%s;"
		 "CREATE TABLE audit.entries_%s AS SELECT " ENTRY_COLS " FROM audit.entries;"
		 "CREATE TABLE audit.nodes_%s AS SELECT * FROM audit.tree_nodes;"
		 "CREATE TABLE audit.head_%s AS SELECT * FROM audit.head;"
		 "CREATE TABLE audit.cp_%s AS SELECT * FROM audit.checkpoints",
		 suffix, suffix, suffix, suffix, suffix, suffix, suffix, suffix);
	sql(q);
}

static void restore(const char *suffix)
{
	char q[1024];
	snprintf(q, sizeof q,
		 "DELETE FROM audit.entries; INSERT INTO audit.entries (" ENTRY_COLS ") SELECT * FROM "
		 "audit.entries_%s;"
		 "DELETE FROM audit.tree_nodes; INSERT INTO audit.tree_nodes SELECT * FROM audit.nodes_%s;"
		 "DELETE FROM audit.head; INSERT INTO audit.head SELECT * FROM audit.head_%s;"
		 "DELETE FROM audit.checkpoints; INSERT INTO audit.checkpoints SELECT * FROM audit.cp_%s",
		 suffix, suffix, suffix, suffix);
	sql(q);
}

static void expect_fail_at(long long seq, const char *why)
{
	char out[8192], want[64];
	assert_int_equal(verify(out, sizeof out), 1);
	snprintf(want, sizeof want, "FAIL at seq %lld:", seq);
	if (strstr(out, want) == NULL || strstr(out, why) == NULL)
		fprintf(stderr, "verify said: %s\n(wanted '%s' and '%s')\n", out, want, why);
	assert_non_null(strstr(out, want));
	assert_non_null(strstr(out, why));
}

static void test_tamper_changed_field(void **st)
{
	(void)st;
	snapshot("good");
	sql("UPDATE audit.entries SET resource = 'thing/forged' WHERE seq = 7");
	expect_fail_at(7, "do not match its hash");
	restore("good");
	sql("UPDATE audit.entries SET details = '[[\"x\",\"y\"]]' WHERE seq = 12");
	expect_fail_at(12, "do not match its hash");
	restore("good");
}

static void test_tamper_deleted_row(void **st)
{
	(void)st;
	sql("DELETE FROM audit.entries WHERE seq = 9");
	expect_fail_at(9, "entry 9 is missing");
	restore("good");
}

static void test_tamper_swapped_rows(void **st)
{
	(void)st;
	sql("UPDATE audit.entries SET seq = 999999999 WHERE seq = 20;"
	    "UPDATE audit.entries SET seq = 20 WHERE seq = 21;"
	    "UPDATE audit.entries SET seq = 21 WHERE seq = 999999999");
	expect_fail_at(20, "prev_hash does not link");
	restore("good");
}

/* A careful forger changes an entry and recomputes the whole hash chain
 * after it: only the signed checkpoint can tell. */
static void test_tamper_rewritten_history(void **st)
{
	(void)st;
	struct db_conn *c = NULL;
	PGresult *r = NULL;
	char err[256];
	assert_int_equal(db_acquire(pg, &c, 5000, err, sizeof err), 0);
	assert_int_equal(db_q(c,
			      "SELECT seq, event_id, actor, service, action, resource, outcome,"
			      " request_id, time_ms, logged_ms, details::text, prev_hash"
			      " FROM audit.entries WHERE seq >= 15 ORDER BY seq",
			      0, NULL, &r, err, sizeof err),
			 0);
	assert_int_equal(db_q(c, "SET session_replication_role = replica", 0, NULL, NULL, err, sizeof err), 0);
	uint8_t prev[32];
	assert_int_equal(db_bytea(r, 0, 11, prev, 32), 32);
	for (int i = 0; i < PQntuples(r); i++) {
		const char *resource = i == 0 ? "thing/rewritten" : db_text(r, i, 5);
		/* details are empty in these events */
		struct auditlog_entry e = {
			.seq = (uint64_t)db_int64(r, i, 0), .event_id = db_text(r, i, 1),
			.actor = db_text(r, i, 2), .service = db_text(r, i, 3), .action = db_text(r, i, 4),
			.resource = resource, .outcome = (int)db_int64(r, i, 6),
			.request_id = db_text(r, i, 7), .time_unix_ms = db_int64(r, i, 8),
			.logged_unix_ms = db_int64(r, i, 9),
		};
		uint8_t canon[AUDITLOG_CANON_MAX], eh[32], leaf[32];
		size_t len;
		assert_int_equal(auditlog_canonical(&e, canon, sizeof canon, &len), 0);
		auditlog_hashes(prev, canon, len, eh, leaf);
		char seq[24];
		const char *v[4] = { db_i64(seq, (int64_t)e.seq), resource, (const char *)prev,
				     (const char *)eh };
		int l[4] = { 0, 0, 32, 32 }, f[4] = { 0, 0, 1, 1 };
		assert_int_equal(db_exec(c,
					 "UPDATE audit.entries SET resource = $2, prev_hash = $3,"
					 " entry_hash = $4 WHERE seq = $1",
					 4, v, l, f, 0, NULL, err, sizeof err),
				 0);
		memcpy(prev, eh, 32);
	}
	db_q(c, "SET session_replication_role = origin", 0, NULL, NULL, err, sizeof err);
	PQclear(r);
	db_release(pg, c);
	/* The chain is consistent again, but the checkpoint signed over the
	 * original entries no longer matches. */
	char out[8192];
	assert_int_equal(verify(out, sizeof out), 1);
	assert_non_null(strstr(out, "do not match the checkpoint"));
	assert_null(strstr(out, "prev_hash"));
	restore("good");
}

static void test_tamper_truncated_tail(void **st)
{
	(void)st;
	char out[8192];
	assert_int_equal(verify(out, sizeof out), 0); /* the state file now holds the checkpoint */
	int64_t size = sql_int("SELECT size FROM audit.head");
	sql("DELETE FROM audit.entries WHERE seq >= 30; DELETE FROM audit.tree_nodes"
	    " WHERE (idx + 1) * (1 << level) > 30; DELETE FROM audit.checkpoints WHERE size > 30;"
	    " UPDATE audit.head SET size = 30");
	expect_fail_at(30, "truncated or rolled back");
	/* The service notices too: it refuses to sign over a shorter log. */
	char out2[8192];
	assert_int_equal(cli(out2, sizeof out2, h_env("SLIPWAY_CERT"), h_env("SLIPWAY_KEY"),
			     "audit checkpoint --sign"),
			 1);
	assert_non_null(strstr(out2, "truncated or rolled back"));
	assert_true(size > 30);
	restore("good");
	restart_audit(); /* clears its integrity alarm once the log is whole again */
	assert_int_equal(verify(out, sizeof out), 0);
}

static void test_tamper_rolled_back_to_older_copy(void **st)
{
	(void)st;
	char out[8192];
	snapshot("old");
	append_n(20, "later");
	sign();
	assert_int_equal(verify(out, sizeof out), 0);
	snapshot("new");
	/* Roll everything back to the copy, checkpoints included: the state
	 * file and the checkpoint on S3 both remember the longer log. */
	restore("old");
	int64_t old = sql_int("SELECT size FROM audit.head");
	expect_fail_at(old, "truncated or rolled back");
	/* Even without the state file, S3 holds the newer checkpoint. */
	char cmd[400];
	snprintf(cmd, sizeof cmd, "rm -f '%s'", state);
	assert_int_equal(system(cmd), 0);
	assert_int_equal(verify(out, sizeof out), 1);
	assert_non_null(strstr(out, "from S3"));
	/* Put the real log back and the alarm clears after a restart. */
	restore("new");
	restart_audit();
	assert_int_equal(verify(out, sizeof out), 0);
}

int main(void)
{
	log_init("it_audit_verify", LOG_WARN);
	rpc_init();
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_auditor_reads_stranger_does_not),
		cmocka_unit_test(test_proofs_and_checkpoints),
		cmocka_unit_test(test_verify_clean_log),
		cmocka_unit_test(test_tamper_changed_field),
		cmocka_unit_test(test_tamper_deleted_row),
		cmocka_unit_test(test_tamper_swapped_rows),
		cmocka_unit_test(test_tamper_rewritten_history),
		cmocka_unit_test(test_tamper_truncated_tail),
		cmocka_unit_test(test_tamper_rolled_back_to_older_copy),
	};
	int rc = cmocka_run_group_tests_name("it_audit_verify", tests, setup, teardown);
	rpc_shutdown();
	return rc;
}
