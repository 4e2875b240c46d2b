/*
 * report.c - `slipway report changes`: the changes made to an environment
 * in a period, one row per deployment, for an auditor (SOC 2 CC8.1, ISO
 * 27001 A.8.32): who asked, which bytes (digest) built from which source
 * commit, who approved, what happened, and whether break-glass bypassed
 * the approval policy and who used it.
 *
 * Everything is read with read RPCs only, so the built-in auditor role is
 * enough: the orchestrator's ListDeployments (the deployments and their
 * outcome), the artifact service's GetProvenance (the release's source
 * commit, and whether its statement was signed), the policy service's
 * ListApprovals (approvers), and the audit log's ListEntries (the
 * deployment.break_glass events, filtered by the audit service by app and
 * environment). Nothing here is trusted more than those services; the
 * signed proof of each event is `slipway audit show` / `evidence export`.
 */
#include "cfg.h"
#include "cli.h"
#include "err.h"

#include "slipway/v1/artifact.pb-c.h"
#include "slipway/v1/audit.pb-c.h"
#include "slipway/v1/orchestrator.pb-c.h"
#include "slipway/v1/policy.pb-c.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { REPORT_MAX_DEPLOYMENTS = 100000 };

static const char *const csv_head[] = {
	"deployment", "app", "environment", "version", "digest", "repository", "commit",
	"ref", "provenance_signed", "requester", "approvers", "outcome", "reason",
	"rollback", "break_glass", "break_glass_by", "break_glass_reason", "created",
	"started", "finished",
};

/* deployment id -> who used break-glass, from the audit log. */
static int break_glass_events(struct cli *c, const char *app, const char *env, int64_t since,
			      json_t *out)
{
	Slipway__V1__EntryFilter f = SLIPWAY__V1__ENTRY_FILTER__INIT;
	f.app = (char *)(app ? app : "");
	f.environment = (char *)env;
	f.action = "deployment.break_glass";
	/* The event is logged when the deployment is asked for, so never
	 * before the deployment was created. */
	f.from_unix_ms = since;
	struct rpc_client *cl = NULL;
	char token[32] = "0", err[512];
	int rc = CLI_OK;
	if (cli_connect(c, "audit", NULL, &cl) != 0)
		return CLI_FAIL;
	for (;;) {
		Slipway__V1__ListEntriesRequest req = SLIPWAY__V1__LIST_ENTRIES_REQUEST__INIT;
		req.filter = &f;
		req.page_token = token;
		req.page_size = 1000;
		ProtobufCMessage *m = NULL;
		struct rpc_call_opts co = cli_call_opts(c);
		int crc = rpc_call(cl, &slipway__v1__audit__descriptor, "ListEntries", &req.base, &m,
				   &co, err, sizeof err);
		if (crc != 0) {
			rc = cli_fail_rc(crc, "report: the audit log: %s", err);
			break;
		}
		Slipway__V1__ListEntriesResponse *r = (void *)m;
		for (size_t i = 0; i < r->n_entries; i++) {
			const Slipway__V1__AuditEvent *ev = r->entries[i]->event;
			const char *dep = NULL, *reason = "";
			for (size_t k = 0; ev && k < ev->n_details; k++) {
				if (strcmp(ev->details[k]->key, "deployment_id") == 0)
					dep = ev->details[k]->value;
				else if (strcmp(ev->details[k]->key, "reason") == 0)
					reason = ev->details[k]->value;
			}
			if (dep != NULL && json_object_get(out, dep) == NULL)
				json_object_set_new(out, dep,
						    json_pack("{s:s,s:s,s:I}", "by", ev->actor, "reason",
							      reason, "seq", (json_int_t)r->entries[i]->seq));
		}
		snprintf(token, sizeof token, "%s", r->next_page_token);
		protobuf_c_message_free_unpacked(m, NULL);
		if (token[0] == '\0')
			break;
	}
	rpc_client_free(cl);
	return rc;
}

