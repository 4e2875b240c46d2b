/*
 * main.c - the `slipway` command: global options, then a command group.
 *
 *   slipway [-o table|json] [--timeout DUR] [--ca F --cert F --key F] GROUP CMD ...
 *
 * Global options may appear anywhere on the line. Connection settings come
 * from the SLIPWAY_* environment that `scripts/stack up DIR` writes to
 * DIR/env, so `. DIR/env; slipway ...` just works.
 */
#include "cfg.h"
#include "cli.h"
#include "err.h"
#include "log.h"
#include "tls.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int cli_cmd_pki(struct cli *c, int argc, char **argv);
int cli_cmd_health(struct cli *c, int argc, char **argv);
int cli_cmd_audit(struct cli *c, int argc, char **argv);
int cli_cmd_policy(struct cli *c, int argc, char **argv);
int cli_cmd_approve(struct cli *c, int argc, char **argv);
int cli_cmd_reject(struct cli *c, int argc, char **argv);
int cli_cmd_artifact(struct cli *c, int argc, char **argv);
int cli_cmd_deploy(struct cli *c, int argc, char **argv);
int cli_cmd_status(struct cli *c, int argc, char **argv);
int cli_cmd_deployments(struct cli *c, int argc, char **argv);
int cli_cmd_deployment(struct cli *c, int argc, char **argv);
int cli_cmd_cancel(struct cli *c, int argc, char **argv);
int cli_cmd_pause(struct cli *c, int argc, char **argv);
int cli_cmd_resume(struct cli *c, int argc, char **argv);
int cli_cmd_rollback(struct cli *c, int argc, char **argv);
int cli_cmd_agents(struct cli *c, int argc, char **argv);
int cli_cmd_secrets(struct cli *c, int argc, char **argv);

static const struct cli_cmd groups[] = {
	{ "pki", cli_cmd_pki, "create the CA and issue certificates" },
	{ "health", cli_cmd_health, "check the health of the running services" },
	{ "audit", cli_cmd_audit, "read, prove and verify the audit log" },
	{ "policy", cli_cmd_policy, "apply, get, diff and explain the authorization policy" },
	{ "approve", cli_cmd_approve, "approve a deployment waiting for approval" },
	{ "reject", cli_cmd_reject, "reject a deployment waiting for approval (ends it)" },
	{ "artifact", cli_cmd_artifact, "push, pull, list and collect artifacts" },
	{ "deploy", cli_cmd_deploy, "deploy APP ENV VERSION (rolling or canary; --wait follows it)" },
	{ "status", cli_cmd_status, "an environment: current release, active and waiting deployments" },
	{ "deployments", cli_cmd_deployments, "list deployments" },
	{ "deployment", cli_cmd_deployment, "show or watch one deployment (targets, timeline)" },
	{ "cancel", cli_cmd_cancel, "cancel a deployment" },
	{ "pause", cli_cmd_pause, "pause a running deployment" },
	{ "resume", cli_cmd_resume, "resume a paused deployment" },
	{ "rollback", cli_cmd_rollback, "roll an environment back to its last known-good release (or --to)" },
	{ "agents", cli_cmd_agents, "list, enroll and unenroll agents (health, version, scope)" },
	{ "secrets", cli_cmd_secrets, "store, version and rotate secrets (values never printed)" },
};

