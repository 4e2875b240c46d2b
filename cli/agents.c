/*
 * agents.c - agents and their enrollments:
 *
 *   slipway agents ls [--app A] [--env E]
 *   slipway agents enroll SPIFFE_ID --app A --env E [--region R] [--group G]
 *                         [--sealing-key HEX|FILE] [--reason R]
 *   slipway agents unenroll SPIFFE_ID [--reason R]
 *
 * An agent serves only the app, environment, region and group an admin
 * enrolled it for (the policy service keeps enrollments; `enroll` on
 * `agent`). `ls` joins what the orchestrator knows of registered agents
 * with the enrollments, so an enrolled agent that never registered (or was
 * dropped) shows as ABSENT. Unenrolling a lost host removes it from every
 * later deployment.
 */
#include "cli.h"
#include "sealed.h"

#include "slipway/v1/enrollment.pb-c.h"
#include "slipway/v1/orchestrator.pb-c.h"

#include <getopt.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *short_id(const char *id)
{
	return strncmp(id, "spiffe://", 9) == 0 ? id + 9 : id;
}

static const char *label(const Slipway__V1__AgentInfo *ag, const char *key)
{
	for (size_t k = 0; k < ag->n_labels; k++)
		if (strcmp(ag->labels[k]->key, key) == 0)
			return ag->labels[k]->value;
	return "";
}

/* The enrollments in scope, every page (NULL with a warning when the
 * policy service cannot be asked: the listing goes on without them). */
static Slipway__V1__ListEnrollmentsResponse **enrollments(struct cli *c, const char *app,
							 const char *env, size_t *npages)
{
	Slipway__V1__ListEnrollmentsResponse **pages = NULL;
	uint64_t after = 0;
	*npages = 0;
	for (;;) {
		Slipway__V1__ListEnrollmentsRequest req = SLIPWAY__V1__LIST_ENROLLMENTS_REQUEST__INIT;
		req.after_revision = after;
		req.app = (char *)app;
		req.environment = (char *)env;
		ProtobufCMessage *m = NULL;
		if (cli_call(c, "policy", &slipway__v1__enrollments__descriptor, "ListEnrollments",
			     &req.base, &m) != CLI_OK) {
			fprintf(stderr, "slipway: enrollments not shown (above)\n");
			break;
		}
		void *np = realloc(pages, (*npages + 1) * sizeof *pages);
		if (np == NULL) {
			protobuf_c_message_free_unpacked(m, NULL);
			break;
		}
		pages = np;
		Slipway__V1__ListEnrollmentsResponse *r = (void *)m;
		pages[(*npages)++] = r;
		if (!r->more || r->n_enrollments == 0)
			break;
		after = r->enrollments[r->n_enrollments - 1]->revision;
	}
	return pages;
}

static int registered(Slipway__V1__ListAgentsResponse *const *ap, size_t nap, const char *id)
{
	for (size_t p = 0; p < nap; p++)
		for (size_t i = 0; i < ap[p]->n_agents; i++)
			if (strcmp(ap[p]->agents[i]->id, id) == 0)
				return 1;
	return 0;
}

#define AGENT_PAGES_MAX 1000 /* pages of up to 1000 agents: far past any fleet */

/* Every page of ListAgents into *out (free each with
 * protobuf_c_message_free_unpacked, then the array). CLI_OK or the exit
 * code of the failure (printed). */
