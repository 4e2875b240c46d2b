/*
 * it_policy_approval.c - deployment approval rules over the real stack:
 * EvaluateDeployment called as the orchestrator (a service principal),
 * Approve/Reject as users. Distinct approvers, group quorum, no
 * self-approval (requester and builder), digest binding, approval expiry,
 * the wait timer, allowed refs, freeze windows in time zones, break-glass
 * with its own quorum and post-review flag, rejection, policy changes,
 * authorization and bad input.
 *
 * Time-based rules are tested by waiting past a deadline the service
 * reported (never by asserting how long something took), and freeze
 * windows are placed around the current time, computed here with the C
 * library's own time zone code as an independent check.
 */
#include "it_policy.h"

#include <libpq-fe.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

static struct rpc_client *orch, *alice, *bob, *sam, *sally, *carol, *dave;
static int seq;

#define D_A "sha256:aaaa000000000000000000000000000000000000000000000000000000000001"
#define D_B "sha256:bbbb000000000000000000000000000000000000000000000000000000000002"

static int group_setup(void **state)
{
	(void)state;
	ph_init("it_policy_approval");
	orch = ph_client("service/orchestrator");
	alice = ph_client("user/alice");
	bob = ph_client("user/bob");
	sam = ph_client("user/sam");
	sally = ph_client("user/sally");
	carol = ph_client("user/carol");
	dave = ph_client("user/dave");
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	ph_apply_admin("{}");
	rpc_client_free(orch);
	rpc_client_free(alice);
	rpc_client_free(bob);
	rpc_client_free(sam);
	rpc_client_free(sally);
	rpc_client_free(carol);
	rpc_client_free(dave);
	return 0;
}

/* The people: alice deploys; bob (sre), sam (security) and sally (both)
 * approve; carol builds releases and may approve; dave may do nothing.
 * approval_policies is the JSON array given. */
static void apply_with(const char *approval_policies)
{
	static const char head[] =
		"{\"groups\": {\"sre\": [\"spiffe://@TD@/user/bob\", \"spiffe://@TD@/user/sally\"],"
		"  \"security\": [\"spiffe://@TD@/user/sam\", \"spiffe://@TD@/user/sally\"]},"
		" \"bindings\": ["
		"  {\"role\": \"deployer\", \"principal\": \"spiffe://@TD@/user/alice\"},"
		"  {\"role\": \"approver\", \"principal\": \"spiffe://@TD@/user/alice\"},"
		"  {\"role\": \"approver\", \"group\": \"sre\"},"
		"  {\"role\": \"approver\", \"group\": \"security\"},"
		"  {\"role\": \"builder\", \"principal\": \"spiffe://@TD@/user/carol\"},"
		"  {\"role\": \"approver\", \"principal\": \"spiffe://@TD@/user/carol\"}],"
		" \"approval_policies\": ";
	size_t n = strlen(head) + strlen(approval_policies) + 2;
	char *doc = malloc(n);
	snprintf(doc, n, "%s%s}", head, approval_policies);
	ph_apply_admin(doc);
	free(doc);
}

static const char *new_dep(void)
{
	static char b[8][64];
	char *o = b[seq % 8];
	snprintf(o, 64, "dep-%d-%d", (int)getpid(), ++seq);
	return o;
}

struct facts {
	const char *dep, *app, *env, *digest, *requester, *builder, *ref, *reason;
	const char *pusher;  /* the authenticated pusher ("" = none) */
	int bg;
	int unsigned_rel;    /* the provenance statement did not verify: claims only */
};

/* Evaluates as the orchestrator; returns the code and *out. */
static int evaluate(struct rpc_client *c, const struct facts *f,
		    Slipway__V1__EvaluateDeploymentResponse **out, char *err, size_t errlen)
{
	Slipway__V1__DeploymentFacts req = SLIPWAY__V1__DEPLOYMENT_FACTS__INIT;
	Slipway__V1__Provenance prov = SLIPWAY__V1__PROVENANCE__INIT;
	req.deployment_id = (char *)f->dep;
	req.app = (char *)(f->app ? f->app : "web");
	req.environment = (char *)(f->env ? f->env : "prod");
	req.version = "1.0.0";
	req.digest = (char *)(f->digest ? f->digest : D_A);
	req.requester = (char *)(f->requester ? f->requester : ph_id("user/alice"));
	prov.builder = (char *)(f->builder ? f->builder : "ci-bot");
	prov.ref = (char *)(f->ref ? f->ref : "refs/heads/main");
	/* As the orchestrator passes it from the artifact service: a signed,
	 * verified statement unless the case says otherwise. */
	prov.verified = !f->unsigned_rel;
	prov.pusher = (char *)(f->pusher ? f->pusher : "");
	req.provenance = &prov;
	req.break_glass = f->bg;
	req.break_glass_reason = (char *)(f->reason ? f->reason : "");
	ProtobufCMessage *m = NULL;
	int rc = rpc_call(c, &slipway__v1__policy__descriptor, "EvaluateDeployment", &req.base, &m,
			  NULL, err, errlen);
	*out = (void *)m;
	return rc;
}

