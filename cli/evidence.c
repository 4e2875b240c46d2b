/*
 * evidence.c - `slipway evidence export|verify`: one self-contained,
 * offline-verifiable bundle per deployment (docs/evidence-format.md).
 *
 * export reads what the services hold (the deployment and its timeline
 * from the orchestrator, the release and its signed provenance from the
 * artifact service, the policy revision in force from the policy service)
 * and every audit entry about the deployment with its inclusion proof
 * against a signed checkpoint; lib/evidence.c assembles the bundle and
 * derives its views from the entries, and export refuses to write a bundle
 * whose timeline is not what the orchestrator shows.
 *
 * verify needs nothing but the file and the audit log's public key
 * (lib/evidence.c evidence_verify); with --state it also checks and
 * advances the checkpoint the auditor saw last (lib/auditstate.c, the
 * same file `slipway audit verify --state` keeps).
 */
#include "auditstate.h"
#include "cfg.h"
#include "cli.h"
#include "err.h"
#include "evidence.h"
#include "hash.h"
#include "merkle.h"
#include "note.h"
#include "provenance.h"

#include "slipway/v1/artifact.pb-c.h"
#include "slipway/v1/audit.pb-c.h"
#include "slipway/v1/orchestrator.pb-c.h"
#include "slipway/v1/policy.pb-c.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double mono_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* "2026-11-26T17:00:00Z" or unix milliseconds. */
static int parse_time(const char *s, int64_t *out)
{
	struct tm tm;
	memset(&tm, 0, sizeof tm);
	const char *end = strptime(s, "%Y-%m-%dT%H:%M:%SZ", &tm);
	if (end != NULL && *end == '\0') {
		*out = (int64_t)timegm(&tm) * 1000;
		return 0;
	}
	long long v;
	if (cfg_parse_ll(s, &v) == 0 && v > 0) {
		*out = v;
		return 0;
	}
	return -1;
}

/* Writes data to path atomically (path.tmp, then rename). */
static int write_file(const char *path, const char *data, size_t len)
{
	char tmp[4200];
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -1;
	size_t off = 0;
	while (off < len) {
		ssize_t w = write(fd, data + off, len - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			close(fd);
			unlink(tmp);
			return -1;
		}
		off += (size_t)w;
	}
	if (fsync(fd) != 0 || close(fd) != 0 || rename(tmp, path) != 0) {
		unlink(tmp);
		return -1;
	}
	return 0;
}

/* ---- export ---- */

struct exporter {
	struct cli *c;
	struct rpc_client *orch, *audit, *art, *pol;
	const char *state_path;
	int wait_s;
	char err[1024];
};

/* Every entry matching the filter whose resource is exactly `resource`
 * (the filter is a prefix), appended to *v. */
static int list_entries(struct exporter *x, const char *resource, const char *action,
			Slipway__V1__AuditEntry ***v, size_t *n, size_t *cap,
			ProtobufCMessage ***msgs, size_t *nmsgs)
{
	Slipway__V1__EntryFilter f = SLIPWAY__V1__ENTRY_FILTER__INIT;
	f.resource_prefix = (char *)resource;
	if (action)
		f.action = (char *)action;
	char token[64] = "";
	for (;;) {
		Slipway__V1__ListEntriesRequest req = SLIPWAY__V1__LIST_ENTRIES_REQUEST__INIT;
		req.filter = &f;
		req.page_size = 1000;
		req.page_token = token;
		ProtobufCMessage *m = NULL;
		struct rpc_call_opts co = cli_call_opts(x->c);
		int rc = rpc_call(x->audit, &slipway__v1__audit__descriptor, "ListEntries", &req.base,
				  &m, &co, x->err, sizeof x->err);
		if (rc != 0)
			return rc;
		Slipway__V1__ListEntriesResponse *r = (void *)m;
		ProtobufCMessage **nm = realloc(*msgs, (*nmsgs + 1) * sizeof *nm);
		if (nm == NULL) {
			protobuf_c_message_free_unpacked(m, NULL);
			return sw_errf(x->err, sizeof x->err, SW_ENOMEM, "out of memory");
		}
		*msgs = nm;
		(*msgs)[(*nmsgs)++] = m;
		for (size_t i = 0; i < r->n_entries; i++) {
			Slipway__V1__AuditEntry *e = r->entries[i];
			if (e->event == NULL || strcmp(e->event->resource, resource) != 0)
				continue;
			if (*n == *cap) {
				size_t nc = *cap ? *cap * 2 : 256;
				Slipway__V1__AuditEntry **p = realloc(*v, nc * sizeof *p);
				if (p == NULL)
					return sw_errf(x->err, sizeof x->err, SW_ENOMEM, "out of memory");
				*v = p;
				*cap = nc;
			}
			(*v)[(*n)++] = e;
		}
		if (r->next_page_token == NULL || r->next_page_token[0] == '\0')
			break;
		snprintf(token, sizeof token, "%s", r->next_page_token);
	}
	return 0;
}

