/*
 * secrets.c - `slipway secrets ...`: operate the secrets service.
 *
 *   slipway secrets keys [--out DIR]                 the service's public keys (pin them)
 *   slipway secrets put NAME --scope APP[/ENV] [--file F] [--cas N] [--keep-current]
 *                                                    [--strip-newline]
 *   slipway secrets ls [--scope APP[/ENV]]           current versions (metadata)
 *   slipway secrets versions NAME --scope APP[/ENV]  every version (metadata)
 *   slipway secrets disable|enable|set-current NAME --scope S --version N
 *   slipway secrets destroy NAME --scope S --version N --yes
 *   slipway secrets rotate-master [--retire]
 *   slipway secrets keygen --out PREFIX              an agent's X25519 key pair
 *   slipway secrets grant --deployment D --agent ID --agent-pub F --scope APP/ENV
 *                         [--ttl DUR] NAME[@VERSION]...   (as the orchestrator)
 *   slipway secrets fetch-check --deployment D --agent ID --agent-key F --pin F
 *
 * `put` reads the value from stdin (without echo on a terminal) or --file,
 * never from the command line, into locked memory, and seals it to the
 * service's X25519 key (crypto_box_seal) before it leaves the process: the
 * plaintext crosses no other hop. No command prints a value; fetch-check
 * (run with an agent's certificate) opens a bundle as that agent would and
 * prints names, versions and sizes only. keygen and grant exist for
 * setting up and checking agents by hand (grant needs the orchestrator's
 * certificate: the service refuses anyone else).
 */
#include "cfg.h"
#include "cli.h"
#include "err.h"
#include "sealed.h"

#include "slipway/v1/secrets.pb-c.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define VALUE_CAP (1u << 20) /* client-side cap; the service enforces its own */

enum {
	A_SCOPE = 1 << 0, A_FILE = 1 << 1, A_CAS = 1 << 2, A_KEEP = 1 << 3, A_VERSION = 1 << 4,
	A_YES = 1 << 5, A_RETIRE = 1 << 6, A_OUT = 1 << 7, A_STRIP = 1 << 8, A_DEPLOY = 1 << 9,
	A_AGENTKEY = 1 << 10, A_PIN = 1 << 11, A_AGENT = 1 << 12, A_AGENTPUB = 1 << 13,
	A_TTL = 1 << 14,
};

struct args {
	const char *name, *file, *out, *addr, *deployment, *agent, *agent_key, *agent_pub, *pin;
	char **rest; /* positional arguments after the options */
	int nrest;
	long long ttl_ms;
	char app[64], env[64];
	int have_scope, cas, keep, yes, retire, strip;
	long long cas_version, version;
};

/* The options, one row each; every command's table takes the rows it uses
 * (and --addr). */
#define O_SCOPE { "scope", required_argument, 's', "APP[/ENV]", "the secret's scope: an app, or an app and environment" }
#define O_FILE { "file", required_argument, 'f', "FILE", "read the value from FILE (else stdin, not echoed)" }
#define O_CAS { "cas", required_argument, 'c', "N", "fail unless the latest version is N (0: a new secret)" }
#define O_KEEP { "keep-current", no_argument, 'k', NULL, "store the version without making it current" }
#define O_VERSION { "version", required_argument, 'v', "N", "the version (1 or more)" }
#define O_YES { "yes", no_argument, 'y', NULL, "yes, erase it for good" }
#define O_RETIRE { "retire", no_argument, 'r', NULL, "retire the old master key once every data key is rewrapped" }
#define O_OUT { "out", required_argument, 'o', "PATH", "where to write" }
#define O_STRIP { "strip-newline", no_argument, 'n', NULL, "drop one trailing newline from the value" }
#define O_DEPLOY { "deployment", required_argument, 'd', "ID", "the deployment" }
#define O_AGENTKEY { "agent-key", required_argument, 'a', "FILE", "the agent's X25519 secret key file" }
#define O_PIN { "pin", required_argument, 'p', "FILE", "the service's signing key pin file (secrets keys --out)" }
#define O_ADDR { "addr", required_argument, 'A', "HOST:PORT", "the secrets service (else SLIPWAY_SECRETS_ADDR)" }
#define O_AGENT { "agent", required_argument, 'g', "SPIFFE-ID", "the agent" }
#define O_AGENTPUB { "agent-pub", required_argument, 'P', "FILE", "the agent's X25519 public key file" }
#define O_TTL { "ttl", required_argument, 't', "DUR", "how long the bundle may be fetched (e.g. 15m)" }
#define O_END { NULL, 0, 0, NULL, NULL }