/* Evaluates and returns the verdict; reasons joined into why. */
static int verdict(const struct facts *f, char *why, size_t len,
		   Slipway__V1__EvaluateDeploymentResponse **keep)
{
	Slipway__V1__EvaluateDeploymentResponse *r = NULL;
	char err[512];
	int rc = evaluate(orch, f, &r, err, sizeof err);
	if (rc != 0)
		fail_msg("EvaluateDeployment: %s", err);
	int v = r->verdict;
	size_t off = 0;
	why[0] = '\0';
	for (size_t i = 0; i < r->n_reasons && off + 1 < len; i++)
		off += (size_t)snprintf(why + off, len - off, "%s%s", i ? " | " : "", r->reasons[i]);
	assert_int_equal(strlen(r->decision_id), 32);
	if (keep != NULL)
		*keep = r;
	else
		protobuf_c_message_free_unpacked(&r->base, NULL);
	return v;
}

static int approve_as(struct rpc_client *c, const char *dep, const char *digest,
		      const char *comment, int approve, Slipway__V1__Approval **out, char *err,
		      size_t errlen)
{
	ProtobufCMessage *m = NULL;
	int rc;
	if (approve) {
		Slipway__V1__ApproveRequest req = SLIPWAY__V1__APPROVE_REQUEST__INIT;
		req.deployment_id = (char *)dep;
		req.digest = (char *)(digest ? digest : "");
		req.comment = (char *)(comment ? comment : "");
		rc = rpc_call(c, &slipway__v1__policy__descriptor, "Approve", &req.base, &m, NULL, err,
			      errlen);
	} else {
		Slipway__V1__RejectRequest req = SLIPWAY__V1__REJECT_REQUEST__INIT;
		req.deployment_id = (char *)dep;
		req.digest = (char *)(digest ? digest : "");
		req.comment = (char *)(comment ? comment : "");
		rc = rpc_call(c, &slipway__v1__policy__descriptor, "Reject", &req.base, &m, NULL, err,
			      errlen);
	}
	if (out != NULL)
		*out = (void *)m;
	else if (m != NULL)
		protobuf_c_message_free_unpacked(m, NULL);
	return rc;
}

static void ok_approve(struct rpc_client *c, const char *dep)
{
	char err[512];
	int rc = approve_as(c, dep, NULL, "looks good", 1, NULL, err, sizeof err);
	if (rc != 0)
		fail_msg("approve %s: %s", dep, err);
}

#define ALLOWED SLIPWAY__V1__VERDICT__VERDICT_ALLOWED
#define NEEDS SLIPWAY__V1__VERDICT__VERDICT_NEEDS_APPROVAL
#define DENIED SLIPWAY__V1__VERDICT__VERDICT_DENIED

static void sleep_until_ms(int64_t unix_ms)
{
	for (;;) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		int64_t now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
		if (now > unix_ms + 50)
			return;
		h_sleep_ms((int)(unix_ms + 60 - now));
	}
}

/* ------------------------------------------------------------------ */

static void test_rbac_and_no_policy(void **state)
{
	(void)state;
	char why[2048];
	apply_with("[{\"name\": \"prod\", \"environments\": [\"prod\"], \"required\": 1}]");
	/* No approval policy for dev: allowed at once. */
	struct facts f = { .dep = new_dep(), .env = "dev" };
	assert_int_equal(verdict(&f, why, sizeof why, NULL), ALLOWED);
	assert_non_null(strstr(why, "no approval policy applies"));
	/* A requester who may not deploy is denied whatever the approvals. */
	struct facts g = { .dep = new_dep(), .env = "dev", .requester = ph_id("user/dave") };
	assert_int_equal(verdict(&g, why, sizeof why, NULL), DENIED);
	assert_non_null(strstr(why, "may not deploy"));
	/* Only services (evaluate on deployment) may evaluate. */
	Slipway__V1__EvaluateDeploymentResponse *r = NULL;
	char err[512];
	assert_int_equal(evaluate(alice, &f, &r, err, sizeof err), SW_EPERM);
}

