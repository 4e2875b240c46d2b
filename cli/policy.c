/*
 * policy.c - the policy service's commands.
 *
 *   slipway policy apply FILE|- [--expected-revision N] [--dry-run]
 *   slipway policy get [--revision N]          (the document on stdout)
 *   slipway policy diff [FROM [TO]]            (default: previous -> current)
 *   slipway policy diff --file FILE|-          (current -> a proposed document)
 *   slipway policy explain --principal P --action A --resource KIND[/APP[/ENV[/NAME]]]
 *   slipway policy revision
 *   slipway policy approvals DEPLOYMENT
 *   slipway approve DEPLOYMENT [--comment C] [--digest D]
 *   slipway reject DEPLOYMENT --comment C [--digest D]
 *
 * Every command talks to SLIPWAY_POLICY_ADDR (or --addr) over mTLS as the
 * identity in SLIPWAY_CERT; `-o json` prints JSON for scripts.
 */
#include "cfg.h"
#include "cli.h"
#include "err.h"

#include "slipway/v1/policy.pb-c.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DOC (4u << 20)

static int call(struct cli *c, const char *addr, const char *method, const ProtobufCMessage *req,
		ProtobufCMessage **resp)
{
	struct rpc_client *cl = NULL;
	char err[1024];
	if (cli_connect(c, "policy", addr, &cl) != 0)
		return CLI_FAIL;
	struct rpc_call_opts o = cli_call_opts(c);
	int rc = rpc_call(cl, &slipway__v1__policy__descriptor, method, req, resp, &o, err,
			  sizeof err);
	rpc_client_free(cl);
	if (rc != 0)
		return cli_fail_rc(rc, "%s", err);
	return CLI_OK;
}

static int parse_u64(const char *s, uint64_t *out)
{
	long long v;
	if (cfg_parse_ll(s, &v) != 0 || v < 0)
		return -1;
	*out = (uint64_t)v;
	return 0;
}

/* Reads FILE (or stdin for "-") into a new string, at most MAX_DOC bytes. */
static char *read_doc(const char *path, size_t *len)
{
	FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
	if (f == NULL) {
		cli_fail("%s: %s", path, strerror(errno));
		return NULL;
	}
	char *b = malloc(MAX_DOC + 1);
	size_t n = b ? fread(b, 1, MAX_DOC + 1, f) : 0;
	int bad = ferror(f);
	if (f != stdin)
		fclose(f);
	if (b == NULL || bad || n > MAX_DOC) {
		cli_fail("%s: %s", path, b == NULL ? "out of memory"
					 : bad ? "read error"
					       : "larger than 4 MiB");
		free(b);
		return NULL;
	}
	b[n] = '\0';
	if (strlen(b) != n) {
		cli_fail("%s: contains a NUL byte", path);
		free(b);
		return NULL;
	}
	*len = n;
	return b;
}

static void weak_scope(const Slipway__V1__PolicyWeakening *w, char *out, size_t len)
{
	if (w->app[0] == '\0')
		snprintf(out, len, "globally");
	else if (w->environment[0] == '\0')
		snprintf(out, len, "at app %s", w->app);
	else
		snprintf(out, len, "at app %s environment %s", w->app, w->environment);
}

/* The weakening changes, one "! WEAKENS" line each (nothing when none). */
static void print_weakening(FILE *f, Slipway__V1__PolicyWeakening **v, size_t n)
{
	if (n == 0)
		return;
	fprintf(f, "%zu change(s) weaken the policy; each needs the escalate permission on policy "
		   "where it applies:\n",
		n);
	for (size_t i = 0; i < n; i++) {
		char sc[200];
		weak_scope(v[i], sc, sizeof sc);
		fprintf(f, "! WEAKENS %s: %s (needs escalate %s%s)\n", v[i]->path, v[i]->what, sc,
			v[i]->grant ? ", or to hold what it grants there" : "");
	}
}

