/*
 * Unit tests for lib/evidence: a small audit log made here (entries of one
 * deployment among others, a Merkle tree, checkpoints signed with a fresh
 * key), a bundle built from it and verified; then the failures the
 * verifier must name: a wrong key, an unknown format, an edited view, a
 * dropped entry, truncation, an approval for another digest, and a state
 * file whose checkpoint the bundle's newest does not extend.
 */
#include "auditlog.h"
#include "auditstate.h"
#include "err.h"
#include "evidence.h"
#include "merkle.h"
#include "note.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <sodium.h>

#define N 12
#define DIG "sha256:1111111111111111111111111111111111111111111111111111111111111111"
#define OTHER "sha256:2222222222222222222222222222222222222222222222222222222222222222"

struct log {
	Slipway__V1__AuditEntry e[N];
	Slipway__V1__AuditEvent ev[N];
	Slipway__V1__KeyValue kv[N][16];
	Slipway__V1__KeyValue *kvp[N][16];
	char ids[N][32];
	uint8_t leaf[N][32];
	struct merkle_node nodes[4 * N];
	size_t nnodes;
	struct note_signer *signer, *other;
	struct note_verifier v, vother;
	char cp[NOTE_MAX], newest[NOTE_MAX];
	uint8_t root10[32], root12[32];
};

static void keep(const struct merkle_node *n, void *arg)
{
	struct log *l = arg;
	l->nodes[l->nnodes++] = *n;
}

/* Details as alternating key, value, ..., NULL (keys in order). */
static void entry(struct log *l, int i, const char *svc, const char *action, const char *res,
		  const char *actor, ...)
{
	va_list ap;
	Slipway__V1__AuditEvent *ev = &l->ev[i];
	slipway__v1__audit_event__init(ev);
	slipway__v1__audit_entry__init(&l->e[i]);
	snprintf(l->ids[i], sizeof l->ids[i], "ev-%d", i);
	ev->event_id = l->ids[i];
	ev->actor = (char *)actor;
	ev->service = (char *)svc;
	ev->action = (char *)action;
	ev->resource = (char *)res;
	ev->outcome = SLIPWAY__V1__OUTCOME__OUTCOME_SUCCESS;
	ev->request_id = "";
	ev->time_unix_ms = 1000 + i;
	size_t n = 0;
	va_start(ap, actor);
	for (const char *k = va_arg(ap, const char *); k; k = va_arg(ap, const char *)) {
		slipway__v1__key_value__init(&l->kv[i][n]);
		l->kv[i][n].key = (char *)k;
		l->kv[i][n].value = va_arg(ap, char *);
		l->kvp[i][n] = &l->kv[i][n];
		n++;
	}
	va_end(ap);
	ev->n_details = n;
	ev->details = l->kvp[i];
	l->e[i].seq = (uint64_t)i;
	l->e[i].event = ev;
	l->e[i].logged_unix_ms = 2000 + i;
}

static void fill(const struct log *l, struct merkle_plan *p)
{
	for (size_t i = 0; i < p->n; i++)
		for (size_t j = 0; j < l->nnodes; j++)
			if (l->nodes[j].level == p->nodes[i].level && l->nodes[j].index == p->nodes[i].index)
				memcpy(p->nodes[i].hash, l->nodes[j].hash, 32);
}

static void sign(struct note_signer *s, uint64_t size, const uint8_t root[32], char *out)
{
	char body[512];
	assert_int_equal(note_checkpoint_body("test.slipway/log", size, root, body, sizeof body), 0);
	assert_int_equal(note_sign(s, body, out, NOTE_MAX), 0);
}

/* A signed provenance statement for the bundle (test_signed_provenance). */
static const char *g_statement;
static const uint8_t *g_signature;

