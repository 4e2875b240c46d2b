/*
 * it_policy.c - the policy service's RBAC over the real stack: deny by
 * default, built-in roles and bindings, bootstrap admins, scopes, expiry,
 * guardrails, the auditor guardrail, the escalation guard, atomic apply
 * with revisions (get, diff, optimistic concurrency), explain, recorded
 * decisions, WatchRevision, a second replica, and lib/authz against it.
 */
#include "authz.h"
#include "cfg.h"
#include "it_policy.h"
#include "tls.h"

#include "grpc/health/v1/health.pb-c.h"

#include <libpq-fe.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

static struct rpc_client *admin, *svc;

static int group_setup(void **state)
{
	(void)state;
	ph_init("it_policy");
	admin = h_client(h_env("SLIPWAY_POLICY_ADDR"), ph_ca, h_env("SLIPWAY_CERT"),
			 h_env("SLIPWAY_KEY"));
	svc = ph_client("service/orchestrator");
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	ph_apply_admin("{}");
	rpc_client_free(admin);
	rpc_client_free(svc);
	return 0;
}

/* Runs SQL as the superuser; returns the first value of the first row in
 * out (or "" when none). */
static void sql1(const char *sql, const char *param, char *out, size_t len)
{
	PGconn *pg = PQconnectdb(h_env("SLIPWAY_PGURL"));
	assert_int_equal(PQstatus(pg), CONNECTION_OK);
	const char *vals[1] = { param };
	PGresult *r = PQexecParams(pg, sql, param ? 1 : 0, NULL, vals, NULL, NULL, 0);
	assert_true(PQresultStatus(r) == PGRES_TUPLES_OK || PQresultStatus(r) == PGRES_COMMAND_OK);
	snprintf(out, len, "%s", PQntuples(r) > 0 ? PQgetvalue(r, 0, 0) : "");
	PQclear(r);
	PQfinish(pg);
}

static long long num(const char *s)
{
	long long v = -1;
	if (cfg_parse_ll(s, &v) != 0)
		fail_msg("not a number: '%s'", s);
	return v;
}

static void test_deny_by_default(void **state)
{
	(void)state;
	ph_apply_admin("{}");
	struct rpc_client *bob = ph_client("user/bob");
	int allowed = 1;
	char reasons[1024];
	/* Anyone may ask about themselves. */
	assert_int_equal(ph_authz(bob, ph_id("user/bob"), "read", "release", "web", "", "", &allowed,
				  reasons, sizeof reasons),
			 0);
	assert_false(allowed);
	assert_non_null(strstr(reasons, "deny by default"));
	/* Unknown actions and kinds are denied, not errors. */
	assert_int_equal(ph_can(svc, "user/bob", "frobnicate", "widget", "", ""), 0);
	/* A user may not ask about someone else. */
	assert_int_equal(ph_authz(bob, ph_id("user/alice"), "read", "release", "", "", "", &allowed,
				  reasons, sizeof reasons),
			 SW_EPERM);
	/* Bad questions are INVALID_ARGUMENT. */
	assert_int_equal(ph_authz(svc, "alice", "read", "release", "", "", "", &allowed, NULL, 0),
			 SW_EINVAL);
	assert_int_equal(ph_authz(svc, "spiffe://elsewhere/user/bob", "read", "release", "", "", "",
				  &allowed, NULL, 0),
			 SW_EINVAL);
	assert_int_equal(ph_authz(svc, ph_id("user/bob"), "", "release", "", "", "", &allowed, NULL,
				  0),
			 SW_EINVAL);
	assert_int_equal(ph_authz(svc, ph_id("user/bob"), "read", "", "", "", "", &allowed, NULL, 0),
			 SW_EINVAL);
	assert_int_equal(ph_authz(svc, ph_id("user/bob"), "read", "release", "", "prod", "",
				  &allowed, NULL, 0),
			 SW_EINVAL);
	rpc_client_free(bob);
}

static void test_builtin_roles_and_bindings(void **state)
{
	(void)state;
	ph_apply_admin("{}");
	/* Bootstrap admin: everything. */
	assert_int_equal(ph_can(svc, "user/admin", "deploy", "deployment", "web", "prod"), 1);
	assert_int_equal(ph_can(svc, "user/admin", "apply", "policy", "", ""), 1);
	/* Every service principal holds the service role. */
	assert_int_equal(ph_can(svc, "service/artifact", "read", "release", "web", ""), 1);
	assert_int_equal(ph_can(svc, "service/orchestrator", "evaluate", "deployment", "web", "prod"),
			 1);
	/* Only the orchestrator grants secrets and lists their names. */
	assert_int_equal(ph_can(svc, "service/orchestrator", "grant", "secret", "web", "prod"), 1);
	assert_int_equal(ph_can(svc, "service/orchestrator", "read", "secret", "web", "prod"), 1);
	assert_int_equal(ph_can(svc, "service/artifact", "grant", "secret", "web", "prod"), 0);
	assert_int_equal(ph_can(svc, "service/orchestrator", "fetch", "secret", "web", "prod"), 0);
	assert_int_equal(ph_can(svc, "service/artifact", "push", "release", "web", ""), 0);
	assert_int_equal(ph_can(svc, "service/artifact", "read", "secret", "web", "prod"), 0);
	/* Every agent principal holds the agent role. */
	assert_int_equal(ph_can(svc, "agent/eu/host1", "fetch", "secret", "web", "prod"), 1);
	assert_int_equal(ph_can(svc, "agent/eu/host1", "run", "agent", "", ""), 1);
	assert_int_equal(ph_can(svc, "agent/eu/host1", "deploy", "deployment", "web", "prod"), 0);
	/* A user named like a service is not one: prefix at a '/' boundary. */
	assert_int_equal(ph_can(svc, "user/service", "read", "release", "web", ""), 0);
	/* "kind.action" is accepted as a spelling of the same question. */
	assert_int_equal(ph_can(svc, "agent/eu/host1", "secret.fetch", "secret", "web", "prod"), 1);
}

static void test_scopes(void **state)
{
	(void)state;
	ph_apply_admin("{\"bindings\": ["
		       " {\"role\": \"deployer\", \"principal\": \"spiffe://@TD@/user/alice\","
		       "  \"scope\": {\"app\": \"web\"}},"
		       " {\"role\": \"deployer\", \"principal\": \"spiffe://@TD@/user/bob\","
		       "  \"scope\": {\"app\": \"web\", \"environment\": \"staging\"}},"
		       " {\"role\": \"builder\", \"principal\": \"spiffe://@TD@/user/carol\"}"
		       "]}");
	assert_int_equal(ph_can(svc, "user/alice", "deploy", "deployment", "web", "prod"), 1);
	assert_int_equal(ph_can(svc, "user/alice", "deploy", "deployment", "web", "staging"), 1);
	assert_int_equal(ph_can(svc, "user/alice", "deploy", "deployment", "shop", "prod"), 0);
	assert_int_equal(ph_can(svc, "user/alice", "deploy", "deployment", "", ""), 0);
	assert_int_equal(ph_can(svc, "user/bob", "deploy", "deployment", "web", "staging"), 1);
	assert_int_equal(ph_can(svc, "user/bob", "deploy", "deployment", "web", "prod"), 0);
	assert_int_equal(ph_can(svc, "user/bob", "deploy", "deployment", "shop", "staging"), 0);
	/* Global scope: every app. */
	assert_int_equal(ph_can(svc, "user/carol", "push", "release", "web", ""), 1);
	assert_int_equal(ph_can(svc, "user/carol", "push", "release", "shop", ""), 1);
	assert_int_equal(ph_can(svc, "user/carol", "deploy", "deployment", "web", "prod"), 0);
}

