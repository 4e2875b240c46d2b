/*
 * test_policy_weaken.c - the definition of "weakening" (services/policy/
 * weaken.c, README "Weakening") as a table: each row edits one base
 * document in one way and lists exactly the JSON paths that pol_weaken
 * must report (none for a neutral or tightening change). Then the
 * escalation guard over those changes (pol_escalation_judge): who may make
 * them, at which scope.
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

/* Single quotes stand for double quotes, to keep the documents readable. */
static const char *base_doc =
	"{'groups': {'sre': ['spiffe://td/user/alice', 'spiffe://td/user/oncall/*'],"
	"            'sec': ['spiffe://td/user/sam'],"
	"            'contractors': ['spiffe://td/user/mal'],"
	"            'auditors': ['spiffe://td/user/aud'],"
	"            'editors': ['spiffe://td/user/ed']},"
	" 'roles': [{'name': 'web-deployer', 'description': 'd',"
	"            'rules': [{'actions': ['deploy', 'read'], 'kinds': ['deployment'], 'apps': ['web*']}]},"
	"           {'name': 'policy-editor',"
	"            'rules': [{'actions': ['apply', 'read'], 'kinds': ['policy']}]}],"
	" 'bindings': [{'role': 'web-deployer', 'group': 'sre', 'scope': {'app': 'web'}},"
	"              {'role': 'auditor', 'group': 'auditors'},"
	"              {'role': 'approver', 'group': 'sec', 'scope': {'app': 'web', 'environment': 'prod'},"
	"               'expires': '2030-01-01T00:00:00Z'},"
	"              {'role': 'policy-editor', 'group': 'editors'}],"
	" 'guardrails': [{'name': 'no-contractor-secrets', 'description': 'd',"
	"                 'groups': ['contractors'], 'principals': ['spiffe://td/user/ext/*'],"
	"                 'scope': {'app': 'web'},"
	"                 'forbid': {'actions': ['*'], 'except_actions': ['read'], 'kinds': ['secret'],"
	"                            'environments': ['prod']}}],"
	" 'approval_policies': ["
	"   {'name': 'staging', 'environments': ['staging'], 'required': 1,"
	"    'freeze': {'dates': [{'start': '2026-12-24T00:00', 'end': '2026-12-26T00:00'}]}},"
	"   {'name': 'prod', 'description': 'd', 'environments': ['prod'], 'apps': ['web*'],"
	"    'required': 3, 'groups': {'sre': 1, 'sec': 1}, 'approver_groups': ['sre', 'sec'],"
	"    'approval_ttl': '24h', 'wait': '10m',"
	"    'allowed_refs': ['refs/heads/main', 'refs/tags/v*'],"
	"    'freeze': {'timezone': 'UTC',"
	"               'weekly': [{'start': 'fri 16:00', 'end': 'mon 08:00', 'description': 'w'}],"
	"               'dates': [{'start': '2026-12-23T00:00', 'end': '2027-01-02T00:00'}]},"
	"    'break_glass': {'required': 2, 'groups': {'sre': 1}}},"
	"   {'name': 'dev', 'environments': ['dev'], 'required': 1}]}";

static char *quotes(const char *s)
{
	char *d = strdup(s);
	assert_non_null(d);
	for (char *p = d; *p; p++)
		if (*p == '\'')
			*p = '"';
	return d;
}

/* One edit: 's' sets PATH to JSON, 'd' deletes it, 'i' inserts JSON at
 * array index PATH. PATH is '/'-separated (array indexes are numbers). */
struct op {
	char kind;
	const char *path;
	const char *json;
};

static void apply_op(json_t *doc, const struct op *op)
{
	char buf[256];
	snprintf(buf, sizeof buf, "%s", op->path);
	json_t *cur = doc, *val = NULL;
	char *seg = buf, *slash;
	if (op->json != NULL) {
		char *q = quotes(op->json);
		json_error_t je;
		val = json_loads(q, JSON_DECODE_ANY, &je);
		free(q);
		if (val == NULL)
			fail_msg("bad json in test row: %s: %s", op->json, je.text);
	}
	while ((slash = strchr(seg, '/')) != NULL) {
		*slash = '\0';
		cur = json_is_array(cur) ? json_array_get(cur, strtoul(seg, NULL, 10))
					 : json_object_get(cur, seg);
		if (cur == NULL)
			fail_msg("no such path in test row: %s", op->path);
		seg = slash + 1;
	}
	if (json_is_array(cur)) {
		size_t i = strtoul(seg, NULL, 10);
		if (op->kind == 'd')
			assert_int_equal(json_array_remove(cur, i), 0);
		else if (op->kind == 'i')
			assert_int_equal(json_array_insert_new(cur, i, val), 0);
		else
			assert_int_equal(json_array_set_new(cur, i, val), 0);
	} else if (op->kind == 'd') {
		assert_int_equal(json_object_del(cur, seg), 0);
	} else {
		assert_int_equal(json_object_set_new(cur, seg, val), 0);
	}
}