static void make_log(struct log *l, const char *approved_digest)
{
	char err[256];
	memset(l, 0, sizeof *l);
	const char *orch = "spiffe://t/service/orchestrator", *bob = "spiffe://t/user/bob";
	entry(l, 0, "artifact", "artifact.push", "artifact/sha256:11", bob, "app", "web", NULL);
	if (g_statement != NULL)
		entry(l, 1, "artifact", "release.create", "release/web@1.0.0", bob, "app", "web",
		      "build_id", "7", "builder", "ci", "commit", "", "digest", DIG, "media_type", "m",
		      "ref", "refs/heads/main", "repository", "https://git.example/web",
		      "signature_verified", "true", "signer", "", "signing_key", "ci-key",
		      "size_bytes", "10", "version", "1.0.0", NULL);
	else
		entry(l, 1, "artifact", "release.create", "release/web@1.0.0", bob, "app", "web",
		      "build_id", "7", "builder", "ci", "commit", "", "digest", DIG, "media_type", "m",
		      "ref", "", "repository", "", "signature_verified", "false", "size_bytes", "10",
		      "version", "1.0.0", NULL);
	entry(l, 2, "orchestrator", "deploy.request", "deployment/d1", "spiffe://t/user/alice", "app",
	      "web", "break_glass", "false", "break_glass_reason", "", "digest", DIG, "environment",
	      "prod", "release", "web@1.0.0", "rollback_of", "", "state", "pending_approval",
	      "version", "1.0.0", NULL);
	entry(l, 3, "orchestrator", "timeline.created", "deployment/d1", orch, "deployment_id", "d1",
	      "detail", "web@1.0.0", "event", "created", "timeline_id", "41", NULL);
	entry(l, 4, "policy", "deployment.evaluate", "deployment/web/prod/d1", "spiffe://t/user/alice",
	      "approval_policy", "prod", "decision_id", "x1", "digest", DIG, "revision", "3",
	      "verdict", "NEEDS_APPROVAL", NULL);
	entry(l, 5, "policy", "deployment.approve", "deployment/web/prod/d1", bob, "approval_policy",
	      "prod", "break_glass", "false", "comment", "ok", "digest", approved_digest,
	      "expires_unix_ms", "99", "revision", "3", NULL);
	entry(l, 6, "orchestrator", "timeline.approved", "deployment/d1", orch, "deployment_id", "d1",
	      "detail", "", "event", "approved", "timeline_id", "42", NULL);
	entry(l, 7, "orchestrator", "timeline.target_succeeded", "deployment/d1", orch,
	      "deployment_id", "d1", "detail", "spiffe://t/agent/a", "event", "target succeeded",
	      "timeline_id", "44", NULL);
	/* Logged out of row order (commit order): the view sorts by row. */
	entry(l, 8, "orchestrator", "timeline.started", "deployment/d1", orch, "deployment_id", "d1",
	      "detail", "r1", "event", "started", "timeline_id", "43", NULL);
	entry(l, 9, "orchestrator", "timeline.succeeded", "deployment/d1", orch, "deployment_id", "d1",
	      "detail", "", "event", "succeeded", "timeline_id", "45", NULL);
	entry(l, 10, "artifact", "artifact.push", "artifact/sha256:22", bob, NULL);
	entry(l, 11, "artifact", "artifact.push", "artifact/sha256:33", bob, NULL);
	struct merkle_range r;
	merkle_range_init(&r);
	for (int i = 0; i < N; i++) {
		const char *keys[AUDITLOG_MAX_DETAILS], *values[AUDITLOG_MAX_DETAILS];
		struct auditlog_entry v;
		uint8_t canon[AUDITLOG_CANON_MAX], eh[32], prev[32] = { 0 };
		size_t len;
		assert_int_equal(auditlog_from_proto(&l->e[i], &v, keys, values), 0);
		assert_int_equal(auditlog_canonical(&v, canon, sizeof canon, &len), 0);
		auditlog_hashes(prev, canon, len, eh, l->leaf[i]);
		merkle_range_append(&r, l->leaf[i], keep, l);
		if (i == 9)
			merkle_range_root(&r, l->root10);
	}
	merkle_range_root(&r, l->root12);
	assert_int_equal(note_signer_generate("test-log", &l->signer, err, sizeof err), 0);
	assert_int_equal(note_signer_generate("other-log", &l->other, err, sizeof err), 0);
	note_signer_verifier(l->signer, &l->v);
	note_signer_verifier(l->other, &l->vother);
	sign(l->signer, 10, l->root10, l->cp);
	sign(l->signer, 12, l->root12, l->newest);
}