static const struct cli_opt keys_opts[] = { O_OUT, O_ADDR, O_END };
static const struct cli_opt put_opts[] = { O_SCOPE, O_FILE, O_CAS, O_KEEP, O_STRIP, O_ADDR, O_END };
static const struct cli_opt scope_opts[] = { O_SCOPE, O_ADDR, O_END };
static const struct cli_opt version_opts[] = { O_SCOPE, O_VERSION, O_ADDR, O_END };
static const struct cli_opt destroy_opts[] = { O_SCOPE, O_VERSION, O_YES, O_ADDR, O_END };
static const struct cli_opt rotate_opts[] = { O_RETIRE, O_ADDR, O_END };
static const struct cli_opt keygen_opts[] = {
	{ "out", required_argument, 'o', "PREFIX", "write PREFIX.key (secret) and PREFIX.pub" },
	O_ADDR, O_END,
};
static const struct cli_opt grant_opts[] = { O_DEPLOY, O_AGENT, O_AGENTPUB, O_SCOPE, O_TTL, O_ADDR, O_END };
static const struct cli_opt fetch_opts[] = { O_DEPLOY, O_AGENT, O_AGENTKEY, O_PIN, O_ADDR, O_END };

static int allowed(int mask, int opt)
{
	switch (opt) {
	case 's': return mask & A_SCOPE;
	case 'f': return mask & A_FILE;
	case 'c': return mask & A_CAS;
	case 'k': return mask & A_KEEP;
	case 'v': return mask & A_VERSION;
	case 'y': return mask & A_YES;
	case 'r': return mask & A_RETIRE;
	case 'o': return mask & A_OUT;
	case 'n': return mask & A_STRIP;
	case 'd': return mask & A_DEPLOY;
	case 'a': return mask & A_AGENTKEY;
	case 'p': return mask & A_PIN;
	case 'g': return mask & A_AGENT;
	case 'P': return mask & A_AGENTPUB;
	case 't': return mask & A_TTL;
	case 'A': return 1;
	}
	return 0;
}

static int parse_scope(const char *s, struct args *a)
{
	const char *slash = strchr(s, '/');
	size_t alen = slash ? (size_t)(slash - s) : strlen(s);
	if (alen == 0 || alen >= sizeof a->app || (slash && strlen(slash + 1) >= sizeof a->env) ||
	    (slash && slash[1] == '\0') || (slash && strchr(slash + 1, '/')))
		return -1;
	memcpy(a->app, s, alen);
	a->app[alen] = '\0';
	snprintf(a->env, sizeof a->env, "%s", slash ? slash + 1 : "");
	a->have_scope = 1;
	return 0;
}

/* Parses options allowed by mask and `names` positional arguments (0 or 1:
 * the secret name). Returns 0 or CLI_USAGE. */
static int parse(struct cli *c, int argc, char **argv, int mask, int names, const char *usage, struct args *a)
{
	long long v;
	int o;
	memset(a, 0, sizeof *a);
	optind = 0;
	while ((o = cli_getopt(c, argc, argv)) != -1) {
		if (o == '?' || !allowed(mask, o))
			return cli_usage("usage: %s", usage);
		switch (o) {
		case 's':
			if (parse_scope(optarg, a) != 0)
				return cli_usage("--scope wants APP or APP/ENV");
			break;
		case 'f': a->file = optarg; break;
		case 'c':
			if (cfg_parse_ll(optarg, &v) != 0 || v < 0 || v > UINT32_MAX)
				return cli_usage("--cas wants the expected latest version (0 = new)");
			a->cas = 1;
			a->cas_version = v;
			break;
		case 'k': a->keep = 1; break;
		case 'v':
			if (cfg_parse_ll(optarg, &v) != 0 || v < 1 || v > UINT32_MAX)
				return cli_usage("--version wants a version number (1 or more)");
			a->version = v;
			break;
		case 'y': a->yes = 1; break;
		case 'r': a->retire = 1; break;
		case 'o': a->out = optarg; break;
		case 'n': a->strip = 1; break;
		case 'd': a->deployment = optarg; break;
		case 'a': a->agent_key = optarg; break;
		case 'p': a->pin = optarg; break;
		case 'g': a->agent = optarg; break;
		case 'P': a->agent_pub = optarg; break;
		case 't':
			if (cfg_parse_ms(optarg, &v) != 0 || v < 1000)
				return cli_usage("--ttl wants a duration such as 15m");
			a->ttl_ms = v;
			break;
		case 'A': a->addr = optarg; break;
		}
	}
	if (names >= 0 ? argc - optind != names : argc - optind < 1)
		return cli_usage("usage: %s", usage);
	if (names)
		a->name = argv[optind];
	a->rest = argv + optind;
	a->nrest = argc - optind;
	if ((mask & A_SCOPE) && names != 0 && !a->have_scope)
		return cli_usage("usage: %s", usage);
	if ((mask & A_VERSION) && a->version == 0)
		return cli_usage("usage: %s", usage);
	return 0;
}

static int call(struct cli *c, const struct args *a, const char *method,
		const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	struct rpc_client *cl = NULL;
	char err[512];
	if (cli_connect(c, "secrets", a->addr, &cl) != 0)
		return CLI_FAIL;
	struct rpc_call_opts o = cli_call_opts(c);
	int rc = rpc_call(cl, &slipway__v1__secrets__descriptor, method, req, resp, &o, err,
			  sizeof err);
	rpc_client_free(cl);
	if (rc != 0)
		return cli_fail_rc(rc, "secrets %s: %s", method, err);
	return CLI_OK;
}

