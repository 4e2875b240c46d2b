/*
 * test_policy.c - unit tests of the policy service's domain code (no
 * servers): the document compiler and its error paths, decisions, the
 * escalation guard, time zones (checked against the C library's own TZ
 * code over decades, including instants governed by the POSIX footer
 * rule), durations, globs and the revision diff.
 *
 * The service's domain files are compiled into this test directly.
 */
#include "../../services/policy/diff.c"
#include "../../services/policy/doc.c"
#include "../../services/policy/eval.c"
#include "../../services/policy/tz.c"
#include "../../services/policy/weaken.c"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

static const char *const admins[] = { "spiffe://td/user/root" };
static const struct pol_builtin_opts B = { "td", 1, admins };

static struct pol_policy *compile_ok(const char *doc)
{
	struct pol_policy *p = NULL;
	char err[512];
	int rc = pol_compile(doc, strlen(doc), &B, &p, err, sizeof err);
	if (rc != 0)
		fail_msg("compile failed: %s", err);
	return p;
}

static void compile_err(const char *doc, const char *want)
{
	struct pol_policy *p = NULL;
	char err[512] = "";
	int rc = pol_compile(doc, strlen(doc), &B, &p, err, sizeof err);
	if (rc != SW_EINVAL || strstr(err, want) == NULL)
		fail_msg("doc %s: rc=%d err='%s', want '%s'", doc, rc, err, want);
	assert_null(p);
}

static int can(const struct pol_policy *p, const char *who, const char *action, const char *kind,
	       const char *app, const char *env, const char *name, int64_t now)
{
	struct pol_query q = { who, action, kind, app, env, name, now };
	struct pol_result r;
	pol_eval(p, &q, 0, &r);
	return r.allowed;
}

static void test_glob_duration_time(void **state)
{
	(void)state;
	assert_true(pol_glob("*", ""));
	assert_true(pol_glob("web*", "web"));
	assert_true(pol_glob("web*", "webshop"));
	assert_false(pol_glob("web*", "shopweb"));
	assert_true(pol_glob("*-prod", "eu-prod"));
	assert_true(pol_glob("a?c", "abc"));
	assert_false(pol_glob("a?c", "ac"));
	assert_true(pol_glob("refs/tags/v*", "refs/tags/v1.2.3"));
	assert_true(pol_glob("*a*b*", "xxaxxbxx"));
	assert_false(pol_glob("*a*b*", "xxbxxaxx"));
	int64_t ms;
	assert_int_equal(pol_parse_duration("90s", &ms), 0);
	assert_int_equal(ms, 90000);
	assert_int_equal(pol_parse_duration("7d", &ms), 0);
	assert_int_equal(ms, 7LL * 86400000);
	assert_int_equal(pol_parse_duration("250ms", &ms), 0);
	assert_int_equal(ms, 250);
	assert_int_not_equal(pol_parse_duration("1w", &ms), 0);
	assert_int_not_equal(pol_parse_duration("", &ms), 0);
	assert_int_not_equal(pol_parse_duration("-1s", &ms), 0);
	assert_int_not_equal(pol_parse_duration("99999999999999999999d", &ms), 0);
	assert_int_equal(pol_parse_time("1970-01-01T00:00:00Z", &ms), 0);
	assert_int_equal(ms, 0);
	assert_int_equal(pol_parse_time("2000-03-01T01:00:00+01:00", &ms), 0);
	assert_int_equal(ms, 951868800000LL);
	assert_int_equal(pol_parse_time("2024-02-29T12:00:00.5Z", &ms), 0);
	assert_int_not_equal(pol_parse_time("2023-02-29T12:00:00Z", &ms), 0);
	assert_int_not_equal(pol_parse_time("2024-01-01T12:00:00", &ms), 0); /* no zone */
	assert_int_not_equal(pol_parse_time("2024-13-01T00:00:00Z", &ms), 0);
}