static void free_log(struct log *l)
{
	note_signer_free(l->signer);
	note_signer_free(l->other);
}

/* The bundle of d1 (entries 1-9) against the checkpoint at 10, newest 12;
 * with_state: plus a proof from size 10. Returns JSON text (free()). */
static char *bundle_text(struct log *l, int with_state, int *rc_out)
{
	char err[512];
	struct evidence_builder *b = NULL;
	assert_int_equal(evidence_builder_new("d1", &b, err, sizeof err), 0);
	for (int i = 1; i <= 9; i++) {
		struct merkle_plan p;
		uint8_t proof[MERKLE_MAX_PROOF][32];
		size_t n;
		assert_int_equal(merkle_plan_inclusion((uint64_t)i, 10, &p), 0);
		fill(l, &p);
		assert_int_equal(merkle_inclusion((uint64_t)i, 10, &p, proof, &n), 0);
		assert_int_equal(evidence_builder_add(b, &l->e[i], (const uint8_t(*)[32])proof, n, err,
						      sizeof err),
				 0);
	}
	struct merkle_plan p;
	uint8_t cons[MERKLE_MAX_PROOF][32];
	size_t nc;
	assert_int_equal(merkle_plan_consistency(10, 12, &p), 0);
	fill(l, &p);
	assert_int_equal(merkle_consistency(10, 12, &p, cons, &nc), 0);
	struct evidence_extra x = { .checkpoint = l->cp, .newest = l->newest,
				    .consistency = (const uint8_t(*)[32])cons, .nconsistency = nc,
				    .statement = g_statement, .signature = g_signature,
				    .signing_key = g_statement ? "ci-key" : NULL };
	if (with_state) {
		x.state_size = 10;
		x.state_proof = (const uint8_t(*)[32])cons;
		x.nstate_proof = nc;
	}
	json_t *j = NULL;
	int rc = evidence_builder_finish(b, &x, &j, err, sizeof err);
	evidence_builder_free(b);
	*rc_out = rc;
	if (rc != 0) {
		fprintf(stderr, "finish: %s\n", err);
		return NULL;
	}
	char *s = json_dumps(j, JSON_COMPACT);
	json_decref(j);
	return s;
}

static const struct prov_keys *g_keys;

static int verify(struct log *l, const char *text, const struct note_verifier *v,
		  const struct auditstate *st, char *err, size_t errlen, struct evidence_report *r)
{
	(void)l;
	struct evidence_verify_opts o = { .key = v, .state = st, .builder_keys = g_keys };
	err[0] = '\0';
	return evidence_verify(text, strlen(text), &o, r, err, errlen);
}

static void test_round_trip(void **state)
{
	(void)state;
	struct log *l = calloc(1, sizeof *l);
	make_log(l, DIG);
	int rc;
	char *t = bundle_text(l, 0, &rc), err[512];
	assert_int_equal(rc, 0);
	struct evidence_report r;
	assert_int_equal(verify(l, t, &l->v, NULL, err, sizeof err, &r), 0);
	assert_int_equal(r.entries, 9);
	assert_int_equal(r.timeline, 5);
	assert_int_equal(r.approvals, 1);
	assert_int_equal(r.decisions, 1);
	assert_int_equal(r.checkpoint_size, 10);
	assert_int_equal(r.newest_size, 12);
	assert_string_equal(r.deployment_id, "d1");
	/* The timeline is in row order, not log order. */
	json_t *j = json_loads(t, 0, NULL);
	json_t *tl = json_object_get(j, "timeline");
	assert_string_equal(json_string_value(json_object_get(json_array_get(tl, 2), "event")), "started");
	assert_string_equal(json_string_value(json_object_get(json_object_get(j, "deployment"), "last_event")),
			    "succeeded");
	json_decref(j);
	free(t);
	free_log(l);
	free(l);
}