static struct pol_policy *compile(json_t *doc)
{
	char *text = json_dumps(doc, JSON_COMPACT), err[512];
	struct pol_policy *p = NULL;
	assert_non_null(text);
	if (pol_compile(text, strlen(text), &B, &p, err, sizeof err) != 0)
		fail_msg("compile failed: %s\n%s", err, text);
	free(text);
	return p;
}

static json_t *base_json(void)
{
	char *q = quotes(base_doc);
	json_error_t je;
	json_t *j = json_loads(q, 0, &je);
	free(q);
	if (j == NULL)
		fail_msg("base document: %s (line %d)", je.text, je.line);
	return j;
}

#define P(x) "$.approval_policies[name=prod]" x
#define G(x) "$.guardrails[name=no-contractor-secrets]" x

struct row {
	const char *name;
	struct op ops[3];
	const char *want[4]; /* exactly these paths (in any order); none = not weakening */
};

static const struct row rows[] = {
	/* neutral */
	{ "unchanged", { { 0 } }, { NULL } },
	{ "top description", { { 's', "description", "'x'" } }, { NULL } },
	{ "approval policy description", { { 's', "approval_policies/1/description", "'x'" } }, { NULL } },
	{ "freeze window description", { { 's', "approval_policies/1/freeze/weekly/0/description", "'x'" } }, { NULL } },
	{ "role description", { { 's', "roles/0/description", "'x'" } }, { NULL } },
	{ "guardrail description", { { 's', "guardrails/0/description", "'x'" } }, { NULL } },
	{ "reorder bindings", { { 'd', "bindings/0", NULL }, { 'i', "bindings/1", "{'role': 'web-deployer', 'group': 'sre', 'scope': {'app': 'web'}}" } }, { NULL } },

	/* approval policies: the rule (prod is approval_policies/1) */
	{ "approval policy removed", { { 'd', "approval_policies/1", NULL } }, { P("") } },
	{ "approval policy renamed", { { 's', "approval_policies/1/name", "'production'" } }, { P("") } },
	{ "required lowered", { { 's', "approval_policies/1/required", "2" } }, { P(".required") } },
	{ "required raised", { { 's', "approval_policies/1/required", "4" } }, { NULL } },
	{ "required lowered to the group quotas' sum (no effect)", { { 's', "approval_policies/1/required", "2" }, { 's', "approval_policies/1/groups/editors", "1" } }, { NULL } },
	{ "group quota removed", { { 'd', "approval_policies/1/groups/sec", NULL } }, { P(".groups.sec") } },
	{ "group quota replaced", { { 's', "approval_policies/1/groups", "{'sre': 1, 'editors': 1}" } }, { P(".groups.sec") } },
	{ "group quota raised", { { 's', "approval_policies/1/groups/sre", "2" } }, { NULL } },
	{ "group quota added", { { 's', "approval_policies/1/groups/contractors", "1" } }, { NULL } },
	{ "approver groups removed (anyone)", { { 'd', "approval_policies/1/approver_groups", NULL } }, { P(".approver_groups") } },
	{ "approver group added", { { 'i', "approval_policies/1/approver_groups/0", "'contractors'" } }, { P(".approver_groups") } },
	{ "approver group dropped", { { 'd', "approval_policies/1/approver_groups/1", NULL } }, { NULL } },
	{ "approver groups set where there were none", { { 's', "approval_policies/0/approver_groups", "['sec']" } }, { NULL } },
	{ "approval ttl longer", { { 's', "approval_policies/1/approval_ttl", "'2d'" } }, { P(".approval_ttl") } },
	{ "approval ttl removed (never expire)", { { 'd', "approval_policies/1/approval_ttl", NULL } }, { P(".approval_ttl") } },
	{ "approval ttl shorter", { { 's', "approval_policies/1/approval_ttl", "'1h'" } }, { NULL } },
	{ "approval ttl set where there was none", { { 's', "approval_policies/0/approval_ttl", "'1h'" } }, { NULL } },
	{ "wait shorter", { { 's', "approval_policies/1/wait", "'1m'" } }, { P(".wait") } },
	{ "wait removed", { { 'd', "approval_policies/1/wait", NULL } }, { P(".wait") } },
	{ "wait longer", { { 's', "approval_policies/1/wait", "'1h'" } }, { NULL } },

	/* approval policies: allowed refs */
	{ "allowed refs removed", { { 'd', "approval_policies/1/allowed_refs", NULL } }, { P(".allowed_refs") } },
	{ "allowed ref added", { { 'i', "approval_policies/1/allowed_refs/0", "'refs/heads/dev'" } }, { P(".allowed_refs") } },
	{ "allowed ref made more general", { { 's', "approval_policies/1/allowed_refs/1", "'refs/tags/*'" } }, { P(".allowed_refs") } },
	{ "allowed ref '?' is not proven narrower", { { 's', "approval_policies/1/allowed_refs/0", "'refs/heads/mai?'" } }, { P(".allowed_refs") } },
	{ "allowed ref made narrower", { { 's', "approval_policies/1/allowed_refs/1", "'refs/tags/v1.*'" } }, { NULL } },
	{ "allowed ref literal within a pattern", { { 's', "approval_policies/1/allowed_refs/1", "'refs/tags/v2.0'" } }, { NULL } },
	{ "allowed ref dropped", { { 'd', "approval_policies/1/allowed_refs/1", NULL } }, { NULL } },
	{ "allowed refs set where there were none", { { 's', "approval_policies/0/allowed_refs", "['refs/heads/main']" } }, { NULL } },

	/* approval policies: freeze windows (prod allows a break-glass laxer
	 * than its normal quorum: 2 approvals, no wait, instead of 3 and 10m) */
	{ "freeze removed", { { 'd', "approval_policies/1/freeze", NULL } }, { P(".freeze") } },
	{ "freeze emptied", { { 's', "approval_policies/1/freeze", "{'timezone': 'UTC'}" } }, { P(".freeze") } },
	{ "weekly window shortened", { { 's', "approval_policies/1/freeze/weekly/0/end", "'mon 07:00'" } }, { P(".freeze.weekly") } },
	{ "weekly window starts later", { { 's', "approval_policies/1/freeze/weekly/0/start", "'sat 00:00'" } }, { P(".freeze.weekly") } },
	{ "weekly window removed", { { 'd', "approval_policies/1/freeze/weekly", NULL } }, { P(".freeze.weekly") } },
	{ "weekly window split in two that cover it", { { 's', "approval_policies/1/freeze/weekly", "[{'start': 'fri 16:00', 'end': 'sun 00:00'}, {'start': 'sat 12:00', 'end': 'mon 08:00'}]" } }, { NULL } },
	{ "weekly window longer, no break-glass", { { 's', "approval_policies/1/break_glass", "false" }, { 's', "approval_policies/1/freeze/weekly/0/end", "'mon 09:00'" } }, { NULL } },
	{ "weekly window longer, laxer break-glass", { { 's', "approval_policies/1/freeze/weekly/0/end", "'mon 09:00'" } }, { P(".freeze.weekly") } },
	{ "weekly window added, laxer break-glass", { { 'i', "approval_policies/1/freeze/weekly/0", "{'start': 'wed 12:00', 'end': 'wed 13:00'}" } }, { P(".freeze.weekly") } },
	{ "freeze added with a break-glass as strict as normal", { { 's', "approval_policies/2/freeze", "{'weekly': [{'start': 'fri 16:00', 'end': 'mon 08:00'}]}" }, { 's', "approval_policies/2/break_glass", "{'required': 1}" } }, { NULL } },
	{ "date window shortened", { { 's', "approval_policies/1/freeze/dates/0/end", "'2027-01-01T00:00'" } }, { P(".freeze.dates") } },
	{ "date window removed", { { 'd', "approval_policies/1/freeze/dates/0", NULL } }, { P(".freeze.dates") } },
	{ "date windows that cover it, no break-glass", { { 's', "approval_policies/1/break_glass", "false" }, { 's', "approval_policies/1/freeze/dates", "[{'start': '2026-12-22T00:00', 'end': '2026-12-28T00:00'}, {'start': '2026-12-28T00:00', 'end': '2027-01-02T00:00'}]" } }, { NULL } },
	{ "date window added, laxer break-glass", { { 'i', "approval_policies/1/freeze/dates/0", "{'start': '2027-04-01T00:00', 'end': '2027-04-02T00:00'}" } }, { P(".freeze.dates") } },
	{ "date window added to a policy without break-glass", { { 'i', "approval_policies/0/freeze/dates/0", "{'start': '2027-04-01T00:00', 'end': '2027-04-02T00:00'}" } }, { NULL } },
	{ "freeze time zone changed", { { 's', "approval_policies/1/freeze/timezone", "'Europe/Berlin'" } }, { P(".freeze.timezone") } },
	{ "freeze added where there was none", { { 's', "approval_policies/2/freeze", "{'weekly': [{'start': 'fri 16:00', 'end': 'mon 08:00'}]}" } }, { NULL } },
	{ "freeze added with a laxer break-glass", { { 's', "approval_policies/2/freeze", "{'weekly': [{'start': 'fri 16:00', 'end': 'mon 08:00'}]}" }, { 's', "approval_policies/2/break_glass", "{'required': 0}" } }, { "$.approval_policies[name=dev].freeze.weekly" } },

	/* approval policies: break-glass */
	{ "break-glass turned off", { { 's', "approval_policies/1/break_glass", "false" } }, { NULL } },
	{ "break-glass turned on where a freeze denied", { { 's', "approval_policies/0/break_glass", "{'required': 1}" } }, { "$.approval_policies[name=staging].break_glass" } },
	{ "break-glass turned on, nothing frozen", { { 's', "approval_policies/2/break_glass", "{'required': 1}" } }, { NULL } },
	{ "break-glass quorum lowered", { { 's', "approval_policies/1/break_glass/required", "1" } }, { P(".break_glass.required") } },
	{ "break-glass group quota removed", { { 'd', "approval_policies/1/break_glass/groups", NULL } }, { P(".break_glass.groups.sre") } },
	{ "break-glass quorum raised", { { 's', "approval_policies/1/break_glass/required", "3" } }, { NULL } },

	/* approval policies: which deployments they decide (the first match) */
	{ "apps narrowed", { { 's', "approval_policies/1/apps", "['web']" } }, { P(".apps") } },
	{ "environments narrowed", { { 's', "approval_policies/1/environments", "['prod-eu']" } }, { P(".environments") } },
	{ "apps widened, nothing displaced", { { 's', "approval_policies/1/apps", "['*']" } }, { NULL } },
	{ "environments widened over a laxer policy", { { 's', "approval_policies/1/environments", "['prod', 'dev']" } }, { NULL } },
	{ "environments widened over a policy with a freeze", { { 's', "approval_policies/1/environments", "['prod', 'staging']" }, { 'd', "approval_policies/0", NULL }, { 'i', "approval_policies/1", "{'name': 'staging', 'environments': ['staging'], 'required': 1, 'freeze': {'dates': [{'start': '2026-12-24T00:00', 'end': '2026-12-26T00:00'}]}}" } }, { P("") } },
	{ "a laxer policy widened over a later, stricter one", { { 's', "approval_policies/0/environments", "['staging', 'prod']" } }, { "$.approval_policies[name=staging]" } },
	{ "a laxer policy put first", { { 'i', "approval_policies/0", "{'name': 'lax', 'environments': ['prod'], 'required': 1}" } }, { "$.approval_policies[name=lax]" } },
	{ "a policy put first that cannot match the same deployments", { { 'i', "approval_policies/0", "{'name': 'lax', 'environments': ['test'], 'required': 1}" } }, { NULL } },
	{ "a stricter policy put first", { { 'i', "approval_policies/0", "{'name': 'strict', 'environments': ['prod'], 'apps': ['web'], 'required': 4, 'groups': {'sre': 2, 'sec': 1}, 'approver_groups': ['sre'], 'approval_ttl': '1h', 'wait': '1h', 'allowed_refs': ['refs/heads/main'], 'freeze': {'weekly': [{'start': 'fri 00:00', 'end': 'mon 12:00'}], 'dates': [{'start': '2026-12-01T00:00', 'end': '2027-02-01T00:00'}]}, 'break_glass': false}" } }, { NULL } },
	{ "a policy moved before one it may displace", { { 'd', "approval_policies/2", NULL }, { 'i', "approval_policies/1", "{'name': 'dev', 'environments': ['dev', 'pr*'], 'required': 1}" } }, { "$.approval_policies[name=dev]" } },
	{ "a new policy after the others", { { 'i', "approval_policies/3", "{'name': 'qa', 'environments': ['*'], 'required': 1}" } }, { NULL } },

	/* guardrails */
	{ "guardrail removed", { { 'd', "guardrails/0", NULL } }, { G("") } },
	{ "guardrail renamed", { { 's', "guardrails/0/name", "'other'" } }, { G("") } },
	{ "guardrail added", { { 'i', "guardrails/0", "{'name': 'g2', 'forbid': {'actions': ['deploy'], 'kinds': ['deployment']}}" } }, { NULL } },
	{ "guardrail forbids fewer actions", { { 's', "guardrails/0/forbid/actions", "['write']" } }, { G(".forbid.actions") } },
	{ "guardrail excepts more actions", { { 's', "guardrails/0/forbid/except_actions", "['read', 'rotate']" } }, { G(".forbid.actions") } },
	{ "guardrail excepts fewer actions", { { 'd', "guardrails/0/forbid/except_actions", NULL } }, { NULL } },
	{ "guardrail forbids other kinds", { { 's', "guardrails/0/forbid/kinds", "['deployment']" } }, { G(".forbid.kinds") } },
	{ "guardrail forbids every kind", { { 's', "guardrails/0/forbid/kinds", "['*']" } }, { NULL } },
	{ "guardrail environments narrowed", { { 's', "guardrails/0/forbid/environments", "['prod-eu']" } }, { G(".forbid.environments") } },
	{ "guardrail environments widened", { { 's', "guardrails/0/forbid/environments", "['prod*']" } }, { NULL } },
	{ "guardrail environments any", { { 'd', "guardrails/0/forbid/environments", NULL } }, { NULL } },
	{ "guardrail names narrowed", { { 's', "guardrails/0/forbid/names", "['DB_*']" } }, { G(".forbid.names") } },
	{ "guardrail group dropped", { { 's', "guardrails/0/groups", "[]" } }, { G(".groups") } },
	{ "guardrail principal narrowed", { { 's', "guardrails/0/principals", "['spiffe://td/user/ext/a/*']" } }, { G(".principals") } },
	{ "guardrail principal widened", { { 's', "guardrails/0/principals", "['spiffe://td/user/*']" } }, { NULL } },
	{ "guardrail for everyone", { { 'd', "guardrails/0/principals", NULL }, { 'd', "guardrails/0/groups", NULL } }, { NULL } },
	{ "guardrail scope narrowed", { { 's', "guardrails/0/scope", "{'app': 'web', 'environment': 'prod'}" } }, { G(".scope") } },
	{ "guardrail scope widened", { { 'd', "guardrails/0/scope", NULL } }, { NULL } },

	/* groups */
	{ "leave a guarded group", { { 's', "groups/contractors", "[]" } }, { "$.groups.contractors" } },
	{ "leave the group bound to auditor", { { 's', "groups/auditors", "[]" } }, { "$.groups.auditors" } },
	{ "join a guarded group", { { 'i', "groups/contractors/0", "'spiffe://td/user/x'" } }, { NULL } },
	{ "join an approver group", { { 'i', "groups/sec/0", "'spiffe://td/user/x'" } }, { "$.groups.sec", "$.bindings[2]" } },
	{ "join a quota-only group", { { 's', "approval_policies/1/approver_groups", "['sec']" }, { 'i', "groups/sre/0", "'spiffe://td/user/x'" } }, { "$.groups.sre", "$.bindings[0]" } },
	{ "leave an approver group", { { 'd', "groups/sre/0", NULL } }, { NULL } },
	{ "a member pattern made more general", { { 's', "groups/sre/1", "'spiffe://td/user/*'" } }, { "$.groups.sre", "$.bindings[0]" } },
	{ "a member pattern made narrower", { { 's', "groups/sre/1", "'spiffe://td/user/oncall/a/*'" } }, { NULL } },
	{ "a member covered by a pattern", { { 'i', "groups/sre/0", "'spiffe://td/user/oncall/b'" } }, { NULL } },

	/* roles and bindings: grants */
	{ "role gains an action", { { 's', "roles/0/rules/0/actions", "['deploy', 'read', 'cancel']" } }, { "$.roles[0].rules[0]", "$.bindings[0]" } },
	{ "role gains a rule", { { 'i', "roles/0/rules/1", "{'actions': ['read'], 'kinds': ['secret']}" } }, { "$.roles[0].rules[1]", "$.bindings[0]" } },
	{ "role rule wider apps", { { 'd', "roles/0/rules/0/apps", NULL } }, { "$.roles[0].rules[0]", "$.bindings[0]" } },
	{ "role rule narrower", { { 's', "roles/0/rules/0/apps", "['web']" } }, { NULL } },
	{ "role removed with its binding", { { 'd', "bindings/0", NULL }, { 'd', "roles/0", NULL } }, { NULL } },
	{ "new role, unbound", { { 'i', "roles/0", "{'name': 'r', 'rules': [{'actions': ['read'], 'kinds': ['audit']}]}" } }, { "$.roles[0].rules[0]" } },
	{ "new binding", { { 'i', "bindings/4", "{'role': 'deployer', 'principal': 'spiffe://td/user/x'}" } }, { "$.bindings[4]" } },
	{ "binding scope widened", { { 'd', "bindings/0/scope", NULL } }, { "$.bindings[0]" } },
	{ "binding scope narrowed", { { 's', "bindings/0/scope", "{'app': 'web', 'environment': 'dev'}" } }, { NULL } },
	{ "binding expiry removed", { { 'd', "bindings/2/expires", NULL } }, { "$.bindings[2]" } },
	{ "binding expiry later", { { 's', "bindings/2/expires", "'2031-01-01T00:00:00Z'" } }, { "$.bindings[2]" } },
	{ "binding expiry earlier", { { 's', "bindings/2/expires", "'2029-01-01T00:00:00Z'" } }, { NULL } },
	{ "binding removed", { { 'd', "bindings/0", NULL } }, { NULL } },
	{ "auditor binding removed", { { 'd', "bindings/1", NULL } }, { "$.bindings" } },
};

