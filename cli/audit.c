/*
 * audit.c - `slipway audit log|show|proof|checkpoint|verify`.
 *
 * Everything that concerns trust is checked here, on the auditor's side,
 * with the log's public key alone: checkpoint signatures, inclusion proofs
 * and, in `verify`, the whole hash chain and Merkle tree recomputed from
 * the exported entries and compared with every signed checkpoint and with
 * the checkpoints this machine saw before (a local state file).
 *
 * The verifier key comes from --verifier-key, SLIPWAY_AUDIT_VERIFIER_KEY,
 * or the state file; `--trust` accepts the key the service announces the
 * first time and pins it.
 */
#include "auditlog.h"
#include "auditstate.h"
#include "cfg.h"
#include "cli.h"
#include "err.h"
#include "hash.h"
#include "merkle.h"
#include "note.h"
#include "s3.h"

#include "slipway/v1/audit.pb-c.h"
#include "clock.h"

#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char *outcome_name(int o)
{
	switch (o) {
	case SLIPWAY__V1__OUTCOME__OUTCOME_SUCCESS: return "success";
	case SLIPWAY__V1__OUTCOME__OUTCOME_FAILURE: return "failure";
	case SLIPWAY__V1__OUTCOME__OUTCOME_DENIED: return "denied";
	default: return "?";
	}
}

static double mono_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* --since/--until: RFC 3339, unix milliseconds, or a duration ago. */
static int parse_time(const char *s, int64_t *out)
{
	return cli_parse_time(s, out);
}

static json_t *entry_json(const Slipway__V1__AuditEntry *e)
{
	char ph[65], eh[65];
	const Slipway__V1__AuditEvent *ev = e->event;
	hash_hex(e->prev_hash.data, e->prev_hash.len > 32 ? 32 : e->prev_hash.len, ph);
	hash_hex(e->entry_hash.data, e->entry_hash.len > 32 ? 32 : e->entry_hash.len, eh);
	json_t *d = json_object();
	for (size_t i = 0; ev && i < ev->n_details; i++)
		json_object_set_new(d, ev->details[i]->key, json_string(ev->details[i]->value));
	return json_pack("{s:I,s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:I,s:I,s:o,s:s,s:s}", "seq",
			 (json_int_t)e->seq, "event_id", ev ? ev->event_id : "", "actor",
			 ev ? ev->actor : "", "service", ev ? ev->service : "", "action",
			 ev ? ev->action : "", "resource", ev ? ev->resource : "", "outcome",
			 outcome_name(ev ? (int)ev->outcome : 0), "request_id",
			 ev ? ev->request_id : "", "time_unix_ms",
			 (json_int_t)(ev ? ev->time_unix_ms : 0), "logged_unix_ms",
			 (json_int_t)e->logged_unix_ms, "details", d, "prev_hash", ph, "entry_hash", eh);
}

/* ---- verifier key and state file ---- */

/* The verifier state file (lib/auditstate: format in docs/operations.md). */
struct state {
	char path[4096];
	struct auditstate s;
};

static void default_state_path(char *out, size_t len)
{
	const char *x = getenv("XDG_CONFIG_HOME"), *h = getenv("HOME");
	if (x && *x)
		snprintf(out, len, "%s/slipway/audit-state.json", x);
	else
		snprintf(out, len, "%s/.config/slipway/audit-state.json", h ? h : ".");
}

/* Resolves the verifier key. */
static int get_verifier(struct cli *c, struct rpc_client *cl, const char *flag, int trust,
			const char *fingerprint, struct state *st, struct note_verifier *v)
{
	char err[256];
	const char *text = flag ? flag : getenv("SLIPWAY_AUDIT_VERIFIER_KEY");
	if ((text == NULL || !*text) && st->s.verifier[0])
		text = st->s.verifier;
	if (text == NULL || !*text) {
		if (!trust)
			return cli_fail("no verifier key: pass --verifier-key, set "
					"SLIPWAY_AUDIT_VERIFIER_KEY, or use --trust to pin the key "
					"the service announces");
		Slipway__V1__GetLogInfoRequest req = SLIPWAY__V1__GET_LOG_INFO_REQUEST__INIT;
		ProtobufCMessage *resp = NULL;
		struct rpc_call_opts o = cli_call_opts(c);
		int crc = rpc_call(cl, &slipway__v1__audit__descriptor, "GetLogInfo", &req.base,
				   &resp, &o, err, sizeof err);
		if (crc != 0)
			return cli_fail_rc(crc, "get log info: %s", err);
		snprintf(st->s.verifier, sizeof st->s.verifier, "%s",
			 ((Slipway__V1__GetLogInfoResponse *)resp)->verifier_key);
		protobuf_c_message_free_unpacked(resp, NULL);
		text = st->s.verifier;
		fprintf(stderr, "slipway: trusting the announced key %s\n", text);
	}
	if (fingerprint != NULL) {
		char fp[65];
		auditstate_fingerprint(text, fp);
		if (strcasecmp(fp, fingerprint) != 0)
			return cli_fail("the verifier key's fingerprint is %s, not the %s you were given "
					"out of band: do not trust this key",
					fp, fingerprint);
	}
	if (note_verifier_parse(text, v, err, sizeof err) != 0)
		return cli_fail("verifier key: %s", err);
	if (st->s.verifier[0] && strcmp(st->s.verifier, text) != 0 && !trust)
		return cli_fail("the verifier key differs from the one pinned in %s", st->path);
	snprintf(st->s.verifier, sizeof st->s.verifier, "%s", text);
	return 0;
}

/* Verifies a checkpoint note and its fields. */
static int check_checkpoint(const struct note_verifier *v, const Slipway__V1__Checkpoint *cp,
			    char *origin, size_t olen, char *err, size_t errlen)
{
	char body[NOTE_MAX];
	uint64_t size;
	uint8_t root[32];
	if (note_verify(v, cp->note, body, sizeof body, err, errlen) != 0)
		return SW_EINVAL;
	if (note_checkpoint_parse(body, origin, olen, &size, root, err, errlen) != 0)
		return SW_EINVAL;
	if (size != cp->size || cp->root_hash.len != 32 || memcmp(root, cp->root_hash.data, 32) != 0)
		return sw_errf(err, errlen, SW_EINVAL,
			       "the checkpoint's fields disagree with its signed note");
	return 0;
}

static int leaf_of(const Slipway__V1__AuditEntry *e, uint8_t leaf[32], uint8_t entry_hash[32],
		   const uint8_t prev[32])
{
	const char *keys[AUDITLOG_MAX_DETAILS], *values[AUDITLOG_MAX_DETAILS];
	struct auditlog_entry v;
	uint8_t canon[AUDITLOG_CANON_MAX];
	size_t len;
	if (auditlog_from_proto(e, &v, keys, values) != 0 ||
	    auditlog_canonical(&v, canon, sizeof canon, &len) != 0)
		return -1;
	auditlog_hashes(prev, canon, len, entry_hash, leaf);
	return 0;
}

/* ---- log ---- */

static const struct cli_opt log_opts[] = {
	{ "actor", required_argument, 'a', "SPIFFE-ID", "only entries by this principal" },
	{ "service", required_argument, 's', "NAME", "only entries from this service" },
	{ "action", required_argument, 'x', "ACTION", "only this action" },
	{ "resource", required_argument, 'r', "RESOURCE", "only this resource" },
	{ "outcome", required_argument, 'o', "OUTCOME", "only this outcome: success, failure or denied" },
	{ "request-id", required_argument, 'q', "ID", "only this request" },
	{ "since", required_argument, 'S', "TIME", "from this time: 2026-11-26T17:00:00Z, unix ms, or 15m (ago)" },
	{ "until", required_argument, 'U', "TIME", "up to this time (same forms as --since)" },
	{ "limit", required_argument, 'n', "N", "at most N entries" },
	{ "from-seq", required_argument, 'f', "SEQ", "from this sequence number" },
	{ "all", no_argument, 'A', NULL, "every page, not just the first" },
	{ "addr", required_argument, 'D', "HOST:PORT", "the service address (else SLIPWAY_<SERVICE>_ADDR)" },
	{ NULL, 0, 0, NULL, NULL },
};