static const char *state_text(Slipway__V1__SecretState st)
{
	switch (st) {
	case SLIPWAY__V1__SECRET_STATE__SECRET_STATE_ENABLED: return "enabled";
	case SLIPWAY__V1__SECRET_STATE__SECRET_STATE_DISABLED: return "disabled";
	case SLIPWAY__V1__SECRET_STATE__SECRET_STATE_DESTROYED: return "destroyed";
	default: return "?";
	}
}

static json_t *version_json(const Slipway__V1__SecretVersion *v)
{
	return json_pack("{s:s,s:s,s:s,s:I,s:s,s:b,s:I,s:s,s:I,s:I}", "name", v->name, "app",
			 v->scope ? v->scope->app : "", "environment",
			 v->scope ? v->scope->environment : "", "version", (json_int_t)v->version,
			 "state", state_text(v->state), "current", v->current,
			 "master_key_version", (json_int_t)v->master_key_version, "created_by",
			 v->created_by, "created_unix_ms", (json_int_t)v->created_unix_ms,
			 "size_bytes", (json_int_t)v->size_bytes);
}

static void version_header(struct cli_table *t)
{
	cli_table_init(t, "llrllrrll", "NAME", "SCOPE", "VERSION", "STATE", "CUR", "MASTER",
		       "SIZE", "CREATED", "BY");
}

static void version_row(struct cli_table *t, const Slipway__V1__SecretVersion *v)
{
	char scope[140], t_[32], ver[16], master[16], size[16];
	snprintf(scope, sizeof scope, "%s/%s", v->scope ? v->scope->app : "",
		 v->scope && v->scope->environment[0] ? v->scope->environment : "*");
	snprintf(ver, sizeof ver, "%u", v->version);
	snprintf(master, sizeof master, "%u", v->master_key_version);
	snprintf(size, sizeof size, "%u", v->size_bytes);
	cli_table_row(t, v->name, scope, ver, state_text(v->state), v->current ? "*" : "",
		      master, size, cli_time(v->created_unix_ms, t_), v->created_by);
}

static void scope_set(Slipway__V1__SecretScope *sc, struct args *a)
{
	sc->app = a->app;
	sc->environment = a->env;
}

/* ---------------------------------------------------------------- keys */

static int cmd_keys(struct cli *c, int argc, char **argv)
{
	struct args a;
	int rc = parse(c, argc, argv, A_OUT, 0, "slipway secrets keys [--out DIR]", &a);
	if (rc != 0)
		return rc;
	Slipway__V1__GetServiceKeysRequest req = SLIPWAY__V1__GET_SERVICE_KEYS_REQUEST__INIT;
	ProtobufCMessage *m = NULL;
	if ((rc = call(c, &a, "GetServiceKeys", &req.base, &m)) != 0)
		return rc;
	Slipway__V1__GetServiceKeysResponse *r = (void *)m;
	char seal[65], sign[65], err[512];
	if (r->seal_public_key.len != 32 || r->sign_public_key.len != 32) {
		protobuf_c_message_free_unpacked(m, NULL);
		return cli_fail("the service sent malformed keys");
	}
	cli_hex(r->seal_public_key.data, 32, seal);
	cli_hex(r->sign_public_key.data, 32, sign);
	if (a.out != NULL) {
		char p1[4096], p2[4096];
		snprintf(p1, sizeof p1, "%s/secrets-seal.pub", a.out);
		snprintf(p2, sizeof p2, "%s/secrets-sign.pub", a.out);
		if (sealed_public_key_write(p1, SEALED_LABEL_X25519_PUBLIC, r->seal_public_key.data,
					    32, err, sizeof err) != 0 ||
		    sealed_public_key_write(p2, SEALED_LABEL_ED25519_PUBLIC, r->sign_public_key.data,
					    32, err, sizeof err) != 0) {
			protobuf_c_message_free_unpacked(m, NULL);
			return cli_fail("%s", err);
		}
	}
	if (c->output == CLI_JSON) {
		cli_print_json(json_pack("{s:s,s:s,s:s}", "seal_public_key", seal,
					 "sign_public_key", sign, "sign_key_id", r->sign_key_id));
	} else {
		printf("seal public key (X25519):   %s\n", seal);
		printf("sign public key (Ed25519):  %s\n", sign);
		printf("sign key id:                %s\n", r->sign_key_id);
		if (a.out != NULL)
			printf("written: %s/secrets-seal.pub, %s/secrets-sign.pub (pin the sign key "
			       "on agents)\n",
			       a.out, a.out);
	}
	protobuf_c_message_free_unpacked(m, NULL);
	return CLI_OK;
}

/* ---------------------------------------------------------------- put */