static json_t *weakening_json(Slipway__V1__PolicyWeakening **v, size_t n)
{
	json_t *a = json_array();
	for (size_t i = 0; i < n; i++) {
		char sc[200];
		weak_scope(v[i], sc, sizeof sc);
		json_array_append_new(a, json_pack("{s:s,s:s,s:s,s:s,s:b,s:s}", "path", v[i]->path,
						   "what", v[i]->what, "app", v[i]->app,
						   "environment", v[i]->environment, "grant",
						   v[i]->grant, "needs_escalate", sc));
	}
	return a;
}

static const struct cli_opt apply_opts[] = {
	{ "expected-revision", required_argument, 'e', "N", "fail unless the current revision is N (compare-and-swap)" },
	{ "dry-run", no_argument, 'n', NULL, "validate and show the diff, apply nothing" },
	{ "addr", required_argument, 'a', "HOST:PORT", "the service address (else SLIPWAY_<SERVICE>_ADDR)" },
	{ NULL, 0, 0, NULL, NULL },
};

static int cmd_apply(struct cli *c, int argc, char **argv)
{
	Slipway__V1__ApplyPolicyRequest req = SLIPWAY__V1__APPLY_POLICY_REQUEST__INIT;
	const char *addr = NULL;
	int o;
	optind = 0;
	while ((o = cli_getopt(c, argc, argv)) != -1) {
		switch (o) {
		case 'e':
			if (parse_u64(optarg, &req.expected_revision) != 0)
				return cli_usage("--expected-revision wants a revision number");
			break;
		case 'n': req.dry_run = 1; break;
		case 'a': addr = optarg; break;
		default: return CLI_USAGE;
		}
	}
	if (optind + 1 != argc)
		return cli_usage_cmd(c);
	size_t len;
	char *doc = read_doc(argv[optind], &len);
	if (doc == NULL)
		return CLI_FAIL;
	req.document = doc;
	ProtobufCMessage *out = NULL;
	int rc = call(c, addr, "ApplyPolicy", &req.base, &out);
	free(doc);
	if (rc != CLI_OK)
		return rc;
	Slipway__V1__ApplyPolicyResponse *r = (void *)out;
	if (c->output == CLI_JSON) {
		cli_print_json(json_pack("{s:I,s:b,s:b,s:o}", "revision", (json_int_t)r->revision,
					 "changed", r->changed, "dry_run", req.dry_run, "weakening",
					 weakening_json(r->weakening, r->n_weakening)));
	} else if (req.dry_run) {
		printf("valid; applying it would %s (current revision %llu)\n",
		       r->changed ? "create a new revision" : "change nothing",
		       (unsigned long long)r->revision);
		print_weakening(stdout, r->weakening, r->n_weakening);
	} else if (r->changed) {
		printf("applied: revision %llu\n", (unsigned long long)r->revision);
		print_weakening(stdout, r->weakening, r->n_weakening);
	} else {
		printf("unchanged: revision %llu already holds this document\n",
		       (unsigned long long)r->revision);
	}
	protobuf_c_message_free_unpacked(out, NULL);
	return CLI_OK;
}

static const struct cli_opt get_opts[] = {
	{ "revision", required_argument, 'r', "N", "this revision (default: the current one)" },
	{ "addr", required_argument, 'a', "HOST:PORT", "the service address (else SLIPWAY_<SERVICE>_ADDR)" },
	{ NULL, 0, 0, NULL, NULL },
};

static int cmd_get(struct cli *c, int argc, char **argv)
{
	Slipway__V1__GetPolicyRequest req = SLIPWAY__V1__GET_POLICY_REQUEST__INIT;
	const char *addr = NULL;
	int o;
	optind = 0;
	while ((o = cli_getopt(c, argc, argv)) != -1) {
		switch (o) {
		case 'r':
			if (parse_u64(optarg, &req.revision) != 0)
				return cli_usage("--revision wants a revision number");
			break;
		case 'a': addr = optarg; break;
		default: return CLI_USAGE;
		}
	}
	if (optind != argc)
		return cli_usage_cmd(c);
	ProtobufCMessage *out = NULL;
	int rc = call(c, addr, "GetPolicy", &req.base, &out);
	if (rc != CLI_OK)
		return rc;
	Slipway__V1__GetPolicyResponse *r = (void *)out;
	if (c->output == CLI_JSON) {
		json_t *doc = json_loads(r->document, 0, NULL);
		cli_print_json(json_pack("{s:I,s:s,s:I,s:o}", "revision", (json_int_t)r->revision,
					 "applied_by", r->applied_by, "applied_unix_ms",
					 (json_int_t)r->applied_unix_ms, "document",
					 doc ? doc : json_object()));
	} else {
		char t[32];
		fprintf(stderr, "# revision %llu, applied by %s at %s\n",
			(unsigned long long)r->revision, r->applied_by[0] ? r->applied_by : "-",
			cli_time(r->applied_unix_ms, t));
		puts(r->document);
	}
	protobuf_c_message_free_unpacked(out, NULL);
	return CLI_OK;
}