static void test_compile_errors_have_paths(void **state)
{
	(void)state;
	compile_err("{", "$: not valid JSON");
	compile_err("{\"roles\": {}}", "$.roles: must be an array");
	compile_err("{\"roles\": [{\"name\": \"r\", \"rules\": [{\"actions\": [\"read\"],"
		    " \"kinds\": [\"release\"], \"appz\": []}]}]}",
		    "$.roles[0].rules[0].appz: unknown field");
	compile_err("{\"roles\": [{\"name\": \"r\", \"rules\": [{\"actions\": [\"Read\"],"
		    " \"kinds\": [\"release\"]}]}]}",
		    "$.roles[0].rules[0].actions[0]");
	compile_err("{\"roles\": [{\"name\": \"r\", \"rules\": [{\"actions\": [\"read\"], \"kinds\": [\"release\"]}]},"
		    " {\"name\": \"r\", \"rules\": [{\"actions\": [\"read\"], \"kinds\": [\"release\"]}]}]}",
		    "$.roles[1].name: role 'r' is defined twice");
	compile_err("{\"bindings\": [{\"role\": \"admin\", \"principal\": \"spiffe://td/user/a\","
		    " \"scope\": {\"app\": \"web\", \"environment\": \"prod\", \"x\": 1}}]}",
		    "$.bindings[0].scope.x: unknown field");
	compile_err("{\"bindings\": [{\"role\": \"admin\", \"principal\": \"spiffe://td/*\"},"
		    " {\"role\": \"admin\", \"principal\": \"spiffe://td/user/a/\"}]}",
		    "$.bindings[1].principal");
	compile_err("{\"guardrails\": [{\"name\": \"auditors-read-only\","
		    " \"forbid\": {\"actions\": [\"*\"], \"kinds\": [\"*\"]}}]}",
		    "built in (reserved)");
	compile_err("{\"guardrails\": [{\"name\": \"g\", \"roles\": [\"nope\"],"
		    " \"forbid\": {\"actions\": [\"*\"], \"kinds\": [\"*\"]}}]}",
		    "$.guardrails[0].roles[0]: no role named 'nope'");
	compile_err("{\"approval_policies\": [{\"name\": \"p\"}]}",
		    "$.approval_policies[0].environments: required");
	compile_err("{\"approval_policies\": [{\"name\": \"p\", \"environments\": [\"prod\"],"
		    " \"groups\": {\"sre\": 1}}]}",
		    "$.approval_policies[0].groups.sre: no group named 'sre'");
	compile_err("{\"approval_policies\": [{\"name\": \"p\", \"environments\": [\"prod\"],"
		    " \"wait\": \"soon\"}]}",
		    "$.approval_policies[0].wait");
	compile_err("{\"approval_policies\": [{\"name\": \"p\", \"environments\": [\"prod\"],"
		    " \"freeze\": {\"dates\": [{\"start\": \"2026-12-24T00:00Z\", \"end\": \"2026-12-25T00:00\"}]}}]}",
		    "$.approval_policies[0].freeze.dates[0].start");
	compile_err("{\"approval_policies\": [{\"name\": \"p\", \"environments\": [\"prod\"],"
		    " \"freeze\": {\"dates\": [{\"start\": \"2026-12-24T00:00\", \"end\": \"2026-12-23T00:00\"}]}}]}",
		    "ends before it starts");
	compile_err("{\"approval_policies\": [{\"name\": \"p\", \"environments\": [\"prod\"],"
		    " \"freeze\": {\"timezone\": \"../../etc/passwd\"}}]}",
		    "$.approval_policies[0].freeze.timezone");
	compile_err("{\"approval_policies\": [{\"name\": \"p\", \"environments\": [\"prod\"],"
		    " \"break_glass\": true}]}",
		    "$.approval_policies[0].break_glass");
	/* A bad bootstrap admin is an error too (start-up refuses it). */
	const char *bad[] = { "spiffe://elsewhere/user/root" };
	struct pol_builtin_opts bb = { "td", 1, bad };
	struct pol_policy *p = NULL;
	char err[256];
	assert_int_equal(pol_compile("{}", 2, &bb, &p, err, sizeof err), SW_EINVAL);
}