/* --outcome of audit log and audit search: success, failure or denied. 0 or -1. */
static int parse_outcome(const char *s, Slipway__V1__Outcome *out)
{
	if (!strcmp(s, "success")) *out = SLIPWAY__V1__OUTCOME__OUTCOME_SUCCESS;
	else if (!strcmp(s, "failure")) *out = SLIPWAY__V1__OUTCOME__OUTCOME_FAILURE;
	else if (!strcmp(s, "denied")) *out = SLIPWAY__V1__OUTCOME__OUTCOME_DENIED;
	else return -1;
	return 0;
}

static int cmd_log(struct cli *c, int argc, char **argv)
{
	Slipway__V1__EntryFilter f = SLIPWAY__V1__ENTRY_FILTER__INIT;
	const char *addr = NULL;
	long long limit = 50, from = 0;
	int all = 0, o;
	optind = 0;
	while ((o = cli_getopt(c, argc, argv)) != -1) {
		switch (o) {
		case 'a': f.actor = optarg; break;
		case 's': f.service = optarg; break;
		case 'x': f.action = optarg; break;
		case 'r': f.resource_prefix = optarg; break;
		case 'q': f.request_id = optarg; break;
		case 'D': addr = optarg; break;
		case 'A': all = 1; break;
		case 'o':
			if (parse_outcome(optarg, &f.outcome) != 0)
				return cli_usage("--outcome wants success, failure or denied");
			break;
		case 'S':
			if (parse_time(optarg, &f.from_unix_ms) != 0)
				return cli_usage("--since wants 2026-11-26T17:00:00Z, unix ms, or 15m");
			break;
		case 'U':
			if (parse_time(optarg, &f.to_unix_ms) != 0)
				return cli_usage("--until wants 2026-11-26T17:00:00Z, unix ms, or 15m");
			break;
		case 'n':
			if (cfg_parse_ll(optarg, &limit) != 0 || limit < 1 || limit > 1000000)
				return cli_usage("--limit wants 1..1000000");
			break;
		case 'f':
			if (cfg_parse_ll(optarg, &from) != 0 || from < 0)
				return cli_usage("--from-seq wants a sequence number");
			break;
		default: return CLI_USAGE;
		}
	}
	struct rpc_client *cl = NULL;
	if (cli_connect(c, "audit", addr, &cl) != 0)
		return CLI_FAIL;
	json_t *arr = json_array();
	char token[32], err[512], when[32];
	snprintf(token, sizeof token, "%lld", from);
	long long shown = 0;
	int rc = CLI_OK, left = 0;
	struct cli_table tab;
	cli_table_init(&tab, "rlllll", "SEQ", "LOGGED", "OUTCOME", "ACTION", "ACTOR", "RESOURCE");
	for (;;) {
		Slipway__V1__ListEntriesRequest req = SLIPWAY__V1__LIST_ENTRIES_REQUEST__INIT;
		req.filter = &f;
		req.page_token = token;
		long long want = all ? 1000 : limit - shown;
		req.page_size = (uint32_t)(want > 1000 ? 1000 : want);
		ProtobufCMessage *m = NULL;
		struct rpc_call_opts co = cli_call_opts(c);
		int crc = rpc_call(cl, &slipway__v1__audit__descriptor, "ListEntries", &req.base, &m,
				   &co, err, sizeof err);
		if (crc != 0) {
			rc = cli_fail_rc(crc, "audit log: %s", err);
			break;
		}
		Slipway__V1__ListEntriesResponse *r = (void *)m;
		for (size_t i = 0; i < r->n_entries; i++, shown++) {
			const Slipway__V1__AuditEntry *e = r->entries[i];
			if (c->output == CLI_JSON)
				json_array_append_new(arr, entry_json(e));
			else {
				char seqs[24];
				snprintf(seqs, sizeof seqs, "%llu", (unsigned long long)e->seq);
				cli_table_row(&tab, seqs, cli_time(e->logged_unix_ms, when),
					      outcome_name(e->event->outcome), e->event->action,
					      e->event->actor, e->event->resource);
			}
		}
		int more = r->next_page_token[0] != '\0' && (all || shown < limit);
		left = r->next_page_token[0] != '\0' && !more;
		snprintf(token, sizeof token, "%s", r->next_page_token);
		protobuf_c_message_free_unpacked(m, NULL);
		if (!more)
			break;
	}
	if (c->output == CLI_JSON && rc == CLI_OK)
		cli_print_json(arr);
	else
		json_decref(arr);
	if (c->output == CLI_TABLE && rc == CLI_OK)
		cli_table_print(&tab, stdout);
	if (rc == CLI_OK && left) {
		if (c->output == CLI_JSON)
			fprintf(stderr, "slipway: more entries: --from-seq %s, or --all\n", token);
		else
			printf("(more: --from-seq %s, or --all)\n", token);
	}
	cli_table_free(&tab);
	rpc_client_free(cl);
	return rc;
}

/* ---- search ---- */

static const struct cli_opt search_opts[] = {
	{ "app", required_argument, 'P', "APP", "only entries about this app (filtered by the service)" },
	{ "env", required_argument, 'E', "ENV", "only entries about this environment (filtered by the service)" },
	{ "actor", required_argument, 'a', "SPIFFE-ID", "only entries caused by this principal" },
	{ "action", required_argument, 'x', "ACTION", "only this action (deploy.request, deployment.approve, ...)" },
	{ "service", required_argument, 's', "NAME", "only entries from this service" },
	{ "resource", required_argument, 'r', "PREFIX", "only resources starting with PREFIX" },
	{ "outcome", required_argument, 'O', "OUTCOME", "success, failure or denied" },
	{ "since", required_argument, 'S', "TIME", "from TIME: RFC 3339 (2026-11-26T17:00:00Z), unix ms, or a duration ago (24h, 7d)" },
	{ "until", required_argument, 'U', "TIME", "before TIME (same forms as --since)" },
	{ "limit", required_argument, 'n', "N", "at most N entries (default 100)" },
	{ "page-token", required_argument, 'f', "TOKEN", "continue where a previous search stopped" },
	{ "all", no_argument, 'A', NULL, "every matching entry, page after page" },
	{ "addr", required_argument, 'D', "HOST:PORT", "the audit service (else SLIPWAY_AUDIT_ADDR)" },
	{ NULL, 0, 0, NULL, NULL },
};

/* A detail's value, or "". */
static const char *detail_of(const Slipway__V1__AuditEvent *ev, const char *key)
{
	for (size_t i = 0; ev && i < ev->n_details; i++)
		if (strcmp(ev->details[i]->key, key) == 0)
			return ev->details[i]->value;
	return "";
}

static const char *const search_csv_head[] = {
	"seq", "logged", "time", "outcome", "service", "action", "actor", "resource",
	"app", "environment", "request_id", "event_id", "details",
};

static void search_csv_row(const Slipway__V1__AuditEntry *e)
{
	const Slipway__V1__AuditEvent *ev = e->event;
	char seq[24], logged[32], when[32];
	json_t *d = json_object();
	for (size_t i = 0; i < ev->n_details; i++)
		json_object_set_new(d, ev->details[i]->key, json_string(ev->details[i]->value));
	char *dj = json_dumps(d, JSON_COMPACT | JSON_SORT_KEYS);
	json_decref(d);
	snprintf(seq, sizeof seq, "%llu", (unsigned long long)e->seq);
	const char *f[] = { seq, cli_rfc3339(e->logged_unix_ms, logged),
			    cli_rfc3339(ev->time_unix_ms, when), outcome_name(ev->outcome),
			    ev->service, ev->action, ev->actor, ev->resource, detail_of(ev, "app"),
			    detail_of(ev, "environment"), ev->request_id, ev->event_id,
			    dj ? dj : "{}" };
	cli_csv_row(stdout, (int)(sizeof f / sizeof f[0]), f);
	free(dj);
}