static int current_revision(struct cli *c, const char *addr, uint64_t *rev)
{
	Slipway__V1__GetRevisionRequest req = SLIPWAY__V1__GET_REVISION_REQUEST__INIT;
	ProtobufCMessage *out = NULL;
	int rc = call(c, addr, "GetRevision", &req.base, &out);
	if (rc != CLI_OK)
		return rc;
	*rev = ((Slipway__V1__GetRevisionResponse *)out)->revision;
	protobuf_c_message_free_unpacked(out, NULL);
	return CLI_OK;
}

static const struct cli_opt revision_opts[] = {
	{ "addr", required_argument, 'a', "HOST:PORT", "the service address (else SLIPWAY_<SERVICE>_ADDR)" },
	{ NULL, 0, 0, NULL, NULL },
};

static int cmd_revision(struct cli *c, int argc, char **argv)
{
	const char *addr = NULL;
	int o;
	optind = 0;
	while ((o = cli_getopt(c, argc, argv)) != -1) {
		if (o == 'a')
			addr = optarg;
		else
			return CLI_USAGE;
	}
	uint64_t rev;
	int rc = current_revision(c, addr, &rev);
	if (rc != CLI_OK)
		return rc;
	if (c->output == CLI_JSON)
		cli_print_json(json_pack("{s:I}", "revision", (json_int_t)rev));
	else
		printf("%llu\n", (unsigned long long)rev);
	return CLI_OK;
}

static const struct cli_opt diff_opts[] = {
	{ "file", required_argument, 'f', "FILE|-", "compare the current policy with this proposed document" },
	{ "addr", required_argument, 'a', "HOST:PORT", "the service address (else SLIPWAY_<SERVICE>_ADDR)" },
	{ NULL, 0, 0, NULL, NULL },
};

static int cmd_diff(struct cli *c, int argc, char **argv)
{
	Slipway__V1__DiffPolicyRequest req = SLIPWAY__V1__DIFF_POLICY_REQUEST__INIT;
	const char *addr = NULL, *file = NULL;
	char *doc = NULL;
	int o;
	optind = 0;
	while ((o = cli_getopt(c, argc, argv)) != -1) {
		switch (o) {
		case 'f': file = optarg; break;
		case 'a': addr = optarg; break;
		default: return CLI_USAGE;
		}
	}
	int npos = argc - optind;
	if (npos > 2 || (file != NULL && npos > 0))
		return cli_usage_cmd(c);
	if (npos >= 1 && parse_u64(argv[optind], &req.from_revision) != 0)
		return cli_usage("FROM wants a revision number");
	if (npos == 2 && parse_u64(argv[optind + 1], &req.to_revision) != 0)
		return cli_usage("TO wants a revision number");
	if (file != NULL) {
		size_t len;
		if ((doc = read_doc(file, &len)) == NULL)
			return CLI_FAIL;
		req.document = doc;
	} else if (npos == 0) {
		uint64_t cur;
		int rc = current_revision(c, addr, &cur);
		if (rc != CLI_OK)
			return rc;
		req.from_revision = cur ? cur - 1 : 0;
		req.to_revision = cur;
	}
	ProtobufCMessage *out = NULL;
	int rc = call(c, addr, "DiffPolicy", &req.base, &out);
	free(doc);
	if (rc != CLI_OK)
		return rc;
	Slipway__V1__DiffPolicyResponse *r = (void *)out;
	if (c->output == CLI_JSON) {
		json_t *lines = json_array();
		const char *p = r->diff;
		while (*p) {
			const char *e = strchr(p, '\n');
			size_t n = e ? (size_t)(e - p) : strlen(p);
			json_array_append_new(lines, json_stringn(p, n));
			p += n + (e != NULL);
		}
		json_t *j = file != NULL
				    ? json_pack("{s:s,s:s}", "from", "current", "to", file)
				    : json_pack("{s:I,s:I}", "from", (json_int_t)req.from_revision, "to",
						(json_int_t)req.to_revision);
		json_object_set_new(j, "changes", lines);
		json_object_set_new(j, "weakening", weakening_json(r->weakening, r->n_weakening));
		cli_print_json(j);
	} else if (r->diff[0] == '\0') {
		printf("no changes\n");
	} else {
		fputs(r->diff, stdout);
		if (r->n_weakening > 0)
			putchar('\n');
		print_weakening(stdout, r->weakening, r->n_weakening);
	}
	protobuf_c_message_free_unpacked(out, NULL);
	return CLI_OK;
}