static void test_weakening_table(void **state)
{
	(void)state;
	json_t *base = base_json();
	struct pol_policy *old = compile(base);
	for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++) {
		const struct row *row = &rows[r];
		json_t *doc = json_deep_copy(base);
		for (size_t k = 0; k < 3 && row->ops[k].kind; k++)
			apply_op(doc, &row->ops[k]);
		struct pol_policy *next = compile(doc);
		struct pol_weaken w = { 0 };
		char err[256];
		assert_int_equal(pol_weaken(old, next, &w, err, sizeof err), 0);
		assert_false(w.overflow);
		size_t nwant = 0;
		while (nwant < 4 && row->want[nwant] != NULL)
			nwant++;
		int bad = 0;
		for (size_t i = 0; i < w.n && !bad; i++) {
			int listed = 0;
			for (size_t k = 0; k < nwant && !listed; k++)
				listed = strcmp(w.v[i].path, row->want[k]) == 0;
			bad = !listed;
		}
		for (size_t k = 0; k < nwant && !bad; k++) {
			int found = 0;
			for (size_t i = 0; i < w.n && !found; i++)
				found = strcmp(w.v[i].path, row->want[k]) == 0;
			bad = !found;
		}
		if (bad) {
			for (size_t i = 0; i < w.n; i++)
				print_message("  got %s: %s\n", w.v[i].path, w.v[i].what);
			fail_msg("row '%s': want %s%s%s%s", row->name, nwant ? row->want[0] : "no weakening",
				 nwant > 1 ? ", " : "", nwant > 1 ? row->want[1] : "", nwant > 2 ? ", ..." : "");
		}
		/* Every change says what it weakens in words. */
		for (size_t i = 0; i < w.n; i++)
			assert_true(strlen(w.v[i].what) > 10);
		pol_weaken_free(&w);
		pol_unref(next);
		json_decref(doc);
	}
	pol_unref(old);
	json_decref(base);
}