static void test_decisions(void **state)
{
	(void)state;
	struct pol_policy *p = compile_ok(
		"{\"groups\": {\"sre\": [\"spiffe://td/user/a\", \"spiffe://td/user/team/*\"]},"
		" \"roles\": [{\"name\": \"sec\", \"rules\": [{\"actions\": [\"read\"], \"kinds\": [\"secret\"],"
		"   \"apps\": [\"web*\"], \"names\": [\"DB_*\"]}]}],"
		" \"bindings\": ["
		"  {\"role\": \"deployer\", \"group\": \"sre\", \"scope\": {\"app\": \"web\"}},"
		"  {\"role\": \"sec\", \"principal\": \"spiffe://td/user/b\"},"
		"  {\"role\": \"builder\", \"principal\": \"spiffe://td/user/c\", \"expires\": \"2030-01-01T00:00:00Z\"}],"
		" \"guardrails\": [{\"name\": \"g\", \"principals\": [\"spiffe://td/user/team/*\"],"
		"   \"forbid\": {\"actions\": [\"deploy\"], \"kinds\": [\"deployment\"], \"environments\": [\"prod\"]}}]}");
	int64_t now = 1700000000000LL, later = 1900000000000LL;
	assert_true(can(p, "spiffe://td/user/a", "deploy", "deployment", "web", "prod", "", now));
	assert_false(can(p, "spiffe://td/user/a", "deploy", "deployment", "shop", "prod", "", now));
	assert_true(can(p, "spiffe://td/user/team/x", "deploy", "deployment", "web", "dev", "", now));
	assert_false(can(p, "spiffe://td/user/team/x", "deploy", "deployment", "web", "prod", "", now));
	assert_false(can(p, "spiffe://td/user/teamx", "deploy", "deployment", "web", "dev", "", now));
	assert_true(can(p, "spiffe://td/user/b", "read", "secret", "webshop", "prod", "DB_URL", now));
	assert_false(can(p, "spiffe://td/user/b", "read", "secret", "shop", "prod", "DB_URL", now));
	assert_false(can(p, "spiffe://td/user/b", "read", "secret", "web", "prod", "KEY", now));
	assert_true(can(p, "spiffe://td/user/c", "push", "release", "x", "", "", now));
	assert_false(can(p, "spiffe://td/user/c", "push", "release", "x", "", "", later));
	/* Built-ins. */
	assert_true(can(p, "spiffe://td/user/root", "escalate", "policy", "", "", "", now));
	assert_true(can(p, "spiffe://td/service/x", "authorize", "policy", "", "", "", now));
	assert_false(can(p, "spiffe://td/service", "authorize", "policy", "", "", "", now));
	assert_true(can(p, "spiffe://td/agent/eu/h", "fetch", "secret", "web", "prod", "X", now));
	/* Explain collects every match, reasons say why. */
	struct pol_query q = { "spiffe://td/user/team/x", "deploy", "deployment", "web", "prod", "",
			       now };
	struct pol_result r;
	pol_eval(p, &q, 1, &r);
	assert_false(r.allowed);
	assert_int_equal(r.ngrants, 1);
	assert_int_equal(r.nforbids, 1);
	assert_int_equal(r.ngroups, 1);
	char reasons[4][POL_REASON_LEN];
	assert_int_equal(pol_reasons(p, &q, &r, reasons, 4), 1);
	assert_non_null(strstr(reasons[0], "denied by guardrail g"));
	struct pol_query q2 = { "spiffe://td/user/c", "push", "release", "x", "", "", later };
	pol_eval(p, &q2, 1, &r);
	assert_int_equal(pol_reasons(p, &q2, &r, reasons, 4), 2);
	assert_non_null(strstr(reasons[1], "expired at 2030-01-01T00:00:00Z"));
	/* Recorded decisions. */
	assert_true(pol_must_audit("release", "push", 0));
	assert_false(pol_must_audit("release", "push", 1));
	assert_true(pol_must_audit("deployment", "deploy", 1));
	assert_true(pol_must_audit("deployment", "approve", 1));
	assert_true(pol_must_audit("secret", "read", 1));
	assert_true(pol_must_audit("policy", "read", 1));
	pol_unref(p);
}