static const char *kv(const Slipway__V1__AuditEntry *e, const char *key)
{
	for (size_t i = 0; e->event && i < e->event->n_details; i++)
		if (strcmp(e->event->details[i]->key, key) == 0)
			return e->event->details[i]->value;
	return NULL;
}

static int get_checkpoint(struct exporter *x, Slipway__V1__Checkpoint **out)
{
	Slipway__V1__GetCheckpointRequest req = SLIPWAY__V1__GET_CHECKPOINT_REQUEST__INIT;
	req.which_case = SLIPWAY__V1__GET_CHECKPOINT_REQUEST__WHICH_LATEST;
	req.latest = 1;
	struct rpc_call_opts co = cli_call_opts(x->c);
	return rpc_call(x->audit, &slipway__v1__audit__descriptor, "GetCheckpoint", &req.base,
			(ProtobufCMessage **)out, &co, x->err, sizeof x->err);
}

static int consistency(struct exporter *x, uint64_t from, uint64_t to, uint8_t (*out)[32],
		       size_t *n)
{
	*n = 0;
	if (from == to)
		return 0;
	Slipway__V1__GetConsistencyProofRequest req = SLIPWAY__V1__GET_CONSISTENCY_PROOF_REQUEST__INIT;
	req.old_size = from;
	req.new_size = to;
	ProtobufCMessage *m = NULL;
	struct rpc_call_opts co = cli_call_opts(x->c);
	int rc = rpc_call(x->audit, &slipway__v1__audit__descriptor, "GetConsistencyProof",
			  &req.base, &m, &co, x->err, sizeof x->err);
	if (rc != 0)
		return rc;
	Slipway__V1__ConsistencyProof *p = (void *)m;
	if (p->n_hashes > MERKLE_MAX_PROOF) {
		protobuf_c_message_free_unpacked(m, NULL);
		return sw_errf(x->err, sizeof x->err, SW_EINVAL, "consistency proof too long");
	}
	for (size_t i = 0; i < p->n_hashes; i++) {
		if (p->hashes[i].len != 32) {
			protobuf_c_message_free_unpacked(m, NULL);
			return sw_errf(x->err, sizeof x->err, SW_EINVAL, "malformed consistency proof");
		}
		memcpy(out[i], p->hashes[i].data, 32);
	}
	*n = p->n_hashes;
	protobuf_c_message_free_unpacked(m, NULL);
	return 0;
}