/* Reads the value into new sodium memory: from path, or stdin. On a
 * terminal, reads one line without echo. */
static int read_value(const char *path, int strip, uint8_t **out, size_t *len)
{
	int fd = path ? open(path, O_RDONLY | O_CLOEXEC) : STDIN_FILENO, tty = 0, rc = CLI_OK;
	struct termios old, quiet;
	uint8_t *buf = NULL;
	size_t n = 0;

	*out = NULL;
	*len = 0;
	if (fd < 0)
		return cli_fail("open %s: %s", path, strerror(errno));
	buf = sodium_malloc(VALUE_CAP + 1);
	if (buf == NULL) {
		rc = cli_fail("out of secure memory");
		goto out;
	}
	if (path == NULL && isatty(fd) && tcgetattr(fd, &old) == 0) {
		tty = 1;
		quiet = old;
		quiet.c_lflag &= ~(tcflag_t)ECHO;
		tcsetattr(fd, TCSAFLUSH, &quiet);
		fprintf(stderr, "value (not echoed, one line): ");
	}
	for (;;) {
		ssize_t r = read(fd, buf + n, VALUE_CAP + 1 - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			rc = cli_fail("read: %s", strerror(errno));
			goto out;
		}
		if (r == 0)
			break;
		n += (size_t)r;
		if (tty && memchr(buf, '\n', n) != NULL)
			break;
		if (n > VALUE_CAP) {
			rc = cli_fail("the value is larger than %u bytes", VALUE_CAP);
			goto out;
		}
	}
	if (tty || strip) {
		if (tty) {
			uint8_t *nl = memchr(buf, '\n', n);
			if (nl != NULL)
				n = (size_t)(nl - buf) + 1;
		}
		if (n > 0 && buf[n - 1] == '\n')
			n--;
		if (n > 0 && buf[n - 1] == '\r')
			n--;
	}
	*out = buf;
	*len = n;
	buf = NULL;
out:
	if (tty) {
		tcsetattr(fd, TCSAFLUSH, &old);
		fputc('\n', stderr);
	}
	if (buf != NULL)
		sodium_free(buf); /* wipes */
	if (path != NULL && fd >= 0)
		close(fd);
	return rc;
}

static int cmd_put(struct cli *c, int argc, char **argv)
{
	static const char usage[] =
		"slipway secrets put NAME --scope APP[/ENV] [--file F] [--cas N] [--keep-current] "
		"[--strip-newline]   (the value comes from stdin or --file, never the command line)";
	struct args a;
	uint8_t *value = NULL, *box = NULL;
	size_t vlen = 0;
	ProtobufCMessage *m = NULL;
	int rc = parse(c, argc, argv, A_SCOPE | A_FILE | A_CAS | A_KEEP | A_STRIP, 1, usage, &a);
	if (rc != 0)
		return rc;
	if (!sealed_name_ok(a.name))
		return cli_usage("NAME: 1-%d of [A-Za-z0-9_.-], not starting with '.' or '-'",
				 SEALED_NAME_MAX);
	rc = read_value(a.file, a.strip, &value, &vlen);
	if (rc != 0)
		return rc;
	Slipway__V1__GetServiceKeysRequest kreq = SLIPWAY__V1__GET_SERVICE_KEYS_REQUEST__INIT;
	if ((rc = call(c, &a, "GetServiceKeys", &kreq.base, &m)) != 0)
		goto out;
	Slipway__V1__GetServiceKeysResponse *keys = (void *)m;
	if (keys->seal_public_key.len != crypto_box_PUBLICKEYBYTES) {
		rc = cli_fail("the service sent a malformed sealing key");
		goto out;
	}
	/* Sealed here: only the service's secret key opens it. */
	box = malloc(vlen + crypto_box_SEALBYTES);
	if (box == NULL || crypto_box_seal(box, value, vlen, keys->seal_public_key.data) != 0) {
		rc = cli_fail("cannot seal the value to the service's key");
		goto out;
	}
	sodium_free(value);
	value = NULL;
	protobuf_c_message_free_unpacked(m, NULL);
	m = NULL;

	Slipway__V1__PutSecretRequest req = SLIPWAY__V1__PUT_SECRET_REQUEST__INIT;
	Slipway__V1__SecretScope sc = SLIPWAY__V1__SECRET_SCOPE__INIT;
	scope_set(&sc, &a);
	req.name = (char *)a.name;
	req.scope = &sc;
	req.sealed_value.data = box;
	req.sealed_value.len = vlen + crypto_box_SEALBYTES;
	req.cas = a.cas;
	req.expected_version = (uint32_t)a.cas_version;
	req.keep_current = a.keep;
	if ((rc = call(c, &a, "PutSecret", &req.base, &m)) != 0)
		goto out;
	Slipway__V1__PutSecretResponse *r = (void *)m;
	if (r->version == NULL) {
		rc = cli_fail("the service returned no version");
	} else if (c->output == CLI_JSON) {
		cli_print_json(version_json(r->version));
	} else {
		printf("stored %s version %u in %s/%s (%u bytes, %s)\n", r->version->name,
		       r->version->version, a.app, a.env[0] ? a.env : "*", r->version->size_bytes,
		       r->version->current ? "current" : "not current");
	}
out:
	if (value != NULL)
		sodium_free(value);
	free(box);
	protobuf_c_message_free_unpacked(m, NULL);
	return rc;
}

