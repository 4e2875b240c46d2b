/*
 * main.c - the `slipway` command: global options, then a command or a group
 * of commands.
 *
 *   slipway [-o table|json] [--timeout DUR] [--context NAME] [--ca F --cert F --key F]
 *           COMMAND|GROUP COMMAND ...
 *
 * Global options may appear anywhere on the line. Connection settings come
 * from the flags, else the SLIPWAY_* environment that `scripts/stack up DIR`
 * writes to DIR/env (so `. DIR/env; slipway ...` just works), else the
 * config file's context (config.c).
 *
 * Every command is a row of a table (struct cli_cmd): its name, summary,
 * synopsis, options and examples. The same rows make the getopt_long table
 * (cli_getopt), the help (`slipway help`, `--help`, `-h`), the usage printed
 * on a usage error, and the completion scripts (`slipway completion`), so
 * none of them can drift from what the parser takes. Exit codes are mapped
 * from the services' status in one place, cli_exit_code().
 */
#include "cfg.h"
#include "cli.h"
#include "err.h"
#include "log.h"
#include "tls.h"
#include "trace.h"

#include <ctype.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int cli_cmd_pki(struct cli *c, int argc, char **argv);
int cli_cmd_health(struct cli *c, int argc, char **argv);
int cli_cmd_audit(struct cli *c, int argc, char **argv);
int cli_cmd_evidence(struct cli *c, int argc, char **argv);
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
int cli_cmd_config(struct cli *c, int argc, char **argv);
int cli_cmd_report(struct cli *c, int argc, char **argv);

/* The commands of each group and the single commands' options live beside
 * their code, one file per group. */
extern const struct cli_cmd cli_pki_cmds[], cli_audit_cmds[], cli_evidence_cmds[], cli_policy_cmds[],
	cli_artifact_cmds[], cli_deployments_cmds[], cli_deployment_cmds[], cli_agents_cmds[],
	cli_secrets_cmds[], cli_config_cmds[], cli_report_cmds[];
extern const struct cli_opt cli_health_opts[], cli_deploy_opts[], cli_action_opts[],
	cli_rollback_opts[], cli_verdict_opts[];