static void test_auditors(void **state)
{
	(void)state;
	compile_err("{\"bindings\": [{\"role\": \"auditor\", \"principal\": \"spiffe://td/user/e\"},"
		    " {\"role\": \"builder\", \"principal\": \"spiffe://td/user/e\"}]}",
		    "$.bindings[1]: auditors can never be granted write actions");
	compile_err("{\"groups\": {\"g\": [\"spiffe://td/user/e\"]},"
		    " \"bindings\": [{\"role\": \"deployer\", \"group\": \"g\"},"
		    " {\"role\": \"auditor\", \"principal\": \"spiffe://td/user/e\"}]}",
		    "$.bindings[1]: auditors can never be granted write actions");
	/* A read-only custom role next to auditor is fine. */
	struct pol_policy *p = compile_ok(
		"{\"roles\": [{\"name\": \"r\", \"rules\": [{\"actions\": [\"read\"], \"kinds\": [\"*\"]}]}],"
		" \"bindings\": [{\"role\": \"auditor\", \"principal\": \"spiffe://td/user/e\"},"
		" {\"role\": \"r\", \"principal\": \"spiffe://td/user/e\"},"
		" {\"role\": \"admin\", \"principal\": \"spiffe://td/user/*\"}]}");
	assert_true(can(p, "spiffe://td/user/e", "read", "audit", "", "", "", 1));
	assert_false(can(p, "spiffe://td/user/e", "apply", "policy", "", "", "", 1));
	assert_true(can(p, "spiffe://td/user/f", "apply", "policy", "", "", "", 1));
	pol_unref(p);
}

static int escalation(const char *cur, const char *next, const char *actor, char *err,
		      size_t errlen)
{
	struct pol_policy *c = compile_ok(cur), *n = compile_ok(next);
	int rc = pol_escalation_check(c, n, actor, 1, err, errlen);
	pol_unref(c);
	pol_unref(n);
	return rc;
}