/* ---------------------------------------------------------------- ls, versions */

static int cmd_ls(struct cli *c, int argc, char **argv)
{
	struct args a;
	int rc = parse(c, argc, argv, A_SCOPE, 0, "slipway secrets ls [--scope APP[/ENV]]", &a);
	if (rc != 0)
		return rc;
	Slipway__V1__SecretScope sc = SLIPWAY__V1__SECRET_SCOPE__INIT;
	scope_set(&sc, &a);
	char *token = strdup("");
	json_t *arr = json_array();
	struct cli_table tab = { 0 };
	int first = 1;
	while (token != NULL) {
		Slipway__V1__ListSecretsRequest req = SLIPWAY__V1__LIST_SECRETS_REQUEST__INIT;
		ProtobufCMessage *m = NULL;
		req.scope = a.have_scope ? &sc : NULL;
		req.page_size = 500;
		req.page_token = token;
		rc = call(c, &a, "ListSecrets", &req.base, &m);
		free(token);
		token = NULL;
		if (rc != 0)
			break;
		Slipway__V1__ListSecretsResponse *r = (void *)m;
		if (first && c->output != CLI_JSON)
			version_header(&tab);
		first = 0;
		for (size_t i = 0; i < r->n_secrets; i++) {
			if (c->output == CLI_JSON)
				json_array_append_new(arr, version_json(r->secrets[i]));
			else
				version_row(&tab, r->secrets[i]);
		}
		if (r->next_page_token[0] != '\0')
			token = strdup(r->next_page_token);
		protobuf_c_message_free_unpacked(m, NULL);
	}
	if (rc == 0 && c->output == CLI_JSON)
		cli_print_json(arr);
	else
		json_decref(arr);
	if (rc == 0 && c->output != CLI_JSON && !first)
		cli_table_print(&tab, stdout);
	cli_table_free(&tab);
	return rc;
}

static int cmd_versions(struct cli *c, int argc, char **argv)
{
	struct args a;
	int rc = parse(c, argc, argv, A_SCOPE, 1, "slipway secrets versions NAME --scope APP[/ENV]",
		       &a);
	if (rc != 0)
		return rc;
	Slipway__V1__ListVersionsSecretRequest req = SLIPWAY__V1__LIST_VERSIONS_SECRET_REQUEST__INIT;
	Slipway__V1__SecretRef ref = SLIPWAY__V1__SECRET_REF__INIT;
	Slipway__V1__SecretScope sc = SLIPWAY__V1__SECRET_SCOPE__INIT;
	ProtobufCMessage *m = NULL;
	scope_set(&sc, &a);
	ref.name = (char *)a.name;
	ref.scope = &sc;
	req.secret = &ref;
	if ((rc = call(c, &a, "ListVersions", &req.base, &m)) != 0)
		return rc;
	Slipway__V1__ListVersionsSecretResponse *r = (void *)m;
	if (c->output == CLI_JSON) {
		json_t *arr = json_array();
		for (size_t i = 0; i < r->n_versions; i++)
			json_array_append_new(arr, version_json(r->versions[i]));
		cli_print_json(arr);
	} else {
		struct cli_table tab;
		version_header(&tab);
		for (size_t i = 0; i < r->n_versions; i++)
			version_row(&tab, r->versions[i]);
		cli_table_print(&tab, stdout);
		cli_table_free(&tab);
	}
	protobuf_c_message_free_unpacked(m, NULL);
	return CLI_OK;
}

/* ---------------------------------------------------------------- lifecycle */

static int version_cmd(struct cli *c, int argc, char **argv, const char *method,
		       const char *verb, int need_yes)
{
	char usage[160];
	struct args a;
	snprintf(usage, sizeof usage, "slipway secrets %s NAME --scope APP[/ENV] --version N%s",
		 argv[0], need_yes ? " --yes" : "");
	int rc = parse(c, argc, argv, A_SCOPE | A_VERSION | (need_yes ? A_YES : 0), 1, usage, &a);
	if (rc != 0)
		return rc;
	if (need_yes && !a.yes)
		return cli_usage("destroying erases the value for good: add --yes");
	Slipway__V1__VersionActionRequest req = SLIPWAY__V1__VERSION_ACTION_REQUEST__INIT;
	Slipway__V1__SecretRef ref = SLIPWAY__V1__SECRET_REF__INIT;
	Slipway__V1__SecretScope sc = SLIPWAY__V1__SECRET_SCOPE__INIT;
	ProtobufCMessage *m = NULL;
	scope_set(&sc, &a);
	ref.name = (char *)a.name;
	ref.scope = &sc;
	ref.version = (uint32_t)a.version;
	req.secret = &ref;
	if ((rc = call(c, &a, method, &req.base, &m)) != 0)
		return rc;
	Slipway__V1__VersionActionResponse *r = (void *)m;
	if (c->output == CLI_JSON && r->version != NULL)
		cli_print_json(version_json(r->version));
	else if (r->version != NULL)
		printf("%s version %u of %s: now %s%s\n", verb, r->version->version, r->version->name,
		       state_text(r->version->state), r->version->current ? ", current" : "");
	protobuf_c_message_free_unpacked(m, NULL);
	return CLI_OK;
}