/* "kind[/app[/env[/name]]]", "-" for an empty part. */
static int parse_resource(char *s, Slipway__V1__Resource *r)
{
	char *parts[4] = { "", "", "", "" };
	int n = 0;
	char *p = s;
	while (n < 4) {
		parts[n++] = p;
		char *sl = n < 4 ? strchr(p, '/') : NULL;
		if (sl == NULL)
			break;
		*sl = '\0';
		p = sl + 1;
	}
	for (int i = 0; i < 4; i++)
		if (strcmp(parts[i], "-") == 0)
			parts[i] = "";
	if (parts[0][0] == '\0')
		return -1;
	r->kind = parts[0];
	r->app = parts[1];
	r->environment = parts[2];
	r->name = parts[3];
	return 0;
}

static json_t *strv_json(char **v, size_t n)
{
	json_t *a = json_array();
	for (size_t i = 0; i < n; i++)
		json_array_append_new(a, json_string(v[i]));
	return a;
}

static void print_list(const char *label, char **v, size_t n)
{
	if (n == 0)
		printf("%-10s -\n", label);
	for (size_t i = 0; i < n; i++)
		printf("%-10s %s\n", i == 0 ? label : "", v[i]);
}

static const struct cli_opt explain_opts[] = {
	{ "principal", required_argument, 'p', "SPIFFE-ID", "who asks" },
	{ "action", required_argument, 'A', "ACTION", "what it wants to do" },
	{ "resource", required_argument, 'r', "KIND[/APP[/ENV[/NAME]]]", "on what" },
	{ "addr", required_argument, 'a', "HOST:PORT", "the service address (else SLIPWAY_<SERVICE>_ADDR)" },
	{ NULL, 0, 0, NULL, NULL },
};

static int cmd_explain(struct cli *c, int argc, char **argv)
{
	Slipway__V1__ExplainRequest req = SLIPWAY__V1__EXPLAIN_REQUEST__INIT;
	Slipway__V1__Resource res = SLIPWAY__V1__RESOURCE__INIT;
	const char *addr = NULL;
	char *rtext = NULL;
	int o;
	optind = 0;
	while ((o = cli_getopt(c, argc, argv)) != -1) {
		switch (o) {
		case 'p': req.principal = optarg; break;
		case 'A': req.action = optarg; break;
		case 'r': rtext = optarg; break;
		case 'a': addr = optarg; break;
		default: return CLI_USAGE;
		}
	}
	if (optind != argc || req.principal == NULL || req.action == NULL || rtext == NULL ||
	    parse_resource(rtext, &res) != 0)
		return cli_usage_cmd(c);
	req.resource = &res;
	ProtobufCMessage *out = NULL;
	int rc = call(c, addr, "Explain", &req.base, &out);
	if (rc != CLI_OK)
		return rc;
	Slipway__V1__ExplainResponse *r = (void *)out;
	if (c->output == CLI_JSON) {
		cli_print_json(json_pack(
			"{s:b,s:I,s:o,s:o,s:o,s:o}", "allowed", r->allowed, "revision",
			(json_int_t)r->revision, "reasons", strv_json(r->reasons, r->n_reasons),
			"matched_grants", strv_json(r->matched_grants, r->n_matched_grants),
			"matched_forbids", strv_json(r->matched_forbids, r->n_matched_forbids),
			"groups", strv_json(r->groups, r->n_groups)));
	} else {
		printf("%-10s %s (policy revision %llu)\n", "decision",
		       r->allowed ? "ALLOWED" : "DENIED", (unsigned long long)r->revision);
		print_list("reasons", r->reasons, r->n_reasons);
		print_list("grants", r->matched_grants, r->n_matched_grants);
		print_list("forbids", r->matched_forbids, r->n_matched_forbids);
		print_list("groups", r->groups, r->n_groups);
	}
	protobuf_c_message_free_unpacked(out, NULL);
	return CLI_OK;
}

