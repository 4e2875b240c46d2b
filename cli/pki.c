/*
 * pki.c - `slipway pki init|issue`: the deployment CA and its certificates.
 *
 *   slipway pki init --dir D [--trust-domain slipway] [--days N]
 *   slipway pki issue --dir D (--service NAME | --agent REGION/HOST | --user NAME)
 *                     --out PREFIX [--dns NAME]... [--ip ADDR]... [--days N]
 *
 * Every certificate carries exactly one URI SAN, the principal's SPIFFE ID.
 * Only service certificates may serve TLS: they get serverAuth and
 * clientAuth, and DNS localhost and IP 127.0.0.1 unless --dns/--ip are
 * given. Agent and user certificates are client-only (clientAuth, no DNS
 * or IP names): a stolen agent key cannot pose as a service, and clients
 * pin the service's SPIFFE ID besides (rpc.h).
 */
#include "cfg.h"
#include "cli.h"
#include "err.h"
#include "pki.h"
#include "spiffe.h"

#include <getopt.h>
#include <stdio.h>
#include <string.h>

static int parse_days(const char *s, int *out)
{
	long long v;
	if (cfg_parse_ll(s, &v) != 0 || v < 1 || v > 36500)
		return -1;
	*out = (int)v;
	return 0;
}

static const struct cli_opt init_opts[] = {
	{ "dir", required_argument, 'd', "DIR", "where to create ca.crt and ca.key" },
	{ "trust-domain", required_argument, 't', "TD", "the SPIFFE trust domain (default slipway)" },
	{ "days", required_argument, 'n', "N", "validity in days (1..36500)" },
	{ NULL, 0, 0, NULL, NULL },
};

static int cmd_init(struct cli *c, int argc, char **argv)
{
	(void)c;
	const char *dir = NULL, *td = "slipway";
	int days = 3650, o;
	char err[512];
	optind = 0;
	while ((o = cli_getopt(c, argc, argv)) != -1) {
		switch (o) {
		case 'd': dir = optarg; break;
		case 't': td = optarg; break;
		case 'n':
			if (parse_days(optarg, &days) != 0)
				return cli_usage("--days wants 1..36500");
			break;
		default: return CLI_USAGE;
		}
	}
	if (dir == NULL)
		return cli_usage_cmd(c);
	if (pki_init(dir, td, days, err, sizeof err) != 0)
		return cli_fail("pki init: %s", err);
	printf("created CA for trust domain %s in %s (ca.crt, ca.key)\n", td, dir);
	return CLI_OK;
}

static const struct cli_opt issue_opts[] = {
	{ "dir", required_argument, 'd', "DIR", "the CA directory" },
	{ "service", required_argument, 's', "NAME", "a service certificate (serves TLS)" },
	{ "agent", required_argument, 'a', "REGION/HOST", "an agent certificate (client only)" },
	{ "user", required_argument, 'u', "NAME", "a user certificate (client only)" },
	{ "out", required_argument, 'o', "PREFIX", "write PREFIX.crt and PREFIX.key" },
	{ "dns", required_argument, 'D', "NAME", "a DNS name for a service certificate (repeatable)" },
	{ "ip", required_argument, 'I', "ADDR", "an IP address for a service certificate (repeatable)" },
	{ "days", required_argument, 'n', "N", "validity in days (1..36500)" },
	{ NULL, 0, 0, NULL, NULL },
};

static int cmd_issue(struct cli *c, int argc, char **argv)
{
	(void)c;
	const char *dir = NULL, *out = NULL, *name = NULL;
	enum spiffe_kind kind = SPIFFE_OTHER;
	int kinds = 0, ndns = 0, nip = 0, o;
	struct pki_issue_req r;
	char err[512], td[128], id[SPIFFE_ID_MAX + 1];

	memset(&r, 0, sizeof r);
	optind = 0;
	while ((o = cli_getopt(c, argc, argv)) != -1) {
		switch (o) {
		case 'd': dir = optarg; break;
		case 'o': out = optarg; break;
		case 's': kind = SPIFFE_SERVICE; name = optarg; kinds++; break;
		case 'a': kind = SPIFFE_AGENT; name = optarg; kinds++; break;
		case 'u': kind = SPIFFE_USER; name = optarg; kinds++; break;
		case 'D':
			if (ndns == PKI_MAX_SANS)
				return cli_usage("too many --dns");
			r.dns[ndns++] = optarg;
			break;
		case 'I':
			if (nip == PKI_MAX_SANS)
				return cli_usage("too many --ip");
			r.ips[nip++] = optarg;
			break;
		case 'n':
			if (parse_days(optarg, &r.days) != 0)
				return cli_usage("--days wants 1..36500");
			break;
		default: return CLI_USAGE;
		}
	}
	if (dir == NULL || out == NULL || kinds != 1)
		return cli_usage_cmd(c);
	if (kind == SPIFFE_AGENT) {
		const char *slash = strchr(name, '/');
		if (slash == NULL || strchr(slash + 1, '/') != NULL)
			return cli_usage("--agent wants REGION/HOST");
	} else if (!spiffe_segment_ok(name)) {
		return cli_usage("invalid name '%s': use letters, digits, '.', '-' and '_'", name);
	}
	if (pki_trust_domain(dir, td, sizeof td, err, sizeof err) != 0)
		return cli_fail("%s", err);
	if (spiffe_format(id, sizeof id, td, kind, name) != 0)
		return cli_usage("invalid name '%s'", name);
	r.dir = dir;
	r.out_prefix = out;
	r.common_name = name;
	r.uris[0] = id;
	if (kind == SPIFFE_SERVICE) {
		r.server = 1;
		if (ndns == 0 && nip == 0) {
			r.dns[0] = "localhost";
			r.ips[0] = "127.0.0.1";
		}
	} else if (ndns || nip) {
		return cli_usage("%s certificates are client-only: they carry no DNS or IP names",
				 kind == SPIFFE_USER ? "user" : "agent");
	}
	if (pki_issue(&r, err, sizeof err) != 0)
		return cli_fail("pki issue: %s", err);
	printf("issued %s: %s.crt, %s.key\n", id, out, out);
	return CLI_OK;
}

extern const struct cli_cmd cli_pki_cmds[];
const struct cli_cmd cli_pki_cmds[] = {
	{ "init", cmd_init, "create a CA in --dir", "--dir DIR [--trust-domain TD] [--days N]",
	  init_opts, "slipway pki init --dir ./pki", NULL, NULL },
	{ "issue", cmd_issue, "issue a service, agent or user certificate",
	  "--dir DIR (--service NAME | --agent REGION/HOST | --user NAME) --out PREFIX "
	  "[--dns NAME]... [--ip ADDR]... [--days N]",
	  issue_opts,
	  "slipway pki issue --dir ./pki --user bob --out ./bob\n"
	  "slipway pki issue --dir ./pki --agent eu/web-1 --out ./web-1\n"
	  "slipway pki issue --dir ./pki --service audit --dns audit.internal --out ./audit", NULL, NULL },
	{ NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL },
};

int cli_cmd_pki(struct cli *c, int argc, char **argv);
int cli_cmd_pki(struct cli *c, int argc, char **argv)
{
	return cli_dispatch(c, "pki", cli_pki_cmds, argc, argv);
}
