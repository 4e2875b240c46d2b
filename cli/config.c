/*
 * config.c - the CLI's optional config file and `slipway config`.
 *
 * $XDG_CONFIG_HOME/slipway/config (else ~/.config/slipway/config) holds
 * named contexts, so one machine can talk to several stacks:
 *
 *   current-context = staging
 *
 *   [context staging]
 *   address = gw.staging:7443        # every service at one address, or
 *   orchestrator = orch.staging:7443 # one address per service
 *   ca = ~/.slipway/staging/ca.crt
 *   cert = ~/.slipway/staging/me.crt
 *   key = ~/.slipway/staging/me.key
 *   output = table
 *   timeout = 30s
 *
 * A setting comes from the command line's flag, else the environment
 * (SLIPWAY_CA, SLIPWAY_<SERVICE>_ADDR, ...), else the file's context: the
 * one --context or SLIPWAY_CONTEXT names, else current-context. No file is
 * fine (nothing comes from it). The file holds paths, never key material;
 * a malformed line is an error that names it, not a silent default.
 */
#include "cli.h"
#include "err.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define LINE_MAX_LEN 1024
#define FILE_MAX_BYTES (1u << 20)

static const char *const keys[] = { "ca",	 "cert",     "key",	"output",
				    "timeout",	 "address",  "audit",	"artifact",
				    "policy",	 "secrets",  "orchestrator" };

static int key_known(const char *k)
{
	for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
		if (strcmp(keys[i], k) == 0)
			return 1;
	return 0;
}

static int name_ok(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n >= CLI_CONF_NAME)
		return 0;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		      (*s >= '0' && *s <= '9') || *s == '.' || *s == '-' || *s == '_'))
			return 0;
	return 1;
}

static char *trim(char *s)
{
	while (*s == ' ' || *s == '\t')
		s++;
	size_t n = strlen(s);
	while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' ||
			 s[n - 1] == '\r'))
		s[--n] = '\0';
	return s;
}

static void config_path(char *out, size_t n)
{
	const char *x = getenv("XDG_CONFIG_HOME"), *h = getenv("HOME");
	if (x && *x)
		snprintf(out, n, "%s/slipway/config", x);
	else
		snprintf(out, n, "%s/.config/slipway/config", h ? h : ".");
}

/* "~/x" -> "$HOME/x" into out; other values unchanged. */
static int expand(const char *v, char *out, size_t n)
{
	const char *h = getenv("HOME");
	int w = strncmp(v, "~/", 2) == 0 && h ? snprintf(out, n, "%s/%s", h, v + 2)
					       : snprintf(out, n, "%s", v);
	return w < 0 || (size_t)w >= n ? -1 : 0;
}