static void test_roles_groups_patterns(void **state)
{
	(void)state;
	ph_apply_admin(
		"{\"groups\": {\"sre\": [\"spiffe://@TD@/user/alice\", \"spiffe://@TD@/user/ops/*\"]},"
		" \"roles\": [{\"name\": \"web-prod-reader\", \"rules\": ["
		"   {\"actions\": [\"read\"], \"kinds\": [\"secret\"], \"apps\": [\"web*\"],"
		"    \"environments\": [\"prod\"], \"names\": [\"DB_*\"]}]}],"
		" \"bindings\": [{\"role\": \"web-prod-reader\", \"group\": \"sre\"},"
		"   {\"role\": \"builder\", \"principal\": \"spiffe://@TD@/user/ci/*\"}]}");
	struct rpc_client *c = svc;
	char reasons[1024];
	int allowed;
	assert_int_equal(ph_authz(c, ph_id("user/alice"), "read", "secret", "web", "prod", "DB_URL",
				  &allowed, reasons, sizeof reasons),
			 0);
	assert_true(allowed);
	assert_non_null(strstr(reasons, "web-prod-reader"));
	assert_int_equal(ph_authz(c, ph_id("user/ops/dave"), "read", "secret", "webshop", "prod",
				  "DB_PASS", &allowed, NULL, 0),
			 0);
	assert_true(allowed);
	assert_int_equal(ph_authz(c, ph_id("user/alice"), "read", "secret", "web", "prod", "API_KEY",
				  &allowed, NULL, 0),
			 0);
	assert_false(allowed);
	assert_int_equal(ph_authz(c, ph_id("user/alice"), "read", "secret", "web", "staging",
				  "DB_URL", &allowed, NULL, 0),
			 0);
	assert_false(allowed);
	assert_int_equal(ph_authz(c, ph_id("user/alice"), "write", "secret", "web", "prod", "DB_URL",
				  &allowed, NULL, 0),
			 0);
	assert_false(allowed);
	/* Prefix patterns stop at a '/' boundary. */
	assert_int_equal(ph_can(svc, "user/ci/jenkins", "push", "release", "web", ""), 1);
	assert_int_equal(ph_can(svc, "user/ci", "push", "release", "web", ""), 0);
	assert_int_equal(ph_can(svc, "user/cia", "push", "release", "web", ""), 0);
}

static void test_expiry(void **state)
{
	(void)state;
	ph_apply_admin("{\"bindings\": ["
		       " {\"role\": \"deployer\", \"principal\": \"spiffe://@TD@/user/alice\","
		       "  \"expires\": \"2001-01-01T00:00:00Z\"},"
		       " {\"role\": \"deployer\", \"principal\": \"spiffe://@TD@/user/bob\","
		       "  \"expires\": \"2999-01-01T00:00:00+02:00\"}]}");
	char reasons[1024];
	int allowed = 1;
	assert_int_equal(ph_authz(svc, ph_id("user/alice"), "deploy", "deployment", "web", "prod", "",
				  &allowed, reasons, sizeof reasons),
			 0);
	assert_false(allowed);
	assert_non_null(strstr(reasons, "expired at 2001-01-01T00:00:00Z"));
	assert_int_equal(ph_can(svc, "user/bob", "deploy", "deployment", "web", "prod"), 1);
}

static void test_guardrails_override_grants(void **state)
{
	(void)state;
	ph_apply_admin("{\"groups\": {\"contractors\": [\"spiffe://@TD@/user/bob\"]},"
		       " \"bindings\": ["
		       "  {\"role\": \"admin\", \"principal\": \"spiffe://@TD@/user/alice\"},"
		       "  {\"role\": \"admin\", \"principal\": \"spiffe://@TD@/user/bob\"}],"
		       " \"guardrails\": ["
		       "  {\"name\": \"no-contractor-secrets\", \"description\": \"contractors never see secrets\","
		       "   \"groups\": [\"contractors\"], \"forbid\": {\"actions\": [\"*\"], \"kinds\": [\"secret\"]}},"
		       "  {\"name\": \"prod-read-only-for-alice\", \"principals\": [\"spiffe://@TD@/user/alice\"],"
		       "   \"scope\": {\"app\": \"web\"},"
		       "   \"forbid\": {\"actions\": [\"*\"], \"except_actions\": [\"read\"],"
		       "    \"kinds\": [\"deployment\"], \"environments\": [\"prod\"]}}]}");
	char reasons[1024];
	int allowed = 1;
	assert_int_equal(ph_authz(svc, ph_id("user/bob"), "read", "secret", "web", "prod", "X",
				  &allowed, reasons, sizeof reasons),
			 0);
	assert_false(allowed);
	assert_non_null(strstr(reasons, "no-contractor-secrets"));
	assert_int_equal(ph_can(svc, "user/bob", "deploy", "deployment", "web", "prod"), 1);
	assert_int_equal(ph_can(svc, "user/alice", "deploy", "deployment", "web", "prod"), 0);
	assert_int_equal(ph_can(svc, "user/alice", "read", "deployment", "web", "prod"), 1);
	assert_int_equal(ph_can(svc, "user/alice", "deploy", "deployment", "shop", "prod"), 1);
	assert_int_equal(ph_can(svc, "user/alice", "deploy", "deployment", "web", "staging"), 1);
	assert_int_equal(ph_can(svc, "user/alice", "read", "secret", "web", "prod"), 1);
}

static void test_auditors_never_write(void **state)
{
	(void)state;
	char err[1024];
	/* A document granting an auditor a write action is rejected whole. */
	uint64_t before = ph_revision(admin);
	int rc = ph_apply(admin,
			  "{\"groups\": {\"audit\": [\"spiffe://@TD@/user/eve\"]},"
			  " \"bindings\": [{\"role\": \"auditor\", \"group\": \"audit\"},"
			  "  {\"role\": \"deployer\", \"principal\": \"spiffe://@TD@/user/eve\"}]}",
			  0, 0, NULL, NULL, err, sizeof err);
	assert_int_equal(rc, SW_EINVAL);
	assert_non_null(strstr(err, "$.bindings[1]"));
	assert_non_null(strstr(err, "auditors can never be granted write actions"));
	assert_int_equal(ph_revision(admin), before);
	/* Overlaps only patterns reveal are caught at decision time. */
	ph_apply_admin("{\"bindings\": [{\"role\": \"auditor\", \"principal\": \"spiffe://@TD@/user/eve\"},"
		       " {\"role\": \"deployer\", \"principal\": \"spiffe://@TD@/user/*\"}]}");
	char reasons[1024];
	int allowed = 1;
	assert_int_equal(ph_authz(svc, ph_id("user/eve"), "deploy", "deployment", "web", "prod", "",
				  &allowed, reasons, sizeof reasons),
			 0);
	assert_false(allowed);
	assert_non_null(strstr(reasons, "auditors-read-only"));
	assert_int_equal(ph_can(svc, "user/eve", "read", "audit", "", ""), 1);
	assert_int_equal(ph_can(svc, "user/eve", "read", "deployment", "web", "prod"), 1);
	assert_int_equal(ph_can(svc, "user/frank", "deploy", "deployment", "web", "prod"), 1);
}