static int cmd_search(struct cli *c, int argc, char **argv)
{
	Slipway__V1__EntryFilter f = SLIPWAY__V1__ENTRY_FILTER__INIT;
	const char *addr = NULL;
	long long limit = 100, from = 0;
	int all = 0, o;
	optind = 0;
	while ((o = cli_getopt(c, argc, argv)) != -1) {
		switch (o) {
		case 'P': f.app = optarg; break;
		case 'E': f.environment = optarg; break;
		case 'a': f.actor = optarg; break;
		case 'x': f.action = optarg; break;
		case 's': f.service = optarg; break;
		case 'r': f.resource_prefix = optarg; break;
		case 'D': addr = optarg; break;
		case 'A': all = 1; break;
		case 'O':
			if (parse_outcome(optarg, &f.outcome) != 0)
				return cli_usage("--outcome wants success, failure or denied");
			break;
		case 'S':
			if (parse_time(optarg, &f.from_unix_ms) != 0)
				return cli_usage("--since wants RFC 3339 (2026-11-26T17:00:00Z), unix ms, "
						 "or a duration ago (24h, 7d)");
			break;
		case 'U':
			if (parse_time(optarg, &f.to_unix_ms) != 0)
				return cli_usage("--until wants RFC 3339 (2026-11-26T17:00:00Z), unix ms, "
						 "or a duration ago (24h, 7d)");
			break;
		case 'n':
			if (cfg_parse_ll(optarg, &limit) != 0 || limit < 1 || limit > 1000000)
				return cli_usage("--limit wants 1..1000000");
			break;
		case 'f':
			if (cfg_parse_ll(optarg, &from) != 0 || from < 0)
				return cli_usage("--page-token wants the token a search printed");
			break;
		default: return CLI_USAGE;
		}
	}
	if (optind != argc)
		return cli_usage("unexpected argument '%s'", argv[optind]);
	if (f.from_unix_ms > 0 && f.to_unix_ms > 0 && f.from_unix_ms >= f.to_unix_ms)
		return cli_usage("--since must be before --until");
	struct rpc_client *cl = NULL;
	if (cli_connect(c, "audit", addr, &cl) != 0)
		return CLI_FAIL;
	json_t *arr = c->output == CLI_JSON ? json_array() : NULL;
	char token[32], err[512], when[32];
	snprintf(token, sizeof token, "%lld", from);
	long long shown = 0;
	int rc = CLI_OK, left = 0;
	struct cli_table tab;
	cli_table_init(&tab, "rlllllll", "SEQ", "LOGGED", "OUTCOME", "ACTION", "APP", "ENV",
		       "ACTOR", "RESOURCE");
	if (c->output == CLI_CSV)
		cli_csv_row(stdout, (int)(sizeof search_csv_head / sizeof search_csv_head[0]),
			    search_csv_head);
	for (;;) {
		Slipway__V1__ListEntriesRequest req = SLIPWAY__V1__LIST_ENTRIES_REQUEST__INIT;
		req.filter = &f;
		req.page_token = token;
		long long want = all ? 1000 : limit - shown;
		req.page_size = (uint32_t)(want > 1000 ? 1000 : want);
		ProtobufCMessage *m = NULL;
		struct rpc_call_opts co = cli_call_opts(c);
		int crc = rpc_call(cl, &slipway__v1__audit__descriptor, "ListEntries", &req.base, &m,
				   &co, err, sizeof err);
		if (crc != 0) {
			rc = cli_fail_rc(crc, "audit search: %s", err);
			break;
		}
		Slipway__V1__ListEntriesResponse *r = (void *)m;
		for (size_t i = 0; i < r->n_entries; i++, shown++) {
			const Slipway__V1__AuditEntry *e = r->entries[i];
			const Slipway__V1__AuditEvent *ev = e->event;
			if (ev == NULL)
				continue;
			if (c->output == CLI_JSON) {
				json_array_append_new(arr, entry_json(e));
			} else if (c->output == CLI_JSONL) {
				cli_print_jsonl(entry_json(e));
			} else if (c->output == CLI_CSV) {
				search_csv_row(e);
			} else {
				char seqs[24];
				snprintf(seqs, sizeof seqs, "%llu", (unsigned long long)e->seq);
				cli_table_row(&tab, seqs, cli_time(e->logged_unix_ms, when),
					      outcome_name(ev->outcome), ev->action,
					      detail_of(ev, "app"), detail_of(ev, "environment"),
					      ev->actor, ev->resource);
			}
		}
		int more = r->next_page_token[0] != '\0' && (all || shown < limit);
		left = r->next_page_token[0] != '\0' && !more;
		snprintf(token, sizeof token, "%s", r->next_page_token);
		protobuf_c_message_free_unpacked(m, NULL);
		if (!more)
			break;
	}
	if (c->output == CLI_JSON && rc == CLI_OK)
		cli_print_json(arr);
	else
		json_decref(arr);
	if (c->output == CLI_TABLE && rc == CLI_OK)
		cli_table_print(&tab, stdout);
	/* More exist: machine formats keep stdout clean and say it on stderr. */
	if (rc == CLI_OK && left) {
		if (c->output == CLI_TABLE)
			printf("(more: --page-token %s, or --all)\n", token);
		else
			fprintf(stderr, "slipway: more entries: --page-token %s, or --all\n", token);
	}
	cli_table_free(&tab);
	rpc_client_free(cl);
	return rc;
}

/* ---- show / proof ---- */

enum { MAX_PUBLISHED = 8 };

struct common {
	const char *addr, *key, *state, *s3_prefix, *fingerprint;
	const char *published[MAX_PUBLISHED];
	int trust, npublished;
	long long size;
};

static const struct cli_opt common_opts[] = {
	{ "addr", required_argument, 'D', "HOST:PORT", "the audit service (else SLIPWAY_AUDIT_ADDR)" },
	{ "verifier-key", required_argument, 'k', "KEY", "the log's public key (else SLIPWAY_AUDIT_VERIFIER_KEY or the state file)" },
	{ "state", required_argument, 's', "FILE", "the local state file of checkpoints seen" },
	{ "trust", no_argument, 't', NULL, "trust and pin the key the service announces, the first time" },
	{ "size", required_argument, 'z', "N", "prove against the tree of this size" },
	{ "s3-prefix", required_argument, 'p', "PREFIX", "also check the checkpoints published on S3 under this prefix" },
	{ "fingerprint", required_argument, 'F', "HEX", "the SHA-256 of the verifier key, got out of band: refuse any other key" },
	{ "published", required_argument, 'P', "DIR|s3://BUCKET/PREFIX", "also check the checkpoints published there (verify; repeatable)" },
	{ NULL, 0, 0, NULL, NULL },
};

static int parse_common(struct cli *c, int argc, char **argv, struct common *cm, long long *seq, int need_seq)
{
	int o;
	memset(cm, 0, sizeof *cm);
	optind = 0;
	while ((o = cli_getopt(c, argc, argv)) != -1) {
		switch (o) {
		case 'D': cm->addr = optarg; break;
		case 'k': cm->key = optarg; break;
		case 's': cm->state = optarg; break;
		case 't': cm->trust = 1; break;
		case 'p': cm->s3_prefix = optarg; break;
		case 'F': cm->fingerprint = optarg; break;
		case 'P':
			if (cm->npublished == MAX_PUBLISHED)
				return cli_usage("at most %d --published", MAX_PUBLISHED);
			cm->published[cm->npublished++] = optarg;
			break;
		case 'z':
			if (cfg_parse_ll(optarg, &cm->size) != 0 || cm->size < 1)
				return cli_usage("--size wants a tree size");
			break;
		default: return CLI_USAGE;
		}
	}
	if (need_seq) {
		if (optind != argc - 1 || cfg_parse_ll(argv[optind], seq) != 0 || *seq < 0)
			return cli_usage_cmd(c);
	} else if (optind != argc) {
		return cli_usage("unexpected argument '%s'", argv[optind]);
	}
	return 0;
}