static json_t *approval_json(const Slipway__V1__Approval *a)
{
	return json_pack("{s:s,s:s,s:s,s:I,s:s,s:b,s:I,s:I,s:o,s:b}", "deployment_id",
			 a->deployment_id, "approver", a->approver, "digest", a->digest, "revision",
			 (json_int_t)a->revision, "comment", a->comment, "approve", a->approve,
			 "created_unix_ms", (json_int_t)a->created_unix_ms, "expires_unix_ms",
			 (json_int_t)a->expires_unix_ms, "groups", strv_json(a->groups, a->n_groups),
			 "break_glass", a->break_glass);
}

static void approval_row(const Slipway__V1__Approval *a)
{
	char t[32], e[32];
	printf("%-8s %-44s %s exp %s  %.19s...  %s\n", a->approve ? "APPROVE" : "REJECT",
	       a->approver, cli_time(a->created_unix_ms, t), cli_time(a->expires_unix_ms, e),
	       a->digest, a->comment);
}

static const struct cli_opt approvals_opts[] = {
	{ "addr", required_argument, 'a', "HOST:PORT", "the service address (else SLIPWAY_<SERVICE>_ADDR)" },
	{ NULL, 0, 0, NULL, NULL },
};

static int cmd_approvals(struct cli *c, int argc, char **argv)
{
	Slipway__V1__ListApprovalsRequest req = SLIPWAY__V1__LIST_APPROVALS_REQUEST__INIT;
	const char *addr = NULL;
	int o;
	optind = 0;
	while ((o = cli_getopt(c, argc, argv)) != -1) {
		if (o == 'a')
			addr = optarg;
		else
			return CLI_USAGE;
	}
	if (optind + 1 != argc)
		return cli_usage_cmd(c);
	req.deployment_id = argv[optind];
	ProtobufCMessage *out = NULL;
	int rc = call(c, addr, "ListApprovals", &req.base, &out);
	if (rc != CLI_OK)
		return rc;
	Slipway__V1__ListApprovalsResponse *r = (void *)out;
	if (c->output == CLI_JSON) {
		json_t *a = json_array();
		for (size_t i = 0; i < r->n_approvals; i++)
			json_array_append_new(a, approval_json(r->approvals[i]));
		cli_print_json(json_pack("{s:s,s:o}", "deployment_id", req.deployment_id,
					 "approvals", a));
	} else if (r->n_approvals == 0) {
		printf("no approvals for %s\n", req.deployment_id);
	} else {
		for (size_t i = 0; i < r->n_approvals; i++)
			approval_row(r->approvals[i]);
	}
	protobuf_c_message_free_unpacked(out, NULL);
	return CLI_OK;
}