static void test_apply_get_revisions(void **state)
{
	(void)state;
	char err[1024];
	uint64_t r0 = ph_apply_admin("{}"), r1 = 0, r2 = 0;
	int changed = 0;
	const char *doc = "{\"description\": \"v1\", \"bindings\": [{\"role\": \"builder\","
			  " \"principal\": \"spiffe://@TD@/user/carol\"}]}";
	assert_int_equal(ph_apply(admin, doc, 0, 0, &r1, &changed, err, sizeof err), 0);
	assert_true(changed);
	assert_int_equal(r1, r0 + 1);
	/* The same document again: no new revision. */
	assert_int_equal(ph_apply(admin, doc, 0, 0, &r2, &changed, err, sizeof err), 0);
	assert_false(changed);
	assert_int_equal(r2, r1);
	/* Optimistic concurrency. */
	const char *doc2 = "{\"description\": \"v2\"}";
	assert_int_equal(ph_apply(admin, doc2, r1 - 1, 0, NULL, NULL, err, sizeof err), SW_EPRECOND);
	assert_non_null(strstr(err, "expected revision"));
	/* Dry run: validated, nothing applied. */
	assert_int_equal(ph_apply(admin, doc2, r1, 1, &r2, &changed, err, sizeof err), 0);
	assert_true(changed);
	assert_int_equal(r2, r1);
	assert_int_equal(ph_revision(admin), r1);
	assert_int_equal(ph_apply(admin, doc2, r1, 0, &r2, &changed, err, sizeof err), 0);
	assert_int_equal(r2, r1 + 1);

	/* GetPolicy: the current and an old revision, canonical JSON. */
	Slipway__V1__GetPolicyRequest g = SLIPWAY__V1__GET_POLICY_REQUEST__INIT;
	ProtobufCMessage *out = NULL;
	assert_int_equal(rpc_call(admin, &slipway__v1__policy__descriptor, "GetPolicy", &g.base, &out,
				  NULL, err, sizeof err),
			 0);
	Slipway__V1__GetPolicyResponse *gr = (void *)out;
	assert_int_equal(gr->revision, r2);
	assert_non_null(strstr(gr->document, "\"v2\""));
	assert_non_null(strstr(gr->applied_by, "/user/admin"));
	assert_true(gr->applied_unix_ms > 0);
	protobuf_c_message_free_unpacked(out, NULL);
	g.revision = r1;
	assert_int_equal(rpc_call(admin, &slipway__v1__policy__descriptor, "GetPolicy", &g.base, &out,
				  NULL, err, sizeof err),
			 0);
	gr = (void *)out;
	assert_int_equal(gr->revision, r1);
	assert_non_null(strstr(gr->document, "\"v1\""));
	assert_non_null(strstr(gr->document, "builder"));
	protobuf_c_message_free_unpacked(out, NULL);
	g.revision = r2 + 100;
	assert_int_equal(rpc_call(admin, &slipway__v1__policy__descriptor, "GetPolicy", &g.base, &out,
				  NULL, err, sizeof err),
			 SW_ENOTFOUND);

	/* DiffPolicy between the two. */
	Slipway__V1__DiffPolicyRequest d = SLIPWAY__V1__DIFF_POLICY_REQUEST__INIT;
	d.from_revision = r1;
	d.to_revision = r2;
	assert_int_equal(rpc_call(admin, &slipway__v1__policy__descriptor, "DiffPolicy", &d.base,
				  &out, NULL, err, sizeof err),
			 0);
	const char *diff = ((Slipway__V1__DiffPolicyResponse *)out)->diff;
	assert_non_null(strstr(diff, "~ $.description: \"v1\" -> \"v2\""));
	assert_non_null(strstr(diff, "- $.bindings"));
	assert_non_null(strstr(diff, "user/carol"));
	protobuf_c_message_free_unpacked(out, NULL);
}

static void test_invalid_document_rejected_whole(void **state)
{
	(void)state;
	char err[1024];
	uint64_t rev = ph_apply_admin("{\"bindings\": [{\"role\": \"builder\","
				      " \"principal\": \"spiffe://@TD@/user/carol\"}]}");
	struct {
		const char *doc, *path;
	} bad[] = {
		{ "not json", "$: not valid JSON" },
		{ "[]", "$: the document must be a JSON object" },
		{ "{\"bogus\": 1}", "$.bogus: unknown field" },
		{ "{\"version\": 2}", "$.version" },
		{ "{\"bindings\": [{\"role\": \"builder\", \"principal\": \"spiffe://@TD@/user/a\"},"
		  " {\"role\": \"builder\", \"group\": \"nobody\"}]}",
		  "$.bindings[1].group: no group named 'nobody'" },
		{ "{\"bindings\": [{\"role\": \"deployer\", \"principal\": \"spiffe://@TD@/user/a\","
		  "  \"scope\": {\"app\": \"web/x\"}}]}",
		  "$.bindings[0].scope.app" },
		{ "{\"bindings\": [{\"role\": \"deployer\", \"principal\": \"spiffe://@TD@/user/a\","
		  "  \"scope\": {\"environment\": \"prod\"}}]}",
		  "$.bindings[0].scope.environment: an environment scope needs an app" },
		{ "{\"bindings\": [{\"role\": \"deployer\", \"principal\": \"spiffe://other/user/a\"}]}",
		  "$.bindings[0].principal" },
		{ "{\"bindings\": [{\"role\": \"deployer\", \"principal\": \"spiffe://@TD@/user/a*\"}]}",
		  "$.bindings[0].principal" },
		{ "{\"bindings\": [{\"role\": \"deployer\", \"principal\": \"spiffe://@TD@/user/a\","
		  " \"expires\": \"tomorrow\"}]}",
		  "$.bindings[0].expires" },
		{ "{\"roles\": [{\"name\": \"admin\", \"rules\": [{\"actions\": [\"read\"], \"kinds\": [\"release\"]}]}]}",
		  "$.roles[0].name: role 'admin' is built in" },
		{ "{\"roles\": [{\"name\": \"x\", \"rules\": [{\"actions\": [\"deploy\"], \"kinds\": [\"release\"]}]}]}",
		  "$.roles[0].rules[0].actions[0]: action 'deploy' does not exist" },
		{ "{\"roles\": [{\"name\": \"x\", \"rules\": [{\"actions\": [\"read\"], \"kinds\": [\"widget\"]}]}]}",
		  "$.roles[0].rules[0].kinds[0]: unknown resource kind" },
		{ "{\"roles\": [{\"name\": \"x\", \"rules\": []}]}", "$.roles[0].rules" },
		{ "{\"guardrails\": [{\"name\": \"g\"}]}", "$.guardrails[0].forbid: required" },
		{ "{\"groups\": {\"sre\": [\"alice\"]}}", "$.groups.sre[0]" },
		{ "{\"bindings\": [{\"role\": \"deployer\", \"principal\": \"spiffe://@TD@/user/a\", \"group\": \"g\"}]}",
		  "$.bindings[0]: needs exactly one" },
		{ "{\"groups\": {\"a\": [], \"a\": []}}", "$: not valid JSON" },
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		int rc = ph_apply(admin, bad[i].doc, 0, 0, NULL, NULL, err, sizeof err);
		if (rc != SW_EINVAL || strstr(err, bad[i].path) == NULL)
			fail_msg("document %zu: rc=%d err=%s (want %s)", i, rc, err, bad[i].path);
	}
	/* Nothing was applied: the revision and the old grant stand. */
	assert_int_equal(ph_revision(admin), rev);
	assert_int_equal(ph_can(svc, "user/carol", "push", "release", "web", ""), 1);
	/* The first error of several is reported. */
	assert_int_equal(ph_apply(admin,
				  "{\"bindings\": [{\"role\": \"nope\", \"principal\": \"x\"},"
				  " {\"role\": \"nope2\"}]}",
				  0, 0, NULL, NULL, err, sizeof err),
			 SW_EINVAL);
	assert_non_null(strstr(err, "$.bindings[0].role: no role named 'nope'"));
}