static int setup(struct cli *c, struct common *cm, struct rpc_client **cl, struct state *st,
		 struct note_verifier *v)
{
	char err[512];
	memset(st, 0, sizeof *st);
	if (cm->state)
		snprintf(st->path, sizeof st->path, "%s", cm->state);
	else
		default_state_path(st->path, sizeof st->path);
	if (auditstate_load(st->path, &st->s, err, sizeof err) != 0) {
		auditstate_free(&st->s);
		return cli_fail("the state file: %s", err);
	}
	if (cli_connect(c, "audit", cm->addr, cl) != 0) {
		auditstate_free(&st->s);
		return CLI_FAIL;
	}
	int rc = get_verifier(c, *cl, cm->key, cm->trust, cm->fingerprint, st, v);
	/* A state file whose checkpoints this key did not sign was edited:
	 * it must not vouch for anything. */
	if (rc == 0 && auditstate_check(&st->s, v, err, sizeof err) != 0)
		rc = cli_fail("the state file %s: %s", st->path, err);
	if (rc != 0) {
		rpc_client_free(*cl);
		*cl = NULL;
		auditstate_free(&st->s);
		return rc;
	}
	return 0;
}

/* Fetches one entry, its checkpoint (latest or at size) and the proof, and
 * checks all three. Prints the result. */
static int prove(struct cli *c, int argc, char **argv, int show_entry)
{
	struct common cm;
	long long seq = 0;
	int rc = parse_common(c, argc, argv, &cm, &seq, 1);
	if (rc != 0)
		return rc;
	struct rpc_client *cl = NULL;
	struct state st;
	struct note_verifier v;
	if ((rc = setup(c, &cm, &cl, &st, &v)) != 0)
		return rc;
	char err[512], origin[256];
	ProtobufCMessage *em = NULL, *pm = NULL, *cm2 = NULL;
	struct rpc_call_opts co = cli_call_opts(c);
	rc = CLI_FAIL;
	Slipway__V1__GetEntryRequest ger = SLIPWAY__V1__GET_ENTRY_REQUEST__INIT;
	ger.seq = (uint64_t)seq;
	int crc = rpc_call(cl, &slipway__v1__audit__descriptor, "GetEntry", &ger.base, &em, &co,
			   err, sizeof err);
	if (crc != 0) {
		rc = cli_fail_rc(crc, "get entry %lld: %s", seq, err);
		goto out;
	}
	Slipway__V1__GetEntryResponse *ge = (void *)em;
	const Slipway__V1__Checkpoint *cp = ge->checkpoint;
	const Slipway__V1__InclusionProof *proof = ge->proof;
	if (cm.size > 0) {
		Slipway__V1__GetCheckpointRequest gc = SLIPWAY__V1__GET_CHECKPOINT_REQUEST__INIT;
		gc.which_case = SLIPWAY__V1__GET_CHECKPOINT_REQUEST__WHICH_SIZE;
		gc.size = (uint64_t)cm.size;
		Slipway__V1__GetInclusionProofRequest gp = SLIPWAY__V1__GET_INCLUSION_PROOF_REQUEST__INIT;
		gp.seq = (uint64_t)seq;
		gp.tree_size = (uint64_t)cm.size;
		if (rpc_call(cl, &slipway__v1__audit__descriptor, "GetCheckpoint", &gc.base, &cm2, &co,
			     err, sizeof err) != 0 ||
		    rpc_call(cl, &slipway__v1__audit__descriptor, "GetInclusionProof", &gp.base, &pm,
			     &co, err, sizeof err) != 0) {
			cli_fail("%s", err);
			goto out;
		}
		cp = (void *)cm2;
		proof = (void *)pm;
	}
	if (cp == NULL || proof == NULL) {
		cli_fail("the service returned no checkpoint or proof");
		goto out;
	}
	if (check_checkpoint(&v, cp, origin, sizeof origin, err, sizeof err) != 0) {
		cli_fail("checkpoint at size %llu: %s", (unsigned long long)cp->size, err);
		goto out;
	}
	uint8_t leaf[32], eh[32], prev[32];
	memset(prev, 0, 32);
	if (ge->entry->prev_hash.len == 32)
		memcpy(prev, ge->entry->prev_hash.data, 32);
	if (leaf_of(ge->entry, leaf, eh, prev) != 0 ||
	    (ge->entry->entry_hash.len == 32 && memcmp(eh, ge->entry->entry_hash.data, 32) != 0)) {
		cli_fail("entry %lld does not match its own hash", seq);
		goto out;
	}
	if (proof->n_hashes > MERKLE_MAX_PROOF || proof->leaf_index != (uint64_t)seq ||
	    proof->tree_size != cp->size) {
		cli_fail("the proof is for another leaf or tree");
		goto out;
	}
	uint8_t path[MERKLE_MAX_PROOF][32];
	for (size_t i = 0; i < proof->n_hashes; i++) {
		if (proof->hashes[i].len != 32) {
			cli_fail("malformed proof");
			goto out;
		}
		memcpy(path[i], proof->hashes[i].data, 32);
	}
	int ok = merkle_verify_inclusion((uint64_t)seq, cp->size, leaf, path, proof->n_hashes,
					 cp->root_hash.data) == 0;
	char lh[65], root[65];
	hash_hex(leaf, 32, lh);
	hash_hex(cp->root_hash.data, 32, root);
	if (c->output == CLI_JSON) {
		json_t *hs = json_array();
		for (size_t i = 0; i < proof->n_hashes; i++) {
			char h[65];
			hash_hex(path[i], 32, h);
			json_array_append_new(hs, json_string(h));
		}
		json_t *j = json_pack("{s:I,s:I,s:s,s:o,s:s,s:s,s:b}", "seq", (json_int_t)seq,
				      "tree_size", (json_int_t)cp->size, "leaf_hash", lh, "hashes", hs,
				      "root", root, "checkpoint", cp->note, "verified", ok);
		if (show_entry)
			json_object_set_new(j, "entry", entry_json(ge->entry));
		cli_print_json(j);
	} else {
		if (show_entry) {
			const Slipway__V1__AuditEvent *e = ge->entry->event;
			char t1[32], t2[32];
			printf("seq:         %llu\nevent id:    %s\nactor:       %s\nservice:     %s\n"
			       "action:      %s\nresource:    %s\noutcome:     %s\nrequest id:  %s\n"
			       "time:        %s\nlogged:      %s\n",
			       (unsigned long long)ge->entry->seq, e->event_id, e->actor, e->service,
			       e->action, e->resource, outcome_name(e->outcome), e->request_id,
			       cli_time(e->time_unix_ms, t1), cli_time(ge->entry->logged_unix_ms, t2));
			for (size_t i = 0; i < e->n_details; i++)
				printf("  %s = %s\n", e->details[i]->key, e->details[i]->value);
		}
		printf("leaf index:  %lld\ntree size:   %llu\nleaf hash:   %s\n", seq,
		       (unsigned long long)cp->size, lh);
		for (size_t i = 0; i < proof->n_hashes; i++) {
			char h[65];
			hash_hex(path[i], 32, h);
			printf("path[%zu]:%*s%s\n", i, i < 10 ? 4 : 3, "", h);
		}
		printf("root:        %s\ncheckpoint (signature verified):\n%s", root, cp->note);
		printf("inclusion:   %s\n", ok ? "verified" : "FAILED");
	}
	rc = ok ? CLI_OK : CLI_FAIL;
	if (!ok)
		cli_fail("the inclusion proof of entry %lld does not verify", seq);
out:
	if (em)
		protobuf_c_message_free_unpacked(em, NULL);
	if (pm)
		protobuf_c_message_free_unpacked(pm, NULL);
	if (cm2)
		protobuf_c_message_free_unpacked(cm2, NULL);
	rpc_client_free(cl);
	auditstate_free(&st.s);
	return rc;
}

static int cmd_show(struct cli *c, int argc, char **argv)
{
	return prove(c, argc, argv, 1);
}

static int cmd_proof(struct cli *c, int argc, char **argv)
{
	return prove(c, argc, argv, 0);
}

/* ---- checkpoint ---- */

static const struct cli_opt checkpoint_opts[] = {
	{ "addr", required_argument, 'D', "HOST:PORT", "the service address (else SLIPWAY_<SERVICE>_ADDR)" },
	{ "verifier-key", required_argument, 'k', "KEY", "the log's public key (else SLIPWAY_AUDIT_VERIFIER_KEY or the state file)" },
	{ "state", required_argument, 's', "FILE", "the local state file of checkpoints seen" },
	{ "trust", no_argument, 't', NULL, "trust and pin the key the service announces, the first time" },
	{ "size", required_argument, 'z', "N", "prove against the tree of this size" },
	{ "sign", no_argument, 'S', NULL, "ask the service to sign a fresh checkpoint" },
	{ NULL, 0, 0, NULL, NULL },
};