/* The release's provenance (from the artifact service) into row j. */
static int add_provenance(struct cli *c, struct rpc_client *art, const Slipway__V1__Deployment *d,
			  json_t *j)
{
	Slipway__V1__GetProvenanceRequest req = SLIPWAY__V1__GET_PROVENANCE_REQUEST__INIT;
	req.digest = d->digest;
	ProtobufCMessage *m = NULL;
	char err[512];
	struct rpc_call_opts co = cli_call_opts(c);
	int crc = rpc_call(art, &slipway__v1__artifact__descriptor, "GetProvenance", &req.base, &m,
			   &co, err, sizeof err);
	if (crc == SW_ENOTFOUND) { /* collected since: say so rather than fail the report */
		json_object_set_new(j, "provenance_note", json_string("release not found"));
		return CLI_OK;
	}
	if (crc != 0)
		return cli_fail_rc(crc, "report: provenance of %s: %s", d->digest, err);
	Slipway__V1__GetProvenanceResponse *r = (void *)m;
	const Slipway__V1__Release *best = NULL;
	for (size_t i = 0; i < r->n_releases; i++) {
		const Slipway__V1__Release *rel = r->releases[i];
		if (strcmp(rel->app, d->app) != 0)
			continue;
		if (best == NULL || strcmp(rel->version, d->version) == 0)
			best = rel;
	}
	if (best != NULL && best->provenance != NULL) {
		const Slipway__V1__Provenance *p = best->provenance;
		json_object_set_new(j, "repository", json_string(p->repository));
		json_object_set_new(j, "commit", json_string(p->commit));
		json_object_set_new(j, "ref", json_string(p->ref));
		json_object_set_new(j, "provenance_signed", json_boolean(best->signature_verified));
		json_object_set_new(j, "pushed_by", json_string(best->pushed_by));
	}
	protobuf_c_message_free_unpacked(m, NULL);
	return CLI_OK;
}

/* Approvals and rejections (from the policy service) into row j. */
static int add_approvals(struct cli *c, struct rpc_client *pol, const char *id, json_t *j)
{
	Slipway__V1__ListApprovalsRequest req = SLIPWAY__V1__LIST_APPROVALS_REQUEST__INIT;
	req.deployment_id = (char *)id;
	ProtobufCMessage *m = NULL;
	char err[512];
	struct rpc_call_opts co = cli_call_opts(c);
	int crc = rpc_call(pol, &slipway__v1__policy__descriptor, "ListApprovals", &req.base, &m,
			   &co, err, sizeof err);
	json_t *ap = json_array(), *rj = json_array();
	json_object_set_new(j, "approvers", ap);
	json_object_set_new(j, "rejected_by", rj);
	if (crc == SW_ENOTFOUND)
		return CLI_OK;
	if (crc != 0)
		return cli_fail_rc(crc, "report: approvals of %s: %s", id, err);
	Slipway__V1__ListApprovalsResponse *r = (void *)m;
	for (size_t i = 0; i < r->n_approvals; i++) {
		const Slipway__V1__Approval *a = r->approvals[i];
		json_array_append_new(a->approve ? ap : rj,
				      json_pack("{s:s,s:s,s:I,s:b}", "principal", a->approver,
						"digest", a->digest, "time_unix_ms",
						(json_int_t)a->created_unix_ms, "break_glass",
						a->break_glass));
	}
	protobuf_c_message_free_unpacked(m, NULL);
	return CLI_OK;
}

static const char *jstr(json_t *j, const char *k)
{
	const char *s = json_string_value(json_object_get(j, k));
	return s ? s : "";
}

/* "alice, bob" from the approvers array into out. */
static const char *names(json_t *arr, char *out, size_t len)
{
	size_t off = 0, i;
	json_t *v;
	out[0] = '\0';
	json_array_foreach(arr, i, v) {
		int n = snprintf(out + off, len - off, "%s%s", off ? ", " : "",
				 jstr(v, "principal"));
		if (n < 0 || (size_t)n >= len - off)
			break;
		off += (size_t)n;
	}
	return out;
}

static const struct cli_opt changes_opts[] = {
	{ "env", required_argument, 'E', "ENV", "the environment (required), e.g. prod" },
	{ "app", required_argument, 'P', "APP", "only this app" },
	{ "since", required_argument, 'S', "TIME", "deployments created from TIME (required): RFC 3339, unix ms, or a duration ago (30d)" },
	{ "until", required_argument, 'U', "TIME", "and before TIME (default: now)" },
	{ NULL, 0, 0, NULL, NULL },
};