static int all_agents(struct cli *c, Slipway__V1__ListAgentsRequest *req,
		      Slipway__V1__ListAgentsResponse ***out, size_t *n)
{
	char token[256] = "";
	int rc = CLI_OK;
	*out = NULL;
	*n = 0;
	do {
		ProtobufCMessage *m = NULL;
		req->page_token = token;
		if ((rc = cli_call(c, "orchestrator", &slipway__v1__orchestrator__descriptor,
				   "ListAgents", &req->base, &m)) != CLI_OK)
			break;
		void *np = realloc(*out, (*n + 1) * sizeof **out);
		if (np == NULL) {
			protobuf_c_message_free_unpacked(m, NULL);
			rc = cli_fail("out of memory");
			break;
		}
		*out = np;
		Slipway__V1__ListAgentsResponse *r = (void *)m;
		(*out)[(*n)++] = r;
		if (strlen(r->next_page_token) >= sizeof token) {
			rc = cli_fail("the orchestrator's page token is too long");
			break;
		}
		snprintf(token, sizeof token, "%s", r->next_page_token);
	} while (token[0] != '\0' && *n < AGENT_PAGES_MAX);
	if (rc == CLI_OK && token[0] != '\0')
		fprintf(stderr, "slipway: more than %d pages of agents; the rest are not shown\n",
			AGENT_PAGES_MAX);
	return rc;
}

static const struct cli_opt ls_opts[] = {
	{ "app", required_argument, 'a', "APP", "only this app" },
	{ "env", required_argument, 'e', "ENV", "only this environment" },
	{ NULL, 0, 0, NULL, NULL },
};

static int cmd_ls(struct cli *c, int argc, char **argv)
{
	Slipway__V1__ListAgentsRequest req = SLIPWAY__V1__LIST_AGENTS_REQUEST__INIT;
	int o;
	optind = 0;
	while ((o = cli_getopt(c, argc, argv)) != -1) {
		if (o == 'a')
			req.app = optarg;
		else if (o == 'e')
			req.environment = optarg;
		else
			return CLI_USAGE;
	}
	if (optind != argc)
		return cli_usage_cmd(c);
	Slipway__V1__ListAgentsResponse **ap = NULL;
	size_t nap = 0;
	int rc = all_agents(c, &req, &ap, &nap);
	if (rc != CLI_OK) {
		for (size_t p = 0; p < nap; p++)
			protobuf_c_message_free_unpacked(&ap[p]->base, NULL);
		free(ap);
		return rc;
	}
	size_t npages = 0;
	Slipway__V1__ListEnrollmentsResponse **pages = enrollments(c, req.app, req.environment,
								   &npages);
	static const char *const proc[] = { "?", "none", "starting", "running", "crashloop", "stopped" };
	json_t *a = json_array();
	for (size_t p = 0; p < nap; p++) {
		for (size_t i = 0; i < ap[p]->n_agents; i++) {
			const Slipway__V1__AgentInfo *ag = ap[p]->agents[i];
			json_t *l = json_object();
			for (size_t k = 0; k < ag->n_labels; k++)
				json_object_set_new(l, ag->labels[k]->key, json_string(ag->labels[k]->value));
			const Slipway__V1__AgentRuntime *rt = ag->runtime;
			json_array_append_new(
				a, json_pack("{s:s,s:s,s:s,s:s,s:o,s:s,s:s,s:s,s:s,s:b,s:s,s:s,s:I,s:s,s:s,s:I}",
					     "id", ag->id, "app", label(ag, "app"), "environment",
					     label(ag, "environment"), "region", label(ag, "region"), "labels",
					     l, "health",
					     ag->health == SLIPWAY__V1__AGENT_HEALTH__AGENT_LOST ? "lost"
												 : "online",
					     "version", rt ? rt->version : "", "digest", rt ? rt->digest : "",
					     "process", rt && rt->process <= 5 ? proc[rt->process] : "?",
					     "healthy", rt ? rt->healthy : 0, "health_detail",
					     rt ? rt->health_detail : "", "endpoint", rt ? rt->endpoint : "",
					     "restarts", (json_int_t)(rt ? rt->restarts : 0), "hostname",
					     ag->hostname, "agent_version", ag->agent_version,
					     "last_heartbeat_unix_ms", (json_int_t)ag->last_heartbeat_unix_ms));
		}
	}
	for (size_t p = 0; p < npages; p++)
		for (size_t i = 0; i < pages[p]->n_enrollments; i++) {
			const Slipway__V1__Enrollment *e = pages[p]->enrollments[i];
			if (registered(ap, nap, e->agent_id))
				continue;
			json_array_append_new(
				a, json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:s}", "id", e->agent_id, "app",
					     e->app, "environment", e->environment, "region", e->region,
					     "group", e->group, "health", "absent", "enrolled_by",
					     e->enrolled_by));
		}
	if (c->output == CLI_JSON) {
		cli_print_json(a); /* takes the reference */
		a = NULL;
	} else {
		char t[32];
		json_t *e;
		size_t i;
		struct cli_table tab;
		cli_table_init(&tab, "lllllll", "AGENT", "HEALTH", "APP/ENV", "VERSION", "PROCESS",
			       "HEALTHY", "LAST HEARTBEAT");
		json_array_foreach(a, i, e) {
			char ae[140], up[8];
			const char *h = json_string_value(json_object_get(e, "health"));
			snprintf(ae, sizeof ae, "%s/%s", json_string_value(json_object_get(e, "app")),
				 json_string_value(json_object_get(e, "environment")));
			snprintf(up, sizeof up, "%s", h);
			for (char *q = up; *q && strcmp(h, "online") != 0; q++)
				*q = (char)(*q >= 'a' && *q <= 'z' ? *q - 'a' + 'A' : *q);
			json_t *v = json_object_get(e, "version");
			json_t *hb = json_object_get(e, "last_heartbeat_unix_ms");
			cli_table_row(&tab, short_id(json_string_value(json_object_get(e, "id"))), up,
				      ae, v && json_string_value(v)[0] ? json_string_value(v) : "-",
				      v ? json_string_value(json_object_get(e, "process")) : "-",
				      v ? (json_is_true(json_object_get(e, "healthy")) ? "yes" : "no")
					: "-",
				      hb ? cli_time(json_integer_value(hb), t) : "never registered");
		}
		cli_table_print(&tab, stdout);
		cli_table_free(&tab);
	}
	json_decref(a);
	for (size_t p = 0; p < npages; p++)
		protobuf_c_message_free_unpacked(&pages[p]->base, NULL);
	free(pages);
	for (size_t p = 0; p < nap; p++)
		protobuf_c_message_free_unpacked(&ap[p]->base, NULL);
	free(ap);
	return CLI_OK;
}