static void test_escalation_guard(void **state)
{
	(void)state;
	char err[512];
	const char *cur =
		"{\"groups\": {\"g\": [\"spiffe://td/user/x\"]},"
		" \"bindings\": [{\"role\": \"deployer\", \"principal\": \"spiffe://td/user/a\","
		" \"scope\": {\"app\": \"web\"}}, {\"role\": \"deployer\", \"group\": \"g\","
		" \"scope\": {\"app\": \"web\"}}]}";
	/* Unchanged document: nothing to check. */
	assert_int_equal(escalation(cur, cur, "spiffe://td/user/a", err, sizeof err), 0);
	/* Within what a holds. */
	assert_int_equal(
		escalation(cur,
			   "{\"groups\": {\"g\": [\"spiffe://td/user/x\"]},"
			   " \"bindings\": [{\"role\": \"deployer\", \"principal\": \"spiffe://td/user/a\","
			   " \"scope\": {\"app\": \"web\"}}, {\"role\": \"deployer\", \"group\": \"g\","
			   " \"scope\": {\"app\": \"web\"}},"
			   " {\"role\": \"deployer\", \"principal\": \"spiffe://td/user/b\","
			   " \"scope\": {\"app\": \"web\", \"environment\": \"dev\"}}]}",
			   "spiffe://td/user/a", err, sizeof err),
		0);
	/* A group gaining a member hands out its bindings: checked. */
	assert_int_equal(
		escalation(cur,
			   "{\"groups\": {\"g\": [\"spiffe://td/user/x\", \"spiffe://td/user/y\"]},"
			   " \"bindings\": [{\"role\": \"deployer\", \"principal\": \"spiffe://td/user/a\","
			   " \"scope\": {\"app\": \"web\"}}, {\"role\": \"deployer\", \"group\": \"g\","
			   " \"scope\": {\"app\": \"web\"}}]}",
			   "spiffe://td/user/b", err, sizeof err),
		SW_EPERM);
	assert_non_null(strstr(err, "$.bindings[1]"));
	/* Removing an expiry widens a binding. */
	const char *exp = "{\"bindings\": [{\"role\": \"builder\", \"principal\": \"spiffe://td/user/b\","
			  " \"expires\": \"2030-01-01T00:00:00Z\"}]}";
	assert_int_equal(escalation(exp,
				    "{\"bindings\": [{\"role\": \"builder\", \"principal\": \"spiffe://td/user/b\"}]}",
				    "spiffe://td/user/a", err, sizeof err),
			 SW_EPERM);
	/* Creating a role, even unbound, needs its permissions somewhere. */
	assert_int_equal(escalation(cur,
				    "{\"groups\": {\"g\": [\"spiffe://td/user/x\"]},"
				    " \"roles\": [{\"name\": \"sec\", \"rules\": [{\"actions\": [\"admin\"],"
				    "  \"kinds\": [\"secret\"]}]}],"
				    " \"bindings\": [{\"role\": \"deployer\", \"principal\": \"spiffe://td/user/a\","
				    " \"scope\": {\"app\": \"web\"}}, {\"role\": \"deployer\", \"group\": \"g\","
				    " \"scope\": {\"app\": \"web\"}}]}",
				    "spiffe://td/user/a", err, sizeof err),
			 SW_EPERM);
	assert_non_null(strstr(err, "$.roles[0].rules[0]"));
	/* ... but a role within what a holds (at some scope) is fine. */
	assert_int_equal(escalation(cur,
				    "{\"groups\": {\"g\": [\"spiffe://td/user/x\"]},"
				    " \"roles\": [{\"name\": \"d\", \"rules\": [{\"actions\": [\"deploy\"],"
				    "  \"kinds\": [\"deployment\"], \"environments\": [\"dev\"]}]}],"
				    " \"bindings\": [{\"role\": \"deployer\", \"principal\": \"spiffe://td/user/a\","
				    " \"scope\": {\"app\": \"web\"}}, {\"role\": \"deployer\", \"group\": \"g\","
				    " \"scope\": {\"app\": \"web\"}}]}",
				    "spiffe://td/user/a", err, sizeof err),
			 0);
	/* Leaving a group a guardrail names lifts the guardrail. */
	const char *guarded =
		"{\"groups\": {\"c\": [\"spiffe://td/user/x\", \"spiffe://td/user/y\"]},"
		" \"guardrails\": [{\"name\": \"no-secrets\", \"groups\": [\"c\"],"
		"  \"forbid\": {\"actions\": [\"*\"], \"kinds\": [\"secret\"]}}]}";
	assert_int_equal(escalation(guarded,
				    "{\"groups\": {\"c\": [\"spiffe://td/user/x\"]},"
				    " \"guardrails\": [{\"name\": \"no-secrets\", \"groups\": [\"c\"],"
				    "  \"forbid\": {\"actions\": [\"*\"], \"kinds\": [\"secret\"]}}]}",
				    "spiffe://td/user/a", err, sizeof err),
			 SW_EPERM);
	assert_non_null(strstr(err, "$.groups.c: removing spiffe://td/user/y"));
	/* Dropping someone's auditor binding lifts the auditor guardrail. */
	assert_int_equal(escalation("{\"bindings\": [{\"role\": \"auditor\", \"principal\": \"spiffe://td/user/e\"}]}",
				    "{}", "spiffe://td/user/a", err, sizeof err),
			 SW_EPERM);
	assert_non_null(strstr(err, "auditors-read-only"));
	/* A guardrail on the actor within the scope means it cannot hand out
	 * what it forbids, even though a grant covers it. */
	assert_int_equal(
		escalation("{\"roles\": [{\"name\": \"pe\", \"rules\": [{\"actions\": [\"apply\"], \"kinds\": [\"policy\"]}]}],"
			   " \"bindings\": [{\"role\": \"deployer\", \"principal\": \"spiffe://td/user/a\"}],"
			   " \"guardrails\": [{\"name\": \"no-web-prod\", \"principals\": [\"spiffe://td/user/a\"],"
			   "  \"scope\": {\"app\": \"web\"}, \"forbid\": {\"actions\": [\"deploy\"], \"kinds\": [\"deployment\"]}}]}",
			   "{\"roles\": [{\"name\": \"pe\", \"rules\": [{\"actions\": [\"apply\"], \"kinds\": [\"policy\"]}]}],"
			   " \"bindings\": [{\"role\": \"deployer\", \"principal\": \"spiffe://td/user/a\"},"
			   "  {\"role\": \"deployer\", \"principal\": \"spiffe://td/user/b\"}],"
			   " \"guardrails\": [{\"name\": \"no-web-prod\", \"principals\": [\"spiffe://td/user/a\"],"
			   "  \"scope\": {\"app\": \"web\"}, \"forbid\": {\"actions\": [\"deploy\"], \"kinds\": [\"deployment\"]}}]}",
			   "spiffe://td/user/a", err, sizeof err),
		SW_EPERM);
	assert_non_null(strstr(err, "$.bindings[1]"));
	/* The bootstrap admin holds escalate. */
	assert_int_equal(escalation(exp, "{\"bindings\": [{\"role\": \"admin\", \"principal\": \"spiffe://td/user/b\"}]}",
				    "spiffe://td/user/root", err, sizeof err),
			 0);
}