extern const struct cli_cmd cli_policy_cmds[];
const struct cli_cmd cli_policy_cmds[] = {
	{ "apply", cmd_apply, "validate and apply a policy document as a new revision",
	  "FILE|- [--expected-revision N] [--dry-run]", apply_opts,
	  "slipway policy apply policy.json\nslipway policy apply --dry-run policy.json\n"
	  "slipway policy get | slipway policy apply --expected-revision 7 -", NULL, NULL },
	{ "get", cmd_get, "print the current (or a given) revision's document", "[--revision N]",
	  get_opts, "slipway policy get > policy.json\nslipway policy get --revision 3", NULL, NULL },
	{ "diff", cmd_diff,
	  "show what changed between two revisions (or would change), and what weakens",
	  "[FROM [TO]] | --file FILE|-", diff_opts,
	  "slipway policy diff\nslipway policy diff 3 5\nslipway policy diff --file proposed.json", NULL, NULL },
	{ "explain", cmd_explain, "show a decision and the rules that made it",
	  "--principal SPIFFE-ID --action ACTION --resource KIND[/APP[/ENV[/NAME]]]", explain_opts,
	  "slipway policy explain --principal spiffe://slipway/user/bob --action approve "
	  "--resource deployment/web/prod", NULL, NULL },
	{ "revision", cmd_revision, "print the current revision number", "", revision_opts,
	  "slipway policy revision", NULL, NULL },
	{ "approvals", cmd_approvals, "list the approvals of a deployment", "DEPLOYMENT",
	  approvals_opts, "slipway policy approvals d-0123", NULL, NULL },
	{ NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL },
};

int cli_cmd_policy(struct cli *c, int argc, char **argv);
int cli_cmd_policy(struct cli *c, int argc, char **argv)
{
	return cli_dispatch(c, "policy", cli_policy_cmds, argc, argv);
}

extern const struct cli_opt cli_verdict_opts[];
const struct cli_opt cli_verdict_opts[] = {
	{ "comment", required_argument, 'c', "TEXT", "a comment, recorded with the verdict (reject needs one)" },
	{ "digest", required_argument, 'd', "sha256:HEX", "the digest you reviewed: refused if the deployment's differs" },
	{ "addr", required_argument, 'a', "HOST:PORT", "the policy service (else SLIPWAY_POLICY_ADDR)" },
	{ NULL, 0, 0, NULL, NULL },
};

static int approve_or_reject(struct cli *c, int argc, char **argv, int approve)
{
	const char *addr = NULL, *comment = "", *digest = "";
	int o;
	optind = 0;
	while ((o = cli_getopt(c, argc, argv)) != -1) {
		switch (o) {
		case 'c': comment = optarg; break;
		case 'd': digest = optarg; break;
		case 'a': addr = optarg; break;
		default: goto usage;
		}
	}
	if (optind + 1 != argc || (!approve && comment[0] == '\0'))
		goto usage;
	ProtobufCMessage *out = NULL;
	int rc;
	if (approve) {
		Slipway__V1__ApproveRequest req = SLIPWAY__V1__APPROVE_REQUEST__INIT;
		req.deployment_id = argv[optind];
		req.digest = (char *)digest;
		req.comment = (char *)comment;
		rc = call(c, addr, "Approve", &req.base, &out);
	} else {
		Slipway__V1__RejectRequest req = SLIPWAY__V1__REJECT_REQUEST__INIT;
		req.deployment_id = argv[optind];
		req.digest = (char *)digest;
		req.comment = (char *)comment;
		rc = call(c, addr, "Reject", &req.base, &out);
	}
	if (rc != CLI_OK)
		return rc;
	Slipway__V1__Approval *a = (void *)out;
	if (c->output == CLI_JSON) {
		cli_print_json(approval_json(a));
	} else {
		printf("%s %s for digest %s (policy revision %llu)\n",
		       approve ? "approved" : "rejected", a->deployment_id, a->digest,
		       (unsigned long long)a->revision);
	}
	protobuf_c_message_free_unpacked(out, NULL);
	return CLI_OK;
usage:
	return cli_usage_cmd(c);
}

int cli_cmd_approve(struct cli *c, int argc, char **argv);
int cli_cmd_approve(struct cli *c, int argc, char **argv)
{
	return approve_or_reject(c, argc, argv, 1);
}

int cli_cmd_reject(struct cli *c, int argc, char **argv);
int cli_cmd_reject(struct cli *c, int argc, char **argv)
{
	return approve_or_reject(c, argc, argv, 0);
}