/* Classes and scopes of a few changes. */
static void test_classes_and_scopes(void **state)
{
	(void)state;
	json_t *base = base_json();
	struct pol_policy *old = compile(base);
	json_t *doc = json_deep_copy(base);
	struct op ops[] = {
		{ 's', "approval_policies/1/apps", "['web']" }, /* narrowed: "web*" -> "web" */
		{ 'd', "approval_policies/0", NULL },                 /* staging: apps any -> global */
		{ 'd', "bindings/2/expires", NULL },                  /* grant at web/prod */
		{ 'd', "guardrails/0", NULL },                        /* protection, global */
	};
	for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
		apply_op(doc, &ops[i]);
	struct pol_policy *next = compile(doc);
	struct pol_weaken w = { 0 };
	char err[256];
	assert_int_equal(pol_weaken(old, next, &w, err, sizeof err), 0);
	int seen = 0;
	for (size_t i = 0; i < w.n; i++) {
		const struct pol_weak *c = &w.v[i];
		if (strcmp(c->path, P(".apps")) == 0) {
			/* "web*" before, "web" after: the join is global. */
			assert_int_equal(c->cls, POL_WEAK_PROTECTION);
			assert_string_equal(c->app, "");
			seen |= 1;
		} else if (strcmp(c->path, "$.approval_policies[name=staging]") == 0) {
			assert_string_equal(c->app, "");
			seen |= 2;
		} else if (strcmp(c->path, "$.bindings[2]") == 0) {
			assert_int_equal(c->cls, POL_WEAK_GRANT_BINDING);
			assert_string_equal(c->app, "web");
			assert_string_equal(c->env, "prod");
			assert_string_equal(next->bindings[c->index].role->name, "approver");
			seen |= 4;
		} else if (strcmp(c->path, G("")) == 0) {
			assert_int_equal(c->cls, POL_WEAK_PROTECTION);
			assert_string_equal(c->app, "");
			seen |= 8;
		}
	}
	assert_int_equal(seen, 15);
	pol_weaken_free(&w);
	pol_unref(next);
	json_decref(doc);
	pol_unref(old);
	json_decref(base);
}