static void test_distinct_approvers(void **state)
{
	(void)state;
	char why[2048], err[512];
	apply_with("[{\"name\": \"prod\", \"environments\": [\"prod\"], \"required\": 2}]");
	struct facts f = { .dep = new_dep() };
	Slipway__V1__EvaluateDeploymentResponse *r = NULL;
	assert_int_equal(verdict(&f, why, sizeof why, &r), NEEDS);
	assert_int_equal(r->n_missing, 1);
	assert_string_equal(r->missing[0]->group, "");
	assert_int_equal(r->missing[0]->required, 2);
	assert_int_equal(r->missing[0]->have, 0);
	/* Asking again with nothing changed is the same decision, not a new
	 * one (the orchestrator asks every second while it waits). */
	char first[64];
	snprintf(first, sizeof first, "%s", r->decision_id);
	protobuf_c_message_free_unpacked(&r->base, NULL);
	assert_int_equal(verdict(&f, why, sizeof why, &r), NEEDS);
	assert_string_equal(r->decision_id, first);
	protobuf_c_message_free_unpacked(&r->base, NULL);
	ok_approve(bob, f.dep);
	ok_approve(bob, f.dep); /* the same person twice counts once */
	assert_int_equal(verdict(&f, why, sizeof why, &r), NEEDS);
	assert_int_equal(r->missing[0]->have, 1);
	assert_string_not_equal(r->decision_id, first); /* an approval is news */
	protobuf_c_message_free_unpacked(&r->base, NULL);
	/* dave may not approve at all. */
	assert_int_equal(approve_as(dave, f.dep, NULL, "", 1, NULL, err, sizeof err), SW_EPERM);
	ok_approve(sam, f.dep);
	assert_int_equal(verdict(&f, why, sizeof why, NULL), ALLOWED);
	assert_non_null(strstr(why, "2 distinct approval(s)"));
	/* The approvals are listed (approver's read on deployment). */
	Slipway__V1__ListApprovalsRequest lr = SLIPWAY__V1__LIST_APPROVALS_REQUEST__INIT;
	lr.deployment_id = (char *)f.dep;
	ProtobufCMessage *m = NULL;
	assert_int_equal(rpc_call(bob, &slipway__v1__policy__descriptor, "ListApprovals", &lr.base,
				  &m, NULL, err, sizeof err),
			 0);
	Slipway__V1__ListApprovalsResponse *l = (void *)m;
	assert_int_equal(l->n_approvals, 3);
	assert_string_equal(l->approvals[0]->approver, ph_id("user/bob"));
	assert_string_equal(l->approvals[0]->digest, D_A);
	assert_string_equal(l->approvals[0]->comment, "looks good");
	assert_int_equal(l->approvals[0]->n_groups, 1);
	assert_string_equal(l->approvals[0]->groups[0], "sre");
	assert_true(l->approvals[0]->approve);
	assert_true(l->approvals[0]->created_unix_ms > 0);
	assert_true(l->approvals[0]->revision > 0);
	protobuf_c_message_free_unpacked(m, NULL);
	assert_int_equal(rpc_call(dave, &slipway__v1__policy__descriptor, "ListApprovals", &lr.base,
				  &m, NULL, err, sizeof err),
			 SW_EPERM);
	lr.deployment_id = "no-such-deployment";
	assert_int_equal(rpc_call(bob, &slipway__v1__policy__descriptor, "ListApprovals", &lr.base,
				  &m, NULL, err, sizeof err),
			 SW_ENOTFOUND);
}

static void test_group_quorum_needs_distinct_people(void **state)
{
	(void)state;
	char why[2048];
	apply_with("[{\"name\": \"prod\", \"environments\": [\"prod\"],"
		   "  \"groups\": {\"sre\": 1, \"security\": 1}}]");
	struct facts f = { .dep = new_dep() };
	Slipway__V1__EvaluateDeploymentResponse *r = NULL;
	assert_int_equal(verdict(&f, why, sizeof why, NULL), NEEDS);
	/* sally is in both groups: alone she fills one of them. */
	ok_approve(sally, f.dep);
	assert_int_equal(verdict(&f, why, sizeof why, &r), NEEDS);
	size_t missing_groups = 0;
	for (size_t i = 0; i < r->n_missing; i++)
		missing_groups += r->missing[i]->group[0] != '\0';
	assert_int_equal(missing_groups, 1);
	protobuf_c_message_free_unpacked(&r->base, NULL);
	/* alice approves but is the requester: no help. carol (not in a
	 * group) counts in the total but fills no group. */
	ok_approve(carol, f.dep);
	assert_int_equal(verdict(&f, why, sizeof why, NULL), NEEDS);
	/* bob (sre) arrives: sally moves to security, and the quorum holds
	 * whichever group sally was first counted for. */
	ok_approve(bob, f.dep);
	assert_int_equal(verdict(&f, why, sizeof why, NULL), ALLOWED);

	/* The other order: sam (security) then sally. */
	struct facts g = { .dep = new_dep() };
	assert_int_equal(verdict(&g, why, sizeof why, NULL), NEEDS);
	ok_approve(sam, g.dep);
	assert_int_equal(verdict(&g, why, sizeof why, NULL), NEEDS);
	ok_approve(sally, g.dep);
	assert_int_equal(verdict(&g, why, sizeof why, NULL), ALLOWED);

	/* approver_groups: only members count. */
	apply_with("[{\"name\": \"prod\", \"environments\": [\"prod\"], \"required\": 1,"
		   "  \"approver_groups\": [\"security\"]}]");
	struct facts h = { .dep = new_dep() };
	assert_int_equal(verdict(&h, why, sizeof why, NULL), NEEDS);
	ok_approve(bob, h.dep);
	assert_int_equal(verdict(&h, why, sizeof why, NULL), NEEDS);
	assert_non_null(strstr(why, "not in the approver groups"));
	ok_approve(sam, h.dep);
	assert_int_equal(verdict(&h, why, sizeof why, NULL), ALLOWED);
}