static int cmd_disable(struct cli *c, int argc, char **argv)
{
	return version_cmd(c, argc, argv, "DisableVersion", "disabled", 0);
}

static int cmd_enable(struct cli *c, int argc, char **argv)
{
	return version_cmd(c, argc, argv, "EnableVersion", "enabled", 0);
}

static int cmd_destroy(struct cli *c, int argc, char **argv)
{
	return version_cmd(c, argc, argv, "DestroyVersion", "destroyed", 1);
}

static int cmd_set_current(struct cli *c, int argc, char **argv)
{
	return version_cmd(c, argc, argv, "SetCurrentVersion", "made current", 0);
}

/* ---------------------------------------------------------------- rotate-master */

static int cmd_rotate(struct cli *c, int argc, char **argv)
{
	struct args a;
	int rc = parse(c, argc, argv, A_RETIRE, 0, "slipway secrets rotate-master [--retire]", &a);
	if (rc != 0)
		return rc;
	Slipway__V1__RotateMasterRequest req = SLIPWAY__V1__ROTATE_MASTER_REQUEST__INIT;
	ProtobufCMessage *m = NULL;
	req.retire_old = a.retire;
	if ((rc = call(c, &a, "RotateMaster", &req.base, &m)) != 0)
		return rc;
	Slipway__V1__RotateMasterResponse *r = (void *)m;
	if (c->output == CLI_JSON)
		cli_print_json(json_pack("{s:I,s:I,s:b}", "new_master_version",
					 (json_int_t)r->new_master_version, "rewrapped",
					 (json_int_t)r->rewrapped, "retired_old", a.retire));
	else
		printf("master key version %u is current; %llu data keys rewrapped%s\n",
		       r->new_master_version, (unsigned long long)r->rewrapped,
		       a.retire ? "; older master keys retired" : "");
	protobuf_c_message_free_unpacked(m, NULL);
	return CLI_OK;
}

/* ---------------------------------------------------------------- keygen, grant */

static int cmd_keygen(struct cli *c, int argc, char **argv)
{
	(void)c;
	struct args a;
	char p1[4096], p2[4096], err[512], hex[65];
	uint8_t pk[32], *sk = NULL;
	int rc = parse(c, argc, argv, A_OUT, 0, "slipway secrets keygen --out PREFIX", &a);
	if (rc != 0)
		return rc;
	if (a.out == NULL)
		return cli_usage("usage: slipway secrets keygen --out PREFIX");
	snprintf(p1, sizeof p1, "%s.key", a.out);
	snprintf(p2, sizeof p2, "%s.pub", a.out);
	sk = sodium_malloc(32);
	if (sk == NULL)
		return cli_fail("out of secure memory");
	crypto_box_keypair(pk, sk);
	if (sealed_key_write(p1, SEALED_LABEL_X25519_SECRET, sk, 32, err, sizeof err) != 0 ||
	    sealed_public_key_write(p2, SEALED_LABEL_X25519_PUBLIC, pk, 32, err, sizeof err) != 0)
		rc = cli_fail("%s", err);
	sodium_free(sk);
	if (rc == 0) {
		cli_hex(pk, 32, hex);
		printf("written: %s (secret, 0600), %s (public %s)\n", p1, p2, hex);
	}
	return rc;
}