static const struct cli_cmd groups[] = {
	{ "pki", cli_cmd_pki, "create the CA and issue certificates", .sub = cli_pki_cmds },
	{ "health", cli_cmd_health, "check the health of the running services",
	  "[--addr HOST:PORT] [SERVICE...]", cli_health_opts,
	  "slipway health\nslipway health audit policy\nslipway health --addr 127.0.0.1:7443", NULL, NULL },
	{ "audit", cli_cmd_audit, "read, prove and verify the audit log", .sub = cli_audit_cmds },
	{ "evidence", cli_cmd_evidence, "export and verify offline evidence bundles of deployments",
	  .sub = cli_evidence_cmds },
	{ "report", cli_cmd_report, "reports for auditors (read-only): changes to an environment",
	  .sub = cli_report_cmds },
	{ "policy", cli_cmd_policy, "apply, get, diff and explain the authorization policy",
	  .sub = cli_policy_cmds },
	{ "approve", cli_cmd_approve, "approve a deployment waiting for approval",
	  "ID [--comment TEXT]", cli_verdict_opts, "slipway approve d-0123 --comment \"lgtm\"", NULL, NULL },
	{ "reject", cli_cmd_reject, "reject a deployment waiting for approval (ends it)",
	  "ID --comment TEXT", cli_verdict_opts,
	  "slipway reject d-0123 --comment \"not during the sale\"", NULL, NULL },
	{ "artifact", cli_cmd_artifact, "push, pull, list and collect artifacts",
	  .sub = cli_artifact_cmds },
	{ "deploy", cli_cmd_deploy, "deploy APP ENV VERSION (rolling or canary; --wait follows it)",
	  "APP ENV (VERSION | --digest sha256:HEX) [--strategy rolling|canary] [--batch N | "
	  "--batch-percent P] [options] "
	  "[--wait]",
	  cli_deploy_opts,
	  "slipway deploy web prod 1.0.0 --batch-percent 50 --max-unavailable 1 --on-failure "
	  "rollback --wait\n"
	  "slipway deploy web prod 2.0.0 --strategy canary --canary 1 --bake 10m --promote manual "
	  "--batch 2", NULL, NULL },
	{ "status", cli_cmd_status, "an environment: current release, active and waiting deployments",
	  "APP ENV", NULL, "slipway status web prod", NULL, NULL },
	{ "deployments", cli_cmd_deployments, "list deployments", .sub = cli_deployments_cmds },
	{ "deployment", cli_cmd_deployment, "show or watch one deployment (targets, timeline)",
	  .sub = cli_deployment_cmds },
	{ "cancel", cli_cmd_cancel, "cancel a deployment", "ID [--reason TEXT]", cli_action_opts,
	  "slipway cancel d-0123 --reason \"wrong build\"", NULL, NULL },
	{ "pause", cli_cmd_pause, "pause a running deployment", "ID [--reason TEXT]",
	  cli_action_opts, "slipway pause d-0123", NULL, NULL },
	{ "resume", cli_cmd_resume, "resume a paused deployment", "ID [--reason TEXT]",
	  cli_action_opts, "slipway resume d-0123", NULL, NULL },
	{ "rollback", cli_cmd_rollback,
	  "roll an environment back to its last known-good release (or --to)",
	  "APP ENV [--to VERSION] [--reason TEXT] [--idempotency-key K] [--wait]",
	  cli_rollback_opts, "slipway rollback web prod\nslipway rollback web prod --to 1.0.0 --wait", NULL, NULL },
	{ "agents", cli_cmd_agents, "list, enroll and unenroll agents (health, version, scope)",
	  .sub = cli_agents_cmds },
	{ "secrets", cli_cmd_secrets, "store, version and rotate secrets (values never printed)",
	  .sub = cli_secrets_cmds },
	{ "config", cli_cmd_config, "the config file's contexts: view, use-context",
	  .sub = cli_config_cmds },
	{ NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL },
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

void cli_csv_row(FILE *f, int n, const char *const *fields)
{
	for (int i = 0; i < n; i++) {
		const char *v = fields[i] ? fields[i] : "";
		if (i > 0)
			fputc(',', f);
		if (strpbrk(v, ",\"\r\n") == NULL) {
			fputs(v, f);
			continue;
		}
		fputc('"', f);
		for (const char *p = v; *p; p++) {
			if (*p == '"')
				fputc('"', f);
			fputc(*p, f);
		}
		fputc('"', f);
	}
	fputs("\r\n", f);
}

void cli_print_jsonl(json_t *j)
{
	char *s = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
	if (s != NULL) {
		puts(s);
		free(s);
	}
	json_decref(j);
}

/* Two digits at p into *out; -1 unless both are digits. */
static int two(const char *p, int *out)
{
	if (!isdigit((unsigned char)p[0]) || !isdigit((unsigned char)p[1]))
		return -1;
	*out = (p[0] - '0') * 10 + (p[1] - '0');
	return 0;
}

int cli_parse_time(const char *s, int64_t *out_ms)
{
	struct tm tm;
	memset(&tm, 0, sizeof tm);
	const char *end = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
	if (end == NULL)
		end = strptime(s, "%Y-%m-%dt%H:%M:%S", &tm);
	if (end != NULL) {
		int64_t ms = 0, scale = 100;
		if (*end == '.') {
			end++;
			if (!isdigit((unsigned char)*end))
				return -1;
			for (; isdigit((unsigned char)*end); end++, scale /= 10)
				ms += scale * (*end - '0');
		}
		int64_t off = 0;
		if (*end == 'Z' || *end == 'z') {
			end++;
		} else if (*end == '+' || *end == '-') {
			int hh, mm;
			if (two(end + 1, &hh) != 0 || end[3] != ':' || two(end + 4, &mm) != 0 ||
			    hh > 23 || mm > 59)
				return -1;
			off = (int64_t)(hh * 3600 + mm * 60) * (*end == '+' ? 1 : -1);
			end += 6;
		} else {
			return -1; /* RFC 3339 needs the offset */
		}
		if (*end != '\0' || tm.tm_year < 70)
			return -1;
		*out_ms = ((int64_t)timegm(&tm) - off) * 1000 + ms;
		return 0;
	}
	long long v;
	if (cfg_parse_ll(s, &v) == 0) {
		if (v <= 0)
			return -1;
		*out_ms = v;
		return 0;
	}
	size_t n = strlen(s);
	if (n >= 2 && n < 24 && s[n - 1] == 'd') {
		char num[24];
		memcpy(num, s, n - 1);
		num[n - 1] = '\0';
		if (cfg_parse_ll(num, &v) != 0 || v < 0 || v > 100000)
			return -1;
		*out_ms = (int64_t)time(NULL) * 1000 - (int64_t)v * 86400000;
		return 0;
	}
	if (cfg_parse_ms(s, &v) == 0 && v >= 0) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		*out_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 - v;
		return 0;
	}
	return -1;
}