/* The guard over the changes: who may make them. */
static int judge(const char *cur, const char *next, const char *actor, char *err, size_t errlen,
		 size_t *ndenied)
{
	char *a = quotes(cur), *b = quotes(next);
	struct pol_policy *c = NULL, *n = NULL;
	assert_int_equal(pol_compile(a, strlen(a), &B, &c, err, errlen), 0);
	assert_int_equal(pol_compile(b, strlen(b), &B, &n, err, errlen), 0);
	struct pol_weaken w = { 0 };
	assert_int_equal(pol_weaken(c, n, &w, err, errlen), 0);
	int rc = pol_escalation_judge(c, n, actor, 1, &w, err, errlen);
	*ndenied = 0;
	for (size_t i = 0; i < w.n; i++)
		*ndenied += (size_t)w.v[i].denied;
	pol_weaken_free(&w);
	pol_unref(c);
	pol_unref(n);
	free(a);
	free(b);
	return rc;
}

#define ESC_ROLES                                                                             \
	"'roles': [{'name': 'pe', 'rules': [{'actions': ['apply', 'read'], 'kinds': ['policy']}]}," \
	"          {'name': 'esc', 'rules': [{'actions': ['escalate'], 'kinds': ['policy']}]}],"
#define BINDS                                                                                  \
	"'bindings': [{'role': 'pe', 'principal': 'spiffe://td/user/ed'},"                          \
	"             {'role': 'esc', 'principal': 'spiffe://td/user/web-lead',"                    \
	"              'scope': {'app': 'web', 'environment': 'prod'}},"                            \
	"             {'role': 'deployer', 'principal': 'spiffe://td/user/ed', 'scope': {'app': 'web'}}],"