/* Applies edit to the parsed bundle and expects verify to fail naming want. */
static void expect_fail(struct log *l, const char *text, void (*edit)(json_t *), const char *want)
{
	char err[512];
	struct evidence_report r;
	json_t *j = json_loads(text, 0, NULL);
	assert_non_null(j);
	edit(j);
	char *s = json_dumps(j, JSON_COMPACT);
	json_decref(j);
	assert_int_equal(verify(l, s, &l->v, NULL, err, sizeof err, &r), SW_EINVAL);
	if (strstr(err, want) == NULL)
		fail_msg("wanted '%s' in: %s", want, err);
	free(s);
}

static void ed_format(json_t *j) { json_object_set_new(j, "format", json_string("slipway-evidence/v9")); }
static void ed_detail(json_t *j)
{
	json_object_set_new(json_array_get(json_object_get(j, "timeline"), 0), "detail",
			    json_string("edited"));
}
static void ed_drop(json_t *j)
{
	json_array_remove(json_object_get(json_object_get(j, "log"), "entries"), 6);
}
static void ed_entry(json_t *j)
{
	json_t *e = json_array_get(json_object_get(json_object_get(j, "log"), "entries"), 2);
	json_object_set_new(e, "actor", json_string("spiffe://t/user/mallory"));
}
static void ed_extra(json_t *j) { json_object_set_new(j, "note", json_string("trust me")); }
static void ed_id(json_t *j) { json_object_set_new(j, "deployment_id", json_string("d2")); }
static void ed_cons(json_t *j)
{
	json_array_remove(json_object_get(json_object_get(j, "log"), "consistency"), 0);
}

static void test_edits_are_named(void **state)
{
	(void)state;
	struct log *l = calloc(1, sizeof *l);
	make_log(l, DIG);
	int rc;
	char *t = bundle_text(l, 0, &rc), err[512];
	struct evidence_report r;
	expect_fail(l, t, ed_format, "unknown format version");
	expect_fail(l, t, ed_detail, "timeline[0].detail: differs from what the log says");
	expect_fail(l, t, ed_drop, "timeline");
	expect_fail(l, t, ed_entry, "inclusion proof");
	expect_fail(l, t, ed_extra, "unknown field \"note\"");
	expect_fail(l, t, ed_id, "no deploy.request or rollback.request entry for deployment d2");
	expect_fail(l, t, ed_cons, "log.consistency");
	/* Wrong key, and truncation. */
	assert_int_equal(verify(l, t, &l->vother, NULL, err, sizeof err, &r), SW_EINVAL);
	assert_non_null(strstr(err, "does not verify with the given key"));
	char *cut = strndup(t, strlen(t) / 2);
	assert_int_equal(verify(l, cut, &l->v, NULL, err, sizeof err, &r), SW_EINVAL);
	assert_non_null(strstr(err, "invalid JSON"));
	free(cut);
	free(t);
	free_log(l);
	free(l);
}

static void test_approval_for_another_digest(void **state)
{
	(void)state;
	struct log *l = calloc(1, sizeof *l);
	make_log(l, OTHER);
	int rc;
	char *t = bundle_text(l, 0, &rc);
	assert_null(t);
	assert_int_equal(rc, SW_EINVAL);
	free_log(l);
	free(l);
}