/* doc = base + extra + "]}" */
static void with_extra(char *doc, size_t len, const char *base, const char *extra)
{
	size_t a = strlen(base), b = strlen(extra);
	assert_true(a + b + 3 <= len);
	memcpy(doc, base, a);
	memcpy(doc + a, extra, b);
	memcpy(doc + a + b, "]}", 3);
}

static void test_only_admins_apply_and_escalation_guard(void **state)
{
	(void)state;
	char err[1024];
	/* alice may apply policy and deploy web; she holds nothing else. */
	ph_apply_admin("{\"roles\": [{\"name\": \"policy-editor\", \"rules\": ["
		       "   {\"actions\": [\"apply\", \"read\"], \"kinds\": [\"policy\"]}]}],"
		       " \"bindings\": ["
		       "  {\"role\": \"policy-editor\", \"principal\": \"spiffe://@TD@/user/alice\"},"
		       "  {\"role\": \"deployer\", \"principal\": \"spiffe://@TD@/user/alice\","
		       "   \"scope\": {\"app\": \"web\"}}],"
		       " \"guardrails\": [{\"name\": \"keep\", \"principals\": [\"spiffe://@TD@/user/zed\"],"
		       "   \"forbid\": {\"actions\": [\"*\"], \"kinds\": [\"*\"]}}]}");
	const char *base =
		"{\"roles\": [{\"name\": \"policy-editor\", \"rules\": ["
		"   {\"actions\": [\"apply\", \"read\"], \"kinds\": [\"policy\"]}]}],"
		" \"guardrails\": [{\"name\": \"keep\", \"principals\": [\"spiffe://@TD@/user/zed\"],"
		"   \"forbid\": {\"actions\": [\"*\"], \"kinds\": [\"*\"]}}],"
		" \"bindings\": ["
		"  {\"role\": \"policy-editor\", \"principal\": \"spiffe://@TD@/user/alice\"},"
		"  {\"role\": \"deployer\", \"principal\": \"spiffe://@TD@/user/alice\","
		"   \"scope\": {\"app\": \"web\"}}";
	char doc[4096];
	struct rpc_client *alice = ph_client("user/alice");
	struct rpc_client *bob = ph_client("user/bob");

	/* bob holds nothing: he may not apply at all. */
	with_extra(doc, sizeof doc, base, "");
	assert_int_equal(ph_apply(bob, doc, 0, 0, NULL, NULL, err, sizeof err), SW_EPERM);
	/* alice may hand out what she holds, where she holds it. */
	with_extra(doc, sizeof doc, base, ", {\"role\": \"deployer\", \"principal\": \"spiffe://@TD@/user/bob\","
		 " \"scope\": {\"app\": \"web\", \"environment\": \"staging\"}}");
	assert_int_equal(ph_apply(alice, doc, 0, 0, NULL, NULL, err, sizeof err), 0);
	assert_int_equal(ph_can(svc, "user/bob", "deploy", "deployment", "web", "staging"), 1);
	uint64_t rev = ph_revision(admin);
	/* ... but not at a wider scope, */
	with_extra(doc, sizeof doc, base, ", {\"role\": \"deployer\", \"principal\": \"spiffe://@TD@/user/bob\"}");
	assert_int_equal(ph_apply(alice, doc, 0, 0, NULL, NULL, err, sizeof err), SW_EPERM);
	assert_non_null(strstr(err, "escalation guard"));
	assert_non_null(strstr(err, "$.bindings[2]"));
	/* ... nor a role she does not hold, */
	with_extra(doc, sizeof doc, base, ", {\"role\": \"approver\", \"principal\": \"spiffe://@TD@/user/bob\","
		 " \"scope\": {\"app\": \"web\"}}");
	assert_int_equal(ph_apply(alice, doc, 0, 0, NULL, NULL, err, sizeof err), SW_EPERM);
	/* ... nor admin to herself, */
	with_extra(doc, sizeof doc, base, ", {\"role\": \"admin\", \"principal\": \"spiffe://@TD@/user/alice\"}");
	assert_int_equal(ph_apply(alice, doc, 0, 0, NULL, NULL, err, sizeof err), SW_EPERM);
	/* ... nor widen a role she already holds by editing it, */
	char wider[4096];
	snprintf(wider, sizeof wider, "%s", base);
	char *at = strstr(wider, "[\"apply\", \"read\"]");
	assert_non_null(at);
	memcpy(at, "[\"apply\", \"*\"   ]", 17);
	with_extra(doc, sizeof doc, wider, "");
	assert_int_equal(ph_apply(alice, doc, 0, 0, NULL, NULL, err, sizeof err), SW_EPERM);
	/* ... nor remove a guardrail. */
	snprintf(doc, sizeof doc,
		 "{\"roles\": [{\"name\": \"policy-editor\", \"rules\": ["
		 "   {\"actions\": [\"apply\", \"read\"], \"kinds\": [\"policy\"]}]}],"
		 " \"bindings\": ["
		 "  {\"role\": \"policy-editor\", \"principal\": \"spiffe://@TD@/user/alice\"},"
		 "  {\"role\": \"deployer\", \"principal\": \"spiffe://@TD@/user/alice\","
		 "   \"scope\": {\"app\": \"web\"}}]}");
	assert_int_equal(ph_apply(alice, doc, 0, 0, NULL, NULL, err, sizeof err), SW_EPERM);
	assert_non_null(strstr(err, "guardrail 'keep'"));
	assert_int_equal(ph_revision(admin), rev);
	/* The admin (escalate) may do all of it. */
	with_extra(doc, sizeof doc, base, ", {\"role\": \"admin\", \"principal\": \"spiffe://@TD@/user/bob\"}");
	assert_int_equal(ph_apply(admin, doc, 0, 0, NULL, NULL, err, sizeof err), 0);
	/* The refusals were recorded as decisions. */
	char n[64];
	sql1("SELECT count(*) FROM policy.decisions WHERE action = 'escalate' AND NOT allowed"
	     " AND principal = $1",
	     ph_id("user/alice"), n, sizeof n);
	assert_true(num(n) >= 4);
	rpc_client_free(alice);
	rpc_client_free(bob);
}