static void test_no_self_approval(void **state)
{
	(void)state;
	char why[2048], err[512];
	apply_with("[{\"name\": \"prod\", \"environments\": [\"prod\"], \"required\": 1}]");
	/* The requester may not approve. */
	struct facts f = { .dep = new_dep(), .builder = "carol" };
	assert_int_equal(verdict(&f, why, sizeof why, NULL), NEEDS);
	assert_int_equal(approve_as(alice, f.dep, NULL, "mine", 1, NULL, err, sizeof err), SW_EPERM);
	assert_non_null(strstr(err, "self-approval"));
	/* Nor the release's builder (named by user name here). */
	assert_int_equal(approve_as(carol, f.dep, NULL, "built it", 1, NULL, err, sizeof err),
			 SW_EPERM);
	assert_non_null(strstr(err, "built the release"));
	assert_int_equal(verdict(&f, why, sizeof why, NULL), NEEDS);
	/* ... or by full SPIFFE ID. */
	struct facts g = { .dep = new_dep(), .builder = ph_id("user/bob") };
	assert_int_equal(verdict(&g, why, sizeof why, NULL), NEEDS);
	assert_int_equal(approve_as(bob, g.dep, NULL, "", 1, NULL, err, sizeof err), SW_EPERM);
	ok_approve(carol, g.dep);
	assert_int_equal(verdict(&g, why, sizeof why, NULL), ALLOWED);
	/* The builder an unsigned release claims is not a fact (carol may
	 * approve), but its authenticated pusher may not approve. */
	struct facts u = { .dep = new_dep(), .builder = "carol", .pusher = ph_id("user/bob"),
			   .unsigned_rel = 1 };
	assert_int_equal(verdict(&u, why, sizeof why, NULL), NEEDS);
	assert_int_equal(approve_as(bob, u.dep, NULL, "", 1, NULL, err, sizeof err), SW_EPERM);
	assert_non_null(strstr(err, "built the release"));
	ok_approve(carol, u.dep);
	assert_int_equal(verdict(&u, why, sizeof why, NULL), ALLOWED);
	/* The refusals are recorded decisions. */
	PGconn *pg = PQconnectdb(h_env("SLIPWAY_PGURL"));
	const char *v[1] = { f.dep };
	PGresult *r = PQexecParams(pg,
				   "SELECT count(*) FROM policy.decisions WHERE name = $1"
				   " AND action = 'approve' AND NOT allowed",
				   1, NULL, v, NULL, NULL, 0);
	assert_string_equal(PQgetvalue(r, 0, 0), "2");
	PQclear(r);
	PQfinish(pg);
}

static void test_approvals_bound_to_digest(void **state)
{
	(void)state;
	char why[2048], err[512];
	apply_with("[{\"name\": \"prod\", \"environments\": [\"prod\"], \"required\": 2}]");
	struct facts f = { .dep = new_dep(), .digest = D_A };
	assert_int_equal(verdict(&f, why, sizeof why, NULL), NEEDS);
	Slipway__V1__Approval *a = NULL;
	assert_int_equal(approve_as(bob, f.dep, D_A, "saw A", 1, &a, err, sizeof err), 0);
	assert_string_equal(a->digest, D_A);
	protobuf_c_message_free_unpacked(&a->base, NULL);
	ok_approve(sam, f.dep);
	assert_int_equal(verdict(&f, why, sizeof why, NULL), ALLOWED);
	/* The deployment now carries another artifact: the approvals are void. */
	f.digest = D_B;
	assert_int_equal(verdict(&f, why, sizeof why, NULL), NEEDS);
	assert_non_null(strstr(why, "2 approval(s) for another digest do not count"));
	/* An approval of what the approver saw before is refused. */
	assert_int_equal(approve_as(bob, f.dep, D_A, "still A", 1, NULL, err, sizeof err),
			 SW_EPRECOND);
	assert_int_equal(approve_as(bob, f.dep, D_B, "B now", 1, NULL, err, sizeof err), 0);
	ok_approve(sally, f.dep);
	assert_int_equal(verdict(&f, why, sizeof why, NULL), ALLOWED);
	/* The app, environment and requester of a deployment are fixed. */
	Slipway__V1__EvaluateDeploymentResponse *r = NULL;
	f.env = "staging";
	assert_int_equal(evaluate(orch, &f, &r, err, sizeof err), SW_EINVAL);
}