static void test_judge(void **state)
{
	(void)state;
	char err[4096];
	size_t nd;
	const char *cur = "{" ESC_ROLES BINDS
			  " 'approval_policies': [{'name': 'p', 'apps': ['web'], 'environments': ['prod'],"
			  "   'required': 2, 'wait': '1h'},"
			  "  {'name': 'q', 'apps': ['web*'], 'environments': ['prod'], 'required': 2}]}";
	const char *weaker = "{" ESC_ROLES BINDS
			     " 'approval_policies': [{'name': 'p', 'apps': ['web'], 'environments': ['prod'],"
			     "   'required': 1},"
			     "  {'name': 'q', 'apps': ['web*'], 'environments': ['prod'], 'required': 1}]}";
	/* apply alone: every weakening change is refused, each named. */
	assert_int_equal(judge(cur, weaker, "spiffe://td/user/ed", err, sizeof err, &nd), SW_EPERM);
	assert_int_equal(nd, 3);
	assert_non_null(strstr(err, "escalation guard"));
	assert_non_null(strstr(err, "$.approval_policies[name=p].required"));
	assert_non_null(strstr(err, "$.approval_policies[name=p].wait"));
	assert_non_null(strstr(err, "$.approval_policies[name=q].required"));
	assert_non_null(strstr(err, "needs escalate at app web environment prod"));
	assert_non_null(strstr(err, "needs escalate globally"));
	/* escalate at web/prod covers the policy of exactly web/prod, not a
	 * pattern that may reach other apps. */
	assert_int_equal(judge(cur, weaker, "spiffe://td/user/web-lead", err, sizeof err, &nd),
			 SW_EPERM);
	assert_int_equal(nd, 1);
	assert_non_null(strstr(err, "$.approval_policies[name=q].required"));
	assert_null(strstr(err, "$.approval_policies[name=p]"));
	/* The bootstrap admin holds escalate everywhere. */
	assert_int_equal(judge(cur, weaker, "spiffe://td/user/root", err, sizeof err, &nd), 0);
	assert_int_equal(nd, 0);
	/* Tightening needs nothing. */
	assert_int_equal(judge(weaker, cur, "spiffe://td/user/ed", err, sizeof err, &nd), 0);
	/* Delegation: ed holds deployer at web and may hand it out there. */
	const char *delegated = "{" ESC_ROLES
				"'bindings': [{'role': 'pe', 'principal': 'spiffe://td/user/ed'},"
				" {'role': 'esc', 'principal': 'spiffe://td/user/web-lead',"
				"  'scope': {'app': 'web', 'environment': 'prod'}},"
				" {'role': 'deployer', 'principal': 'spiffe://td/user/ed', 'scope': {'app': 'web'}},"
				" {'role': 'deployer', 'principal': 'spiffe://td/user/bo', 'scope': {'app': 'web', 'environment': 'dev'}}],"
				" 'approval_policies': [{'name': 'p', 'apps': ['web'], 'environments': ['prod'],"
				"   'required': 2, 'wait': '1h'},"
				"  {'name': 'q', 'apps': ['web*'], 'environments': ['prod'], 'required': 2}]}";
	assert_int_equal(judge(cur, delegated, "spiffe://td/user/ed", err, sizeof err, &nd), 0);
	/* ... but a grant it does not hold, or wider, is named with what is missing. */
	const char *wider = "{" ESC_ROLES
			    "'bindings': [{'role': 'pe', 'principal': 'spiffe://td/user/ed'},"
			    " {'role': 'esc', 'principal': 'spiffe://td/user/web-lead',"
			    "  'scope': {'app': 'web', 'environment': 'prod'}},"
			    " {'role': 'deployer', 'principal': 'spiffe://td/user/ed', 'scope': {'app': 'web'}},"
			    " {'role': 'deployer', 'principal': 'spiffe://td/user/bo'}],"
			    " 'approval_policies': [{'name': 'p', 'apps': ['web'], 'environments': ['prod'],"
			    "   'required': 2, 'wait': '1h'},"
			    "  {'name': 'q', 'apps': ['web*'], 'environments': ['prod'], 'required': 2}]}";
	assert_int_equal(judge(cur, wider, "spiffe://td/user/ed", err, sizeof err, &nd), SW_EPERM);
	assert_non_null(strstr(err, "$.bindings[3]"));
	assert_non_null(strstr(err, "or holding deploy,read,cancel,pause,resume,rollback on deployment there, which it does not"));
}

/* A refusal that does not fit the buffer is cut, never overrun. */
static void test_judge_message_bounded(void **state)
{
	(void)state;
	char err[64];
	size_t nd;
	const char *cur = "{'approval_policies': [{'name': 'p', 'environments': ['prod'], 'required': 3,"
			  " 'wait': '1h', 'allowed_refs': ['refs/heads/main']}]}";
	assert_int_equal(judge(cur, "{}", "spiffe://td/user/ed", err, sizeof err, &nd), SW_EPERM);
	assert_int_equal(nd, 1);
	assert_true(strlen(err) < sizeof err);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_weakening_table),
		cmocka_unit_test(test_classes_and_scopes),
		cmocka_unit_test(test_judge),
		cmocka_unit_test(test_judge_message_bounded),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