static void test_explain(void **state)
{
	(void)state;
	ph_apply_admin("{\"groups\": {\"sre\": [\"spiffe://@TD@/user/alice\"]},"
		       " \"bindings\": [{\"role\": \"deployer\", \"group\": \"sre\"},"
		       "  {\"role\": \"deployer\", \"principal\": \"spiffe://@TD@/user/alice\","
		       "   \"scope\": {\"app\": \"web\"}}],"
		       " \"guardrails\": [{\"name\": \"no-prod\", \"groups\": [\"sre\"],"
		       "   \"forbid\": {\"actions\": [\"deploy\"], \"kinds\": [\"deployment\"],"
		       "    \"environments\": [\"prod\"]}}]}");
	Slipway__V1__ExplainRequest req = SLIPWAY__V1__EXPLAIN_REQUEST__INIT;
	Slipway__V1__Resource res = SLIPWAY__V1__RESOURCE__INIT;
	res.kind = "deployment";
	res.app = "web";
	res.environment = "prod";
	req.principal = (char *)ph_id("user/alice");
	req.action = "deploy";
	req.resource = &res;
	ProtobufCMessage *out = NULL;
	char err[512];
	assert_int_equal(rpc_call(admin, &slipway__v1__policy__descriptor, "Explain", &req.base, &out,
				  NULL, err, sizeof err),
			 0);
	Slipway__V1__ExplainResponse *r = (void *)out;
	assert_false(r->allowed);
	assert_int_equal(r->n_matched_grants, 2);
	assert_int_equal(r->n_matched_forbids, 1);
	assert_non_null(strstr(r->matched_forbids[0], "no-prod"));
	assert_int_equal(r->n_groups, 1);
	assert_string_equal(r->groups[0], "sre");
	assert_int_equal(r->revision, ph_revision(admin));
	protobuf_c_message_free_unpacked(out, NULL);
	/* Explain is a policy read: a user without it is refused. */
	struct rpc_client *bob = ph_client("user/bob");
	assert_int_equal(rpc_call(bob, &slipway__v1__policy__descriptor, "Explain", &req.base, &out,
				  NULL, err, sizeof err),
			 SW_EPERM);
	rpc_client_free(bob);
}

static void test_decisions_recorded_and_in_outbox(void **state)
{
	(void)state;
	ph_apply_admin("{\"bindings\": [{\"role\": \"builder\", \"principal\": \"spiffe://@TD@/user/carol\"}]}");
	Slipway__V1__AuthorizeRequest req = SLIPWAY__V1__AUTHORIZE_REQUEST__INIT;
	Slipway__V1__Resource res = SLIPWAY__V1__RESOURCE__INIT;
	ProtobufCMessage *out = NULL;
	char err[512], v[256];
	/* A denial is recorded with its reasons and revision. */
	req.principal = (char *)ph_id("user/carol");
	req.action = "deploy";
	res.kind = "deployment";
	res.app = "web";
	res.environment = "prod";
	req.resource = &res;
	assert_int_equal(rpc_call(svc, &slipway__v1__policy__descriptor, "Authorize", &req.base, &out,
				  NULL, err, sizeof err),
			 0);
	Slipway__V1__AuthorizeResponse *r = (void *)out;
	assert_false(r->allowed);
	assert_int_equal(strlen(r->decision_id), 32);
	char id[64];
	snprintf(id, sizeof id, "%s", r->decision_id);
	uint64_t rev = r->revision;
	protobuf_c_message_free_unpacked(out, NULL);
	sql1("SELECT allowed::text || ' ' || revision || ' ' || principal || ' ' || caller"
	     " || ' ' || array_to_string(reasons, '|') FROM policy.decisions WHERE id = $1",
	     id, v, sizeof v);
	char want[256];
	snprintf(want, sizeof want, "false %llu %s %s", (unsigned long long)rev, ph_id("user/carol"),
		 ph_id("service/orchestrator"));
	assert_memory_equal(v, want, strlen(want));
	assert_non_null(strstr(v, "deny by default"));
	/* ... and audited with its reasons: the event (same id as the
	 * decision) reaches the audit log through the outbox, or waits in the
	 * outbox when the stack has no audit service. */
	if (getenv("SLIPWAY_AUDIT_ADDR") == NULL) {
		sql1("SELECT count(*) FROM policy.outbox WHERE event_id = $1", id, v, sizeof v);
		assert_string_equal(v, "1");
	} else {
		Slipway__V1__AuditEntry *e = ph_audit_find("policy.decision", NULL, id, NULL, NULL);
		assert_non_null(e);
		assert_string_equal(e->event->actor, ph_id("user/carol"));
		assert_string_equal(e->event->resource, "deployment/web/prod");
		assert_int_equal(e->event->outcome, SLIPWAY__V1__OUTCOME__OUTCOME_DENIED);
		assert_string_equal(ph_detail(e, "allowed"), "false");
		assert_string_equal(ph_detail(e, "action"), "deploy");
		assert_string_equal(ph_detail(e, "caller"), ph_id("service/orchestrator"));
		assert_non_null(strstr(ph_detail(e, "reasons"), "deny by default"));
		char rs[24];
		snprintf(rs, sizeof rs, "%llu", (unsigned long long)rev);
		assert_string_equal(ph_detail(e, "revision"), rs);
		slipway__v1__audit_entry__free_unpacked(e, NULL);
	}
	/* An allowed push is not recorded (hot path); an allowed secret
	 * read or deploy is. */
	req.action = "push";
	res.kind = "release";
	res.environment = "";
	assert_int_equal(rpc_call(svc, &slipway__v1__policy__descriptor, "Authorize", &req.base, &out,
				  NULL, err, sizeof err),
			 0);
	r = (void *)out;
	assert_true(r->allowed);
	sql1("SELECT count(*) FROM policy.decisions WHERE id = $1", r->decision_id, v, sizeof v);
	assert_string_equal(v, "0");
	protobuf_c_message_free_unpacked(out, NULL);
	req.principal = (char *)ph_id("agent/eu/h1");
	req.action = "fetch";
	res.kind = "secret";
	res.environment = "prod";
	res.name = "DB_URL";
	assert_int_equal(rpc_call(svc, &slipway__v1__policy__descriptor, "Authorize", &req.base, &out,
				  NULL, err, sizeof err),
			 0);
	r = (void *)out;
	assert_true(r->allowed);
	sql1("SELECT name || ' ' || allowed::text FROM policy.decisions WHERE id = $1",
	     r->decision_id, v, sizeof v);
	assert_string_equal(v, "DB_URL true");
	char fetch_id[64];
	snprintf(fetch_id, sizeof fetch_id, "%s", r->decision_id);
	protobuf_c_message_free_unpacked(out, NULL);
	/* Policy changes are audited too: the apply of this test's revision. */
	if (getenv("SLIPWAY_AUDIT_ADDR") == NULL) {
		sql1("SELECT count(*) FROM policy.outbox", NULL, v, sizeof v);
		assert_true(num(v) > 0);
	} else {
		char rs[24];
		snprintf(rs, sizeof rs, "%llu", (unsigned long long)rev);
		Slipway__V1__AuditEntry *e = ph_audit_find("policy.apply", NULL, NULL, "revision", rs);
		assert_non_null(e);
		assert_string_equal(e->event->actor, ph_id("user/admin"));
		assert_int_equal(strlen(ph_detail(e, "sha256")), 64);
		slipway__v1__audit_entry__free_unpacked(e, NULL);
		/* An audited allow as well (a secret fetch). */
		e = ph_audit_find("policy.decision", NULL, fetch_id, NULL, NULL);
		assert_non_null(e);
		assert_int_equal(e->event->outcome, SLIPWAY__V1__OUTCOME__OUTCOME_SUCCESS);
		assert_string_equal(e->event->resource, "secret/web/prod/DB_URL");
		slipway__v1__audit_entry__free_unpacked(e, NULL);
	}
}