static void print_enrollment(const struct cli *c, const char *what,
			     const Slipway__V1__Enrollment *e)
{
	char key[65] = "";
	if (e->seal_public_key.len == 32)
		sodium_bin2hex(key, sizeof key, e->seal_public_key.data, 32);
	if (c->output == CLI_JSON) {
		cli_print_json(json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:I,s:b}", "agent_id",
					 e->agent_id, "app", e->app, "environment", e->environment,
					 "region", e->region, "group", e->group, "seal_public_key", key,
					 "enrolled_by", e->enrolled_by, "revision",
					 (json_int_t)e->revision, "removed", e->removed));
		return;
	}
	printf("%s %s: %s/%s region %s%s%s, sealing key %s\n", what, e->agent_id, e->app,
	       e->environment, e->region, e->group[0] ? " group " : "", e->group,
	       key[0] ? key : "pinned at its first registration");
}

static const struct cli_opt enroll_opts[] = {
	{ "app", required_argument, 'a', "APP", "the app it serves (required)" },
	{ "env", required_argument, 'e', "ENV", "the environment it serves (required)" },
	{ "region", required_argument, 'r', "REGION", "the agent's region" },
	{ "group", required_argument, 'g', "GROUP", "the agent's group" },
	{ "sealing-key", required_argument, 'k', "HEX|FILE", "the agent's X25519 public key (64 hex digits or a .pub file)" },
	{ "reason", required_argument, 'R', "TEXT", "why (recorded in the audit log)" },
	{ NULL, 0, 0, NULL, NULL },
};