/* Offset of zone at t via the C library (the reference). */
static long libc_offset(const char *zone, time_t t)
{
	setenv("TZ", zone, 1);
	tzset();
	struct tm tm;
	localtime_r(&t, &tm);
	return tm.tm_gmtoff;
}

static void test_time_zones_match_libc(void **state)
{
	(void)state;
	static const char *const zones[] = { "Europe/Berlin",  "America/New_York",
					     "Australia/Sydney", "Asia/Kolkata",
					     "America/Sao_Paulo", "Pacific/Chatham",
					     "America/St_Johns",  "Europe/London",
					     "UTC",               "Africa/Casablanca" };
	char err[256];
	for (size_t z = 0; z < sizeof zones / sizeof zones[0]; z++) {
		struct pol_tz *tz = NULL;
		if (pol_tz_load(zones[z], NULL, &tz, err, sizeof err) != 0)
			fail_msg("%s: %s", zones[z], err);
		/* Every 7 h 13 min from 1990 to 2060: hits both sides of every
		 * transition hour over the years, far past the TZif tables. */
		for (int64_t t = 631152000; t < 2840140800LL; t += 7 * 3600 + 13 * 60) {
			long want = libc_offset(zones[z], (time_t)t);
			if (pol_tz_offset(tz, t) != want)
				fail_msg("%s at %lld: %d, libc says %ld", zones[z], (long long)t,
					 pol_tz_offset(tz, t), want);
		}
		pol_tz_free(tz);
	}
	unsetenv("TZ");
	tzset();
	struct pol_tz *tz = NULL;
	assert_int_equal(pol_tz_load("Mars/Olympus", NULL, &tz, err, sizeof err), SW_ENOTFOUND);
	assert_int_equal(pol_tz_load("../etc/passwd", NULL, &tz, err, sizeof err), SW_EINVAL);
	assert_int_equal(pol_tz_load("/etc/passwd", NULL, &tz, err, sizeof err), SW_EINVAL);
	/* A file that is not TZif. */
	assert_int_equal(pol_tz_load("zone.tab", NULL, &tz, err, sizeof err), SW_EINVAL);
}