static void test_state_file(void **state)
{
	(void)state;
	struct log *l = calloc(1, sizeof *l);
	make_log(l, DIG);
	int rc;
	char *plain = bundle_text(l, 0, &rc), *with = bundle_text(l, 1, &rc), err[512];
	struct evidence_report r;
	struct auditstate st;
	struct auditstate_cp cp;
	memset(&st, 0, sizeof st);
	memset(&cp, 0, sizeof cp);
	st.cps = &cp; /* one checkpoint seen: the newest */
	st.n = st.cap = 1;
	snprintf(st.origin, sizeof st.origin, "test.slipway/log");
	/* Seen at 10: the newest (12) must be proved to extend it. */
	cp.size = 10;
	memcpy(cp.root, l->root10, 32);
	assert_int_equal(verify(l, with, &l->v, &st, err, sizeof err, &r), 0);
	assert_true(r.state_checked);
	assert_int_equal(verify(l, plain, &l->v, &st, err, sizeof err, &r), SW_EINVAL);
	assert_non_null(strstr(err, "export it with --state"));
	/* Another root at 10: forked. */
	cp.root[0] ^= 1;
	assert_int_equal(verify(l, with, &l->v, &st, err, sizeof err, &r), SW_EINVAL);
	assert_non_null(strstr(err, "rolled back or forked"));
	/* Same size as the newest, another root. */
	cp.size = 12;
	assert_int_equal(verify(l, plain, &l->v, &st, err, sizeof err, &r), SW_EINVAL);
	assert_non_null(strstr(err, "forked"));
	/* Seen further than the bundle's newest: rolled back. */
	cp.size = 20;
	assert_int_equal(verify(l, plain, &l->v, &st, err, sizeof err, &r), SW_EINVAL);
	assert_non_null(strstr(err, "rolled back"));
	/* Another log in the state. */
	cp.size = 12;
	memcpy(cp.root, l->root12, 32);
	assert_int_equal(verify(l, plain, &l->v, &st, err, sizeof err, &r), 0);
	snprintf(st.origin, sizeof st.origin, "elsewhere");
	assert_int_equal(verify(l, plain, &l->v, &st, err, sizeof err, &r), SW_EINVAL);
	assert_non_null(strstr(err, "state file knows log"));
	free(plain);
	free(with);
	free_log(l);
	free(l);
}

static void ed_sig(json_t *j)
{
	json_t *p = json_object_get(j, "provenance");
	char *sig = strdup(json_string_value(json_object_get(p, "signature")));
	sig[0] = sig[0] == 'A' ? 'B' : 'A';
	json_object_set_new(p, "signature", json_string(sig));
	free(sig);
}
static void ed_stmt(json_t *j)
{
	json_object_set_new(json_object_get(j, "provenance"), "statement", json_string(""));
}

static void test_signed_provenance(void **state)
{
	(void)state;
	unsigned char pk[32], sk[64], sig[64];
	char stmt[PROV_STATEMENT_MAX], err[512], b64[64], keys[256];
	size_t len;
	struct prov_statement ps = { .app = "web", .version = "1.0.0", .digest = DIG,
				     .repository = "https://git.example/web", .commit = "",
				     .ref = "refs/heads/main", .builder = "ci", .build_id = "7",
				     .build_time_ms = 5 };
	assert_int_equal(prov_encode(&ps, stmt, sizeof stmt, &len, err, sizeof err), 0);
	crypto_sign_keypair(pk, sk);
	crypto_sign_detached(sig, NULL, (const unsigned char *)stmt, len, sk);
	sodium_bin2base64(b64, sizeof b64, pk, 32, sodium_base64_VARIANT_ORIGINAL);
	snprintf(keys, sizeof keys, "key web ci-key %s\n", b64);
	struct prov_keys *k = NULL;
	assert_int_equal(prov_keys_parse(keys, "keys", &k, err, sizeof err), 0);
	g_statement = stmt;
	g_signature = sig;
	struct log *l = calloc(1, sizeof *l);
	make_log(l, DIG);
	int rc;
	char *t = bundle_text(l, 0, &rc);
	assert_non_null(t);
	struct evidence_report r;
	if (verify(l, t, &l->v, NULL, err, sizeof err, &r) != 0)
		fail_msg("%s", err);
	assert_int_equal(r.provenance, 1); /* no keys: bound, not checked */
	g_keys = k;
	assert_int_equal(verify(l, t, &l->v, NULL, err, sizeof err, &r), 0);
	assert_int_equal(r.provenance, 2);
	expect_fail(l, t, ed_sig, "provenance.signature: does not verify");
	expect_fail(l, t, ed_stmt, "the log says the release's signature was verified");
	g_keys = NULL;
	g_statement = NULL;
	g_signature = NULL;
	prov_keys_free(k);
	free(t);
	free_log(l);
	free(l);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round_trip),
		cmocka_unit_test(test_edits_are_named),
		cmocka_unit_test(test_approval_for_another_digest),
		cmocka_unit_test(test_state_file),
		cmocka_unit_test(test_signed_provenance),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