const char *cli_rfc3339(int64_t unix_ms, char out[32])
{
	if (unix_ms <= 0) {
		out[0] = '\0';
		return out;
	}
	time_t t = (time_t)(unix_ms / 1000);
	struct tm tm;
	char base[24];
	gmtime_r(&t, &tm);
	strftime(base, sizeof base, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(out, 32, "%s.%03dZ", base, (int)(unix_ms % 1000));
	return out;
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

int cli_exit_code(int sw_err)
{
	switch (sw_err) {
	case SW_OK: return CLI_OK;
	case SW_ENOTFOUND:
	case SW_EPERM:
	case SW_EUNAUTH: return CLI_DENIED;
	case SW_EUNAVAIL:
	case SW_ETIMEDOUT: return CLI_UNREACHABLE;
	default: return CLI_FAIL;
	}
}

int cli_fail_rc(int sw_err, const char *fmt, ...)
{
	va_list ap;
	fputs("slipway: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return cli_exit_code(sw_err);
}

/* ---------------------------------------------------------------- help */

static const char global_help[] =
	"Global options (anywhere on the line):\n"
	"  -o, --output table|json   output format (else SLIPWAY_OUTPUT); audit search and\n"
	"                            report changes also take csv and jsonl\n"
	"  --timeout DUR             per-call timeout, e.g. 30s (default 30s)\n"
	"  --context NAME            a context of the config file (else SLIPWAY_CONTEXT, else\n"
	"                            its current-context)\n"
	"  --ca FILE, --cert FILE, --key FILE\n"
	"                            TLS material (else SLIPWAY_CA, SLIPWAY_CERT, SLIPWAY_KEY)\n"
	"  -v, --verbose             debug logs on stderr, with the command's trace_id\n"
	"                            (TRACEPARENT continues a W3C trace a script started)\n";

static const char exit_help[] =
	"Exit codes:\n"
	"  0  success\n"
	"  1  the operation failed (e.g. a deployment failed or rolled back with --wait)\n"
	"  2  usage error (unknown command or option, missing argument)\n"
	"  3  not found, or not allowed (NOT_FOUND, PERMISSION_DENIED, UNAUTHENTICATED)\n"
	"  4  cannot reach the service (UNAVAILABLE, DEADLINE_EXCEEDED)\n";

/* "slipway GROUP NAME" or "slipway NAME" into out. */
static const char *cmd_path(const char *group, const struct cli_cmd *cmd, char *out, size_t n)
{
	if (group != NULL)
		snprintf(out, n, "slipway %s %s", group, cmd->name);
	else
		snprintf(out, n, "slipway %s", cmd->name);
	return out;
}

static void print_usage_line(FILE *f, const char *group, const struct cli_cmd *cmd)
{
	char path[128];
	fprintf(f, "Usage: %s%s%s\n", cmd_path(group, cmd, path, sizeof path),
		cmd->synopsis && cmd->synopsis[0] ? " " : "", cmd->synopsis ? cmd->synopsis : "");
}

/* The --help of one command: usage, summary, options, examples. */
static void print_cmd_help(FILE *f, const char *group, const struct cli_cmd *cmd)
{
	char left[96];
	print_usage_line(f, group, cmd);
	fprintf(f, "\n%c%s.\n\nOptions:\n", toupper((unsigned char)cmd->summary[0]),
		cmd->summary + 1);
	for (const struct cli_opt *o = cmd->opts; o != NULL && o->name != NULL; o++) {
		snprintf(left, sizeof left, "--%s%s%s", o->name, o->arg ? " " : "",
			 o->arg ? o->arg : "");
		if (strlen(left) > 26)
			fprintf(f, "  %s\n  %-26s %s\n", left, "", o->help);
		else
			fprintf(f, "  %-26s %s\n", left, o->help);
	}
	fprintf(f, "  %-26s %s\n", "-h, --help", "print this help and exit");
	if (cmd->examples != NULL) {
		fputs("\nExamples:\n  ", f);
		for (const char *p = cmd->examples; *p; p++) {
			fputc(*p, f);
			if (*p == '\n')
				fputs("  ", f);
		}
		fputc('\n', f);
	}
	fprintf(f, "\nGlobal options and exit codes: slipway help\n");
}

static void print_group_help(FILE *f, const struct cli_cmd *g)
{
	fprintf(f, "Usage: slipway %s COMMAND [options]\n\n%c%s.\n\nCommands:\n", g->name,
		toupper((unsigned char)g->summary[0]), g->summary + 1);
	for (const struct cli_cmd *k = g->sub; k->name != NULL; k++)
		fprintf(f, "  %-14s %s\n", k->name, k->summary);
	fprintf(f, "\n'slipway %s COMMAND --help' describes a command; global options and exit "
		   "codes: slipway help\n",
		g->name);
}

static void print_main_help(FILE *f)
{
	fprintf(f, "Usage: slipway [global options] COMMAND [ARGS...]\n"
		   "       slipway help [GROUP [COMMAND]]\n\n"
		   "Slipway deploys immutable releases to agents, under a policy, with an audit "
		   "log.\n\nCommands:\n");
	for (const struct cli_cmd *g = groups; g->name != NULL; g++)
		fprintf(f, "  %-12s %s\n", g->name, g->summary);
	fprintf(f, "  %-12s %s\n  %-12s %s\n  %-12s %s\n", "help", "this text, or a group's or "
		   "command's help", "completion", "print a bash or zsh completion script "
		   "(completion bash|zsh)", "version", "print the version");
	fprintf(f, "\n%s\n%s\nEnvironment: SLIPWAY_CA, SLIPWAY_CERT, SLIPWAY_KEY, "
		   "SLIPWAY_<SERVICE>_ADDR, SLIPWAY_OUTPUT, SLIPWAY_CONTEXT\n(`scripts/stack up DIR` "
		   "writes them to DIR/env).\n\n"
		   "Config file: $XDG_CONFIG_HOME/slipway/config (else ~/.config/slipway/config),\n"
		   "optional: `current-context = NAME`, then `[context NAME]` sections of `key = "
		   "value`\n(address or one per service: audit, artifact, policy, secrets, "
		   "orchestrator;\nca, cert, key, output, timeout). A flag wins over the "
		   "environment, which wins\nover the file.\n",
		global_help, exit_help);
}

/* The usage line and where to read more, on stderr. */
static void usage_of(const char *group, const struct cli_cmd *cmd)
{
	char path[128];
	print_usage_line(stderr, group, cmd);
	fprintf(stderr, "(see '%s --help')\n", cmd_path(group, cmd, path, sizeof path));
}

static const struct cli_opt *find_opt(const struct cli_cmd *cmd, const char *name, size_t len)
{
	const struct cli_opt *prefix = NULL;
	for (const struct cli_opt *o = cmd->opts; o != NULL && o->name != NULL; o++) {
		if (strncmp(o->name, name, len) != 0)
			continue;
		if (o->name[len] == '\0')
			return o;
		prefix = o; /* getopt_long takes an unambiguous prefix */
	}
	return prefix;
}

/*
 * Looks at a command's arguments before it runs: --help or -h anywhere
 * (not as an option's value, not after "--") prints the help; an option
 * that is not in the table prints the usage. Returns -1 to go on, or the
 * exit code.
 */
static int precheck(const char *group, const struct cli_cmd *cmd, int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (strcmp(a, "--") == 0)
			break;
		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			print_cmd_help(stdout, group, cmd);
			return CLI_OK;
		}
		if (a[0] != '-' || a[1] == '\0')
			continue;
		if (a[1] == '-') {
			const char *eq = strchr(a + 2, '=');
			size_t len = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
			const struct cli_opt *o = find_opt(cmd, a + 2, len);
			if (o == NULL) {
				fprintf(stderr, "slipway: unknown option '%.*s'\n", (int)len + 2, a);
				goto usage;
			}
			if (o->has_arg == required_argument && eq == NULL)
				i++;
			continue;
		}
		const char *s = cmd->shorts ? strchr(cmd->shorts, a[1]) : NULL;
		if (s == NULL || a[1] == ':') {
			fprintf(stderr, "slipway: unknown option '%s'\n", a);
			goto usage;
		}
		if (s[1] == ':' && a[2] == '\0')
			i++;
	}
	return -1;
usage:
	usage_of(group, cmd);
	return CLI_USAGE;
}

int cli_usage_cmd(const struct cli *c)
{
	if (c->cmd != NULL)
		usage_of(c->group, c->cmd);
	return CLI_USAGE;
}

/* Runs one command under group (NULL for a single command). */
/* The commands that list records and so also take -o csv and -o jsonl
 * (a list here rather than a field of every command table). */
static int takes_records(const char *group, const char *name)
{
	static const char *const record_cmds[][2] = {
		{ "audit", "search" },
		{ "report", "changes" },
	};
	for (size_t i = 0; i < sizeof record_cmds / sizeof record_cmds[0]; i++)
		if (group != NULL && strcmp(group, record_cmds[i][0]) == 0 &&
		    strcmp(name, record_cmds[i][1]) == 0)
			return 1;
	return 0;
}

static int run_cmd(struct cli *c, const char *group, const struct cli_cmd *cmd, int argc,
		   char **argv)
{
	int rc = precheck(group, cmd, argc, argv);
	if (rc >= 0)
		return rc;
	if ((c->output == CLI_CSV || c->output == CLI_JSONL) && !takes_records(group, cmd->name))
		return cli_usage("-o %s is for commands that list records (audit search, report "
				 "changes); this one takes -o table or -o json",
				 c->output == CLI_CSV ? "csv" : "jsonl");
	c->group = group;
	c->cmd = cmd;
	return cmd->fn(c, argc, argv);
}

int cli_dispatch(struct cli *c, const char *group, const struct cli_cmd *cmds, int argc,
		 char **argv)
{
	const struct cli_cmd *g = NULL;
	for (const struct cli_cmd *k = groups; k->name != NULL; k++)
		if (k->sub == cmds)
			g = k;
	argc--; /* argv[0] is the group's own name */
	argv++;
	int want_help = argc >= 1 && (strcmp(argv[0], "help") == 0 ||
				      strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0);
	if (argc >= 1 && !want_help) {
		for (const struct cli_cmd *k = cmds; k->name != NULL; k++)
			if (strcmp(k->name, argv[0]) == 0)
				return run_cmd(c, group, k, argc, argv);
		fprintf(stderr, "slipway %s: unknown command '%s'\n\n", group, argv[0]);
	}
	FILE *f = want_help ? stdout : stderr;
	if (g != NULL) {
		print_group_help(f, g);
	} else {
		fprintf(f, "Usage: slipway %s COMMAND [options]\n\nCommands:\n", group);
		for (const struct cli_cmd *k = cmds; k->name != NULL; k++)
			fprintf(f, "  %-14s %s\n", k->name, k->summary);
	}
	return want_help ? CLI_OK : CLI_USAGE;
}

int cli_getopt(struct cli *c, int argc, char **argv)
{
	enum { MAX_OPTS = 48 };
	static struct option table[MAX_OPTS + 1];
	static const struct cli_opt *made_for;
	const struct cli_opt *opts = c->cmd != NULL ? c->cmd->opts : NULL;
	if (opts != made_for || opts == NULL) {
		size_t n = 0;
		for (const struct cli_opt *o = opts; o != NULL && o->name != NULL && n < MAX_OPTS;
		     o++, n++)
			table[n] = (struct option){ o->name, o->has_arg, NULL, o->val };
		table[n] = (struct option){ 0, 0, 0, 0 };
		made_for = opts;
	}
	return getopt_long(argc, argv, c->cmd && c->cmd->shorts ? c->cmd->shorts : "", table,
			   NULL);
}

/* ---------------------------------------------------------- completion */

static void words(FILE *f, const struct cli_cmd *cmd)
{
	for (const struct cli_opt *o = cmd->opts; o != NULL && o->name != NULL; o++)
		fprintf(f, " --%s", o->name);
	fputs(" --help", f);
}

static int completion(const char *shell)
{
	if (shell != NULL && strcmp(shell, "bash") == 0) {
		printf("# bash completion for slipway (generated by `slipway completion bash`)\n"
		       "_slipway() {\n"
		       "  local cur=\"${COMP_WORDS[COMP_CWORD]}\" i w g= c= words=\n"
		       "  for ((i = 1; i < COMP_CWORD; i++)); do\n"
		       "    w=\"${COMP_WORDS[i]}\"\n"
		       "    case \"$w\" in -*) continue ;; esac\n"
		       "    if [ -z \"$g\" ]; then g=\"$w\"; elif [ -z \"$c\" ]; then c=\"$w\"; fi\n"
		       "  done\n"
		       "  case \"$g/$c\" in\n");
		printf("    /) words=\"help completion version");
		for (const struct cli_cmd *g = groups; g->name != NULL; g++)
			printf(" %s", g->name);
		printf(" -o --output --timeout --context --ca --cert --key --verbose\" ;;\n");
		for (const struct cli_cmd *g = groups; g->name != NULL; g++) {
			if (g->sub == NULL) {
				printf("    %s/*) words=\"", g->name);
				words(stdout, g);
				printf("\" ;;\n");
				continue;
			}
			printf("    %s/) words=\"", g->name);
			for (const struct cli_cmd *k = g->sub; k->name != NULL; k++)
				printf(" %s", k->name);
			printf("\" ;;\n");
			for (const struct cli_cmd *k = g->sub; k->name != NULL; k++) {
				printf("    %s/%s) words=\"", g->name, k->name);
				words(stdout, k);
				printf("\" ;;\n");
			}
		}
		printf("    help/*) words=\"");
		for (const struct cli_cmd *g = groups; g->name != NULL; g++)
			printf(" %s", g->name);
		printf("\" ;;\n    completion/*) words=\"bash zsh\" ;;\n"
		       "  esac\n"
		       "  COMPREPLY=($(compgen -W \"$words\" -- \"$cur\"))\n"
		       "  case \"$cur\" in -*) ;; *) [ ${#COMPREPLY[@]} -eq 0 ] && "
		       "COMPREPLY=($(compgen -f -- \"$cur\")) ;; esac\n"
		       "}\n"
		       "complete -o filenames -F _slipway slipway\n");
		return CLI_OK;
	}
	if (shell != NULL && strcmp(shell, "zsh") == 0) {
		/* zsh runs the bash function through bashcompinit: one table, one script. */
		printf("#compdef slipway\n# zsh completion for slipway (generated by `slipway "
		       "completion zsh`)\nautoload -U +X bashcompinit && bashcompinit\n");
		fflush(stdout);
		int rc = completion("bash");
		return rc;
	}
	return cli_usage("usage: slipway completion bash|zsh");
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
		addr = cli_service_addr(c, service);
		if (addr == NULL || *addr == '\0')
			return cli_fail("no address for the %s service: set %s, pass --addr, or "
					"add it to a context in %s (did you source the stack's env "
					"file?)",
					service, env, c->conf.path);
	}
	if (c->ca_pem == NULL) {
		if (c->ca == NULL || c->cert == NULL || c->key == NULL)
			return cli_fail("TLS material missing: set SLIPWAY_CA, SLIPWAY_CERT and "
					"SLIPWAY_KEY (or --ca/--cert/--key, or ca/cert/key in a "
					"context of %s)",
					c->conf.path);
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
	return rc == 0 ? CLI_OK : cli_fail_rc(rc, "%s", err);
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

/* flag, else environment, else the config file's context. */
static const char *pick(const char *flag, const char *env, const struct cli *c, const char *key)
{
	if (flag != NULL)
		return flag;
	const char *v = env ? getenv(env) : NULL;
	if (v != NULL && *v != '\0')
		return v;
	return cli_config_get(c, key);
}

/* Settles output, timeout and TLS paths from the flags, the environment and
 * the config file, in that order. CLI_OK or CLI_USAGE. */
static int resolve(struct cli *c, const char *f_output, const char *f_timeout, const char *f_ca,
		   const char *f_cert, const char *f_key)
{
	const char *out = f_output;
	if (out == NULL && getenv("SLIPWAY_OUTPUT") != NULL)
		/* as before: SLIPWAY_OUTPUT=json asks for JSON, anything else for a table */
		out = strcmp(getenv("SLIPWAY_OUTPUT"), "json") == 0 ? "json" : "table";
	if (out == NULL)
		out = cli_config_get(c, "output");
	if (out != NULL && out != f_output && strcmp(out, "json") != 0 && strcmp(out, "table") != 0)
		return cli_usage("output in %s wants 'table' or 'json'", c->conf.path);
	c->output = out == NULL ? CLI_TABLE
		    : strcmp(out, "json") == 0 ? CLI_JSON
		    : strcmp(out, "csv") == 0 && f_output == out ? CLI_CSV
		    : strcmp(out, "jsonl") == 0 && f_output == out ? CLI_JSONL
							     : CLI_TABLE;
	const char *t = f_timeout ? f_timeout : cli_config_get(c, "timeout");
	if (t != NULL) {
		long long ms;
		if (cfg_parse_ms(t, &ms) != 0 || ms <= 0)
			return cli_usage("%s wants a duration such as 30s",
					 f_timeout ? "--timeout" : "timeout in the config file");
		c->timeout_ms = ms;
	}
	c->ca = pick(f_ca, "SLIPWAY_CA", c, "ca");
	c->cert = pick(f_cert, "SLIPWAY_CERT", c, "cert");
	c->key = pick(f_key, "SLIPWAY_KEY", c, "key");
	return CLI_OK;
}

int main(int argc, char **argv)
{
	static struct cli c = { .output = CLI_TABLE, .timeout_ms = 30000 };
	const char *f_output = NULL, *f_timeout = NULL, *f_context = NULL;
	const char *f_ca = NULL, *f_cert = NULL, *f_key = NULL;
	int rc;

	/* Global options anywhere on the line (but not after "--"). Each
	 * setting is the flag's, else the environment's, else the config
	 * file's (below, once the command is known). */
	for (int i = 1; i < argc;) {
		const char *a = argv[i];
		int has_val = i + 1 < argc;
		if (strcmp(a, "--") == 0)
			break;
		if ((strcmp(a, "-o") == 0 || strcmp(a, "--output") == 0) && has_val) {
			f_output = take(&argc, argv, i, 1);
			if (strcmp(f_output, "json") != 0 && strcmp(f_output, "table") != 0 &&
			    strcmp(f_output, "csv") != 0 && strcmp(f_output, "jsonl") != 0)
				return cli_usage("-o wants 'table', 'json', 'csv' or 'jsonl'");
		} else if (strcmp(a, "--timeout") == 0 && has_val) {
			f_timeout = take(&argc, argv, i, 1);
		} else if (strcmp(a, "--context") == 0 && has_val) {
			f_context = take(&argc, argv, i, 1);
		} else if (strcmp(a, "--ca") == 0 && has_val) {
			f_ca = take(&argc, argv, i, 1);
		} else if (strcmp(a, "--cert") == 0 && has_val) {
			f_cert = take(&argc, argv, i, 1);
		} else if (strcmp(a, "--key") == 0 && has_val) {
			f_key = take(&argc, argv, i, 1);
		} else if (strcmp(a, "-v") == 0 || strcmp(a, "--verbose") == 0) {
			take(&argc, argv, i, 0);
			c.verbose = 1;
		} else {
			i++;
		}
	}
	if (argc < 2) {
		print_main_help(stderr);
		return CLI_USAGE;
	}
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)
		argv[1] = "help";
	if (strcmp(argv[1], "version") == 0) {
		printf("slipway %s\n", SLIPWAY_VERSION);
		return CLI_OK;
	}
	if (strcmp(argv[1], "completion") == 0)
		return completion(argc == 3 ? argv[2] : NULL);
	const struct cli_cmd *g = NULL;
	for (const struct cli_cmd *k = groups; k->name != NULL; k++)
		if (strcmp(k->name, argc >= 3 && strcmp(argv[1], "help") == 0 ? argv[2] : argv[1]) == 0)
			g = k;
	if (strcmp(argv[1], "help") == 0) {
		/* slipway help [GROUP [COMMAND]] */
		if (argc == 2) {
			print_main_help(stdout);
			return CLI_OK;
		}
		if (g == NULL || argc > 4)
			return cli_usage("usage: slipway help [GROUP [COMMAND]]: no '%s'", argv[2]);
		if (g->sub == NULL) {
			print_cmd_help(stdout, NULL, g);
			return CLI_OK;
		}
		if (argc == 3) {
			print_group_help(stdout, g);
			return CLI_OK;
		}
		for (const struct cli_cmd *k = g->sub; k->name != NULL; k++)
			if (strcmp(k->name, argv[3]) == 0) {
				print_cmd_help(stdout, g->name, k);
				return CLI_OK;
			}
		return cli_usage("slipway %s has no command '%s' (slipway help %s)", g->name,
				 argv[3], g->name);
	}
	if (g == NULL) {
		fprintf(stderr, "slipway: unknown command '%s'\n\n", argv[1]);
		print_main_help(stderr);
		return CLI_USAGE;
	}
	if (f_context == NULL && getenv("SLIPWAY_CONTEXT") && *getenv("SLIPWAY_CONTEXT"))
		f_context = getenv("SLIPWAY_CONTEXT");
	if ((rc = cli_config_load(&c, f_context)) != CLI_OK)
		return rc;
	if ((rc = resolve(&c, f_output, f_timeout, f_ca, f_cert, f_key)) != CLI_OK)
		return rc;
	log_init("cli", c.verbose ? LOG_DEBUG : LOG_OFF);
	/* One trace per command: every call it makes carries a span of it
	 * (traceparent), so its work can be followed in the services' logs.
	 * TRACEPARENT (the usual environment variable) continues a trace a
	 * script or a CI job started; an invalid one is ignored. */
	struct trace_ctx tr, parent;
	const char *tp = getenv("TRACEPARENT");
	if (tp != NULL && trace_parse(tp, strlen(tp), &parent) == 0)
		trace_child(&parent, &tr);
	else
		trace_new(&tr);
	trace_set_current(&tr);
	log_debug("trace started", NULL); /* --verbose: the line shows trace_id */
	rpc_init();
	if (g->sub != NULL)
		rc = g->fn(&c, argc - 1, argv + 1);
	else
		rc = run_cmd(&c, NULL, g, argc - 1, argv + 1);
	cli_free(&c);
	rpc_shutdown();
	return rc;
}