int cli_config_load(struct cli *c, const char *want)
{
	struct cli_conf *f = &c->conf;
	char line[LINE_MAX_LEN + 2], section[CLI_CONF_NAME] = "";
	int lineno = 0, in_section = 0, rc = CLI_OK;
	memset(f, 0, sizeof *f);
	config_path(f->path, sizeof f->path);
	FILE *fp = fopen(f->path, "r");
	if (fp == NULL) {
		if (errno != ENOENT)
			return cli_fail("config %s: %s", f->path, strerror(errno));
		if (want != NULL)
			return cli_fail_rc(SW_ENOTFOUND,
					   "no context '%s': there is no config file %s", want,
					   f->path);
		return CLI_OK;
	}
	f->exists = 1;
	while (fgets(line, sizeof line, fp) != NULL) {
		lineno++;
		if (strchr(line, '\n') == NULL && !feof(fp)) {
			rc = cli_usage("config %s:%d: line longer than %d bytes", f->path, lineno,
				       LINE_MAX_LEN);
			goto out;
		}
		char *s = trim(line);
		if (*s == '#' || *s == '\0')
			continue;
		if (*s == '[') {
			char *end = strchr(s, ']');
			if (end == NULL || end[1] != '\0' || strncmp(s, "[context ", 9) != 0) {
				rc = cli_usage("config %s:%d: want [context NAME]", f->path, lineno);
				goto out;
			}
			*end = '\0';
			char *name = trim(s + 9);
			if (!name_ok(name)) {
				rc = cli_usage("config %s:%d: a context name is 1-%d letters, digits, "
					       "'.', '-', '_'",
					       f->path, lineno, CLI_CONF_NAME - 1);
				goto out;
			}
			for (int i = 0; i < f->ncontexts; i++)
				if (strcmp(f->contexts[i], name) == 0) {
					rc = cli_usage("config %s:%d: context '%s' twice", f->path,
						       lineno, name);
					goto out;
				}
			if (f->ncontexts == CLI_CONF_CONTEXTS) {
				rc = cli_usage("config %s:%d: more than %d contexts", f->path, lineno,
					       CLI_CONF_CONTEXTS);
				goto out;
			}
			snprintf(f->contexts[f->ncontexts++], CLI_CONF_NAME, "%s", name);
			snprintf(section, sizeof section, "%s", name);
			in_section = 1;
			continue;
		}
		char *eq = strchr(s, '=');
		if (eq == NULL) {
			rc = cli_usage("config %s:%d: want KEY = VALUE", f->path, lineno);
			goto out;
		}
		*eq = '\0';
		char *k = trim(s), *v = trim(eq + 1);
		if (!in_section) {
			if (strcmp(k, "current-context") != 0 || !name_ok(v)) {
				rc = cli_usage("config %s:%d: only current-context = NAME comes before "
					       "the first [context NAME]",
					       f->path, lineno);
				goto out;
			}
			snprintf(f->current, sizeof f->current, "%s", v);
			continue;
		}
		if (!key_known(k)) {
			rc = cli_usage("config %s:%d: unknown key '%s' (ca, cert, key, output, "
				       "timeout, address, or a service name)",
				       f->path, lineno, k);
			goto out;
		}
		const char *sel = want ? want : f->current;
		if (strcmp(section, sel) != 0)
			continue;
		if (f->nkv == CLI_CONF_KEYS) {
			rc = cli_usage("config %s:%d: too many keys in a context", f->path, lineno);
			goto out;
		}
		snprintf(f->kv[f->nkv].key, sizeof f->kv[f->nkv].key, "%s", k);
		if (expand(v, f->kv[f->nkv].val, sizeof f->kv[f->nkv].val) != 0) {
			rc = cli_usage("config %s:%d: value too long", f->path, lineno);
			goto out;
		}
		f->nkv++;
	}
	if (ferror(fp)) {
		rc = cli_fail("config %s: read error", f->path);
		goto out;
	}
	{
		const char *sel = want ? want : f->current;
		int found = 0;
		for (int i = 0; i < f->ncontexts; i++)
			found |= strcmp(f->contexts[i], sel) == 0;
		if (*sel != '\0' && !found) {
			rc = cli_fail_rc(SW_ENOTFOUND, "config %s: no context '%s'",
					 f->path, sel);
			goto out;
		}
		if (found)
			snprintf(f->selected, sizeof f->selected, "%s", sel);
	}
out:
	fclose(fp);
	return rc;
}

const char *cli_config_get(const struct cli *c, const char *key)
{
	for (int i = 0; i < c->conf.nkv; i++)
		if (strcmp(c->conf.kv[i].key, key) == 0)
			return c->conf.kv[i].val;
	return NULL;
}

const char *cli_service_addr(const struct cli *c, const char *service)
{
	char env[64];
	snprintf(env, sizeof env, "SLIPWAY_%s_ADDR", service);
	for (char *p = env; *p; p++)
		if (*p >= 'a' && *p <= 'z')
			*p = (char)(*p - 'a' + 'A');
	const char *v = getenv(env);
	if (v != NULL && *v != '\0')
		return v;
	v = cli_config_get(c, service);
	return v != NULL ? v : cli_config_get(c, "address");
}

/* ---------------------------------------------------------------- commands */