/* Builds the bundle of deployment id into *out. */
static int export_one(struct exporter *x, const char *id, json_t **out)
{
	ProtobufCMessage *dm = NULL, *rm = NULL, *pm = NULL, **msgs = NULL;
	Slipway__V1__Checkpoint *cp = NULL, *nw = NULL;
	Slipway__V1__AuditEntry **v = NULL;
	size_t n = 0, cap = 0, nmsgs = 0;
	struct evidence_builder *b = NULL;
	json_t *bundle = NULL;
	struct rpc_call_opts co = cli_call_opts(x->c);
	int rc;

	Slipway__V1__GetDeploymentRequest gd = SLIPWAY__V1__GET_DEPLOYMENT_REQUEST__INIT;
	gd.id = (char *)id;
	if ((rc = rpc_call(x->orch, &slipway__v1__orchestrator__descriptor, "GetDeployment",
			   &gd.base, &dm, &co, x->err, sizeof x->err)) != 0)
		goto out;
	Slipway__V1__DeploymentDetail *dd = (void *)dm;
	const Slipway__V1__Deployment *d = dd->deployment;
	if (d == NULL) {
		rc = sw_errf(x->err, sizeof x->err, SW_EINTERNAL, "the orchestrator sent no deployment");
		goto out;
	}
	char res[128], res_pol[400], res_rel[300];
	snprintf(res, sizeof res, "deployment/%s", d->id);
	snprintf(res_pol, sizeof res_pol, "deployment/%s/%s/%s", d->app, d->environment, d->id);
	snprintf(res_rel, sizeof res_rel, "release/%s@%s", d->app, d->version);

	/* 1. The entries, once the log holds every timeline line (the outbox
	 * delivers within moments). */
	double deadline = mono_s() + x->wait_s;
	for (;;) {
		for (size_t i = 0; i < nmsgs; i++)
			protobuf_c_message_free_unpacked(msgs[i], NULL);
		nmsgs = 0;
		n = 0;
		if ((rc = list_entries(x, res, NULL, &v, &n, &cap, &msgs, &nmsgs)) != 0 ||
		    (rc = list_entries(x, res_pol, NULL, &v, &n, &cap, &msgs, &nmsgs)) != 0)
			goto out;
		size_t tl = 0;
		for (size_t i = 0; i < n; i++)
			if (strncmp(v[i]->event->action, "timeline.", 9) == 0)
				tl++;
		if (tl >= dd->n_timeline)
			break;
		if (mono_s() > deadline) {
			rc = sw_errf(x->err, sizeof x->err, SW_EPRECOND,
				     "the audit log holds %zu of the deployment's %zu timeline lines "
				     "after %d s (audit service behind, or a deployment older than "
				     "timeline auditing)",
				     tl, dd->n_timeline, x->wait_s);
			goto out;
		}
		usleep(200 * 1000);
	}
	/* The release, and the policy revision the last decision used. */
	size_t before = n;
	if ((rc = list_entries(x, res_rel, NULL, &v, &n, &cap, &msgs, &nmsgs)) != 0)
		goto out;
	size_t keep = before;
	for (size_t i = before; i < n; i++)
		if (strcmp(v[i]->event->service, "artifact") == 0 &&
		    (strcmp(v[i]->event->action, "release.create") == 0 ||
		     strcmp(v[i]->event->action, "release.restore") == 0) &&
		    kv(v[i], "digest") && strcmp(kv(v[i], "digest"), d->digest) == 0)
			v[keep++] = v[i];
	n = keep;
	const char *rev = NULL;
	for (size_t i = 0; i < before; i++)
		if (strcmp(v[i]->event->action, "deployment.evaluate") == 0 && kv(v[i], "revision"))
			rev = kv(v[i], "revision");
	if (rev != NULL) {
		before = n;
		if ((rc = list_entries(x, "policy", "policy.apply", &v, &n, &cap, &msgs, &nmsgs)) != 0)
			goto out;
		keep = before;
		for (size_t i = before; i < n; i++)
			if (kv(v[i], "revision") && strcmp(kv(v[i], "revision"), rev) == 0 && keep == before)
				v[keep++] = v[i];
		n = keep;
	}
	uint64_t maxseq = 0;
	for (size_t i = 0; i < n; i++)
		if (v[i]->seq > maxseq)
			maxseq = v[i]->seq;

	/* 2. A signed checkpoint covering them all. */
	for (;;) {
		rc = get_checkpoint(x, &cp);
		if (rc == 0 && cp->size > maxseq)
			break;
		if (rc != 0 && rc != SW_ENOTFOUND) /* NOT_FOUND: none signed yet */
			goto out;
		if (cp != NULL)
			protobuf_c_message_free_unpacked(&cp->base, NULL);
		cp = NULL;
		Slipway__V1__SignCheckpointRequest sr = SLIPWAY__V1__SIGN_CHECKPOINT_REQUEST__INIT;
		ProtobufCMessage *sm = NULL;
		char ignore[256];
		if (rpc_call(x->audit, &slipway__v1__audit__descriptor, "SignCheckpoint", &sr.base,
			     &sm, &co, ignore, sizeof ignore) == 0)
			protobuf_c_message_free_unpacked(sm, NULL);
		else if (mono_s() > deadline) {
			rc = sw_errf(x->err, sizeof x->err, SW_EPRECOND,
				     "no signed checkpoint covers entry %llu yet (and this identity "
				     "may not sign one): try again after the next checkpoint",
				     (unsigned long long)maxseq);
			goto out;
		} else
			usleep(500 * 1000);
	}

	/* 3. Every entry's inclusion proof against it. */
	if ((rc = evidence_builder_new(d->id, &b, x->err, sizeof x->err)) != 0)
		goto out;
	for (size_t i = 0; i < n; i++) {
		Slipway__V1__GetInclusionProofRequest pr = SLIPWAY__V1__GET_INCLUSION_PROOF_REQUEST__INIT;
		pr.seq = v[i]->seq;
		pr.tree_size = cp->size;
		ProtobufCMessage *m = NULL;
		if ((rc = rpc_call(x->audit, &slipway__v1__audit__descriptor, "GetInclusionProof",
				   &pr.base, &m, &co, x->err, sizeof x->err)) != 0)
			goto out;
		Slipway__V1__InclusionProof *p = (void *)m;
		uint8_t h[MERKLE_MAX_PROOF][32];
		size_t np = p->n_hashes <= MERKLE_MAX_PROOF ? p->n_hashes : 0;
		for (size_t k = 0; k < np; k++)
			if (p->hashes[k].len == 32)
				memcpy(h[k], p->hashes[k].data, 32);
		rc = evidence_builder_add(b, v[i], (const uint8_t(*)[32])h, np, x->err, sizeof x->err);
		protobuf_c_message_free_unpacked(m, NULL);
		if (rc != 0)
			goto out;
	}

	/* 4. The newest checkpoint now, and the proofs to it. */
	if ((rc = get_checkpoint(x, &nw)) != 0)
		goto out;
	uint8_t cons[MERKLE_MAX_PROOF][32], sproof[MERKLE_MAX_PROOF][32];
	size_t ncons = 0, nsproof = 0;
	if ((rc = consistency(x, cp->size, nw->size, cons, &ncons)) != 0)
		goto out;
	struct evidence_extra ex = { .checkpoint = cp->note, .newest = nw->note,
				     .consistency = (const uint8_t(*)[32])cons, .nconsistency = ncons };
	if (x->state_path != NULL) {
		struct auditstate st;
		char serr[512];
		if (auditstate_load(x->state_path, &st, serr, sizeof serr) != 0) {
			auditstate_free(&st);
			rc = sw_errf(x->err, sizeof x->err, SW_EINVAL,
				     "cannot read the state file %s: %s", x->state_path, serr);
			goto out;
		}
		const struct auditstate_cp *lt = auditstate_latest(&st);
		uint64_t st_size = lt != NULL ? lt->size : 0;
		auditstate_free(&st);
		if (st_size > nw->size) {
			rc = sw_errf(x->err, sizeof x->err, SW_EPRECOND,
				     "the log's newest checkpoint (size %llu) is older than the one in "
				     "%s (size %llu): the log was rolled back",
				     (unsigned long long)nw->size, x->state_path,
				     (unsigned long long)st_size);
			goto out;
		}
		if (st_size > 0 && st_size < nw->size) {
			if ((rc = consistency(x, st_size, nw->size, sproof, &nsproof)) != 0)
				goto out;
			ex.state_size = st_size;
			ex.state_proof = (const uint8_t(*)[32])sproof;
			ex.nstate_proof = nsproof;
		}
	}

	/* 5. The release's provenance and the policy document in force. */
	Slipway__V1__ResolveRequest rr = SLIPWAY__V1__RESOLVE_REQUEST__INIT;
	rr.app = d->app;
	rr.version = d->version;
	if (d->version[0] &&
	    rpc_call(x->art, &slipway__v1__artifact__descriptor, "Resolve", &rr.base, &rm, &co,
		     x->err, sizeof x->err) == 0) {
		const Slipway__V1__Release *r = (void *)rm;
		const Slipway__V1__Provenance *p = r->provenance;
		if (p != NULL && p->signature.len == PROV_SIG_LEN && p->statement.len > 0 &&
		    p->statement.len < PROV_STATEMENT_MAX &&
		    memchr(p->statement.data, 0, p->statement.len) == NULL) {
			char *s = strndup((const char *)p->statement.data, p->statement.len);
			ex.statement = s;
			ex.signature = p->signature.data;
			ex.signing_key = p->signing_key;
		}
	}
	if (rev != NULL) {
		Slipway__V1__GetPolicyRequest gp = SLIPWAY__V1__GET_POLICY_REQUEST__INIT;
		long long r;
		if (cfg_parse_ll(rev, &r) == 0 && r > 0) {
			gp.revision = (uint64_t)r;
			if (rpc_call(x->pol, &slipway__v1__policy__descriptor, "GetPolicy", &gp.base, &pm,
				     &co, x->err, sizeof x->err) == 0)
				ex.policy_document = ((Slipway__V1__GetPolicyResponse *)pm)->document;
		}
	}
	x->err[0] = '\0';
	rc = evidence_builder_finish(b, &ex, &bundle, x->err, sizeof x->err);
	free((char *)ex.statement);
	if (rc != 0)
		goto out;

	/* 6. The log's timeline must be the orchestrator's. */
	const json_t *tl = json_object_get(bundle, "timeline");
	for (size_t i = 0; i < dd->n_timeline; i++) {
		const json_t *t = json_array_get(tl, i);
		const Slipway__V1__TimelineEvent *e = dd->timeline[i];
		if (t == NULL || json_integer_value(json_object_get(t, "time_unix_ms")) != e->time_unix_ms ||
		    strcmp(json_string_value(json_object_get(t, "event")), e->event) != 0 ||
		    strcmp(json_string_value(json_object_get(t, "detail")), e->detail) != 0) {
			rc = sw_errf(x->err, sizeof x->err, SW_EDATALOSS,
				     "timeline line %zu ('%s') differs between the orchestrator and the "
				     "audit log",
				     i, e->event);
			goto out;
		}
	}
	*out = bundle;
	bundle = NULL;
	rc = 0;
out:
	json_decref(bundle);
	evidence_builder_free(b);
	for (size_t i = 0; i < nmsgs; i++)
		protobuf_c_message_free_unpacked(msgs[i], NULL);
	free(msgs);
	free(v);
	if (cp)
		protobuf_c_message_free_unpacked(&cp->base, NULL);
	if (nw)
		protobuf_c_message_free_unpacked(&nw->base, NULL);
	if (dm)
		protobuf_c_message_free_unpacked(dm, NULL);
	if (rm)
		protobuf_c_message_free_unpacked(rm, NULL);
	if (pm)
		protobuf_c_message_free_unpacked(pm, NULL);
	return rc;
}