static int cmd_grant(struct cli *c, int argc, char **argv)
{
	static const char usage[] =
		"slipway secrets grant --deployment D --agent SPIFFE-ID --agent-pub F "
		"--scope APP/ENV [--ttl DUR] NAME[@VERSION]...   (with the orchestrator's certificate)";
	struct args a;
	uint8_t pk[32];
	char err[512];
	int rc = parse(c, argc, argv, A_DEPLOY | A_AGENT | A_AGENTPUB | A_SCOPE | A_TTL, -1, usage, &a);
	if (rc != 0)
		return rc;
	if (a.deployment == NULL || a.agent == NULL || a.agent_pub == NULL || !a.have_scope ||
	    a.env[0] == '\0')
		return cli_usage("usage: %s", usage);
	if (sealed_public_key_read(a.agent_pub, SEALED_LABEL_X25519_PUBLIC, pk, 32, err,
				   sizeof err) != 0)
		return cli_fail("%s", err);
	size_t n = (size_t)a.nrest;
	Slipway__V1__SecretRef *refs = calloc(n, sizeof *refs);
	Slipway__V1__SecretRef **rp = calloc(n, sizeof *rp);
	char **names = calloc(n, sizeof *names);
	ProtobufCMessage *m = NULL;
	if (refs == NULL || rp == NULL || names == NULL) {
		rc = cli_fail("out of memory");
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		long long v = 0;
		names[i] = strdup(a.rest[i]);
		char *at = names[i] ? strchr(names[i], '@') : NULL;
		if (names[i] == NULL) {
			rc = cli_fail("out of memory");
			goto out;
		}
		if (at != NULL) {
			*at = '\0';
			if (cfg_parse_ll(at + 1, &v) != 0 || v < 1 || v > UINT32_MAX) {
				rc = cli_usage("%s: NAME@VERSION wants a version number", a.rest[i]);
				goto out;
			}
		}
		slipway__v1__secret_ref__init(&refs[i]);
		refs[i].name = names[i];
		refs[i].version = (uint32_t)v;
		rp[i] = &refs[i];
	}
	Slipway__V1__CreateGrantRequest req = SLIPWAY__V1__CREATE_GRANT_REQUEST__INIT;
	req.deployment_id = (char *)a.deployment;
	req.agent = (char *)a.agent;
	req.agent_public_key.data = pk;
	req.agent_public_key.len = 32;
	req.secrets = rp;
	req.n_secrets = n;
	req.app = a.app;
	req.environment = a.env;
	if (a.ttl_ms > 0) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		req.expires_unix_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 + a.ttl_ms;
	}
	if ((rc = call(c, &a, "CreateGrant", &req.base, &m)) != 0)
		goto out;
	Slipway__V1__CreateGrantResponse *r = (void *)m;
	char t[32];
	if (c->output == CLI_JSON)
		cli_print_json(json_pack("{s:s,s:I}", "grant_id", r->grant_id, "expires_unix_ms",
					 (json_int_t)r->expires_unix_ms));
	else
		printf("grant %s: %zu secrets of %s/%s for %s, deployment %s, until %s\n",
		       r->grant_id, n, a.app, a.env, a.agent, a.deployment,
		       cli_time(r->expires_unix_ms, t));
out:
	for (size_t i = 0; names != NULL && i < n; i++)
		free(names[i]);
	free(names);
	free(refs);
	free(rp);
	protobuf_c_message_free_unpacked(m, NULL);
	return rc;
}

/* ---------------------------------------------------------------- fetch-check */

static int cmd_fetch_check(struct cli *c, int argc, char **argv)
{
	static const char usage[] = "slipway secrets fetch-check --deployment D --agent SPIFFE-ID "
				    "--agent-key F --pin F   (with the agent's certificate)";
	struct args a;
	uint8_t pk[32], pin[32], *sk = NULL;
	struct sealed_bundle *b = NULL;
	ProtobufCMessage *m = NULL;
	char err[512];
	int rc = parse(c, argc, argv, A_DEPLOY | A_AGENT | A_AGENTKEY | A_PIN, 0, usage, &a);
	if (rc != 0)
		return rc;
	if (a.deployment == NULL || a.agent == NULL || a.agent_key == NULL || a.pin == NULL)
		return cli_usage("usage: %s", usage);
	sk = sodium_malloc(32);
	if (sk == NULL)
		return cli_fail("out of secure memory");
	if (sealed_x25519_load(a.agent_key, 0, pk, sk, err, sizeof err) != 0 ||
	    sealed_public_key_read(a.pin, SEALED_LABEL_ED25519_PUBLIC, pin, 32, err, sizeof err) != 0) {
		rc = cli_fail("%s", err);
		goto out;
	}
	Slipway__V1__FetchRequest req = SLIPWAY__V1__FETCH_REQUEST__INIT;
	req.deployment_id = (char *)a.deployment;
	if ((rc = call(c, &a, "Fetch", &req.base, &m)) != 0)
		goto out;
	Slipway__V1__FetchResponse *r = (void *)m;
	struct sealed_expect x = { .agent = a.agent, .deployment_id = a.deployment, .sign_pk = pin };
	if (sealed_open(r->sealed_bundle.data, r->sealed_bundle.len, pk, sk, &x, &b, err,
			sizeof err) != 0) {
		rc = cli_fail("the bundle is not acceptable: %s", err);
		goto out;
	}
	char t[32], kid[SEALED_KEY_ID_MAX];
	sealed_key_id(pin, kid);
	json_t *arr = json_array();
	if (c->output != CLI_JSON) {
		printf("bundle for %s, deployment %s: signature ok (%s), expires %s\n",
		       sealed_bundle_agent(b), sealed_bundle_deployment(b), kid,
		       cli_time(sealed_bundle_expires(b), t));
		printf("%-32s %7s %8s\n", "NAME", "VERSION", "SIZE");
	}
	for (size_t i = 0; i < sealed_bundle_count(b); i++) {
		struct sealed_item it;
		sealed_bundle_item(b, i, &it);
		if (c->output == CLI_JSON)
			json_array_append_new(arr, json_pack("{s:s,s:I,s:I}", "name", it.name,
							     "version", (json_int_t)it.version,
							     "size_bytes", (json_int_t)it.len));
		else
			printf("%-32s %7u %8zu\n", it.name, it.version, it.len);
	}
	if (c->output == CLI_JSON)
		cli_print_json(json_pack("{s:s,s:s,s:s,s:I,s:o}", "agent", sealed_bundle_agent(b),
					 "deployment", sealed_bundle_deployment(b), "sign_key_id", kid,
					 "expires_unix_ms", (json_int_t)sealed_bundle_expires(b),
					 "secrets", arr));
	else
		json_decref(arr);
out:
	sealed_bundle_free(b);
	protobuf_c_message_free_unpacked(m, NULL);
	sodium_free(sk);
	return rc;
}