static int cmd_checkpoint(struct cli *c, int argc, char **argv)
{
	struct common cm;
	int sign = 0, o, rc;
	memset(&cm, 0, sizeof cm);
	optind = 0;
	while ((o = cli_getopt(c, argc, argv)) != -1) {
		switch (o) {
		case 'D': cm.addr = optarg; break;
		case 'k': cm.key = optarg; break;
		case 's': cm.state = optarg; break;
		case 't': cm.trust = 1; break;
		case 'S': sign = 1; break;
		case 'z':
			if (cfg_parse_ll(optarg, &cm.size) != 0 || cm.size < 1)
				return cli_usage("--size wants a tree size");
			break;
		default: return CLI_USAGE;
		}
	}
	struct rpc_client *cl = NULL;
	struct state st;
	struct note_verifier v;
	if ((rc = setup(c, &cm, &cl, &st, &v)) != 0)
		return rc;
	char err[512], origin[256];
	ProtobufCMessage *m = NULL;
	struct rpc_call_opts co = cli_call_opts(c);
	if (sign) {
		Slipway__V1__SignCheckpointRequest req = SLIPWAY__V1__SIGN_CHECKPOINT_REQUEST__INIT;
		rc = rpc_call(cl, &slipway__v1__audit__descriptor, "SignCheckpoint", &req.base, &m, &co,
			      err, sizeof err);
	} else {
		Slipway__V1__GetCheckpointRequest req = SLIPWAY__V1__GET_CHECKPOINT_REQUEST__INIT;
		if (cm.size > 0) {
			req.which_case = SLIPWAY__V1__GET_CHECKPOINT_REQUEST__WHICH_SIZE;
			req.size = (uint64_t)cm.size;
		} else {
			req.which_case = SLIPWAY__V1__GET_CHECKPOINT_REQUEST__WHICH_LATEST;
			req.latest = 1;
		}
		rc = rpc_call(cl, &slipway__v1__audit__descriptor, "GetCheckpoint", &req.base, &m, &co,
			      err, sizeof err);
	}
	rpc_client_free(cl);
	auditstate_free(&st.s);
	if (rc != 0)
		return cli_fail_rc(rc, "checkpoint: %s", err);
	Slipway__V1__Checkpoint *cp = (void *)m;
	rc = check_checkpoint(&v, cp, origin, sizeof origin, err, sizeof err);
	char root[65], when[32];
	hash_hex(cp->root_hash.data, cp->root_hash.len == 32 ? 32 : 0, root);
	if (c->output == CLI_JSON)
		cli_print_json(json_pack("{s:s,s:I,s:s,s:s,s:I,s:b}", "origin", cp->origin, "size",
					 (json_int_t)cp->size, "root", root, "note", cp->note,
					 "signed_unix_ms", (json_int_t)cp->signed_unix_ms, "verified",
					 rc == 0));
	else
		printf("%ssize %llu, root %s, signed %s: signature %s\n", cp->note,
		       (unsigned long long)cp->size, root, cli_time(cp->signed_unix_ms, when),
		       rc == 0 ? "verified" : "INVALID");
	protobuf_c_message_free_unpacked(m, NULL);
	if (rc != 0)
		return cli_fail("checkpoint signature: %s", err);
	return CLI_OK;
}

/* ---- verify ---- */

struct cpref {
	uint64_t size;
	uint8_t root[32];
	char from[300]; /* "the service", "S3", "the state file", "published in DIR (file F)" */
	int outside;    /* kept outside the service's database */
	char note[NOTE_MAX];
};

/* Appends a checkpoint reference to *cps (grown). 0 or -1 (memory). */
static int cps_push(struct cpref **cps, size_t *n, size_t *cap, const struct cpref *r)
{
	if (*n == *cap) {
		if (*cap >= 1000000)
			return -1;
		size_t nc = *cap ? *cap * 2 : 64;
		struct cpref *x = realloc(*cps, nc * sizeof *x);
		if (x == NULL)
			return -1;
		*cps = x;
		*cap = nc;
	}
	(*cps)[(*n)++] = *r;
	return 0;
}

/* Verifies a published note (text) with v into *out. 0, or SW_EINVAL with
 * err naming where it came from. */
static int published_note(const struct note_verifier *v, const char *text, const char *from,
			  const char *origin, struct cpref *out, char *err, size_t errlen)
{
	char body[NOTE_MAX], o[256], why[512];
	memset(out, 0, sizeof *out);
	if (strlen(text) >= sizeof out->note)
		return sw_errf(err, errlen, SW_EINVAL, "%s: too long for a checkpoint", from);
	if (note_verify(v, text, body, sizeof body, why, sizeof why) != 0 ||
	    note_checkpoint_parse(body, o, sizeof o, &out->size, out->root, why, sizeof why) != 0)
		return sw_errf(err, errlen, SW_EINVAL, "%s: %s", from, why);
	if (origin[0] && strcmp(o, origin) != 0)
		return sw_errf(err, errlen, SW_EINVAL, "%s is a checkpoint of log '%s', not '%s'", from,
			       o, origin);
	snprintf(out->note, sizeof out->note, "%s", text);
	snprintf(out->from, sizeof out->from, "%s", from);
	out->outside = 1;
	return 0;
}

/* Reads every checkpoint published in directory dir (files named by 20
 * digits, and latest) into *cps. 0, or SW_E* with err. */
static int published_dir(const struct note_verifier *v, const char *dir, const char *origin,
			 struct cpref **cps, size_t *n, size_t *cap, char *err, size_t errlen)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int rc = 0;
	if (d == NULL)
		return sw_errf(err, errlen, SW_EIO, "--published %s: %s", dir, strerror(errno));
	while (rc == 0 && (e = readdir(d)) != NULL) {
		size_t len = strlen(e->d_name);
		int digits = len == 20 && strspn(e->d_name, "0123456789") == 20;
		if (!digits && strcmp(e->d_name, "latest") != 0)
			continue;
		char path[4400], text[NOTE_MAX], from[300];
		snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
		FILE *f = fopen(path, "r");
		size_t got = f ? fread(text, 1, sizeof text - 1, f) : 0;
		if (f == NULL || ferror(f)) {
			rc = sw_errf(err, errlen, SW_EIO, "%s: cannot read", path);
		} else {
			text[got] = '\0';
			snprintf(from, sizeof from, "published in %.200s (file %s)", dir, e->d_name);
			struct cpref r;
			if ((rc = published_note(v, text, from, origin, &r, err, errlen)) == 0 &&
			    digits && r.size != strtoull(e->d_name, NULL, 10))
				rc = sw_errf(err, errlen, SW_EINVAL, "%s holds a checkpoint of size %llu",
					     from, (unsigned long long)r.size);
			if (rc == 0 && cps_push(cps, n, cap, &r) != 0)
				rc = sw_errf(err, errlen, SW_ENOMEM, "too many published checkpoints");
		}
		if (f)
			fclose(f);
	}
	closedir(d);
	return rc;
}

static int cmp_cpref(const void *a, const void *b)
{
	const struct cpref *x = a, *y = b;
	return (x->size > y->size) - (x->size < y->size);
}