/* Opens WatchRevision and returns the first revision it sends. */
static struct rpc_stream *watch(struct rpc_client *c, uint64_t *first)
{
	struct rpc_stream *s = NULL;
	char err[256];
	struct rpc_call_opts co = { .timeout_ms = 60000 };
	assert_int_equal(rpc_stream_open(c, &slipway__v1__policy__descriptor, "WatchRevision", &co,
					 &s, err, sizeof err),
			 0);
	Slipway__V1__WatchRevisionRequest req = SLIPWAY__V1__WATCH_REVISION_REQUEST__INIT;
	assert_int_equal(rpc_stream_send(s, &req.base), 0);
	assert_int_equal(rpc_stream_close_send(s), 0);
	ProtobufCMessage *m = NULL;
	assert_int_equal(rpc_stream_recv(s, &m), 1);
	*first = ((Slipway__V1__GetRevisionResponse *)m)->revision;
	protobuf_c_message_free_unpacked(m, NULL);
	return s;
}

static uint64_t next_rev(struct rpc_stream *s)
{
	ProtobufCMessage *m = NULL;
	assert_int_equal(rpc_stream_recv(s, &m), 1);
	uint64_t r = ((Slipway__V1__GetRevisionResponse *)m)->revision;
	protobuf_c_message_free_unpacked(m, NULL);
	return r;
}

static void test_watch_revision(void **state)
{
	(void)state;
	struct rpc_client *bob = ph_client("user/bob"); /* any authenticated caller */
	uint64_t first;
	struct rpc_stream *s = watch(bob, &first);
	assert_int_equal(first, ph_revision(admin));
	uint64_t r = ph_apply_admin("{\"description\": \"watch 1\"}");
	assert_int_equal(next_rev(s), r);
	r = ph_apply_admin("{\"description\": \"watch 2\"}");
	assert_int_equal(next_rev(s), r);
	/* The client cancels: the stream ends (and frees its worker). */
	char err[256];
	rpc_stream_cancel(s);
	assert_int_not_equal(rpc_stream_finish(s, err, sizeof err), 0);
	/* Cancelled watchers give their slot back: far more streams than the
	 * service allows at once come and go (a slot that leaked would make
	 * this fail for good, whatever the timing). */
	for (int i = 0; i < 24; i++) {
		s = NULL;
		for (int tries = 0; tries < 500 && s == NULL; tries++) {
			struct rpc_call_opts co = { .timeout_ms = 60000 };
			assert_int_equal(rpc_stream_open(bob, &slipway__v1__policy__descriptor,
							 "WatchRevision", &co, &s, err, sizeof err),
					 0);
			Slipway__V1__WatchRevisionRequest wr = SLIPWAY__V1__WATCH_REVISION_REQUEST__INIT;
			rpc_stream_send(s, &wr.base);
			rpc_stream_close_send(s);
			ProtobufCMessage *m = NULL;
			if (rpc_stream_recv(s, &m) == 1) {
				protobuf_c_message_free_unpacked(m, NULL);
				break;
			}
			int rc = rpc_stream_finish(s, err, sizeof err);
			assert_int_equal(rc, SW_ELIMIT);
			s = NULL;
			h_sleep_ms(20);
		}
		assert_non_null(s);
		rpc_stream_cancel(s);
		rpc_stream_finish(s, err, sizeof err);
	}
	assert_int_equal(ph_revision(bob), r);
	rpc_client_free(bob);
}

static void test_second_replica_follows_and_restart_keeps_state(void **state)
{
	(void)state;
	char pgurl[700], portfile[700], logf[700], crt[700], key[700], admins[300];
	const char *stack = h_env("SLIPWAY_STACK_DIR");
	snprintf(pgurl, sizeof pgurl,
		 "postgresql:///slipway?host=%s/pg&port=5432&user=slipway_policy", stack);
	snprintf(portfile, sizeof portfile, "%s/replica2.port", ph_dir);
	snprintf(logf, sizeof logf, "%s/replica2.log", ph_dir);
	snprintf(crt, sizeof crt, "%s/pki/policy.crt", stack);
	snprintf(key, sizeof key, "%s/pki/policy.key", stack);
	snprintf(admins, sizeof admins, "%s", ph_id("user/admin"));
	const char *bin = getenv("SLIPWAY_POLICY_BIN") ? getenv("SLIPWAY_POLICY_BIN")
						       : "build/bin/slipway-policy";
	char *argv[] = { (char *)bin, "--listen", "127.0.0.1:0", "--port-file", portfile,
			 "--ca", ph_ca, "--cert", crt, "--key", key, "--pg-url", pgurl,
			 "--bootstrap-admins", admins, NULL };
	struct h_proc p2;
	assert_int_equal(h_start(&p2, argv, portfile, logf), 0);
	char addr2[64];
	snprintf(addr2, sizeof addr2, "127.0.0.1:%d", p2.port);
	struct rpc_client *r2 = ph_client_at("service/orchestrator", addr2);
	uint64_t first;
	struct rpc_stream *s = watch(r2, &first);
	assert_int_equal(first, ph_revision(admin));
	/* Applied on replica 1, noticed by replica 2 (LISTEN/NOTIFY). */
	uint64_t r = ph_apply_admin("{\"bindings\": [{\"role\": \"builder\","
				    " \"principal\": \"spiffe://@TD@/user/replica\"}]}");
	assert_int_equal(next_rev(s), r);
	assert_int_equal(ph_can(r2, "user/replica", "push", "release", "web", ""), 1);
	/* Replica 2 ends its stream at once on SIGTERM. */
	long long t0 = h_now_ms();
	assert_int_equal(h_stop(&p2, SIGTERM, 20000), 0);
	assert_true(h_now_ms() - t0 < 9000); /* well inside the 10 s grace */
	char err[256];
	assert_int_equal(rpc_stream_recv(s, &(ProtobufCMessage *){ NULL }), 0);
	rpc_stream_finish(s, err, sizeof err);
	rpc_client_free(r2);

	/* Restarting the stack's replica keeps the revision and its rules. */
	char cmd[1024];
	snprintf(cmd, sizeof cmd, "scripts/stack stop '%s' policy && scripts/stack start '%s' policy",
		 stack, stack);
	assert_int_equal(system(cmd), 0);
	rpc_client_free(admin);
	rpc_client_free(svc);
	admin = h_client(h_env("SLIPWAY_POLICY_ADDR"), ph_ca, h_env("SLIPWAY_CERT"),
			 h_env("SLIPWAY_KEY"));
	svc = ph_client("service/orchestrator");
	assert_int_equal(ph_revision(admin), r);
	assert_int_equal(ph_can(svc, "user/replica", "push", "release", "web", ""), 1);
}