int cli_fail(const char *fmt, ...)
{
	va_list ap;
	fputs("slipway: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return CLI_FAIL;
}

int cli_usage(const char *fmt, ...)
{
	va_list ap;
	fputs("slipway: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return CLI_USAGE;
}

void cli_print_json(json_t *j)
{
	char *s = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS);
	if (s != NULL) {
		puts(s);
		free(s);
	}
	json_decref(j);
}

const char *cli_time(int64_t unix_ms, char out[32])
{
	if (unix_ms <= 0) {
		snprintf(out, 32, "-");
		return out;
	}
	time_t t = (time_t)(unix_ms / 1000);
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(out, 32, "%Y-%m-%d %H:%M:%SZ", &tm);
	return out;
}

void cli_hex(const uint8_t *p, size_t n, char *out)
{
	static const char hex[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = hex[p[i] >> 4];
		out[2 * i + 1] = hex[p[i] & 15];
	}
	out[2 * n] = '\0';
}

int cli_tty(void)
{
	return isatty(STDERR_FILENO);
}

int cli_dispatch(struct cli *c, const char *group, const struct cli_cmd *cmds, size_t n,
		 int argc, char **argv)
{
	argc--; /* argv[0] is the group's own name */
	argv++;
	if (argc >= 1 && strcmp(argv[0], "help") != 0 && strcmp(argv[0], "--help") != 0) {
		for (size_t i = 0; i < n; i++)
			if (strcmp(cmds[i].name, argv[0]) == 0)
				return cmds[i].fn(c, argc, argv);
		fprintf(stderr, "slipway %s: unknown command '%s'\n\n", group, argv[0]);
	}
	FILE *f = argc >= 1 && strcmp(argv[0], "help") == 0 ? stdout : stderr;
	fprintf(f, "usage: slipway %s COMMAND [options]\n\ncommands:\n", group);
	for (size_t i = 0; i < n; i++)
		fprintf(f, "  %-14s %s\n", cmds[i].name, cmds[i].summary);
	return f == stdout ? CLI_OK : CLI_USAGE;
}

int cli_connect(struct cli *c, const char *service, const char *addr, struct rpc_client **out)
{
	char env[64], err[512];
	*out = NULL;
	if (addr == NULL) {
		snprintf(env, sizeof env, "SLIPWAY_%s_ADDR", service);
		for (char *p = env; *p; p++)
			if (*p >= 'a' && *p <= 'z')
				*p = (char)(*p - 'a' + 'A');
		addr = getenv(env);
		if (addr == NULL || *addr == '\0')
			return cli_fail("no address for the %s service: set %s or pass --addr "
					"(did you source the stack's env file?)",
					service, env);
	}
	if (c->ca_pem == NULL) {
		if (c->ca == NULL || c->cert == NULL || c->key == NULL)
			return cli_fail("TLS material missing: set SLIPWAY_CA, SLIPWAY_CERT and "
					"SLIPWAY_KEY (or --ca/--cert/--key)");
		if (tls_read_pem(c->ca, &c->ca_pem, err, sizeof err) != 0 ||
		    tls_read_pem(c->cert, &c->cert_pem, err, sizeof err) != 0 ||
		    tls_read_pem(c->key, &c->key_pem, err, sizeof err) != 0)
			return cli_fail("%s", err);
	}
	struct rpc_client_opts o = { .target = addr, .ca_pem = c->ca_pem, .cert_pem = c->cert_pem,
				     .key_pem = c->key_pem, .max_msg_bytes = 64u << 20,
				     .fail_fast = 1, .server_service = service };
	if (rpc_client_new(&o, out, err, sizeof err) != 0)
		return cli_fail("%s", err);
	return 0;
}

int cli_call(struct cli *c, const char *service, const ProtobufCServiceDescriptor *sd,
	     const char *method, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	struct rpc_client *cl = NULL;
	char err[1024];
	if (cli_connect(c, service, NULL, &cl) != 0)
		return CLI_FAIL;
	struct rpc_call_opts o = cli_call_opts(c);
	int rc = rpc_call(cl, sd, method, req, resp, &o, err, sizeof err);
	rpc_client_free(cl);
	return rc == 0 ? CLI_OK : cli_fail("%s", err);
}

struct rpc_call_opts cli_call_opts(const struct cli *c)
{
	struct rpc_call_opts o = { .timeout_ms = c->timeout_ms };
	return o;
}

void cli_free(struct cli *c)
{
	free(c->ca_pem);
	free(c->cert_pem);
	if (c->key_pem != NULL) {
		memset(c->key_pem, 0, strlen(c->key_pem));
		free(c->key_pem);
	}
}

static void usage(FILE *f)
{
	fprintf(f, "usage: slipway [-o table|json] [--timeout DUR] [--ca F --cert F --key F] "
		   "GROUP COMMAND ...\n\ngroups:\n");
	for (size_t i = 0; i < sizeof groups / sizeof groups[0]; i++)
		fprintf(f, "  %-12s %s\n", groups[i].name, groups[i].summary);
	fprintf(f, "\nenvironment: SLIPWAY_CA, SLIPWAY_CERT, SLIPWAY_KEY, "
		   "SLIPWAY_<SERVICE>_ADDR (see scripts/stack)\n");
}

/* Removes argv[i] and, when take_value, argv[i+1]; returns the value. */
static char *take(int *argc, char **argv, int i, int take_value)
{
	char *v = take_value ? argv[i + 1] : NULL;
	int k = take_value ? 2 : 1;
	for (int j = i; j + k <= *argc; j++)
		argv[j] = argv[j + k];
	*argc -= k;
	return v;
}

int main(int argc, char **argv)
{
	struct cli c = { .output = CLI_TABLE, .timeout_ms = 30000 };
	int rc;

	c.ca = getenv("SLIPWAY_CA");
	c.cert = getenv("SLIPWAY_CERT");
	c.key = getenv("SLIPWAY_KEY");
	if (getenv("SLIPWAY_OUTPUT") && strcmp(getenv("SLIPWAY_OUTPUT"), "json") == 0)
		c.output = CLI_JSON;

	/* Global options anywhere on the line (but not after "--"). */
	for (int i = 1; i < argc;) {
		const char *a = argv[i];
		int has_val = i + 1 < argc;
		if (strcmp(a, "--") == 0)
			break;
		if ((strcmp(a, "-o") == 0 || strcmp(a, "--output") == 0) && has_val) {
			const char *v = take(&argc, argv, i, 1);
			if (strcmp(v, "json") == 0)
				c.output = CLI_JSON;
			else if (strcmp(v, "table") == 0)
				c.output = CLI_TABLE;
			else
				return cli_usage("-o wants 'table' or 'json'");
		} else if (strcmp(a, "--timeout") == 0 && has_val) {
			long long ms;
			if (cfg_parse_ms(take(&argc, argv, i, 1), &ms) != 0 || ms <= 0)
				return cli_usage("--timeout wants a duration such as 30s");
			c.timeout_ms = ms;
		} else if (strcmp(a, "--ca") == 0 && has_val) {
			c.ca = take(&argc, argv, i, 1);
		} else if (strcmp(a, "--cert") == 0 && has_val) {
			c.cert = take(&argc, argv, i, 1);
		} else if (strcmp(a, "--key") == 0 && has_val) {
			c.key = take(&argc, argv, i, 1);
		} else if (strcmp(a, "-v") == 0 || strcmp(a, "--verbose") == 0) {
			take(&argc, argv, i, 0);
			c.verbose = 1;
		} else {
			i++;
		}
	}
	if (argc < 2 || strcmp(argv[1], "help") == 0 || strcmp(argv[1], "--help") == 0 ||
	    strcmp(argv[1], "-h") == 0) {
		usage(argc < 2 ? stderr : stdout);
		return argc < 2 ? CLI_USAGE : CLI_OK;
	}
	if (strcmp(argv[1], "version") == 0) {
		printf("slipway %s\n", SLIPWAY_VERSION);
		return CLI_OK;
	}
	log_init("cli", c.verbose ? LOG_DEBUG : LOG_OFF);
	rpc_init();
	rc = -1;
	for (size_t i = 0; i < sizeof groups / sizeof groups[0]; i++)
		if (strcmp(groups[i].name, argv[1]) == 0)
			rc = groups[i].fn(&c, argc - 1, argv + 1);
	if (rc == -1) {
		fprintf(stderr, "slipway: unknown group '%s'\n\n", argv[1]);
		usage(stderr);
		rc = CLI_USAGE;
	}
	cli_free(&c);
	rpc_shutdown();
	return rc;
}