static int verify_fail(struct cli *c, json_t *report, long long seq, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static int verify_fail(struct cli *c, json_t *report, long long seq, const char *fmt, ...)
{
	char why[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, sizeof why, fmt, ap);
	va_end(ap);
	if (c->output == CLI_JSON) {
		json_object_set_new(report, "ok", json_false());
		if (seq >= 0)
			json_object_set_new(report, "first_bad_seq", json_integer(seq));
		json_object_set_new(report, "reason", json_string(why));
		cli_print_json(report);
	} else {
		json_decref(report);
		if (seq >= 0)
			printf("FAIL at seq %lld: %s\n", seq, why);
		else
			printf("FAIL: %s\n", why);
	}
	return CLI_FAIL;
}

/* Reads <prefix>latest from the bucket (NULL: SLIPWAY_S3_BUCKET) when the
 * S3 settings are in the environment (an auditor with read access to the
 * bucket). 1 and *out, 0 when there is nothing to read, or SW_E* with err. */
static int s3_checkpoint(const struct note_verifier *v, const char *bucket_, const char *prefix,
			 const char *origin, struct cpref *out, char *err, size_t errlen)
{
	const char *host = getenv("SLIPWAY_S3_HOST"), *bucket = bucket_ ? bucket_ : getenv("SLIPWAY_S3_BUCKET");
	const char *ak = getenv("SLIPWAY_S3_ACCESS_KEY"), *sk = getenv("SLIPWAY_S3_SECRET_KEY");
	if (!host || !bucket || !ak || !sk) {
		if (bucket_ != NULL)
			return sw_errf(err, errlen, SW_EINVAL,
				       "--published s3://%s/... needs SLIPWAY_S3_HOST, "
				       "SLIPWAY_S3_ACCESS_KEY and SLIPWAY_S3_SECRET_KEY",
				       bucket_);
		return 0;
	}
	struct s3 *s = NULL;
	struct s3_opts so = { .host = host, .bucket = bucket, .access_key = ak, .secret_key = sk,
			      .stall_ms = 3000, .deadline_ms = 10000 };
	uint8_t *buf = NULL;
	size_t len = 0;
	int rc = s3_global_init(err, errlen);
	if (rc == 0)
		rc = s3_new(&so, &s, err, errlen);
	char key[300], from[400];
	snprintf(key, sizeof key, "%slatest", prefix);
	if (rc == 0)
		rc = s3_get_small(s, key, NOTE_MAX - 1, &buf, &len, err, errlen);
	s3_free(s);
	if (rc == SW_ENOTFOUND)
		return 0;
	if (rc != 0)
		return rc;
	char text[NOTE_MAX];
	memcpy(text, buf, len);
	text[len] = '\0';
	free(buf);
	snprintf(from, sizeof from, "S3 (s3://%s/%s)", bucket, key);
	if ((rc = published_note(v, text, from, origin, out, err, errlen)) != 0)
		return rc;
	return 1;
}

static int cmd_verify(struct cli *c, int argc, char **argv)
{
	struct common cm;
	long long unused;
	int rc = parse_common(c, argc, argv, &cm, &unused, 0);
	if (rc != 0)
		return rc;
	struct rpc_client *cl = NULL;
	struct state st;
	struct note_verifier v;
	if ((rc = setup(c, &cm, &cl, &st, &v)) != 0)
		return rc;
	json_t *report = json_object();
	char err[512], origin[256];
	struct rpc_call_opts co = cli_call_opts(c);
	struct cpref *cps = NULL;
	size_t ncp = 0, capcp = 0;
	double t_fetch = 0, t_compute = 0, t0 = mono_s();
	rc = CLI_FAIL;

	/* 1. Every signed checkpoint the service has, checked one by one. */
	char token[32] = "";
	for (;;) {
		Slipway__V1__ListCheckpointsRequest req = SLIPWAY__V1__LIST_CHECKPOINTS_REQUEST__INIT;
		req.page_token = token;
		req.page_size = 1000;
		ProtobufCMessage *m = NULL;
		if (rpc_call(cl, &slipway__v1__audit__descriptor, "ListCheckpoints", &req.base, &m, &co,
			     err, sizeof err) != 0) {
			rc = verify_fail(c, report, -1, "cannot list checkpoints: %s", err);
			goto out;
		}
		Slipway__V1__ListCheckpointsResponse *r = (void *)m;
		for (size_t i = 0; i < r->n_checkpoints; i++) {
			if (check_checkpoint(&v, r->checkpoints[i], origin, sizeof origin, err,
					     sizeof err) != 0) {
				rc = verify_fail(c, report, -1, "checkpoint at size %llu: %s",
						 (unsigned long long)r->checkpoints[i]->size, err);
				protobuf_c_message_free_unpacked(m, NULL);
				goto out;
			}
			if (ncp == capcp) {
				capcp = capcp ? capcp * 2 : 64;
				struct cpref *n = realloc(cps, capcp * sizeof *n);
				if (n == NULL) {
					protobuf_c_message_free_unpacked(m, NULL);
					rc = cli_fail("out of memory");
					goto out;
				}
				cps = n;
			}
			cps[ncp].size = r->checkpoints[i]->size;
			memcpy(cps[ncp].root, r->checkpoints[i]->root_hash.data, 32);
			snprintf(cps[ncp].note, sizeof cps[ncp].note, "%s", r->checkpoints[i]->note);
			snprintf(cps[ncp].from, sizeof cps[ncp].from, "the service");
			cps[ncp++].outside = 0;
			if (st.s.origin[0] == '\0')
				snprintf(st.s.origin, sizeof st.s.origin, "%s", origin);
			else if (strcmp(st.s.origin, origin) != 0) {
				protobuf_c_message_free_unpacked(m, NULL);
				rc = verify_fail(c, report, -1, "checkpoint origin '%s' is not '%s'",
						 origin, st.s.origin);
				goto out;
			}
		}
		snprintf(token, sizeof token, "%s", r->next_page_token);
		protobuf_c_message_free_unpacked(m, NULL);
		if (token[0] == '\0')
			break;
	}
	/* 2. Checkpoints kept outside the service's database: on S3 (when the
	 * auditor has the bucket's credentials), published (--published), and
	 * every one this auditor saw before (the state file). */
	size_t nsvc = ncp;
	uint64_t svc_max = 0;
	for (size_t i = 0; i < nsvc; i++)
		svc_max = cps[i].size > svc_max ? cps[i].size : svc_max;
	struct cpref extra;
	int s3rc = s3_checkpoint(&v, NULL, cm.s3_prefix ? cm.s3_prefix : "checkpoints/", st.s.origin,
				 &extra, err, sizeof err);
	if (s3rc < 0) {
		rc = verify_fail(c, report, -1, "%s", err);
		goto out;
	}
	if (s3rc == 1 && cps_push(&cps, &ncp, &capcp, &extra) != 0) {
		rc = cli_fail("out of memory");
		goto out;
	}
	for (int p = 0; p < cm.npublished; p++) {
		const char *src = cm.published[p];
		int prc;
		if (strncmp(src, "s3://", 5) == 0) {
			char bucket[64];
			const char *slash = strchr(src + 5, '/');
			size_t bl = slash ? (size_t)(slash - src - 5) : strlen(src + 5);
			if (bl == 0 || bl >= sizeof bucket) {
				rc = cli_usage("--published wants DIR or s3://BUCKET/PREFIX/");
				goto out;
			}
			memcpy(bucket, src + 5, bl);
			bucket[bl] = '\0';
			prc = s3_checkpoint(&v, bucket, slash ? slash + 1 : "", st.s.origin, &extra, err,
					    sizeof err);
			if (prc == 0)
				prc = sw_errf(err, sizeof err, SW_ENOTFOUND,
					      "--published %s: no checkpoint there", src);
			if (prc == 1 && cps_push(&cps, &ncp, &capcp, &extra) != 0)
				prc = sw_errf(err, sizeof err, SW_ENOMEM, "out of memory");
		} else {
			prc = published_dir(&v, src, st.s.origin, &cps, &ncp, &capcp, err, sizeof err);
		}
		if (prc < 0) {
			rc = verify_fail(c, report, -1, "%s", err);
			goto out;
		}
	}
	for (size_t i = 0; i < st.s.n; i++) {
		struct cpref r;
		memset(&r, 0, sizeof r);
		r.size = st.s.cps[i].size;
		memcpy(r.root, st.s.cps[i].root, 32);
		snprintf(r.note, sizeof r.note, "%s", st.s.cps[i].note);
		snprintf(r.from, sizeof r.from, "the state file %.250s", st.path);
		r.outside = 1;
		if (cps_push(&cps, &ncp, &capcp, &r) != 0) {
			rc = cli_fail("out of memory");
			goto out;
		}
	}
	/* A checkpoint kept outside that the service now signs differently at
	 * the same size: two signed histories. */
	for (size_t i = nsvc; i < ncp; i++) {
		for (size_t k = 0; k < nsvc; k++) {
			if (cps[k].size != cps[i].size || memcmp(cps[k].root, cps[i].root, 32) == 0)
				continue;
			char a[65], b[65];
			hash_hex(cps[k].root, 32, a);
			hash_hex(cps[i].root, 32, b);
			rc = verify_fail(c, report, (long long)cps[i].size - 1,
					 "the log was rolled back and re-signed: the service's checkpoint "
					 "of size %llu (root %s) is not the one signed at that size that "
					 "%s holds (root %s)",
					 (unsigned long long)cps[i].size, a, cps[i].from, b);
			goto out;
		}
	}
	qsort(cps, ncp, sizeof *cps, cmp_cpref);

	/* 3. Every entry, recomputed: chain links, entry hashes, and the tree
	 * root at every checkpoint size. */
	Slipway__V1__ExportEntriesRequest er = SLIPWAY__V1__EXPORT_ENTRIES_REQUEST__INIT;
	struct rpc_call_opts eo = cli_call_opts(c);
	eo.timeout_ms = 3600 * 1000;
	struct rpc_stream *s = NULL;
	if (rpc_stream_open(cl, &slipway__v1__audit__descriptor, "ExportEntries", &eo, &s, err,
			    sizeof err) != 0 ||
	    rpc_stream_send(s, &er.base) != 0 || rpc_stream_close_send(s) != 0) {
		if (s)
			rpc_stream_finish(s, err, sizeof err);
		rc = verify_fail(c, report, -1, "cannot export entries: %s", err);
		goto out;
	}
	struct merkle_range range;
	merkle_range_init(&range);
	uint8_t prev[32];
	memset(prev, 0, sizeof prev);
	uint64_t next = 0;
	size_t ci = 0;
	long long bad_seq = -1;
	char why[512] = "";
	for (;;) {
		double a0 = mono_s();
		ProtobufCMessage *m = NULL;
		int got = rpc_stream_recv(s, &m);
		double a1 = mono_s();
		t_fetch += a1 - a0;
		if (got != 1)
			break;
		Slipway__V1__ExportEntriesResponse *r = (void *)m;
		for (size_t i = 0; i < r->n_entries && bad_seq < 0; i++) {
			const Slipway__V1__AuditEntry *e = r->entries[i];
			uint8_t leaf[32], eh[32];
			if (e->seq != next) {
				bad_seq = (long long)next;
				snprintf(why, sizeof why,
					 e->seq > next ? "entry %llu is missing (next entry has seq %llu)"
						       : "entry %llu is followed by seq %llu (out of order)",
					 (unsigned long long)next, (unsigned long long)e->seq);
				break;
			}
			if (e->prev_hash.len != 32 || memcmp(e->prev_hash.data, prev, 32) != 0) {
				bad_seq = (long long)next;
				snprintf(why, sizeof why, "prev_hash does not link to entry %lld",
					 (long long)next - 1);
				break;
			}
			if (leaf_of(e, leaf, eh, prev) != 0) {
				bad_seq = (long long)next;
				snprintf(why, sizeof why, "entry cannot be encoded (malformed)");
				break;
			}
			if (e->entry_hash.len != 32 || memcmp(e->entry_hash.data, eh, 32) != 0) {
				bad_seq = (long long)next;
				snprintf(why, sizeof why,
					 "the entry's contents do not match its hash (changed after it "
					 "was logged)");
				break;
			}
			memcpy(prev, eh, 32);
			merkle_range_append(&range, leaf, NULL, NULL);
			next++;
			while (ci < ncp && cps[ci].size == next) {
				uint8_t root[32];
				merkle_range_root(&range, root);
				if (memcmp(root, cps[ci].root, 32) != 0) {
					bad_seq = (long long)next - 1;
					snprintf(why, sizeof why,
						 cps[ci].outside && cps[ci].size > svc_max
							 ? "the log was rolled back: the entries up to size "
							   "%llu do not match the checkpoint signed at that "
							   "size that %s holds, and the service no longer "
							   "shows it"
							 : "the entries up to size %llu do not match the "
							   "checkpoint signed at that size (from %s): entries "
							   "before it were rewritten",
						 (unsigned long long)cps[ci].size, cps[ci].from);
					break;
				}
				ci++;
			}
		}
		protobuf_c_message_free_unpacked(m, NULL);
		t_compute += mono_s() - a1;
		if (bad_seq >= 0) {
			rpc_stream_cancel(s);
			break;
		}
	}
	int frc = rpc_stream_finish(s, err, sizeof err);
	if (bad_seq >= 0) {
		rc = verify_fail(c, report, bad_seq, "%s", why);
		goto out;
	}
	if (frc != 0) {
		rc = verify_fail(c, report, (long long)next, "export stopped: %s", err);
		goto out;
	}
	while (ci < ncp && cps[ci].size == 0)
		ci++;
	if (ci < ncp) {
		rc = verify_fail(c, report, (long long)next,
				 "the log has %llu entries but a checkpoint was signed at size %llu "
				 "(from %s): the log was truncated or rolled back",
				 (unsigned long long)next, (unsigned long long)cps[ncp - 1].size,
				 cps[ncp - 1].from);
		goto out;
	}
	/* 4. Success: remember the newest checkpoint for next time. */
	const struct cpref *latest = ncp ? &cps[ncp - 1] : NULL;
	if (latest != NULL &&
	    auditstate_add(&st.s, latest->size, latest->root, latest->note, err, sizeof err) != 0)
		fprintf(stderr, "slipway: warning: %s\n", err);
	if (auditstate_save(st.path, &st.s, err, sizeof err) != 0)
		fprintf(stderr, "slipway: warning: %s\n", err);
	char root[65] = "";
	if (latest)
		hash_hex(latest->root, 32, root);
	if (c->output == CLI_JSON) {
		json_object_set_new(report, "ok", json_true());
		json_object_set_new(report, "entries", json_integer((json_int_t)next));
		json_object_set_new(report, "checkpoints", json_integer((json_int_t)ncp));
		json_object_set_new(report, "latest_checkpoint_size",
				    json_integer(latest ? (json_int_t)latest->size : 0));
		json_object_set_new(report, "latest_root", json_string(root));
		json_object_set_new(report, "fetch_seconds", json_real(t_fetch));
		json_object_set_new(report, "compute_seconds", json_real(t_compute));
		json_object_set_new(report, "total_seconds", json_real(mono_s() - t0));
		cli_print_json(report);
	} else {
		json_decref(report);
		printf("OK: %llu entries, hash chain intact, %zu checkpoints verified "
		       "(latest size %llu, root %s); fetch %.2fs, recompute %.2fs\n",
		       (unsigned long long)next, ncp, latest ? (unsigned long long)latest->size : 0ULL,
		       root[0] ? root : "-", t_fetch, t_compute);
	}
	report = NULL;
	rc = CLI_OK;
out:
	free(cps);
	rpc_client_free(cl);
	auditstate_free(&st.s);
	return rc;
}

/* ---- state: merge and show verifier state files ---- */

static const struct cli_opt state_opts[] = {
	{ "out", required_argument, 'O', "FILE", "merge: write the merged state here" },
	{ "verifier-key", required_argument, 'k', "KEY", "the log's public key (else the one the files pin)" },
	{ "fingerprint", required_argument, 'F', "HEX", "refuse a key whose SHA-256 is not HEX" },
	{ NULL, 0, 0, NULL, NULL },
};

static json_t *state_json(const char *path, const struct auditstate *st, int verified)
{
	char fp[65] = "";
	if (st->verifier[0])
		auditstate_fingerprint(st->verifier, fp);
	json_t *cps = json_array();
	for (size_t i = 0; i < st->n; i++) {
		char root[65];
		hash_hex(st->cps[i].root, 32, root);
		json_array_append_new(cps, json_pack("{s:I,s:s}", "size", (json_int_t)st->cps[i].size,
						     "root", root));
	}
	return json_pack("{s:s,s:s,s:s,s:s,s:s,s:o,s:b}", "path", path, "format", AUDITSTATE_FORMAT,
			 "origin", st->origin, "verifier_key", st->verifier, "verifier_fingerprint",
			 fp, "checkpoints", cps, "signatures_verified", verified);
}

static int cmd_state(struct cli *c, int argc, char **argv)
{
	const char *out = NULL, *key = NULL, *fpr = NULL;
	int o, rc = CLI_FAIL;
	optind = 0;
	while ((o = cli_getopt(c, argc, argv)) != -1) {
		switch (o) {
		case 'O': out = optarg; break;
		case 'k': key = optarg; break;
		case 'F': fpr = optarg; break;
		default: return CLI_USAGE;
		}
	}
	if (optind >= argc)
		return cli_usage_cmd(c);
	const char *what = argv[optind++];
	int nfiles = argc - optind;
	int merge = strcmp(what, "merge") == 0;
	if (!merge && strcmp(what, "show") != 0)
		return cli_usage("audit state wants 'merge A B... --out FILE' or 'show [FILE]'");
	if (merge && (nfiles < 2 || out == NULL))
		return cli_usage("audit state merge wants two or more files and --out FILE");
	if (!merge && nfiles > 1)
		return cli_usage("audit state show takes one file");
	char def[4096], err[1024];
	default_state_path(def, sizeof def);
	struct auditstate *sts = calloc((size_t)(nfiles ? nfiles : 1), sizeof *sts);
	struct auditstate merged;
	memset(&merged, 0, sizeof merged);
	if (sts == NULL)
		return cli_fail("out of memory");
	const char *first = nfiles ? argv[optind] : def;
	for (int i = 0; i < (nfiles ? nfiles : 1); i++) {
		const char *path = nfiles ? argv[optind + i] : def;
		if (access(path, F_OK) != 0) {
			cli_fail("%s: %s", path, strerror(errno));
			goto out;
		}
		if (auditstate_load(path, &sts[i], err, sizeof err) != 0) {
			cli_fail("%s", err);
			goto out;
		}
		if (key == NULL && sts[i].verifier[0])
			key = sts[i].verifier; /* the first file's pinned key */
	}
	struct note_verifier v;
	int verified = 0;
	if (key != NULL) {
		char fp[65];
		auditstate_fingerprint(key, fp);
		if (fpr != NULL && strcasecmp(fp, fpr) != 0) {
			cli_fail("the key's fingerprint is %s, not %s: do not trust it", fp, fpr);
			goto out;
		}
		if (note_verifier_parse(key, &v, err, sizeof err) != 0) {
			cli_fail("verifier key: %s", err);
			goto out;
		}
		verified = 1;
	} else if (merge) {
		cli_fail("no file pins a verifier key: pass --verifier-key");
		goto out;
	}
	if (!merge) {
		if (verified && auditstate_check(&sts[0], &v, err, sizeof err) != 0) {
			cli_fail("%s: %s", first, err);
			goto out;
		}
		if (c->output == CLI_JSON) {
			cli_print_json(state_json(first, &sts[0], verified));
		} else {
			char fp[65] = "-";
			if (sts[0].verifier[0])
				auditstate_fingerprint(sts[0].verifier, fp);
			printf("state file:   %s\norigin:       %s\nverifier key: %s\nfingerprint:  %s\n"
			       "checkpoints:  %zu (signatures %s)\n",
			       first, sts[0].origin[0] ? sts[0].origin : "-",
			       sts[0].verifier[0] ? sts[0].verifier : "-", fp, sts[0].n,
			       verified ? "verified" : "not checked: no key");
			for (size_t i = 0; i < sts[0].n; i++) {
				char root[65];
				hash_hex(sts[0].cps[i].root, 32, root);
				printf("  size %llu  root %s\n", (unsigned long long)sts[0].cps[i].size,
				       root);
			}
		}
		rc = CLI_OK;
		goto out;
	}
	snprintf(merged.verifier, sizeof merged.verifier, "%s", key);
	for (int i = 0; i < nfiles; i++) {
		if (sts[i].verifier[0] && strcmp(sts[i].verifier, key) != 0) {
			cli_fail("%s pins another key (%s, not %s): the files pin different keys; "
				 "compare each with the fingerprint published out of band",
				 argv[optind + i], sts[i].verifier, key);
			goto out;
		}
		if (auditstate_merge(&merged, &sts[i], &v, err, sizeof err) != 0) {
			cli_fail("%s: %s", argv[optind + i], err);
			goto out;
		}
	}
	if (auditstate_save(out, &merged, err, sizeof err) != 0) {
		cli_fail("%s", err);
		goto out;
	}
	if (c->output == CLI_JSON)
		cli_print_json(state_json(out, &merged, 1));
	else
		printf("merged %d files into %s: %zu checkpoints, newest size %llu\n", nfiles, out,
		       merged.n,
		       merged.n ? (unsigned long long)auditstate_latest(&merged)->size : 0ULL);
	rc = CLI_OK;
out:
	for (int i = 0; i < (nfiles ? nfiles : 1); i++)
		auditstate_free(&sts[i]);
	free(sts);
	auditstate_free(&merged);
	return rc;
}

extern const struct cli_cmd cli_audit_cmds[];
const struct cli_cmd cli_audit_cmds[] = {
	{ "log", cmd_log, "list entries (filters, pagination)",
	  "[--actor ID] [--service S] [--action A] [--resource R] [--outcome O] [--request-id ID] "
	  "[--since T] [--until T] [--from-seq N] [--limit N] [--all]",
	  log_opts,
	  "slipway audit log --service orchestrator --limit 20\n"
	  "slipway audit log --outcome denied --since 1h --all", NULL, NULL },
	{ "search", cmd_search, "search the log by app, environment, actor, action, time, outcome",
	  "[--app APP] [--env ENV] [--actor ID] [--action A] [--service S] [--resource PREFIX] "
	  "[--outcome O] [--since T] [--until T] [--limit N] [--page-token T] [--all] "
	  "[-o table|json|csv|jsonl]",
	  search_opts,
	  "slipway audit search --app web --env prod --since 24h\n"
	  "slipway audit search --env prod --action deploy.request --outcome denied --since 7d\n"
	  "slipway audit search --actor spiffe://example.org/user/alice --since "
	  "2026-11-01T00:00:00Z --until 2026-12-01T00:00:00Z --all -o csv > november.csv\n"
	  "slipway audit search --app web --all -o jsonl | jq -r .action",
	  NULL, NULL },
	{ "show", cmd_show, "show one entry and prove it is in the signed log",
	  "SEQ [--size N] [--verifier-key KEY] [--state FILE] [--trust]", common_opts,
	  "slipway audit show 42", NULL, NULL },
	{ "proof", cmd_proof, "print and check an inclusion proof",
	  "SEQ [--size N] [--verifier-key KEY] [--state FILE] [--trust]", common_opts,
	  "slipway audit proof 42 --size 100", NULL, NULL },
	{ "checkpoint", cmd_checkpoint, "print and check a signed checkpoint (--sign: sign now)",
	  "[--sign] [--size N] [--verifier-key KEY] [--state FILE] [--trust]", checkpoint_opts,
	  "slipway audit checkpoint\nslipway audit checkpoint --sign", NULL, NULL },
	{ "verify", cmd_verify, "recompute the whole log and check it against every checkpoint",
	  "[--verifier-key KEY] [--fingerprint HEX] [--state FILE] [--trust] [--s3-prefix PREFIX] "
	  "[--published DIR|s3://BUCKET/PREFIX]...",
	  common_opts,
	  "slipway audit verify\n"
	  "slipway audit verify --trust --fingerprint 3f5e...c1 --state ./audit.state\n"
	  "slipway audit verify --state ./audit.state --published /mnt/audit-checkpoints",
	  NULL, NULL },
	{ "state", cmd_state,
	  "merge two auditors' state files of checkpoints seen, or show one",
	  "merge A B... --out FILE [--verifier-key KEY] [--fingerprint HEX] | show [FILE]",
	  state_opts,
	  "slipway audit state show\n"
	  "slipway audit state merge alice.state bob.state --out team.state\n"
	  "slipway audit verify --state team.state",
	  NULL, NULL },
	{ NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL },
};

int cli_cmd_audit(struct cli *c, int argc, char **argv);
int cli_cmd_audit(struct cli *c, int argc, char **argv)
{
	return cli_dispatch(c, "audit", cli_audit_cmds, argc, argv);
}