static int cmd_changes(struct cli *c, int argc, char **argv)
{
	const char *env = NULL, *app = NULL;
	int64_t since = 0, until = 0;
	int o, rc = CLI_OK;
	optind = 0;
	while ((o = cli_getopt(c, argc, argv)) != -1) {
		switch (o) {
		case 'E': env = optarg; break;
		case 'P': app = optarg; break;
		case 'S':
			if (cli_parse_time(optarg, &since) != 0)
				return cli_usage("--since wants RFC 3339 (2026-11-26T17:00:00Z), unix ms, "
						 "or a duration ago (30d)");
			break;
		case 'U':
			if (cli_parse_time(optarg, &until) != 0)
				return cli_usage("--until wants RFC 3339, unix ms, or a duration ago");
			break;
		default: return CLI_USAGE;
		}
	}
	if (optind != argc)
		return cli_usage("unexpected argument '%s'", argv[optind]);
	if (env == NULL || env[0] == '\0' || since == 0)
		return cli_usage("report changes needs --env ENV and --since TIME");
	if (until != 0 && until <= since)
		return cli_usage("--since must be before --until");

	struct rpc_client *orch = NULL, *art = NULL, *pol = NULL;
	json_t *rows = json_array(), *bg = json_object();
	if (cli_connect(c, "orchestrator", NULL, &orch) != 0 ||
	    cli_connect(c, "artifact", NULL, &art) != 0 || cli_connect(c, "policy", NULL, &pol) != 0) {
		rc = CLI_FAIL;
		goto out;
	}
	if ((rc = break_glass_events(c, app, env, since, bg)) != CLI_OK)
		goto out;

	/* ListDeployments is newest first: page until one was created before
	 * --since. */
	char token[64] = "", err[512];
	int done = 0;
	while (!done) {
		Slipway__V1__ListDeploymentsRequest req = SLIPWAY__V1__LIST_DEPLOYMENTS_REQUEST__INIT;
		req.app = (char *)(app ? app : "");
		req.environment = (char *)env;
		req.page_size = 100;
		req.page_token = token;
		ProtobufCMessage *m = NULL;
		struct rpc_call_opts co = cli_call_opts(c);
		int crc = rpc_call(orch, &slipway__v1__orchestrator__descriptor, "ListDeployments",
				   &req.base, &m, &co, err, sizeof err);
		if (crc != 0) {
			rc = cli_fail_rc(crc, "report: deployments: %s", err);
			goto out;
		}
		Slipway__V1__ListDeploymentsResponse *r = (void *)m;
		for (size_t i = 0; i < r->n_deployments && rc == CLI_OK; i++) {
			const Slipway__V1__Deployment *d = r->deployments[i];
			if (d->created_unix_ms < since) {
				done = 1;
				break;
			}
			if (until != 0 && d->created_unix_ms >= until)
				continue;
			if (json_array_size(rows) >= REPORT_MAX_DEPLOYMENTS) {
				rc = cli_fail("report: more than %d deployments; narrow --since/--until",
					      REPORT_MAX_DEPLOYMENTS);
				break;
			}
			json_t *bgj = json_object_get(bg, d->id);
			json_t *j = json_pack(
				"{s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:b,s:s,s:b,s:s,s:s,s:I,s:I,s:I}",
				"id", d->id, "app", d->app, "environment", d->environment, "version",
				d->version, "digest", d->digest, "requester", d->requester, "outcome",
				cli_deployment_state(d->state), "reason", d->reason, "rollback", d->is_rollback,
				"rollback_of", d->rollback_of, "break_glass",
				d->break_glass || bgj != NULL, "break_glass_by",
				bgj ? jstr(bgj, "by") : d->break_glass ? d->requester : "",
				"break_glass_reason",
				d->break_glass_reason[0] ? d->break_glass_reason
							 : bgj ? jstr(bgj, "reason") : "",
				"created_unix_ms", (json_int_t)d->created_unix_ms, "started_unix_ms",
				(json_int_t)d->started_unix_ms, "finished_unix_ms",
				(json_int_t)d->finished_unix_ms);
			if (bgj != NULL)
				json_object_set(j, "break_glass_audit_seq", json_object_get(bgj, "seq"));
			json_array_append_new(rows, j);
			if ((rc = add_provenance(c, art, d, j)) == CLI_OK)
				rc = add_approvals(c, pol, d->id, j);
		}
		snprintf(token, sizeof token, "%s", r->next_page_token);
		protobuf_c_message_free_unpacked(m, NULL);
		if (rc != CLI_OK)
			goto out;
		if (token[0] == '\0')
			done = 1;
	}

	size_t i;
	json_t *j;
	char a[2048], t1[32], t2[32], t3[32];
	if (c->output == CLI_JSON) {
		cli_print_json(rows);
		rows = NULL;
	} else if (c->output == CLI_JSONL) {
		json_array_foreach(rows, i, j)
			cli_print_jsonl(json_incref(j));
	} else if (c->output == CLI_CSV) {
		cli_csv_row(stdout, (int)(sizeof csv_head / sizeof csv_head[0]), csv_head);
		json_array_foreach(rows, i, j) {
			json_t *ps = json_object_get(j, "provenance_signed");
			const char *f[] = {
				jstr(j, "id"), jstr(j, "app"), jstr(j, "environment"),
				jstr(j, "version"), jstr(j, "digest"), jstr(j, "repository"),
				jstr(j, "commit"), jstr(j, "ref"),
				ps == NULL ? "" : json_is_true(ps) ? "true" : "false",
				jstr(j, "requester"), names(json_object_get(j, "approvers"), a, sizeof a),
				jstr(j, "outcome"), jstr(j, "reason"),
				json_is_true(json_object_get(j, "rollback")) ? "true" : "false",
				json_is_true(json_object_get(j, "break_glass")) ? "true" : "false",
				jstr(j, "break_glass_by"), jstr(j, "break_glass_reason"),
				cli_rfc3339(json_integer_value(json_object_get(j, "created_unix_ms")), t1),
				cli_rfc3339(json_integer_value(json_object_get(j, "started_unix_ms")), t2),
				cli_rfc3339(json_integer_value(json_object_get(j, "finished_unix_ms")), t3),
			};
			cli_csv_row(stdout, (int)(sizeof f / sizeof f[0]), f);
		}
	} else {
		struct cli_table tab;
		cli_table_init(&tab, "llllllllll", "DEPLOYMENT", "APP", "VERSION", "DIGEST", "COMMIT",
			       "REQUESTER", "APPROVERS", "OUTCOME", "BREAK-GLASS", "CREATED");
		json_array_foreach(rows, i, j) {
			char dg[24], cm[16], bgs[600];
			snprintf(dg, sizeof dg, "%.19s", jstr(j, "digest"));
			snprintf(cm, sizeof cm, "%.12s", jstr(j, "commit")[0] ? jstr(j, "commit") : "-");
			if (json_is_true(json_object_get(j, "break_glass")))
				snprintf(bgs, sizeof bgs, "yes (%s)", jstr(j, "break_glass_by"));
			else
				snprintf(bgs, sizeof bgs, "no");
			names(json_object_get(j, "approvers"), a, sizeof a);
			cli_table_row(&tab, jstr(j, "id"), jstr(j, "app"), jstr(j, "version"), dg, cm,
				      jstr(j, "requester"), a[0] ? a : "-", jstr(j, "outcome"), bgs,
				      cli_time(json_integer_value(json_object_get(j, "created_unix_ms")),
					       t1));
		}
		cli_table_print(&tab, stdout);
		cli_table_free(&tab);
		printf("%zu deployments to %s%s%s\n", json_array_size(rows), env, app ? " of " : "",
		       app ? app : "");
	}
out:
	json_decref(rows);
	json_decref(bg);
	rpc_client_free(orch);
	rpc_client_free(art);
	rpc_client_free(pol);
	return rc;
}

extern const struct cli_cmd cli_report_cmds[];
const struct cli_cmd cli_report_cmds[] = {
	{ "changes", cmd_changes,
	  "the changes to an environment in a period: per deployment requester, approvers, "
	  "digest, source commit, outcome, break-glass",
	  "--env ENV --since T [--until T] [--app APP] [-o table|json|csv|jsonl]", changes_opts,
	  "slipway report changes --env prod --since 2026-10-01T00:00:00Z --until "
	  "2026-11-01T00:00:00Z\n"
	  "slipway report changes --env prod --since 90d -o csv > prod-changes.csv\n"
	  "slipway report changes --env prod --app web --since 7d -o json",
	  NULL, NULL },
	{ NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL },
};

int cli_cmd_report(struct cli *c, int argc, char **argv);
int cli_cmd_report(struct cli *c, int argc, char **argv)
{
	return cli_dispatch(c, "report", cli_report_cmds, argc, argv);
}