static int write_bundle(const json_t *bundle, const char *path, size_t *len, char *sha)
{
	char *text = json_dumps(bundle, JSON_COMPACT | JSON_ENSURE_ASCII);
	if (text == NULL)
		return -1;
	*len = strlen(text);
	if (sha) {
		uint8_t md[32];
		hash_sha256(text, *len, NULL, 0, NULL, 0, md);
		hash_hex(md, 32, sha);
	}
	int rc = write_file(path, text, *len);
	free(text);
	return rc;
}

static const struct cli_opt export_opts[] = {
	{ "out", required_argument, 'o', "FILE|DIR", "the bundle file (a directory with --app)" },
	{ "app", required_argument, 'a', "APP", "every deployment of APP (with --env, --since)" },
	{ "env", required_argument, 'e', "ENV", "the environment (with --app)" },
	{ "since", required_argument, 'S', "TIME", "deployments created at or after: 2026-11-26T17:00:00Z or unix ms" },
	{ "until", required_argument, 'U', "TIME", "and before (default: now)" },
	{ "state", required_argument, 's', "FILE", "include a consistency proof from the checkpoint in this auditor state file" },
	{ "wait", required_argument, 'w', "SECONDS", "wait this long for the log to catch up (default 30)" },
	{ NULL, 0, 0, NULL, NULL },
};