extern const struct cli_cmd cli_secrets_cmds[];
const struct cli_cmd cli_secrets_cmds[] = {
	{ "keys", cmd_keys, "print the service's public keys (--out DIR writes pin files)",
	  "[--out DIR]", keys_opts, "slipway secrets keys --out ./pins", NULL, NULL },
	{ "put", cmd_put, "store a new version, sealed client-side (stdin or --file)",
	  "NAME --scope APP[/ENV] [--file FILE] [--cas N] [--keep-current] [--strip-newline]",
	  put_opts,
	  "printf 'hunter2' | slipway secrets put db-password --scope web/prod\n"
	  "slipway secrets put tls-key --scope web --file key.pem --cas 0", NULL, NULL },
	{ "ls", cmd_ls, "list secrets and their current versions (metadata only)",
	  "[--scope APP[/ENV]]", scope_opts, "slipway secrets ls --scope web/prod", NULL, NULL },
	{ "versions", cmd_versions, "list every version of a secret (metadata only)",
	  "NAME --scope APP[/ENV]", scope_opts, "slipway secrets versions db-password --scope web/prod", NULL, NULL },
	{ "set-current", cmd_set_current, "make an enabled version current",
	  "NAME --scope APP[/ENV] --version N", version_opts,
	  "slipway secrets set-current db-password --scope web/prod --version 2", NULL, NULL },
	{ "disable", cmd_disable, "stop delivering a version", "NAME --scope APP[/ENV] --version N",
	  version_opts, "slipway secrets disable db-password --scope web/prod --version 1", NULL, NULL },
	{ "enable", cmd_enable, "deliver a disabled version again",
	  "NAME --scope APP[/ENV] --version N", version_opts,
	  "slipway secrets enable db-password --scope web/prod --version 1", NULL, NULL },
	{ "destroy", cmd_destroy, "erase a version's ciphertext and data key (--yes)",
	  "NAME --scope APP[/ENV] --version N --yes", destroy_opts,
	  "slipway secrets destroy db-password --scope web/prod --version 1 --yes", NULL, NULL },
	{ "rotate-master", cmd_rotate, "new master key, rewrap every data key (--retire)",
	  "[--retire]", rotate_opts, "slipway secrets rotate-master --retire", NULL, NULL },
	{ "keygen", cmd_keygen, "make an agent's X25519 key pair (PREFIX.key, PREFIX.pub)",
	  "--out PREFIX", keygen_opts, "slipway secrets keygen --out ./web-1", NULL, NULL },
	{ "grant", cmd_grant, "as the orchestrator: grant secrets to an agent for a deployment",
	  "--deployment ID --agent SPIFFE-ID --agent-pub FILE --scope APP/ENV [--ttl DUR] "
	  "NAME[@VERSION]...",
	  grant_opts,
	  "slipway --cert orch.crt --key orch.key secrets grant --deployment d-0123 \\\n"
	  "    --agent spiffe://slipway/agent/eu/web-1 --agent-pub web-1.pub --scope web/prod db-password", NULL, NULL },
	{ "fetch-check", cmd_fetch_check, "as an agent: fetch and verify a bundle, print metadata",
	  "--deployment ID --agent SPIFFE-ID --agent-key FILE --pin FILE", fetch_opts,
	  "slipway --cert web-1.crt --key web-1.key secrets fetch-check --deployment d-0123 \\\n"
	  "    --agent spiffe://slipway/agent/eu/web-1 --agent-key web-1.key --pin pins/sign.pin", NULL, NULL },
	{ NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL },
};

int cli_cmd_secrets(struct cli *c, int argc, char **argv);
int cli_cmd_secrets(struct cli *c, int argc, char **argv)
{
	/* This process may hold a value: no core file. */
	struct rlimit rl = { 0, 0 };
	setrlimit(RLIMIT_CORE, &rl);
	if (sealed_init() != 0)
		return cli_fail("libsodium failed to initialise");
	return cli_dispatch(c, "secrets", cli_secrets_cmds, argc, argv);
}