static void test_approval_expiry(void **state)
{
	(void)state;
	char why[2048], err[512];
	apply_with("[{\"name\": \"prod\", \"environments\": [\"prod\"], \"required\": 1,"
		   "  \"approval_ttl\": \"2s\"}]");
	struct facts f = { .dep = new_dep() };
	assert_int_equal(verdict(&f, why, sizeof why, NULL), NEEDS);
	Slipway__V1__Approval *a = NULL;
	assert_int_equal(approve_as(bob, f.dep, NULL, "ok", 1, &a, err, sizeof err), 0);
	assert_int_equal(a->expires_unix_ms, a->created_unix_ms + 2000);
	int64_t exp = a->expires_unix_ms;
	protobuf_c_message_free_unpacked(&a->base, NULL);
	sleep_until_ms(exp);
	assert_int_equal(verdict(&f, why, sizeof why, NULL), NEEDS);
	assert_non_null(strstr(why, "1 approval(s) expired"));
	/* A fresh approval counts while it has not expired. */
	assert_int_equal(approve_as(sam, f.dep, NULL, "ok", 1, &a, err, sizeof err), 0);
	exp = a->expires_unix_ms;
	protobuf_c_message_free_unpacked(&a->base, NULL);
	int v = verdict(&f, why, sizeof why, NULL);
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	if ((int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 < exp)
		assert_int_equal(v, ALLOWED);
}

static void test_wait_timer(void **state)
{
	(void)state;
	char why[2048];
	apply_with("[{\"name\": \"prod\", \"environments\": [\"prod\"], \"required\": 1,"
		   "  \"wait\": \"2s\"}]");
	struct facts f = { .dep = new_dep() };
	Slipway__V1__EvaluateDeploymentResponse *r = NULL;
	assert_int_equal(verdict(&f, why, sizeof why, &r), NEEDS);
	protobuf_c_message_free_unpacked(&r->base, NULL);
	ok_approve(bob, f.dep);
	/* Approved, but the wait timer (from the first request) may still run. */
	int v = verdict(&f, why, sizeof why, &r);
	if (v == NEEDS) {
		assert_non_null(strstr(why, "wait timer"));
		assert_int_equal(r->n_missing, 0);
		assert_true(r->not_before_unix_ms > 0);
		sleep_until_ms(r->not_before_unix_ms);
	}
	protobuf_c_message_free_unpacked(&r->base, NULL);
	assert_int_equal(verdict(&f, why, sizeof why, NULL), ALLOWED);

	/* A long timer reports when it ends; a new digest restarts it. */
	apply_with("[{\"name\": \"prod\", \"environments\": [\"prod\"], \"required\": 0,"
		   "  \"wait\": \"1h\"}]");
	struct facts g = { .dep = new_dep() };
	assert_int_equal(verdict(&g, why, sizeof why, &r), NEEDS);
	int64_t nb = r->not_before_unix_ms;
	assert_true(nb > 0);
	protobuf_c_message_free_unpacked(&r->base, NULL);
	assert_int_equal(verdict(&g, why, sizeof why, &r), NEEDS);
	assert_int_equal(r->not_before_unix_ms, nb); /* counted from the request */
	protobuf_c_message_free_unpacked(&r->base, NULL);
	g.digest = D_B;
	assert_int_equal(verdict(&g, why, sizeof why, &r), NEEDS);
	assert_true(r->not_before_unix_ms >= nb);
	protobuf_c_message_free_unpacked(&r->base, NULL);
}

static void test_allowed_refs(void **state)
{
	(void)state;
	char why[2048];
	apply_with("[{\"name\": \"prod\", \"environments\": [\"prod\"], \"required\": 0,"
		   "  \"allowed_refs\": [\"refs/heads/main\", \"refs/tags/v*\"]}]");
	struct facts f = { .dep = new_dep(), .ref = "refs/heads/feature-x" };
	assert_int_equal(verdict(&f, why, sizeof why, NULL), DENIED);
	assert_non_null(strstr(why, "refs/heads/feature-x"));
	struct facts g = { .dep = new_dep(), .ref = "refs/tags/v1.2.3" };
	assert_int_equal(verdict(&g, why, sizeof why, NULL), ALLOWED);
	struct facts h = { .dep = new_dep(), .ref = "refs/heads/main" };
	assert_int_equal(verdict(&h, why, sizeof why, NULL), ALLOWED);
	struct facts i = { .dep = new_dep(), .ref = "" };
	assert_int_equal(verdict(&i, why, sizeof why, NULL), DENIED);
	/* An unsigned release has no ref for the policy, whatever it claims. */
	struct facts j = { .dep = new_dep(), .ref = "refs/heads/main", .unsigned_rel = 1 };
	assert_int_equal(verdict(&j, why, sizeof why, NULL), DENIED);
	assert_non_null(strstr(why, "unsigned"));
}

/* The local wall clock of zone tz at now + delta_s, via the C library. */
static struct tm local_in(const char *tz, int delta_s)
{
	char *old = getenv("TZ") ? strdup(getenv("TZ")) : NULL;
	setenv("TZ", tz, 1);
	tzset();
	time_t t = time(NULL) + delta_s;
	struct tm tm;
	localtime_r(&t, &tm);
	if (old) {
		setenv("TZ", old, 1);
		free(old);
	} else {
		unsetenv("TZ");
	}
	tzset();
	return tm;
}

static void weekly_point(const struct tm *tm, char *out, size_t len)
{
	static const char *const d[] = { "sun", "mon", "tue", "wed", "thu", "fri", "sat" };
	snprintf(out, len, "%s %02d:%02d", d[tm->tm_wday], tm->tm_hour, tm->tm_min);
}

static void date_point(const struct tm *tm, char *out, size_t len)
{
	strftime(out, len, "%Y-%m-%dT%H:%M", tm);
}

/* An approval policy whose only freeze window is [now-1h, now+1h) in zone
 * `wall`, declared to be in zone `declared`. */
static void apply_freeze(const char *wall, const char *declared, int weekly, const char *bg)
{
	char s[64], e[64], pol[2048];
	struct tm a = local_in(wall, -3600), b = local_in(wall, 3600);
	if (weekly) {
		weekly_point(&a, s, sizeof s);
		weekly_point(&b, e, sizeof e);
	} else {
		date_point(&a, s, sizeof s);
		date_point(&b, e, sizeof e);
	}
	snprintf(pol, sizeof pol,
		 "[{\"name\": \"prod\", \"environments\": [\"prod\"], \"required\": 1,"
		 "  \"freeze\": {\"timezone\": \"%s\", \"%s\": [{\"start\": \"%s\", \"end\": \"%s\"}]}"
		 "  %s}]",
		 declared, weekly ? "weekly" : "dates", s, e, bg);
	apply_with(pol);
}

static void test_freeze_windows_in_time_zones(void **state)
{
	(void)state;
	char why[2048];
	/* A weekly window around now in New York. */
	apply_freeze("America/New_York", "America/New_York", 1, "");
	struct facts f = { .dep = new_dep() };
	assert_int_equal(verdict(&f, why, sizeof why, NULL), DENIED);
	assert_non_null(strstr(why, "frozen"));
	assert_non_null(strstr(why, "America/New_York"));
	/* The same wall-clock window in Kolkata (9.5-10.5 h away) is not now. */
	apply_freeze("America/New_York", "Asia/Kolkata", 1, "");
	assert_int_equal(verdict(&f, why, sizeof why, NULL), NEEDS);
	/* One-off dates, with a half-hour offset zone. */
	apply_freeze("Asia/Kolkata", "Asia/Kolkata", 0, "");
	assert_int_equal(verdict(&f, why, sizeof why, NULL), DENIED);
	assert_non_null(strstr(why, "Asia/Kolkata"));
	apply_freeze("Asia/Kolkata", "UTC", 0, "");
	assert_int_equal(verdict(&f, why, sizeof why, NULL), NEEDS);
	/* Unknown zones are rejected with their path. */
	char err[1024];
	struct rpc_client *admin = h_client(h_env("SLIPWAY_POLICY_ADDR"), ph_ca,
					    h_env("SLIPWAY_CERT"), h_env("SLIPWAY_KEY"));
	assert_int_equal(ph_apply(admin,
				  "{\"approval_policies\": [{\"name\": \"p\", \"environments\": [\"prod\"],"
				  " \"freeze\": {\"timezone\": \"Mars/Olympus\"}}]}",
				  0, 0, NULL, NULL, err, sizeof err),
			 SW_EINVAL);
	assert_non_null(strstr(err, "$.approval_policies[0].freeze.timezone"));
	assert_int_equal(ph_apply(admin,
				  "{\"approval_policies\": [{\"name\": \"p\", \"environments\": [\"prod\"],"
				  " \"freeze\": {\"weekly\": [{\"start\": \"fri 18:00\", \"end\": \"someday\"}]}}]}",
				  0, 0, NULL, NULL, err, sizeof err),
			 SW_EINVAL);
	assert_non_null(strstr(err, "$.approval_policies[0].freeze.weekly[0].end"));
	rpc_client_free(admin);
}

static void test_break_glass(void **state)
{
	(void)state;
	char why[2048], err[512];
	/* Frozen, no break-glass allowed. */
	apply_freeze("UTC", "UTC", 0, "");
	struct facts f = { .dep = new_dep(), .bg = 1, .reason = "INC-42 checkout down" };
	assert_int_equal(verdict(&f, why, sizeof why, NULL), DENIED);
	assert_non_null(strstr(why, "does not allow break-glass"));
	/* A reason is required. */
	struct facts nr = { .dep = new_dep(), .bg = 1 };
	Slipway__V1__EvaluateDeploymentResponse *r = NULL;
	assert_int_equal(evaluate(orch, &nr, &r, err, sizeof err), SW_EINVAL);
	/* Break-glass allowed with its own quorum: one sre. */
	apply_freeze("UTC", "UTC", 0,
		     ", \"break_glass\": {\"required\": 1, \"groups\": {\"sre\": 1}}");
	struct facts g = { .dep = new_dep() };
	assert_int_equal(verdict(&g, why, sizeof why, NULL), DENIED); /* not break-glass */
	ok_approve(sam, g.dep); /* a normal approval, before break-glass */
	g.bg = 1;
	g.reason = "INC-43 payments down";
	assert_int_equal(verdict(&g, why, sizeof why, &r), NEEDS);
	assert_non_null(strstr(why, "break-glass quorum"));
	assert_non_null(strstr(why, "were not given for break-glass"));
	assert_int_equal(r->n_missing, 2); /* one from sre, one in total */
	assert_string_equal(r->missing[0]->group, "sre");
	assert_int_equal(r->missing[0]->required, 1);
	assert_int_equal(r->missing[0]->have, 0);
	assert_string_equal(r->missing[1]->group, "");
	protobuf_c_message_free_unpacked(&r->base, NULL);
	Slipway__V1__Approval *a = NULL;
	assert_int_equal(approve_as(bob, g.dep, NULL, "go", 1, &a, err, sizeof err), 0);
	assert_true(a->break_glass);
	protobuf_c_message_free_unpacked(&a->base, NULL);
	assert_int_equal(verdict(&g, why, sizeof why, NULL), ALLOWED);
	assert_non_null(strstr(why, "post-review"));
	assert_int_equal(verdict(&g, why, sizeof why, NULL), ALLOWED);
	/* Flagged for post-review once per digest, in the audit trail. */
	PGconn *pg = PQconnectdb(h_env("SLIPWAY_PGURL"));
	const char *v[1] = { g.dep };
	PGresult *res = PQexecParams(pg,
				     "SELECT post_review_digest FROM policy.approval_requests"
				     " WHERE deployment_id = $1",
				     1, NULL, v, NULL, NULL, 0);
	assert_string_equal(PQgetvalue(res, 0, 0), D_A);
	PQclear(res);
	res = PQexecParams(pg,
			   "SELECT count(*) FROM policy.decisions WHERE name = $1 AND allowed",
			   1, NULL, v, NULL, NULL, 0);
	/* Allowed twice with nothing new in between: one recorded decision. */
	assert_string_equal(PQgetvalue(res, 0, 0), "1");
	PQclear(res);
	PQfinish(pg);
	Slipway__V1__AuditEntry *e = ph_audit_find("deployment.break_glass", NULL, NULL, "deployment_id",
						   g.dep);
	if (getenv("SLIPWAY_AUDIT_ADDR") != NULL) {
		assert_non_null(e);
		assert_string_equal(ph_detail(e, "post_review"), "required");
		assert_string_equal(ph_detail(e, "reason"), "INC-43 payments down");
		assert_string_equal(ph_detail(e, "digest"), D_A);
		assert_string_equal(e->event->actor, ph_id("user/alice"));
		slipway__v1__audit_entry__free_unpacked(e, NULL);
		/* The approval itself, and the evaluation that allowed it. */
		e = ph_audit_find("deployment.approve", ph_id("user/bob"), NULL, "deployment_id", g.dep);
		assert_non_null(e);
		assert_string_equal(e->event->actor, ph_id("user/bob"));
		assert_string_equal(ph_detail(e, "break_glass"), "true");
		slipway__v1__audit_entry__free_unpacked(e, NULL);
		e = ph_audit_find("deployment.evaluate", NULL, NULL, "post_review", "required");
		assert_non_null(e);
		assert_string_equal(ph_detail(e, "verdict"), "ALLOWED");
		slipway__v1__audit_entry__free_unpacked(e, NULL);
	}
}

static void test_rejection_ends_request(void **state)
{
	(void)state;
	char why[2048], err[512];
	apply_with("[{\"name\": \"prod\", \"environments\": [\"prod\"], \"required\": 1}]");
	struct facts f = { .dep = new_dep() };
	assert_int_equal(verdict(&f, why, sizeof why, NULL), NEEDS);
	assert_int_equal(approve_as(sam, f.dep, NULL, "", 0, NULL, err, sizeof err), SW_EINVAL);
	Slipway__V1__Approval *a = NULL;
	assert_int_equal(approve_as(sam, f.dep, D_A, "not during the sale", 0, &a, err, sizeof err),
			 0);
	assert_false(a->approve);
	assert_string_equal(a->comment, "not during the sale");
	protobuf_c_message_free_unpacked(&a->base, NULL);
	assert_int_equal(verdict(&f, why, sizeof why, NULL), DENIED);
	assert_non_null(strstr(why, "rejected by"));
	assert_int_equal(approve_as(bob, f.dep, NULL, "", 1, NULL, err, sizeof err), SW_EPRECOND);
	assert_int_equal(approve_as(bob, f.dep, NULL, "again", 0, NULL, err, sizeof err),
			 SW_EPRECOND);
	Slipway__V1__AuditEntry *e = ph_audit_find("deployment.reject", NULL, NULL, "deployment_id", f.dep);
	if (getenv("SLIPWAY_AUDIT_ADDR") != NULL) {
		assert_non_null(e);
		assert_string_equal(ph_detail(e, "comment"), "not during the sale");
		assert_string_equal(e->event->actor, ph_id("user/sam"));
		slipway__v1__audit_entry__free_unpacked(e, NULL);
	}
	/* Unknown deployments cannot be approved. */
	assert_int_equal(approve_as(bob, "no-such-dep", NULL, "", 1, NULL, err, sizeof err),
			 SW_ENOTFOUND);
}

static void test_policy_change_voids_approvals(void **state)
{
	(void)state;
	char why[2048];
	const char *pol = "[{\"name\": \"prod\", \"environments\": [\"prod\"], \"required\": 1}]";
	apply_with(pol);
	struct facts f = { .dep = new_dep() };
	assert_int_equal(verdict(&f, why, sizeof why, NULL), NEEDS);
	ok_approve(bob, f.dep);
	assert_int_equal(verdict(&f, why, sizeof why, NULL), ALLOWED);
	/* Another part of the document changes: the approval still counts. */
	ph_apply_admin("{\"groups\": {\"sre\": [\"spiffe://@TD@/user/bob\", \"spiffe://@TD@/user/sally\"],"
		       "  \"security\": [\"spiffe://@TD@/user/sam\", \"spiffe://@TD@/user/sally\"]},"
		       " \"description\": \"unrelated change\","
		       " \"bindings\": ["
		       "  {\"role\": \"deployer\", \"principal\": \"spiffe://@TD@/user/alice\"},"
		       "  {\"role\": \"approver\", \"group\": \"sre\"}],"
		       " \"approval_policies\": [{\"name\": \"prod\", \"environments\": [\"prod\"],"
		       "  \"required\": 1}]}");
	assert_int_equal(verdict(&f, why, sizeof why, NULL), ALLOWED);
	/* The approval policy itself changes: earlier approvals are void. */
	apply_with("[{\"name\": \"prod\", \"environments\": [\"prod\"], \"required\": 1,"
		   "  \"approval_ttl\": \"1h\"}]");
	assert_int_equal(verdict(&f, why, sizeof why, NULL), NEEDS);
	assert_non_null(strstr(why, "different approval policy"));
	/* An approver who lost the right no longer counts. */
	apply_with(pol);
	assert_int_equal(verdict(&f, why, sizeof why, NULL), ALLOWED);
	ph_apply_admin("{\"bindings\": [{\"role\": \"deployer\", \"principal\": \"spiffe://@TD@/user/alice\"}],"
		       " \"approval_policies\": [{\"name\": \"prod\", \"environments\": [\"prod\"],"
		       "  \"required\": 1}]}");
	assert_int_equal(verdict(&f, why, sizeof why, NULL), NEEDS);
	assert_non_null(strstr(why, "no longer allowed to approve"));
}

/* Runs the CLI as user `who` (its certificate from ph_client); returns the
 * exit status and the output in out. */
static int cli(const char *who, const char *args, char *out, size_t len)
{
	char cmd[2048], log[700];
	snprintf(log, sizeof log, "%s/cli.out", ph_dir);
	snprintf(cmd, sizeof cmd,
		 "build/bin/slipway --cert %s/user_%s.crt --key %s/user_%s.key %s >%s 2>&1", ph_dir,
		 who, ph_dir, who, args, log);
	int st = system(cmd);
	char *o = h_read_file(log);
	snprintf(out, len, "%s", o ? o : "");
	free(o);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_cli_approve_reject(void **state)
{
	(void)state;
	char why[2048], out[4096], args[512];
	apply_with("[{\"name\": \"prod\", \"environments\": [\"prod\"], \"required\": 2}]");
	struct facts f = { .dep = new_dep() };
	assert_int_equal(verdict(&f, why, sizeof why, NULL), NEEDS);
	snprintf(args, sizeof args, "approve %s --comment 'ship it' --digest %s", f.dep, D_A);
	assert_int_equal(cli("bob", args, out, sizeof out), 0);
	assert_non_null(strstr(out, "approved"));
	snprintf(args, sizeof args, "approve %s", f.dep);
	assert_int_equal(cli("alice", args, out, sizeof out), 3); /* the requester: denied */
	assert_non_null(strstr(out, "self-approval"));
	snprintf(args, sizeof args, "-o json policy approvals %s", f.dep);
	assert_int_equal(cli("bob", args, out, sizeof out), 0);
	assert_non_null(strstr(out, "\"comment\": \"ship it\""));
	snprintf(args, sizeof args, "reject %s", f.dep);
	assert_int_equal(cli("sam", args, out, sizeof out), 2); /* needs a comment */
	snprintf(args, sizeof args, "-o json reject %s --comment 'not today'", f.dep);
	assert_int_equal(cli("sam", args, out, sizeof out), 0);
	assert_non_null(strstr(out, "\"approve\": false"));
	assert_int_equal(verdict(&f, why, sizeof why, NULL), DENIED);
	snprintf(args, sizeof args, "approve %s", f.dep);
	assert_int_equal(cli("sally", args, out, sizeof out), 1);
	assert_non_null(strstr(out, "rejected"));
}

static void test_bad_facts(void **state)
{
	(void)state;
	char err[512];
	apply_with("[]");
	Slipway__V1__EvaluateDeploymentResponse *r = NULL;
	struct facts bad[] = {
		{ .dep = "" },
		{ .dep = "has space" },
		{ .dep = new_dep(), .digest = "sha256:XYZ" },
		{ .dep = new_dep(), .app = "web/../x" },
		{ .dep = new_dep(), .env = "" },
		{ .dep = new_dep(), .requester = "alice" },
		{ .dep = new_dep(), .requester = "spiffe://other/user/alice" },
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		if (evaluate(orch, &bad[i], &r, err, sizeof err) != SW_EINVAL)
			fail_msg("facts %zu accepted", i);
	/* Nothing was recorded for them. */
	PGconn *pg = PQconnectdb(h_env("SLIPWAY_PGURL"));
	PGresult *res = PQexec(pg, "SELECT count(*) FROM policy.approval_requests"
				   " WHERE deployment_id = '' OR deployment_id LIKE '% %'");
	assert_string_equal(PQgetvalue(res, 0, 0), "0");
	PQclear(res);
	PQfinish(pg);
}

int main(void)
{
	rpc_init();
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_rbac_and_no_policy),
		cmocka_unit_test(test_distinct_approvers),
		cmocka_unit_test(test_group_quorum_needs_distinct_people),
		cmocka_unit_test(test_no_self_approval),
		cmocka_unit_test(test_approvals_bound_to_digest),
		cmocka_unit_test(test_approval_expiry),
		cmocka_unit_test(test_wait_timer),
		cmocka_unit_test(test_allowed_refs),
		cmocka_unit_test(test_freeze_windows_in_time_zones),
		cmocka_unit_test(test_break_glass),
		cmocka_unit_test(test_rejection_ends_request),
		cmocka_unit_test(test_policy_change_voids_approvals),
		cmocka_unit_test(test_cli_approve_reject),
		cmocka_unit_test(test_bad_facts),
	};
	int rc = cmocka_run_group_tests_name("it_policy_approval", tests, group_setup,
					     group_teardown);
	rpc_shutdown();
	return rc;
}