static int cmd_export(struct cli *c, int argc, char **argv)
{
	struct exporter x;
	memset(&x, 0, sizeof x);
	x.c = c;
	x.wait_s = 30;
	const char *outp = NULL, *app = NULL, *env = NULL;
	int64_t since = 0, until = 0;
	long long w;
	int o, rc = CLI_FAIL;
	optind = 0;
	while ((o = cli_getopt(c, argc, argv)) != -1) {
		switch (o) {
		case 'o': outp = optarg; break;
		case 'a': app = optarg; break;
		case 'e': env = optarg; break;
		case 's': x.state_path = optarg; break;
		case 'S':
			if (parse_time(optarg, &since) != 0)
				return cli_usage("--since wants 2026-11-26T17:00:00Z or unix ms");
			break;
		case 'U':
			if (parse_time(optarg, &until) != 0)
				return cli_usage("--until wants 2026-11-26T17:00:00Z or unix ms");
			break;
		case 'w':
			if (cfg_parse_ll(optarg, &w) != 0 || w < 0 || w > 3600)
				return cli_usage("--wait wants 0..3600 seconds");
			x.wait_s = (int)w;
			break;
		default: return CLI_USAGE;
		}
	}
	int period = app != NULL || env != NULL || since != 0;
	if (outp == NULL)
		return cli_usage("--out is required");
	if (period ? (optind != argc || !app || !env || since == 0) : optind != argc - 1)
		return cli_usage_cmd(c);
	if (until == 0)
		until = (int64_t)time(NULL) * 1000 + 1;
	if (cli_connect(c, "orchestrator", NULL, &x.orch) != 0 ||
	    cli_connect(c, "audit", NULL, &x.audit) != 0 ||
	    cli_connect(c, "artifact", NULL, &x.art) != 0 ||
	    cli_connect(c, "policy", NULL, &x.pol) != 0)
		goto out;
	if (!period) {
		json_t *bundle = NULL;
		double t0 = mono_s();
		int e = export_one(&x, argv[optind], &bundle);
		if (e != 0) {
			rc = cli_fail_rc(e, "evidence export %s: %s", argv[optind], x.err);
			goto out;
		}
		size_t len = 0;
		char sha[65];
		size_t ne = json_array_size(json_object_get(json_object_get(bundle, "log"), "entries"));
		if (write_bundle(bundle, outp, &len, sha) != 0) {
			json_decref(bundle);
			rc = cli_fail("cannot write %s: %s", outp, strerror(errno));
			goto out;
		}
		json_decref(bundle);
		if (c->output == CLI_JSON)
			cli_print_json(json_pack("{s:s,s:s,s:I,s:I,s:s,s:f}", "deployment", argv[optind],
						 "file", outp, "bytes", (json_int_t)len, "entries",
						 (json_int_t)ne, "sha256", sha, "seconds",
						 mono_s() - t0));
		else
			printf("wrote %s: deployment %s, %zu audit entries, %zu bytes (sha256 %s)\n",
			       outp, argv[optind], ne, len, sha);
		rc = CLI_OK;
		goto out;
	}
	/* A period: every deployment of app/env created in [since, until). */
	if (mkdir(outp, 0755) != 0 && errno != EEXIST) {
		rc = cli_fail("cannot create %s: %s", outp, strerror(errno));
		goto out;
	}
	json_t *index = json_pack("{s:s,s:s,s:s,s:I,s:I,s:[]}", "format",
				  "slipway-evidence-index/v1", "app", app, "environment", env,
				  "since_unix_ms", (json_int_t)since, "until_unix_ms", (json_int_t)until,
				  "deployments");
	json_t *list = json_object_get(index, "deployments");
	char token[128] = "";
	int stop = 0;
	while (!stop) {
		Slipway__V1__ListDeploymentsRequest lr = SLIPWAY__V1__LIST_DEPLOYMENTS_REQUEST__INIT;
		lr.app = (char *)app;
		lr.environment = (char *)env;
		lr.page_size = 100;
		lr.page_token = token;
		ProtobufCMessage *m = NULL;
		struct rpc_call_opts co = cli_call_opts(c);
		int e = rpc_call(x.orch, &slipway__v1__orchestrator__descriptor, "ListDeployments",
				 &lr.base, &m, &co, x.err, sizeof x.err);
		if (e != 0) {
			json_decref(index);
			rc = cli_fail_rc(e, "list deployments: %s", x.err);
			goto out;
		}
		Slipway__V1__ListDeploymentsResponse *r = (void *)m;
		for (size_t i = 0; i < r->n_deployments && !stop; i++) {
			const Slipway__V1__Deployment *d = r->deployments[i];
			if (d->created_unix_ms < since) {
				stop = 1; /* newest first: the rest are older */
				break;
			}
			if (d->created_unix_ms >= until)
				continue;
			json_t *bundle = NULL;
			e = export_one(&x, d->id, &bundle);
			if (e != 0) {
				rc = cli_fail_rc(e, "evidence export %s: %s", d->id, x.err);
				protobuf_c_message_free_unpacked(m, NULL);
				json_decref(index);
				goto out;
			}
			char path[4200], file[128], sha[65];
			size_t len = 0;
			snprintf(file, sizeof file, "%s.json", d->id);
			snprintf(path, sizeof path, "%s/%s", outp, file);
			const json_t *dep = json_object_get(bundle, "deployment");
			json_array_append_new(
				list, json_pack("{s:s,s:s,s:s,s:s,s:s,s:O,s:O,s:O,s:I,s:I}", "id", d->id,
						"file", file, "version", d->version, "digest", d->digest,
						"requester", d->requester, "last_event",
						json_object_get(dep, "last_event"), "break_glass",
						json_object_get(dep, "break_glass"), "is_rollback",
						json_object_get(dep, "is_rollback"), "created_unix_ms",
						(json_int_t)d->created_unix_ms, "entries",
						(json_int_t)json_integer_value(json_object_get(dep, "entries"))));
			int wr = write_bundle(bundle, path, &len, sha);
			json_decref(bundle);
			if (wr != 0) {
				rc = cli_fail("cannot write %s: %s", path, strerror(errno));
				protobuf_c_message_free_unpacked(m, NULL);
				json_decref(index);
				goto out;
			}
			json_t *last = json_array_get(list, json_array_size(list) - 1);
			json_object_set_new(last, "sha256", json_string(sha));
			json_object_set_new(last, "bytes", json_integer((json_int_t)len));
		}
		snprintf(token, sizeof token, "%s", r->next_page_token ? r->next_page_token : "");
		protobuf_c_message_free_unpacked(m, NULL);
		if (token[0] == '\0')
			break;
	}
	char ipath[4200];
	snprintf(ipath, sizeof ipath, "%s/index.json", outp);
	char *itext = json_dumps(index, JSON_INDENT(2) | JSON_ENSURE_ASCII);
	size_t nd = json_array_size(list);
	json_decref(index);
	if (itext == NULL || write_file(ipath, itext, strlen(itext)) != 0) {
		free(itext);
		rc = cli_fail("cannot write %s", ipath);
		goto out;
	}
	free(itext);
	if (c->output == CLI_JSON)
		cli_print_json(json_pack("{s:s,s:I}", "index", ipath, "deployments", (json_int_t)nd));
	else
		printf("wrote %zu bundle%s and %s\n", nd, nd == 1 ? "" : "s", ipath);
	rc = CLI_OK;
out:
	rpc_client_free(x.orch);
	rpc_client_free(x.audit);
	rpc_client_free(x.art);
	rpc_client_free(x.pol);
	return rc;
}