static void test_posix_rules(void **state)
{
	(void)state;
	struct pol_tz *tz = NULL;
	char err[128];
	/* Central Europe: last Sunday of March 01:00Z to last Sunday of October 01:00Z. */
	assert_int_equal(pol_tz_posix("CET-1CEST,M3.5.0,M10.5.0/3", &tz, err, sizeof err), 0);
	int64_t spring = 1901149200; /* 2030-03-31T01:00:00Z */
	int64_t autumn = 1919293200; /* 2030-10-27T01:00:00Z */
	assert_int_equal(pol_tz_offset(tz, spring - 1), 3600);
	assert_int_equal(pol_tz_offset(tz, spring), 7200);
	assert_int_equal(pol_tz_offset(tz, autumn - 1), 7200);
	assert_int_equal(pol_tz_offset(tz, autumn), 3600);
	pol_tz_free(tz);
	/* Southern hemisphere: DST across the new year. */
	assert_int_equal(pol_tz_posix("AEST-10AEDT,M10.1.0,M4.1.0/3", &tz, err, sizeof err), 0);
	assert_int_equal(pol_tz_offset(tz, 1893456000), 39600); /* 2030-01-01: summer */
	assert_int_equal(pol_tz_offset(tz, 1909008000), 36000); /* 2030-06-30: winter */
	pol_tz_free(tz);
	/* Fixed offsets, quoted names, half hours. */
	assert_int_equal(pol_tz_posix("<+0530>-5:30", &tz, err, sizeof err), 0);
	assert_int_equal(pol_tz_offset(tz, 0), 19800);
	pol_tz_free(tz);
	assert_int_equal(pol_tz_posix("EST5EDT,M3.2.0,M11.1.0", &tz, err, sizeof err), 0);
	assert_int_equal(pol_tz_offset(tz, 1909008000), -14400);
	pol_tz_free(tz);
	assert_int_not_equal(pol_tz_posix("X1", &tz, err, sizeof err), 0);
	assert_int_not_equal(pol_tz_posix("CET-1CEST,M13.5.0,M10.5.0", &tz, err, sizeof err), 0);
	assert_int_not_equal(pol_tz_posix("CET-1CEST,M3.5.0", &tz, err, sizeof err), 0);
}

static void test_diff(void **state)
{
	(void)state;
	json_t *a = json_loads("{\"description\": \"x\", \"roles\": [{\"name\": \"r1\", \"rules\": [1]},"
			       " {\"name\": \"r2\"}], \"bindings\": [{\"role\": \"a\"}, {\"role\": \"b\"}]}",
			       0, NULL);
	json_t *b = json_loads("{\"groups\": {\"sre\": [\"a\"]}, \"roles\": [{\"name\": \"r2\"}, {\"name\": \"r1\", \"rules\": [2]},"
			       " {\"name\": \"r3\"}], \"bindings\": [{\"role\": \"b\"}, {\"role\": \"c\"}]}",
			       0, NULL);
	char *d = NULL;
	assert_int_equal(pol_diff(a, b, 1 << 20, &d), 0);
	assert_non_null(strstr(d, "- $.description \"x\"\n"));
	assert_non_null(strstr(d, "+ $.groups.sre [\"a\"]\n"));
	assert_non_null(strstr(d, "+ $.roles[name=r1].rules[0] 2\n"));
	assert_non_null(strstr(d, "- $.roles[name=r1].rules[0] 1\n"));
	assert_non_null(strstr(d, "+ $.roles[name=r3] {\"name\":\"r3\"}\n"));
	assert_non_null(strstr(d, "~ $.roles: order changed\n"));
	assert_non_null(strstr(d, "- $.bindings[0] {\"role\":\"a\"}\n"));
	assert_non_null(strstr(d, "+ $.bindings[1] {\"role\":\"c\"}\n"));
	assert_null(strstr(d, "{\"role\":\"b\"}"));
	free(d);
	assert_int_equal(pol_diff(a, a, 1 << 20, &d), 0);
	assert_string_equal(d, "");
	free(d);
	assert_int_equal(pol_diff(a, b, 16, &d), SW_ELIMIT);
	json_decref(a);
	json_decref(b);
}