static int cmd_view(struct cli *c, int argc, char **argv)
{
	(void)argv;
	const struct cli_conf *f = &c->conf;
	if (argc != 1)
		return cli_usage("usage: slipway config view");
	if (c->output == CLI_JSON) {
		json_t *ctx = json_array(), *kv = json_object();
		for (int i = 0; i < f->ncontexts; i++)
			json_array_append_new(ctx, json_string(f->contexts[i]));
		for (int i = 0; i < f->nkv; i++)
			json_object_set_new(kv, f->kv[i].key, json_string(f->kv[i].val));
		cli_print_json(json_pack("{s:s,s:b,s:s,s:s,s:o,s:o}", "path", f->path, "exists",
					 f->exists, "current_context", f->current, "context",
					 f->selected, "contexts", ctx, "settings", kv));
		return CLI_OK;
	}
	printf("file      %s%s\n", f->path, f->exists ? "" : " (none)");
	printf("current   %s\n", f->current[0] ? f->current : "-");
	for (int i = 0; i < f->ncontexts; i++)
		printf("context   %s%s\n", f->contexts[i],
		       strcmp(f->contexts[i], f->selected) == 0 ? " (in use)" : "");
	for (int i = 0; i < f->nkv; i++)
		printf("  %-14s %s\n", f->kv[i].key, f->kv[i].val);
	return CLI_OK;
}

static int cmd_use(struct cli *c, int argc, char **argv)
{
	const struct cli_conf *f = &c->conf;
	char *buf = NULL, tmp[sizeof f->path + 16];
	int fd = -1, rc = CLI_FAIL, found = 0;
	if (argc != 2 || !name_ok(argv[1]))
		return cli_usage("usage: slipway config use-context NAME");
	for (int i = 0; i < f->ncontexts; i++)
		found |= strcmp(f->contexts[i], argv[1]) == 0;
	if (!found)
		return cli_fail_rc(SW_ENOTFOUND, "no context '%s' in %s", argv[1],
				   f->exists ? f->path : "(no config file)");
	FILE *in = fopen(f->path, "r");
	if (in == NULL)
		return cli_fail("%s: %s", f->path, strerror(errno));
	buf = malloc(FILE_MAX_BYTES + 1);
	size_t n = buf ? fread(buf, 1, FILE_MAX_BYTES + 1, in) : 0;
	fclose(in);
	if (buf == NULL || n > FILE_MAX_BYTES) {
		rc = cli_fail("%s: larger than %u bytes", f->path, FILE_MAX_BYTES);
		goto out;
	}
	buf[n] = '\0';
	snprintf(tmp, sizeof tmp, "%s.XXXXXX", f->path);
	fd = mkstemp(tmp);
	if (fd < 0 || fchmod(fd, 0600) != 0) {
		rc = cli_fail("%s: %s", tmp, strerror(errno));
		goto out;
	}
	FILE *o = fdopen(fd, "w");
	if (o == NULL) {
		rc = cli_fail("%s: %s", tmp, strerror(errno));
		goto out;
	}
	fd = -1;
	/* The first line is the new current-context; an old one (only ever
	 * before the first section) is dropped. */
	fprintf(o, "current-context = %s\n", argv[1]);
	int in_section = 0;
	for (char *line = buf, *next; *line; line = next) {
		char *nl = strchr(line, '\n');
		next = nl ? nl + 1 : line + strlen(line);
		size_t len = (size_t)(next - line);
		const char *s = line;
		while (*s == ' ' || *s == '\t')
			s++;
		if (*s == '[')
			in_section = 1;
		if (!in_section && strncmp(s, "current-context", 15) == 0)
			continue;
		fwrite(line, 1, len, o);
		if (nl == NULL)
			fputc('\n', o);
	}
	if (fflush(o) != 0 || fsync(fileno(o)) != 0 || fclose(o) != 0 ||
	    rename(tmp, f->path) != 0) {
		rc = cli_fail("%s: %s", f->path, strerror(errno));
		unlink(tmp);
		goto out;
	}
	printf("current context: %s\n", argv[1]);
	rc = CLI_OK;
out:
	if (fd >= 0) {
		close(fd);
		unlink(tmp);
	}
	free(buf);
	return rc;
}

extern const struct cli_cmd cli_config_cmds[];
const struct cli_cmd cli_config_cmds[] = {
	{ "view", cmd_view, "show the config file, its contexts and the one in use", "", NULL,
	  "slipway config view\nslipway --context prod config view", NULL, NULL },
	{ "use-context", cmd_use, "make NAME the current context (rewrites current-context)",
	  "NAME", NULL, "slipway config use-context staging", NULL, NULL },
	{ NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL },
};

int cli_cmd_config(struct cli *c, int argc, char **argv);
int cli_cmd_config(struct cli *c, int argc, char **argv)
{
	return cli_dispatch(c, "config", cli_config_cmds, argc, argv);
}