static int cmd_enroll(struct cli *c, int argc, char **argv)
{
	Slipway__V1__EnrollAgentRequest req = SLIPWAY__V1__ENROLL_AGENT_REQUEST__INIT;
	uint8_t key[32];
	int o;
	optind = 0;
	while ((o = cli_getopt(c, argc, argv)) != -1) {
		switch (o) {
		case 'a': req.app = optarg; break;
		case 'e': req.environment = optarg; break;
		case 'r': req.region = optarg; break;
		case 'g': req.group = optarg; break;
		case 'R': req.reason = optarg; break;
		case 'k': {
			size_t n = 0;
			char err[256];
			if (strlen(optarg) == 64 &&
			    sodium_hex2bin(key, sizeof key, optarg, 64, NULL, &n, NULL) == 0 &&
			    n == sizeof key) {
				/* 64 hex digits */
			} else if (sealed_public_key_read(optarg, SEALED_LABEL_X25519_PUBLIC, key,
							  sizeof key, err, sizeof err) != 0) {
				return cli_usage("--sealing-key: the agent's X25519 public key, as 64 hex "
						 "digits or a public key file (%s)",
						 err);
			}
			req.seal_public_key.data = key;
			req.seal_public_key.len = sizeof key;
			break;
		}
		default: return cli_usage_cmd(c);
		}
	}
	if (optind != argc - 1 || req.app[0] == '\0' || req.environment[0] == '\0')
		return cli_usage_cmd(c);
	req.agent_id = argv[optind];
	ProtobufCMessage *m = NULL;
	int rc = cli_call(c, "policy", &slipway__v1__enrollments__descriptor, "EnrollAgent", &req.base,
		     &m);
	if (rc != CLI_OK)
		return rc;
	print_enrollment(c, "enrolled", (void *)m);
	protobuf_c_message_free_unpacked(m, NULL);
	return CLI_OK;
}

static const struct cli_opt unenroll_opts[] = {
	{ "reason", required_argument, 'R', "TEXT", "why (recorded in the audit log)" },
	{ NULL, 0, 0, NULL, NULL },
};

static int cmd_unenroll(struct cli *c, int argc, char **argv)
{
	Slipway__V1__UnenrollAgentRequest req = SLIPWAY__V1__UNENROLL_AGENT_REQUEST__INIT;
	int o;
	optind = 0;
	while ((o = cli_getopt(c, argc, argv)) != -1) {
		if (o == 'R')
			req.reason = optarg;
		else
			return CLI_USAGE;
	}
	if (optind != argc - 1)
		return cli_usage_cmd(c);
	req.agent_id = argv[optind];
	ProtobufCMessage *m = NULL;
	int rc = cli_call(c, "policy", &slipway__v1__enrollments__descriptor, "UnenrollAgent",
		     &req.base, &m);
	if (rc != CLI_OK)
		return rc;
	print_enrollment(c, "unenrolled", (void *)m);
	protobuf_c_message_free_unpacked(m, NULL);
	return CLI_OK;
}

extern const struct cli_cmd cli_agents_cmds[];
const struct cli_cmd cli_agents_cmds[] = {
	{ "ls", cmd_ls, "registered agents (health, version, heartbeat) and enrolled absent ones",
	  "[--app APP] [--env ENV]", ls_opts, "slipway agents ls\nslipway agents ls --app web --env prod", NULL, NULL },
	{ "enroll", cmd_enroll, "bind an agent to an app, environment, region (audited)",
	  "SPIFFE_ID --app APP --env ENV [--region R] [--group G] [--sealing-key HEX|FILE] "
	  "[--reason TEXT]",
	  enroll_opts,
	  "slipway agents enroll spiffe://slipway/agent/eu/web-1 --app web --env prod --region eu", NULL, NULL },
	{ "unenroll", cmd_unenroll, "remove an agent's binding: it serves nothing (audited)",
	  "SPIFFE_ID [--reason TEXT]", unenroll_opts,
	  "slipway agents unenroll spiffe://slipway/agent/eu/web-1 --reason \"host retired\"", NULL, NULL },
	{ NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL },
};

int cli_cmd_agents(struct cli *c, int argc, char **argv);
int cli_cmd_agents(struct cli *c, int argc, char **argv)
{
	return cli_dispatch(c, "agents", cli_agents_cmds, argc, argv);
}