/* ---- a Unix-socket proxy in front of PostgreSQL, to take the database
 * away from one replica without touching the stack ---- */

struct pgproxy {
	char path[600], target[600];
	int lfd;
	pthread_t th;
	volatile int stop;
};

/* Fills a Unix socket address; -1 when the path does not fit. */
static int sun_set(struct sockaddr_un *sa, const char *path)
{
	size_t n = strlen(path);
	memset(sa, 0, sizeof *sa);
	sa->sun_family = AF_UNIX;
	if (n >= sizeof sa->sun_path)
		return -1;
	memcpy(sa->sun_path, path, n + 1);
	return 0;
}

static void *proxy_main(void *arg)
{
	struct pgproxy *p = arg;
	int fds[64], n = 0; /* pairs: fds[2k] client, fds[2k+1] server */
	while (!p->stop) {
		struct pollfd pf[65];
		pf[0].fd = p->lfd;
		pf[0].events = POLLIN;
		for (int i = 0; i < n; i++) {
			pf[i + 1].fd = fds[i];
			pf[i + 1].events = POLLIN;
		}
		if (poll(pf, (nfds_t)n + 1, 50) <= 0)
			continue;
		if ((pf[0].revents & POLLIN) && n + 2 <= 64) {
			int c = accept(p->lfd, NULL, NULL);
			int u = socket(AF_UNIX, SOCK_STREAM, 0);
			struct sockaddr_un sa;
			if (c >= 0 && u >= 0 && sun_set(&sa, p->target) == 0 &&
			    connect(u, (struct sockaddr *)&sa, sizeof sa) == 0) {
				fds[n++] = c;
				fds[n++] = u;
			} else {
				if (c >= 0)
					close(c);
				if (u >= 0)
					close(u);
			}
		}
		for (int i = 0; i < n; i++) {
			if (!(pf[i + 1].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
			char buf[16384];
			ssize_t r = read(fds[i], buf, sizeof buf);
			int peer = fds[i ^ 1];
			if (r <= 0 || write(peer, buf, (size_t)r) != r) {
				int k = i & ~1; /* close the pair */
				close(fds[k]);
				close(fds[k + 1]);
				fds[k] = fds[n - 2];
				fds[k + 1] = fds[n - 1];
				n -= 2;
				break; /* the poll set changed */
			}
		}
	}
	for (int i = 0; i < n; i++)
		close(fds[i]);
	return NULL;
}

static void proxy_up(struct pgproxy *p)
{
	struct sockaddr_un sa;
	assert_int_equal(sun_set(&sa, p->path), 0);
	unlink(p->path);
	p->lfd = socket(AF_UNIX, SOCK_STREAM, 0);
	assert_true(p->lfd >= 0);
	assert_int_equal(bind(p->lfd, (struct sockaddr *)&sa, sizeof sa), 0);
	assert_int_equal(listen(p->lfd, 16), 0);
	p->stop = 0;
	assert_int_equal(pthread_create(&p->th, NULL, proxy_main, p), 0);
}

static void proxy_down(struct pgproxy *p)
{
	p->stop = 1;
	pthread_join(p->th, NULL);
	close(p->lfd);
	unlink(p->path);
}

static int health(struct rpc_client *c)
{
	Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
	ProtobufCMessage *out = NULL;
	char err[256];
	if (rpc_call(c, &grpc__health__v1__health__descriptor, "Check", &req.base, &out, NULL, err,
		     sizeof err) != 0)
		return -1;
	int st = ((Grpc__Health__V1__HealthCheckResponse *)out)->status;
	protobuf_c_message_free_unpacked(out, NULL);
	return st == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
}

static void test_database_outage(void **state)
{
	(void)state;
	ph_apply_admin("{\"bindings\": [{\"role\": \"builder\", \"principal\": \"spiffe://@TD@/user/carol\"},"
		       " {\"role\": \"deployer\", \"principal\": \"spiffe://@TD@/user/dora\"}]}");
	const char *stack = h_env("SLIPWAY_STACK_DIR");
	static struct pgproxy px;
	char dir[560], pgurl[800], portfile[700], logf[700], crt[700], key[700], admins[300];
	snprintf(dir, sizeof dir, "%s/pgproxy", ph_dir);
	mkdir(dir, 0755);
	assert_true(strlen(dir) + 20 < sizeof px.path && strlen(stack) + 30 < sizeof px.target);
	snprintf(px.path, sizeof px.path, "%.560s/.s.PGSQL.5432", dir);
	snprintf(px.target, sizeof px.target, "%.560s/pg/.s.PGSQL.5432", stack);
	proxy_up(&px);
	snprintf(pgurl, sizeof pgurl,
		 "postgresql:///slipway?host=%s&port=5432&user=slipway_policy&connect_timeout=2", dir);
	snprintf(portfile, sizeof portfile, "%s/replica3.port", ph_dir);
	snprintf(logf, sizeof logf, "%s/replica3.log", ph_dir);
	snprintf(crt, sizeof crt, "%s/pki/policy.crt", stack);
	snprintf(key, sizeof key, "%s/pki/policy.key", stack);
	snprintf(admins, sizeof admins, "%s", ph_id("user/admin"));
	const char *bin = getenv("SLIPWAY_POLICY_BIN") ? getenv("SLIPWAY_POLICY_BIN")
						       : "build/bin/slipway-policy";
	char *argv[] = { (char *)bin, "--listen", "127.0.0.1:0", "--port-file", portfile,
			 "--ca", ph_ca, "--cert", crt, "--key", key, "--pg-url", pgurl,
			 "--bootstrap-admins", admins, NULL };
	struct h_proc p3;
	assert_int_equal(h_start(&p3, argv, portfile, logf), 0);
	char addr[64];
	snprintf(addr, sizeof addr, "127.0.0.1:%d", p3.port);
	struct rpc_client *c = ph_client_at("service/orchestrator", addr);
	assert_int_equal(ph_can(c, "user/carol", "push", "release", "web", ""), 1);
	assert_int_equal(ph_can(c, "user/dora", "deploy", "deployment", "web", "prod"), 1);
	assert_int_equal(health(c), 1);

	proxy_down(&px); /* the database is gone for this replica */
	/* Decisions that need no record still come from memory. */
	assert_int_equal(ph_can(c, "user/carol", "push", "release", "web", ""), 1);
	assert_int_equal(ph_can(c, "user/bob", "push", "release", "web", ""), 0);
	/* An allow that must be recorded fails closed. */
	int allowed = 0;
	char reasons[512];
	assert_int_equal(ph_authz(c, ph_id("user/dora"), "deploy", "deployment", "web", "prod", "",
				  &allowed, reasons, sizeof reasons),
			 SW_EUNAVAIL);
	assert_non_null(strstr(reasons, "could not be recorded"));
	/* The health check says so (its probe result is cached for 1 s). */
	int h = 1;
	for (int i = 0; i < 100 && (h = health(c)) == 1; i++)
		h_sleep_ms(50);
	assert_int_equal(h, 0);

	proxy_up(&px); /* back: the pool reconnects */
	int rc = -1;
	for (int i = 0; i < 200 && rc != 0; i++) {
		rc = ph_authz(c, ph_id("user/dora"), "deploy", "deployment", "web", "prod", "",
			      &allowed, reasons, sizeof reasons);
		if (rc != 0)
			h_sleep_ms(50);
	}
	assert_int_equal(rc, 0);
	assert_true(allowed);
	rpc_client_free(c);
	assert_int_equal(h_stop(&p3, SIGTERM, 20000), 0);
	proxy_down(&px);
}

static void test_start_up_refuses_bad_configuration(void **state)
{
	(void)state;
	char pgurl[700], nodb[700], portfile[700], logf[700], crt[700], key[700];
	const char *stack = h_env("SLIPWAY_STACK_DIR");
	snprintf(pgurl, sizeof pgurl,
		 "postgresql:///slipway?host=%s/pg&port=5432&user=slipway_policy", stack);
	snprintf(nodb, sizeof nodb, "postgresql:///slipway?host=%s/no-such-dir&port=5432", ph_dir);
	snprintf(portfile, sizeof portfile, "%s/bad.port", ph_dir);
	snprintf(logf, sizeof logf, "%s/bad.log", ph_dir);
	snprintf(crt, sizeof crt, "%s/pki/policy.crt", stack);
	snprintf(key, sizeof key, "%s/pki/policy.key", stack);
	const char *bin = getenv("SLIPWAY_POLICY_BIN") ? getenv("SLIPWAY_POLICY_BIN")
						       : "build/bin/slipway-policy";
	struct {
		const char *url, *admins, *want;
	} bad[] = {
		{ nodb, "", "start-up failed" },
		{ pgurl, "alice", "bootstrap admin 'alice'" },
		{ pgurl, "spiffe://elsewhere/user/admin", "bootstrap admin" },
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		char *argv[] = { (char *)bin, "--listen", "127.0.0.1:0", "--port-file", portfile,
				 "--ca", ph_ca, "--cert", crt, "--key", key, "--pg-url",
				 (char *)bad[i].url, "--bootstrap-admins", (char *)bad[i].admins,
				 NULL };
		struct h_proc p;
		assert_int_equal(h_start(&p, argv, NULL, logf), 0);
		int st = h_wait(&p, 60000);
		assert_int_not_equal(st, 0);
		assert_int_not_equal(st, -1);
		assert_true(h_grep_count(logf, bad[i].want) > 0);
	}
}

static void test_authz_client_cache_follows_revisions(void **state)
{
	(void)state;
	ph_apply_admin("{\"bindings\": [{\"role\": \"builder\", \"principal\": \"spiffe://@TD@/user/carol\"}]}");
	struct rpc_client *c = ph_client("service/artifact");
	struct authz *a = NULL;
	char err[512];
	struct authz_opts o = { .policy = c, .cache_ms = 60000 };
	assert_int_equal(authz_new(&o, &a, err, sizeof err), 0);
	struct authz_req q = { ph_id("user/carol"), "push", "release", "web", "", "" };
	/* Wait until the watch stream is up (the cache serves only then). */
	for (int i = 0; i < 500 && authz_revision(a) != ph_revision(admin); i++)
		h_sleep_ms(20);
	assert_int_equal(authz_revision(a), ph_revision(admin));
	assert_int_equal(authz_check(a, NULL, &q, err, sizeof err), 0);
	assert_int_equal(authz_check(a, NULL, &q, err, sizeof err), 0);
	uint64_t hits, misses;
	authz_stats(a, &hits, &misses);
	assert_true(hits >= 1);
	/* A revoking apply drops the cache: the next check is a denial. */
	uint64_t r = ph_apply_admin("{\"description\": \"carol revoked\"}");
	for (int i = 0; i < 500 && authz_revision(a) != r; i++)
		h_sleep_ms(20);
	assert_int_equal(authz_revision(a), r);
	assert_int_equal(authz_check(a, NULL, &q, err, sizeof err), SW_EPERM);
	assert_non_null(strstr(err, "deny by default"));
	authz_free(a);
	/* A client that may not ask about others gets denials, not
	 * "unavailable". */
	struct rpc_client *u = ph_client("user/bob");
	struct authz_opts ou = { .policy = u, .cache_ms = -1 };
	assert_int_equal(authz_new(&ou, &a, err, sizeof err), 0);
	assert_int_equal(authz_check(a, NULL, &q, err, sizeof err), SW_EPERM);
	assert_non_null(strstr(err, "refused the question"));
	struct authz_req self = { ph_id("user/bob"), "read", "release", "web", "", "" };
	assert_int_equal(authz_check(a, NULL, &self, err, sizeof err), SW_EPERM);
	assert_non_null(strstr(err, "deny by default"));
	authz_free(a);
	rpc_client_free(u);
	/* With the policy service unreachable the answer is "unavailable". */
	struct rpc_client *dead = h_client("127.0.0.1:1", ph_ca, h_env("SLIPWAY_CERT"),
					   h_env("SLIPWAY_KEY"));
	struct authz_opts o2 = { .policy = dead, .cache_ms = -1, .timeout_ms = 2000 };
	assert_int_equal(authz_new(&o2, &a, err, sizeof err), 0);
	assert_int_equal(authz_check(a, NULL, &q, err, sizeof err), SW_EUNAVAIL);
	authz_free(a);
	rpc_client_free(dead);
	rpc_client_free(c);
}

int main(void)
{
	rpc_init();
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_deny_by_default),
		cmocka_unit_test(test_builtin_roles_and_bindings),
		cmocka_unit_test(test_scopes),
		cmocka_unit_test(test_roles_groups_patterns),
		cmocka_unit_test(test_expiry),
		cmocka_unit_test(test_guardrails_override_grants),
		cmocka_unit_test(test_auditors_never_write),
		cmocka_unit_test(test_apply_get_revisions),
		cmocka_unit_test(test_invalid_document_rejected_whole),
		cmocka_unit_test(test_only_admins_apply_and_escalation_guard),
		cmocka_unit_test(test_explain),
		cmocka_unit_test(test_decisions_recorded_and_in_outbox),
		cmocka_unit_test(test_watch_revision),
		cmocka_unit_test(test_second_replica_follows_and_restart_keeps_state),
		cmocka_unit_test(test_start_up_refuses_bad_configuration),
		cmocka_unit_test(test_database_outage),
		cmocka_unit_test(test_authz_client_cache_follows_revisions),
	};
	int rc = cmocka_run_group_tests_name("it_policy", tests, group_setup, group_teardown);
	rpc_shutdown();
	return rc;
}