/* ---- verify ---- */

static const struct cli_opt verify_opts[] = {
	{ "verifier-key", required_argument, 'k', "KEY", "the audit log's public key (else SLIPWAY_AUDIT_VERIFIER_KEY)" },
	{ "state", required_argument, 's', "FILE", "the auditor's state file (as `audit verify --state`): checked and advanced" },
	{ "builder-keys", required_argument, 'b', "FILE", "trusted builder keys (the artifact service's --trusted-keys file): verify the provenance signature" },
	{ NULL, 0, 0, NULL, NULL },
};

/* Verifies the bundle at path with keytext (and builder keys bk), checks
 * it against st when state_path is set, and records its newest checkpoint
 * there on success. */
static int evidence_verify_file(struct cli *c, const char *path, const char *keytext,
				const char *bk, const char *state_path, struct auditstate *st,
				char *err, size_t errlen)
{
	if (keytext == NULL || !*keytext)
		return cli_usage("no verifier key: pass --verifier-key (the audit log's public key, "
				 "obtained out of band)");
	struct note_verifier v;
	if (note_verifier_parse(keytext, &v, err, errlen) != 0)
		return cli_usage("--verifier-key: %s", err);
	if (st->verifier[0] && strcmp(st->verifier, keytext) != 0)
		return cli_fail("the verifier key differs from the one pinned in %s", state_path);
	struct prov_keys *keys = NULL;
	if (bk != NULL && prov_keys_load(bk, &keys, err, errlen) != 0)
		return cli_fail("--builder-keys: %s", err);

	/* The file, bounded. */
	double t0 = mono_s();
	FILE *f = fopen(path, "rb");
	if (f == NULL) {
		prov_keys_free(keys);
		return cli_fail("cannot open %s: %s", path, strerror(errno));
	}
	struct stat sb;
	if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode) ||
	    (uint64_t)sb.st_size > EVIDENCE_MAX_BYTES) {
		fclose(f);
		prov_keys_free(keys);
		printf("FAIL: %s: not a regular file of at most %u bytes\n", path, EVIDENCE_MAX_BYTES);
		return CLI_FAIL;
	}
	size_t cap = (size_t)sb.st_size + 1, len = 0;
	char *buf = malloc(cap);
	while (buf != NULL) {
		if (len == cap) /* grew while read: evidence_verify refuses it */
			break;
		size_t r = fread(buf + len, 1, cap - len, f);
		if (r == 0)
			break;
		len += r;
	}
	fclose(f);
	if (buf == NULL) {
		prov_keys_free(keys);
		return cli_fail("out of memory");
	}
	struct evidence_verify_opts vo = { .key = &v, .builder_keys = keys,
					   .state = state_path ? st : NULL };
	struct evidence_report r;
	int rc = evidence_verify(buf, len, &vo, &r, err, errlen);
	free(buf);
	prov_keys_free(keys);
	double secs = mono_s() - t0;
	if (rc != 0) {
		if (c->output == CLI_JSON)
			cli_print_json(json_pack("{s:b,s:s,s:s}", "ok", 0, "file", path, "reason", err));
		else
			printf("FAIL: %s: %s\n", path, err);
		return CLI_FAIL;
	}
	if (state_path != NULL) {
		char serr[512];
		if (auditstate_add(st, r.newest_size, r.newest_root, r.newest_note, serr,
				   sizeof serr) != 0) {
			printf("FAIL: %s: %s\n", path, serr);
			return CLI_FAIL;
		}
		snprintf(st->origin, sizeof st->origin, "%s", r.origin);
		snprintf(st->verifier, sizeof st->verifier, "%s", keytext);
		if (auditstate_save(state_path, st, serr, sizeof serr) != 0)
			fprintf(stderr, "slipway: warning: cannot write %s: %s\n", state_path, serr);
	}
	static const char *const prov[] = { "none (unsigned release)",
					    "statement bound to the logged release; signature not "
					    "checked (no --builder-keys)",
					    "signature verified" };
	if (c->output == CLI_JSON)
		cli_print_json(json_pack("{s:b,s:s,s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:s,s:b,s:f}", "ok", 1,
					 "file", path, "deployment", r.deployment_id, "entries",
					 (json_int_t)r.entries, "checkpoint_size",
					 (json_int_t)r.checkpoint_size, "newest_size",
					 (json_int_t)r.newest_size, "timeline", (json_int_t)r.timeline,
					 "approvals", (json_int_t)r.approvals, "decisions",
					 (json_int_t)r.decisions, "provenance", prov[r.provenance],
					 "state_checked", r.state_checked, "seconds", secs));
	else
		printf("OK: %s: deployment %s: %zu audit entries proved in the checkpoint of size %llu "
		       "(consistent with the newest, size %llu%s); timeline %zu, approvals %zu, "
		       "decisions %zu match the log; provenance: %s (%.3f s)\n",
		       path, r.deployment_id, r.entries, (unsigned long long)r.checkpoint_size,
		       (unsigned long long)r.newest_size,
		       r.state_checked ? ", and with the state file's" : "", r.timeline, r.approvals,
		       r.decisions, prov[r.provenance], secs);
	return CLI_OK;
}