static uint64_t rng = 88172645463325252ULL;
static uint64_t next_rand(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

/* Mutated documents either compile or fail with INVALID_ARGUMENT and a
 * path; never crash (this test matters most under SANITIZE=1). */
static void test_compile_survives_mutations(void **state)
{
	(void)state;
	static const char doc[] =
		"{\"groups\": {\"sre\": [\"spiffe://td/user/a\", \"spiffe://td/user/t/*\"]},"
		" \"roles\": [{\"name\": \"r\", \"rules\": [{\"actions\": [\"read\"], \"kinds\": [\"secret\"],"
		"   \"apps\": [\"w*\"], \"names\": [\"DB_*\"]}]}],"
		" \"bindings\": [{\"role\": \"r\", \"group\": \"sre\", \"scope\": {\"app\": \"web\"},"
		"   \"expires\": \"2030-01-01T00:00:00Z\"}],"
		" \"guardrails\": [{\"name\": \"g\", \"groups\": [\"sre\"],"
		"   \"forbid\": {\"actions\": [\"*\"], \"except_actions\": [\"read\"], \"kinds\": [\"*\"]}}],"
		" \"approval_policies\": [{\"name\": \"p\", \"environments\": [\"prod\"], \"required\": 2,"
		"   \"groups\": {\"sre\": 1}, \"wait\": \"10m\", \"approval_ttl\": \"1d\","
		"   \"freeze\": {\"timezone\": \"Europe/Berlin\", \"weekly\": [{\"start\": \"fri 16:00\","
		"   \"end\": \"mon 08:00\"}], \"dates\": [{\"start\": \"2026-12-24T00:00\", \"end\": \"2026-12-27T00:00\"}]},"
		"   \"break_glass\": {\"required\": 1}}]}";
	static const char alphabet[] = "{}[]\",:*/0123456789aZ -_.\\";
	char buf[sizeof doc + 8], err[512];
	struct pol_policy *p = compile_ok(doc);
	pol_unref(p);
	int ok = 0, bad = 0;
	for (int i = 0; i < 4000; i++) {
		size_t n = sizeof doc - 1;
		memcpy(buf, doc, n);
		int edits = 1 + (int)(next_rand() % 3);
		for (int k = 0; k < edits && n > 0; k++) {
			size_t at = next_rand() % n;
			switch (next_rand() % 3) {
			case 0: buf[at] = alphabet[next_rand() % (sizeof alphabet - 1)]; break;
			case 1: n = at; break; /* truncate */
			default: memmove(buf + at, buf + at + 1, n - at - 1); n--; break;
			}
		}
		p = NULL;
		int rc = pol_compile(buf, n, &B, &p, err, sizeof err);
		if (rc == 0) {
			ok++;
			struct pol_query q = { "spiffe://td/user/a", "read", "secret", "web", "prod",
					       "DB_X", 1 };
			struct pol_result r;
			pol_eval(p, &q, 1, &r);
			pol_unref(p);
		} else {
			assert_int_equal(rc, SW_EINVAL);
			assert_true(err[0] == '$');
			assert_null(p);
			bad++;
		}
	}
	assert_true(ok > 0 && bad > 0);
}

/* Corrupted TZif files are rejected, never read out of bounds. */
static void test_tzif_survives_corruption(void **state)
{
	(void)state;
	FILE *f = fopen("/usr/share/zoneinfo/Europe/Berlin", "rb");
	if (f == NULL)
		skip();
	static unsigned char orig[65536], b[65536];
	size_t n = fread(orig, 1, sizeof orig, f);
	fclose(f);
	for (int i = 0; i < 4000; i++) {
		size_t len = n;
		memcpy(b, orig, n);
		for (int k = 0; k < 4; k++)
			b[next_rand() % len] = (unsigned char)next_rand();
		if (next_rand() % 4 == 0)
			len = next_rand() % len;
		struct pol_tz *tz = calloc(1, sizeof *tz);
		if (parse_tzif(b, len, tz) == 0)
			(void)pol_tz_offset(tz, (int64_t)(next_rand() % 4000000000ULL));
		pol_tz_free(tz);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_glob_duration_time),
		cmocka_unit_test(test_compile_errors_have_paths),
		cmocka_unit_test(test_decisions),
		cmocka_unit_test(test_auditors),
		cmocka_unit_test(test_escalation_guard),
		cmocka_unit_test(test_time_zones_match_libc),
		cmocka_unit_test(test_posix_rules),
		cmocka_unit_test(test_diff),
		cmocka_unit_test(test_compile_survives_mutations),
		cmocka_unit_test(test_tzif_survives_corruption),
	};
	return cmocka_run_group_tests_name("test_policy", tests, NULL, NULL);
}