static int cmd_verify(struct cli *c, int argc, char **argv)
{
	const char *keytext = NULL, *state_path = NULL, *bk = NULL;
	int o;
	optind = 0;
	while ((o = cli_getopt(c, argc, argv)) != -1) {
		switch (o) {
		case 'k': keytext = optarg; break;
		case 's': state_path = optarg; break;
		case 'b': bk = optarg; break;
		default: return CLI_USAGE;
		}
	}
	if (optind != argc - 1)
		return cli_usage_cmd(c);
	const char *path = argv[optind];
	if (keytext == NULL)
		keytext = getenv("SLIPWAY_AUDIT_VERIFIER_KEY");
	struct auditstate st;
	char err[1024];
	memset(&st, 0, sizeof st);
	if (state_path != NULL) {
		if (auditstate_load(state_path, &st, err, sizeof err) != 0) {
			auditstate_free(&st);
			return cli_fail("cannot read the state file %s: %s", state_path, err);
		}
		if ((keytext == NULL || !*keytext) && st.verifier[0])
			keytext = st.verifier;
	}
	int rc = evidence_verify_file(c, path, keytext, bk, state_path, &st, err, sizeof err);
	auditstate_free(&st);
	return rc;
}

extern const struct cli_cmd cli_evidence_cmds[];
const struct cli_cmd cli_evidence_cmds[] = {
	{ "export", cmd_export, "write one offline-verifiable evidence bundle per deployment",
	  "(DEPLOYMENT_ID --out FILE | --app A --env E --since T [--until T] --out DIR) "
	  "[--state FILE] [--wait S]",
	  export_opts,
	  "slipway evidence export d20261208-101500-0a1b2c3d4e5f --out change.json\n"
	  "slipway evidence export --app web --env prod --since 2026-10-01T00:00:00Z --out q4/",
	  NULL, NULL },
	{ "verify", cmd_verify, "verify a bundle offline with the audit log's public key",
	  "FILE --verifier-key KEY [--state FILE] [--builder-keys FILE]", verify_opts,
	  "slipway evidence verify change.json --verifier-key \"$KEY\"\n"
	  "slipway evidence verify change.json --verifier-key \"$KEY\" --state ~/audit.state",
	  NULL, NULL },
	{ NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL },
};

int cli_cmd_evidence(struct cli *c, int argc, char **argv);
int cli_cmd_evidence(struct cli *c, int argc, char **argv)
{
	return cli_dispatch(c, "evidence", cli_evidence_cmds, argc, argv);
}
