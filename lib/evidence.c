/*
 * evidence.c - the evidence bundle: building, deriving its views from the
 * audit entries, and verifying it offline (see evidence.h and
 * docs/evidence-format.md).
 */
#include "evidence.h"
#include "auditlog.h"
#include "err.h"
#include "hash.h"
#include "merkle.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- small helpers ---- */

static const char *outcome_text(int o)
{
	switch (o) {
	case SLIPWAY__V1__OUTCOME__OUTCOME_SUCCESS: return "success";
	case SLIPWAY__V1__OUTCOME__OUTCOME_FAILURE: return "failure";
	case SLIPWAY__V1__OUTCOME__OUTCOME_DENIED: return "denied";
	default: return "unspecified";
	}
}

static int outcome_code(const char *s)
{
	if (strcmp(s, "success") == 0)
		return SLIPWAY__V1__OUTCOME__OUTCOME_SUCCESS;
	if (strcmp(s, "failure") == 0)
		return SLIPWAY__V1__OUTCOME__OUTCOME_FAILURE;
	if (strcmp(s, "denied") == 0)
		return SLIPWAY__V1__OUTCOME__OUTCOME_DENIED;
	if (strcmp(s, "unspecified") == 0)
		return SLIPWAY__V1__OUTCOME__OUTCOME_UNSPECIFIED;
	return -1;
}

static json_t *b64_json(const uint8_t *p, size_t n)
{
	char out[256];
	if (sodium_base64_ENCODED_LEN(n, sodium_base64_VARIANT_ORIGINAL) > sizeof out)
		return NULL;
	sodium_bin2base64(out, sizeof out, p, n, sodium_base64_VARIANT_ORIGINAL);
	return json_string(out);
}

/* Decodes exactly n bytes of base64 (canonical: re-encoding gives s). */
static int b64_exact(const char *s, uint8_t *out, size_t n)
{
	size_t got = 0;
	const char *end = NULL;
	if (s == NULL || sodium_base642bin(out, n, s, strlen(s), NULL, &got, &end,
					   sodium_base64_VARIANT_ORIGINAL) != 0 ||
	    got != n || end == NULL || *end != '\0')
		return -1;
	char back[256];
	if (sodium_base64_ENCODED_LEN(n, sodium_base64_VARIANT_ORIGINAL) > sizeof back)
		return -1;
	sodium_bin2base64(back, sizeof back, out, n, sodium_base64_VARIANT_ORIGINAL);
	return strcmp(back, s) == 0 ? 0 : -1;
}

/* Strict decimal of a detail value; -1 when it is not one. */
static int parse_u64(const char *s, uint64_t *out)
{
	uint64_t v = 0;
	if (s == NULL || *s == '\0' || strlen(s) > 19)
		return -1;
	for (const char *p = s; *p; p++) {
		if (*p < '0' || *p > '9')
			return -1;
		v = v * 10 + (uint64_t)(*p - '0');
	}
	if (s[0] == '0' && s[1] != '\0')
		return -1;
	*out = v;
	return 0;
}

/* Does obj hold exactly the keys in names (NULL-terminated), plus any in
 * optional? Names the first surprise in err. */
static int keys_exact(const json_t *obj, const char *where, const char *const *names,
		      const char *const *optional, char *err, size_t errlen)
{
	if (!json_is_object(obj))
		return sw_errf(err, errlen, SW_EINVAL, "%s: not an object", where);
	size_t want = 0;
	for (const char *const *n = names; *n; n++, want++)
		if (json_object_get(obj, *n) == NULL)
			return sw_errf(err, errlen, SW_EINVAL, "%s: \"%s\" is missing", where, *n);
	const char *k;
	json_t *v;
	json_object_foreach((json_t *)obj, k, v) {
		int known = 0;
		for (const char *const *n = names; *n && !known; n++)
			known = strcmp(*n, k) == 0;
		for (const char *const *n = optional; n && *n && !known; n++)
			known = strcmp(*n, k) == 0;
		if (!known)
			return sw_errf(err, errlen, SW_EINVAL, "%s: unknown field \"%s\"", where, k);
	}
	(void)want;
	return 0;
}

/* ---- entries ---- */

json_t *evidence_entry_json(const Slipway__V1__AuditEntry *e)
{
	const Slipway__V1__AuditEvent *ev = e ? e->event : NULL;
	if (ev == NULL)
		return NULL;
	json_t *d = json_array();
	for (size_t i = 0; i < ev->n_details; i++)
		json_array_append_new(d, json_pack("[s,s]", ev->details[i]->key,
						   ev->details[i]->value));
	return json_pack("{s:I,s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:I,s:I,s:o}", "seq", (json_int_t)e->seq,
			 "event_id", ev->event_id, "actor", ev->actor, "service", ev->service,
			 "action", ev->action, "resource", ev->resource, "outcome",
			 outcome_text(ev->outcome), "request_id", ev->request_id, "time_unix_ms",
			 (json_int_t)ev->time_unix_ms, "logged_unix_ms", (json_int_t)e->logged_unix_ms,
			 "details", d);
}

static const char *const ENTRY_KEYS[] = { "seq", "event_id", "actor", "service", "action",
					  "resource", "outcome", "request_id", "time_unix_ms",
					  "logged_unix_ms", "details", "proof", NULL };

static const char *sget(const json_t *o, const char *k)
{
	return json_string_value(json_object_get(o, k));
}

static const char *detail(const json_t *e, const char *key)
{
	const json_t *d = json_object_get(e, "details");
	for (size_t i = 0; i < json_array_size(d); i++) {
		const json_t *kv = json_array_get(d, i);
		const char *k = json_string_value(json_array_get(kv, 0));
		if (k && strcmp(k, key) == 0)
			return json_string_value(json_array_get(kv, 1));
	}
	return NULL;
}

/* The leaf hash of a bundle entry: checks its shape (where names it in
 * errors) and encodes it canonically. */
static int entry_leaf(const json_t *e, const char *where, uint8_t leaf[32], char *err,
		      size_t errlen)
{
	int rc = keys_exact(e, where, ENTRY_KEYS, NULL, err, errlen);
	if (rc != 0)
		return rc;
	static const char *const strs[] = { "event_id", "actor", "service", "action",
					    "resource", "outcome", "request_id", NULL };
	for (const char *const *k = strs; *k; k++)
		if (!json_is_string(json_object_get(e, *k)))
			return sw_errf(err, errlen, SW_EINVAL, "%s.%s: not a string", where, *k);
	static const char *const ints[] = { "seq", "time_unix_ms", "logged_unix_ms", NULL };
	for (const char *const *k = ints; *k; k++)
		if (!json_is_integer(json_object_get(e, *k)))
			return sw_errf(err, errlen, SW_EINVAL, "%s.%s: not an integer", where, *k);
	if (json_integer_value(json_object_get(e, "seq")) < 0)
		return sw_errf(err, errlen, SW_EINVAL, "%s.seq: negative", where);
	int oc = outcome_code(sget(e, "outcome"));
	if (oc < 0)
		return sw_errf(err, errlen, SW_EINVAL, "%s.outcome: unknown outcome \"%s\"", where,
			       sget(e, "outcome"));
	const json_t *d = json_object_get(e, "details");
	if (!json_is_array(d) || json_array_size(d) > AUDITLOG_MAX_DETAILS)
		return sw_errf(err, errlen, SW_EINVAL, "%s.details: not an array of at most %d pairs",
			       where, AUDITLOG_MAX_DETAILS);
	const char *keys[AUDITLOG_MAX_DETAILS], *values[AUDITLOG_MAX_DETAILS];
	size_t nd = json_array_size(d);
	for (size_t i = 0; i < nd; i++) {
		const json_t *kv = json_array_get(d, i);
		if (!json_is_array(kv) || json_array_size(kv) != 2 ||
		    !json_is_string(json_array_get(kv, 0)) || !json_is_string(json_array_get(kv, 1)))
			return sw_errf(err, errlen, SW_EINVAL,
				       "%s.details[%zu]: not a [key, value] pair of strings", where, i);
		keys[i] = json_string_value(json_array_get(kv, 0));
		values[i] = json_string_value(json_array_get(kv, 1));
		if (i > 0 && strcmp(keys[i - 1], keys[i]) >= 0)
			return sw_errf(err, errlen, SW_EINVAL,
				       "%s.details[%zu]: keys out of order (the log stores them sorted)",
				       where, i);
	}
	struct auditlog_entry v = {
		.seq = (uint64_t)json_integer_value(json_object_get(e, "seq")),
		.event_id = sget(e, "event_id"),
		.actor = sget(e, "actor"),
		.service = sget(e, "service"),
		.action = sget(e, "action"),
		.resource = sget(e, "resource"),
		.request_id = sget(e, "request_id"),
		.outcome = oc,
		.time_unix_ms = (int64_t)json_integer_value(json_object_get(e, "time_unix_ms")),
		.logged_unix_ms = (int64_t)json_integer_value(json_object_get(e, "logged_unix_ms")),
		.ndetails = nd,
		.keys = keys,
		.values = values,
	};
	uint8_t canon[AUDITLOG_CANON_MAX];
	size_t len = 0;
	if (auditlog_canonical(&v, canon, sizeof canon, &len) != 0)
		return sw_errf(err, errlen, SW_EINVAL, "%s: larger than any logged entry", where);
	merkle_leaf_hash(canon, len, leaf);
	return 0;
}

/* ---- views ---- */

static json_t *jstr(const char *s)
{
	return json_string(s ? s : "");
}

static int digest_bound(const json_t *e, const char *key, const char *digest, const char *what,
			char *err, size_t errlen)
{
	const char *v = detail(e, key);
	if (v == NULL || strncmp(v, "sha256:", 7) != 0 || strcmp(v, digest) == 0)
		return 0;
	return sw_errf(err, errlen, SW_EINVAL,
		       "%s (seq %lld) is bound to digest %s, but the deployment ran %s", what,
		       (long long)json_integer_value(json_object_get(e, "seq")), v, digest);
}

static int cmp_timeline(const void *a, const void *b)
{
	json_t *x = *(json_t *const *)a, *y = *(json_t *const *)b;
	json_int_t i = json_integer_value(json_object_get(x, "id"));
	json_int_t j = json_integer_value(json_object_get(y, "id"));
	return (i > j) - (i < j);
}

static int int_detail(const json_t *e, const char *key, json_int_t *out)
{
	uint64_t v;
	const char *s = detail(e, key);
	if (s == NULL || parse_u64(s, &v) != 0 || v > (uint64_t)INT64_MAX)
		return -1;
	*out = (json_int_t)v;
	return 0;
}

json_t *evidence_views(const json_t *entries, const char *id, const char *policy_document,
		       char *err, size_t errlen)
{
	char res_plain[128], tail[80];
	snprintf(res_plain, sizeof res_plain, "deployment/%s", id);
	snprintf(tail, sizeof tail, "/%s", id);
	json_t *dep = NULL, *rel = json_null(), *pol = NULL, *counts = json_object();
	json_t *tl = json_array(), *apps = json_array(), *decs = json_array();
	json_t *out = NULL, *policy_apply = NULL;
	const json_t *request = NULL, *last_decision = NULL;
	int post_review = 0;
	size_t n = json_array_size(entries);

	/* Pass 1: the request, which names app, environment and digest. */
	for (size_t i = 0; i < n; i++) {
		const json_t *e = json_array_get(entries, i);
		const char *a = sget(e, "action"), *r = sget(e, "resource");
		if (a && r && strcmp(r, res_plain) == 0 && strcmp(sget(e, "service"), "orchestrator") == 0 &&
		    (strcmp(a, "deploy.request") == 0 || strcmp(a, "rollback.request") == 0)) {
			if (request != NULL) {
				sw_errf(err, errlen, SW_EINVAL, "two requests logged for deployment %s", id);
				goto out;
			}
			request = e;
		}
	}
	if (request == NULL) {
		sw_errf(err, errlen, SW_EINVAL,
			"no deploy.request or rollback.request entry for deployment %s", id);
		goto out;
	}
	const char *app = detail(request, "app"), *env = detail(request, "environment");
	const char *version = detail(request, "version"), *digest = detail(request, "digest");
	if (!app || !env || !version || !digest) {
		sw_errf(err, errlen, SW_EINVAL,
			"the request entry (seq %lld) lacks app, environment, version or digest "
			"(logged before evidence existed?)",
			(long long)json_integer_value(json_object_get(request, "seq")));
		goto out;
	}
	char res_policy[400], res_release[300];
	snprintf(res_policy, sizeof res_policy, "deployment/%s/%s/%s", app, env, id);
	snprintf(res_release, sizeof res_release, "release/%s@%s", app, version);

	/* Pass 2: every entry is about the deployment, its release, or the
	 * policy revision in force; each feeds its view. */
	for (size_t i = 0; i < n; i++) {
		const json_t *e = json_array_get(entries, i);
		const char *a = sget(e, "action"), *r = sget(e, "resource"), *svc = sget(e, "service");
		json_int_t seq = json_integer_value(json_object_get(e, "seq"));
		json_t *c = json_object_get(counts, a);
		json_object_set_new(counts, a, json_integer(c ? json_integer_value(c) + 1 : 1));
		if (strcmp(r, res_release) == 0 && strcmp(svc, "artifact") == 0 &&
		    (strcmp(a, "release.create") == 0 || strcmp(a, "release.restore") == 0)) {
			const char *d = detail(e, "digest");
			if (d == NULL || strcmp(d, digest) != 0) {
				sw_errf(err, errlen, SW_EINVAL,
					"the release entry (seq %lld) logs digest %s, but the deployment "
					"ran %s",
					(long long)seq, d ? d : "(none)", digest);
				goto out;
			}
			json_int_t size = 0;
			int_detail(e, "size_bytes", &size);
			json_decref(rel);
			rel = json_pack("{s:o,s:o,s:o,s:I,s:o,s:o,s:o,s:o,s:o,s:o,s:b,s:o,s:o,s:o,s:I,s:I}",
					"app", jstr(detail(e, "app")), "version",
					jstr(detail(e, "version")), "digest", jstr(d), "size_bytes",
					size, "media_type", jstr(detail(e, "media_type")),
					"repository", jstr(detail(e, "repository")), "commit",
					jstr(detail(e, "commit")), "ref", jstr(detail(e, "ref")),
					"build_id", jstr(detail(e, "build_id")), "builder",
					jstr(detail(e, "builder")), "signature_verified",
					detail(e, "signature_verified") &&
						strcmp(detail(e, "signature_verified"), "true") == 0,
					"signing_key", jstr(detail(e, "signing_key")), "signer",
					jstr(detail(e, "signer")), "pushed_by", jstr(sget(e, "actor")),
					"created_unix_ms", json_integer_value(json_object_get(e, "time_unix_ms")),
					"seq", seq);
			continue;
		}
		if (strcmp(r, "policy") == 0 && strcmp(svc, "policy") == 0 &&
		    strcmp(a, "policy.apply") == 0) {
			if (policy_apply != NULL) {
				sw_errf(err, errlen, SW_EINVAL, "two policy.apply entries (seq %lld)",
					(long long)seq);
				goto out;
			}
			policy_apply = (json_t *)e;
			continue;
		}
		if (strcmp(r, res_plain) != 0 && strcmp(r, res_policy) != 0) {
			sw_errf(err, errlen, SW_EINVAL,
				"entry seq %lld (%s on %s) is not about deployment %s", (long long)seq,
				a, r, id);
			goto out;
		}
		if (digest_bound(e, "digest", digest, a, err, errlen) != 0 ||
		    digest_bound(e, "release", digest, a, err, errlen) != 0)
			goto out;
		if (strcmp(svc, "orchestrator") == 0 && strncmp(a, "timeline.", 9) == 0) {
			json_int_t tid;
			const char *ev = detail(e, "event"), *dt = detail(e, "detail");
			if (int_detail(e, "timeline_id", &tid) != 0 || ev == NULL || dt == NULL) {
				sw_errf(err, errlen, SW_EINVAL,
					"timeline entry seq %lld lacks timeline_id, event or detail",
					(long long)seq);
				goto out;
			}
			json_array_append_new(tl, json_pack("{s:I,s:I,s:s,s:s}", "id", tid,
							    "time_unix_ms",
							    json_integer_value(json_object_get(e, "time_unix_ms")),
							    "event", ev, "detail", dt));
		} else if (strcmp(svc, "policy") == 0 &&
			   (strcmp(a, "deployment.approve") == 0 || strcmp(a, "deployment.reject") == 0)) {
			json_int_t rev = 0, exp = 0;
			int_detail(e, "revision", &rev);
			int_detail(e, "expires_unix_ms", &exp);
			const char *bg = detail(e, "break_glass");
			json_array_append_new(
				apps, json_pack("{s:s,s:b,s:o,s:I,s:o,s:o,s:I,s:b,s:I,s:I}", "approver",
						sget(e, "actor"), "approve",
						strcmp(a, "deployment.approve") == 0, "digest",
						jstr(detail(e, "digest")), "revision", rev, "comment",
						jstr(detail(e, "comment")), "approval_policy",
						jstr(detail(e, "approval_policy")), "expires_unix_ms", exp,
						"break_glass", bg && strcmp(bg, "true") == 0,
						"time_unix_ms",
						json_integer_value(json_object_get(e, "time_unix_ms")),
						"seq", seq));
			const char *ad = detail(e, "digest");
			if (ad == NULL || strcmp(ad, digest) != 0) {
				sw_errf(err, errlen, SW_EINVAL,
					"the approval by %s (seq %lld) is for digest %s, not the digest "
					"that ran (%s)",
					sget(e, "actor"), (long long)seq, ad ? ad : "(none)", digest);
				goto out;
			}
		} else if (strcmp(svc, "policy") == 0 && strcmp(a, "deployment.evaluate") == 0) {
			json_t *dd = json_object();
			const json_t *d = json_object_get(e, "details");
			for (size_t k = 0; k < json_array_size(d); k++) {
				const json_t *kv = json_array_get(d, k);
				json_object_set(dd, json_string_value(json_array_get(kv, 0)),
						json_array_get(kv, 1));
			}
			json_array_append_new(
				decs, json_pack("{s:I,s:s,s:s,s:I,s:o}", "time_unix_ms",
						json_integer_value(json_object_get(e, "time_unix_ms")),
						"outcome", sget(e, "outcome"), "actor", sget(e, "actor"),
						"seq", seq, "details", dd));
			last_decision = e;
		} else if (strcmp(svc, "policy") == 0 && strcmp(a, "deployment.break_glass") == 0) {
			post_review = 1;
		}
	}
	{
		/* The timeline in row order (the outbox logs in commit order). */
		size_t nt = json_array_size(tl);
		json_t **v = calloc(nt ? nt : 1, sizeof *v);
		if (v == NULL) {
			sw_errf(err, errlen, SW_ENOMEM, "out of memory");
			goto out;
		}
		for (size_t i = 0; i < nt; i++)
			v[i] = json_incref(json_array_get(tl, i));
		qsort(v, nt, sizeof *v, cmp_timeline);
		json_array_clear(tl);
		for (size_t i = 0; i < nt; i++)
			json_array_append_new(tl, v[i]);
		free(v);
	}
	const char *bg = detail(request, "break_glass");
	size_t nt = json_array_size(tl);
	dep = json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:I,s:b,s:o,s:b,s:o,s:o,s:b,s:o,s:o}", "id", id,
			"app", app, "environment", env, "version", version, "digest", digest,
			"requester", sget(request, "actor"), "requested_unix_ms",
			json_integer_value(json_object_get(request, "time_unix_ms")), "is_rollback",
			strcmp(sget(request, "action"), "rollback.request") == 0, "rollback_of",
			jstr(detail(request, "rollback_of")), "break_glass",
			bg && strcmp(bg, "true") == 0, "break_glass_reason",
			jstr(detail(request, "break_glass_reason")), "last_event",
			jstr(nt ? sget(json_array_get(tl, nt - 1), "event") : ""), "post_review",
			post_review, "entry_counts", json_incref(counts),
			"entries", json_integer((json_int_t)n));
	/* The policy in force: what the last decision used. */
	json_int_t rev = 0;
	if (last_decision != NULL)
		int_detail(last_decision, "revision", &rev);
	pol = json_pack("{s:I,s:o}", "revision", rev, "approval_policy",
			jstr(last_decision ? detail(last_decision, "approval_policy") : ""));
	if (policy_apply != NULL) {
		json_int_t prev = -1;
		int_detail(policy_apply, "revision", &prev);
		const char *sha = detail(policy_apply, "sha256");
		if (prev != rev || sha == NULL) {
			sw_errf(err, errlen, SW_EINVAL,
				"the policy.apply entry (seq %lld) is for revision %lld, not the revision "
				"in force (%lld)",
				(long long)json_integer_value(json_object_get(policy_apply, "seq")),
				(long long)prev, (long long)rev);
			goto out;
		}
		json_object_set_new(pol, "sha256", json_string(sha));
		json_object_set_new(pol, "applied_by", jstr(sget(policy_apply, "actor")));
		json_object_set_new(pol, "seq", json_object_get(policy_apply, "seq") ?
						      json_incref(json_object_get(policy_apply, "seq")) :
						      json_null());
		if (policy_document != NULL) {
			uint8_t md[32];
			char hex[65];
			hash_sha256(policy_document, strlen(policy_document), NULL, 0, NULL, 0, md);
			hash_hex(md, 32, hex);
			if (strcmp(hex, sha) != 0) {
				sw_errf(err, errlen, SW_EINVAL,
					"policy.document: its SHA-256 is %s, the log says revision %lld "
					"is %s",
					hex, (long long)rev, sha);
				goto out;
			}
			json_object_set_new(pol, "document", json_string(policy_document));
		}
	} else if (policy_document != NULL) {
		sw_errf(err, errlen, SW_EINVAL,
			"policy.document: no policy.apply entry in the bundle covers it");
		goto out;
	}
	out = json_pack("{s:O,s:O,s:O,s:O,s:O,s:O}", "deployment", dep, "release", rel, "timeline",
			tl, "approvals", apps, "decisions", decs, "policy", pol);
out:
	json_decref(dep);
	json_decref(rel);
	json_decref(pol);
	json_decref(counts);
	json_decref(tl);
	json_decref(apps);
	json_decref(decs);
	return out;
}

/* ---- building ---- */

struct node_table {
	uint8_t (*h)[32];
	size_t n, cap;
	uint32_t *slot; /* index + 1; 0 = empty */
	size_t nslot;
};

static int nodes_put(struct node_table *t, const uint8_t h[32], size_t *idx)
{
	if (t->n * 2 >= t->nslot) {
		size_t ns = t->nslot ? t->nslot * 2 : 1024;
		uint32_t *s = calloc(ns, sizeof *s);
		if (s == NULL)
			return SW_ENOMEM;
		for (size_t i = 0; i < t->n; i++) {
			uint64_t k;
			memcpy(&k, t->h[i], 8);
			size_t j = (size_t)k & (ns - 1);
			while (s[j])
				j = (j + 1) & (ns - 1);
			s[j] = (uint32_t)(i + 1);
		}
		free(t->slot);
		t->slot = s;
		t->nslot = ns;
	}
	uint64_t k;
	memcpy(&k, h, 8);
	size_t j = (size_t)k & (t->nslot - 1);
	while (t->slot[j]) {
		if (memcmp(t->h[t->slot[j] - 1], h, 32) == 0) {
			*idx = t->slot[j] - 1;
			return 0;
		}
		j = (j + 1) & (t->nslot - 1);
	}
	if (t->n == t->cap) {
		size_t nc = t->cap ? t->cap * 2 : 1024;
		void *p = realloc(t->h, nc * 32);
		if (p == NULL)
			return SW_ENOMEM;
		t->h = p;
		t->cap = nc;
	}
	memcpy(t->h[t->n], h, 32);
	t->slot[j] = (uint32_t)(t->n + 1);
	*idx = t->n++;
	return 0;
}

struct evidence_builder {
	char id[64];
	json_t *entries;
	struct node_table nodes;
};

int evidence_builder_new(const char *deployment_id, struct evidence_builder **out, char *err,
			 size_t errlen)
{
	if (deployment_id == NULL || strlen(deployment_id) == 0 || strlen(deployment_id) >= 64)
		return sw_errf(err, errlen, SW_EINVAL, "deployment id: 1-63 bytes required");
	struct evidence_builder *b = calloc(1, sizeof *b);
	if (b == NULL || (b->entries = json_array()) == NULL) {
		free(b);
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	}
	snprintf(b->id, sizeof b->id, "%s", deployment_id);
	*out = b;
	return 0;
}

void evidence_builder_free(struct evidence_builder *b)
{
	if (b == NULL)
		return;
	json_decref(b->entries);
	free(b->nodes.h);
	free(b->nodes.slot);
	free(b);
}

int evidence_builder_add(struct evidence_builder *b, const Slipway__V1__AuditEntry *e,
			 const uint8_t (*proof)[32], size_t n, char *err, size_t errlen)
{
	if (json_array_size(b->entries) >= EVIDENCE_MAX_ENTRIES)
		return sw_errf(err, errlen, SW_ELIMIT, "more than %d entries", EVIDENCE_MAX_ENTRIES);
	if (n > MERKLE_MAX_PROOF)
		return sw_errf(err, errlen, SW_EINVAL, "inclusion proof too long");
	json_t *j = evidence_entry_json(e);
	if (j == NULL)
		return sw_errf(err, errlen, SW_EINVAL, "entry %llu has no event",
			       (unsigned long long)(e ? e->seq : 0));
	json_t *p = json_array();
	for (size_t i = 0; i < n; i++) {
		size_t idx;
		if (nodes_put(&b->nodes, proof[i], &idx) != 0) {
			json_decref(j);
			json_decref(p);
			return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		}
		json_array_append_new(p, json_integer((json_int_t)idx));
	}
	json_object_set_new(j, "proof", p);
	json_array_append_new(b->entries, j);
	return 0;
}

static int cmp_seq(const void *a, const void *b)
{
	json_t *x = *(json_t *const *)a, *y = *(json_t *const *)b;
	json_int_t i = json_integer_value(json_object_get(x, "seq"));
	json_int_t j = json_integer_value(json_object_get(y, "seq"));
	return (i > j) - (i < j);
}

static json_t *hashes_json(const uint8_t (*h)[32], size_t n)
{
	json_t *a = json_array();
	for (size_t i = 0; i < n; i++)
		json_array_append_new(a, b64_json(h[i], 32));
	return a;
}

int evidence_builder_finish(struct evidence_builder *b, const struct evidence_extra *x,
			    json_t **out, char *err, size_t errlen)
{
	char body[NOTE_MAX], origin[256];
	uint64_t size;
	uint8_t root[32];
	json_t *bundle = NULL, *views = NULL, *log = NULL;
	if (x == NULL || x->checkpoint == NULL || x->newest == NULL)
		return sw_errf(err, errlen, SW_EINVAL, "a checkpoint is required");
	/* The note's body, unverified: only its origin is needed here. */
	const char *blank = strstr(x->checkpoint, "\n\n");
	if (blank == NULL || (size_t)(blank - x->checkpoint) + 2 > sizeof body)
		return sw_errf(err, errlen, SW_EINVAL, "the checkpoint is not a signed note");
	memcpy(body, x->checkpoint, (size_t)(blank - x->checkpoint) + 1);
	body[blank - x->checkpoint + 1] = '\0';
	if (note_checkpoint_parse(body, origin, sizeof origin, &size, root, err, errlen) != 0)
		return SW_EINVAL;
	/* Sorted by seq, without repeats. */
	size_t n = json_array_size(b->entries);
	json_t **v = calloc(n ? n : 1, sizeof *v);
	if (v == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	for (size_t i = 0; i < n; i++)
		v[i] = json_incref(json_array_get(b->entries, i));
	qsort(v, n, sizeof *v, cmp_seq);
	json_t *sorted = json_array();
	for (size_t i = 0; i < n; i++) {
		if (i > 0 && cmp_seq(&v[i - 1], &v[i]) == 0)
			json_decref(v[i]);
		else
			json_array_append_new(sorted, v[i]);
	}
	free(v);
	const char *doc = x->policy_document && x->policy_document[0] ? x->policy_document : NULL;
	views = evidence_views(sorted, b->id, doc, err, errlen);
	if (views == NULL && doc != NULL) {
		/* A document the log does not cover is left out, not an error. */
		views = evidence_views(sorted, b->id, NULL, err, errlen);
	}
	if (views == NULL) {
		json_decref(sorted);
		return SW_EINVAL;
	}
	json_t *prov = json_pack("{s:s,s:s,s:s}", "statement", x->statement ? x->statement : "",
				 "signature", "", "signing_key", x->signing_key ? x->signing_key : "");
	if (x->signature != NULL)
		json_object_set_new(prov, "signature", b64_json(x->signature, PROV_SIG_LEN));
	log = json_pack("{s:s,s:s,s:s,s:o,s:o,s:o}", "origin", origin, "checkpoint", x->checkpoint,
			"newest_checkpoint", x->newest, "consistency",
			hashes_json(x->consistency, x->nconsistency), "nodes",
			hashes_json((const uint8_t(*)[32])b->nodes.h, b->nodes.n), "entries", sorted);
	if (x->state_size > 0)
		json_object_set_new(log, "state_consistency",
				    json_pack("{s:I,s:o}", "from_size", (json_int_t)x->state_size,
					      "hashes", hashes_json(x->state_proof, x->nstate_proof)));
	bundle = json_pack("{s:s,s:s,s:O,s:O,s:o,s:O,s:O,s:O,s:O,s:o}", "format", EVIDENCE_FORMAT,
			   "deployment_id", b->id, "deployment", json_object_get(views, "deployment"),
			   "release", json_object_get(views, "release"), "provenance", prov, "policy",
			   json_object_get(views, "policy"), "timeline",
			   json_object_get(views, "timeline"), "approvals",
			   json_object_get(views, "approvals"), "decisions",
			   json_object_get(views, "decisions"), "log", log);
	json_decref(views);
	if (bundle == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	*out = bundle;
	return 0;
}

/* ---- verifying ---- */

/* The first place where bundle value a differs from derived value b. */
static int first_diff(const json_t *a, const json_t *b, char *path, size_t plen, char *why,
		      size_t wlen)
{
	size_t pl = strlen(path);
	if (json_typeof(a) != json_typeof(b) &&
	    !((json_is_true(a) || json_is_false(a)) && (json_is_true(b) || json_is_false(b)))) {
		snprintf(why, wlen, "differs from what the log says");
		return 1;
	}
	if (json_is_object(a)) {
		const char *k;
		json_t *v;
		json_object_foreach((json_t *)b, k, v) {
			json_t *av = json_object_get(a, k);
			snprintf(path + pl, plen - pl, ".%s", k);
			if (av == NULL) {
				snprintf(why, wlen, "is missing (the log has it)");
				return 1;
			}
			if (first_diff(av, v, path, plen, why, wlen))
				return 1;
		}
		json_object_foreach((json_t *)a, k, v) {
			if (json_object_get(b, k) == NULL) {
				snprintf(path + pl, plen - pl, ".%s", k);
				snprintf(why, wlen, "is not in the log");
				return 1;
			}
		}
		path[pl] = '\0';
		return 0;
	}
	if (json_is_array(a)) {
		size_t na = json_array_size(a), nb = json_array_size(b);
		for (size_t i = 0; i < na && i < nb; i++) {
			snprintf(path + pl, plen - pl, "[%zu]", i);
			if (first_diff(json_array_get(a, i), json_array_get(b, i), path, plen, why, wlen))
				return 1;
		}
		path[pl] = '\0';
		if (na != nb) {
			snprintf(why, wlen, "has %zu items, the log says %zu", na, nb);
			return 1;
		}
		return 0;
	}
	if (!json_equal((json_t *)a, (json_t *)b)) {
		snprintf(why, wlen, "differs from what the log says");
		return 1;
	}
	return 0;
}

struct cp {
	char origin[256];
	uint64_t size;
	uint8_t root[32];
};

static int check_note(const struct note_verifier *key, const json_t *j, const char *where,
		      struct cp *out, char *err, size_t errlen)
{
	char body[NOTE_MAX], why[256];
	const char *note = json_string_value(j);
	if (note == NULL)
		return sw_errf(err, errlen, SW_EINVAL, "%s: not a string", where);
	if (strlen(note) >= NOTE_MAX)
		return sw_errf(err, errlen, SW_EINVAL, "%s: longer than a signed note may be", where);
	if (note_verify(key, note, body, sizeof body, why, sizeof why) != 0)
		return sw_errf(err, errlen, SW_EINVAL,
			       "%s: the signature does not verify with the given key (%s): wrong key, "
			       "a bundle from another log, or an edited checkpoint",
			       where, why);
	if (note_checkpoint_parse(body, out->origin, sizeof out->origin, &out->size, out->root, why,
				  sizeof why) != 0)
		return sw_errf(err, errlen, SW_EINVAL, "%s: %s", where, why);
	return 0;
}

static int hash_list(const json_t *a, const char *where, uint8_t (*out)[32], size_t *n,
		     char *err, size_t errlen)
{
	if (!json_is_array(a) || json_array_size(a) > MERKLE_MAX_PROOF)
		return sw_errf(err, errlen, SW_EINVAL, "%s: not an array of at most %d hashes", where,
			       MERKLE_MAX_PROOF);
	for (size_t i = 0; i < json_array_size(a); i++)
		if (b64_exact(json_string_value(json_array_get(a, i)), out[i], 32) != 0)
			return sw_errf(err, errlen, SW_EINVAL, "%s[%zu]: not a base64 SHA-256 hash",
				       where, i);
	*n = json_array_size(a);
	return 0;
}

static const char *const TOP_KEYS[] = { "format", "deployment_id", "deployment", "release",
					"provenance", "policy", "timeline", "approvals",
					"decisions", "log", NULL };
static const char *const LOG_KEYS[] = { "origin", "checkpoint", "newest_checkpoint",
					"consistency", "nodes", "entries", NULL };
static const char *const LOG_OPT[] = { "state_consistency", NULL };
static const char *const PROV_KEYS[] = { "statement", "signature", "signing_key", NULL };

static int check_provenance(const json_t *b, const struct evidence_verify_opts *o,
			    struct evidence_report *r, char *err, size_t errlen)
{
	const json_t *p = json_object_get(b, "provenance"), *rel = json_object_get(b, "release");
	int rc = keys_exact(p, "provenance", PROV_KEYS, NULL, err, errlen);
	if (rc != 0)
		return rc;
	const char *stmt = sget(p, "statement"), *sig = sget(p, "signature"),
		   *key = sget(p, "signing_key");
	if (!stmt || !sig || !key)
		return sw_errf(err, errlen, SW_EINVAL, "provenance: fields must be strings");
	int verified = json_is_true(json_object_get(rel, "signature_verified"));
	if (stmt[0] == '\0') {
		if (verified)
			return sw_errf(err, errlen, SW_EINVAL,
				       "provenance.statement: missing, but the log says the release's "
				       "signature was verified");
		if (sig[0] || key[0])
			return sw_errf(err, errlen, SW_EINVAL,
				       "provenance: a signature without a statement");
		return 0;
	}
	struct prov_statement s;
	char why[256];
	if (prov_parse((const uint8_t *)stmt, strlen(stmt), &s, why, sizeof why) != 0)
		return sw_errf(err, errlen, SW_EINVAL, "provenance.statement: %s", why);
	const json_t *dep = json_object_get(b, "deployment");
	struct {
		const char *name, *mine, *theirs;
	} f[] = {
		{ "app", s.app, sget(dep, "app") },
		{ "version", s.version, sget(dep, "version") },
		{ "digest", s.digest, sget(dep, "digest") },
		{ "repository", s.repository, sget(rel, "repository") },
		{ "commit", s.commit, sget(rel, "commit") },
		{ "ref", s.ref, sget(rel, "ref") },
		{ "builder", s.builder, sget(rel, "builder") },
		{ "build-id", s.build_id, sget(rel, "build_id") },
	};
	for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
		if (f[i].theirs == NULL || strcmp(f[i].mine, f[i].theirs) != 0)
			return sw_errf(err, errlen, SW_EINVAL,
				       "provenance.statement: %s is '%s', the logged release says '%s'",
				       f[i].name, f[i].mine, f[i].theirs ? f[i].theirs : "(none)");
	r->provenance = 1;
	if (sig[0] == '\0') {
		if (verified || key[0])
			return sw_errf(err, errlen, SW_EINVAL, "provenance.signature: missing");
		return 0;
	}
	uint8_t raw[PROV_SIG_LEN];
	if (b64_exact(sig, raw, sizeof raw) != 0)
		return sw_errf(err, errlen, SW_EINVAL,
			       "provenance.signature: not a base64 Ed25519 signature");
	if (verified && strcmp(key, sget(rel, "signing_key") ? sget(rel, "signing_key") : "") != 0)
		return sw_errf(err, errlen, SW_EINVAL,
			       "provenance.signing_key: '%s', the logged release says '%s'", key,
			       sget(rel, "signing_key"));
	if (o->builder_keys != NULL) {
		if (prov_keys_verify(o->builder_keys, s.app, (const uint8_t *)stmt, strlen(stmt), raw,
				     sizeof raw, key, NULL, 0, NULL, 0, why, sizeof why) != 0)
			return sw_errf(err, errlen, SW_EINVAL,
				       "provenance.signature: does not verify: %s", why);
		r->provenance = 2;
	}
	return 0;
}

int evidence_verify(const char *buf, size_t len, const struct evidence_verify_opts *o,
		    struct evidence_report *r, char *err, size_t errlen)
{
	json_error_t je;
	json_t *b = NULL, *views = NULL;
	uint8_t (*nodes)[32] = NULL;
	unsigned char *used = NULL;
	int rc = SW_EINVAL;
	memset(r, 0, sizeof *r);
	if (len > EVIDENCE_MAX_BYTES)
		return sw_errf(err, errlen, SW_EINVAL, "larger than %u bytes", EVIDENCE_MAX_BYTES);
	b = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &je);
	if (b == NULL)
		return sw_errf(err, errlen, SW_EINVAL,
			       "not a bundle: invalid JSON at byte %d (%s): truncated or edited",
			       je.position, je.text);
	const char *fmt = sget(b, "format");
	if (!json_is_object(b) || fmt == NULL) {
		sw_errf(err, errlen, SW_EINVAL, "format: missing (not an evidence bundle)");
		goto out;
	}
	if (strcmp(fmt, EVIDENCE_FORMAT) != 0) {
		sw_errf(err, errlen, SW_EINVAL, "format: unknown format version '%.80s' (this verifier "
			"reads " EVIDENCE_FORMAT ")", fmt);
		goto out;
	}
	if (keys_exact(b, "bundle", TOP_KEYS, NULL, err, errlen) != 0)
		goto out;
	const char *id = sget(b, "deployment_id");
	if (id == NULL || strlen(id) == 0 || strlen(id) >= sizeof r->deployment_id) {
		sw_errf(err, errlen, SW_EINVAL, "deployment_id: not a deployment id");
		goto out;
	}
	snprintf(r->deployment_id, sizeof r->deployment_id, "%s", id);
	const json_t *log = json_object_get(b, "log");
	if (keys_exact(log, "log", LOG_KEYS, LOG_OPT, err, errlen) != 0)
		goto out;

	/* 1. The checkpoints: signed by the log's key, one origin, the newest
	 * extends the covering one. */
	struct cp cp, nw;
	if (check_note(o->key, json_object_get(log, "checkpoint"), "log.checkpoint", &cp, err,
		       errlen) != 0 ||
	    check_note(o->key, json_object_get(log, "newest_checkpoint"), "log.newest_checkpoint",
		       &nw, err, errlen) != 0)
		goto out;
	const char *origin = sget(log, "origin");
	if (origin == NULL || strcmp(origin, cp.origin) != 0) {
		sw_errf(err, errlen, SW_EINVAL, "log.origin: '%s', the checkpoint says '%s'",
			origin ? origin : "(none)", cp.origin);
		goto out;
	}
	if (strcmp(nw.origin, cp.origin) != 0) {
		sw_errf(err, errlen, SW_EINVAL,
			"log.newest_checkpoint: origin '%s' is not the checkpoint's '%s'", nw.origin,
			cp.origin);
		goto out;
	}
	uint8_t proof[MERKLE_MAX_PROOF][32];
	size_t np = 0;
	if (hash_list(json_object_get(log, "consistency"), "log.consistency", proof, &np, err,
		      errlen) != 0)
		goto out;
	if (nw.size < cp.size ||
	    merkle_verify_consistency(cp.size, nw.size, cp.root, nw.root,
				      (const uint8_t(*)[32])proof, np) != 0) {
		sw_errf(err, errlen, SW_EINVAL,
			"log.consistency: does not prove that the newest checkpoint (size %llu) "
			"extends the bundle's checkpoint (size %llu)",
			(unsigned long long)nw.size, (unsigned long long)cp.size);
		goto out;
	}
	snprintf(r->origin, sizeof r->origin, "%s", cp.origin);
	r->checkpoint_size = cp.size;
	r->newest_size = nw.size;
	memcpy(r->newest_root, nw.root, 32);
	snprintf(r->newest_note, sizeof r->newest_note, "%s",
		 json_string_value(json_object_get(log, "newest_checkpoint")));

	/* 2. The shared proof hashes, then every entry's inclusion. */
	const json_t *jn = json_object_get(log, "nodes"), *je2 = json_object_get(log, "entries");
	if (!json_is_array(jn) || !json_is_array(je2) ||
	    json_array_size(je2) > EVIDENCE_MAX_ENTRIES) {
		sw_errf(err, errlen, SW_EINVAL, "log.nodes and log.entries must be arrays");
		goto out;
	}
	size_t nn = json_array_size(jn), ne = json_array_size(je2);
	nodes = malloc((nn ? nn : 1) * 32);
	used = calloc(nn ? nn : 1, 1);
	if (nodes == NULL || used == NULL) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < nn; i++)
		if (b64_exact(json_string_value(json_array_get(jn, i)), nodes[i], 32) != 0) {
			sw_errf(err, errlen, SW_EINVAL, "log.nodes[%zu]: not a base64 SHA-256 hash", i);
			goto out;
		}
	long long last = -1;
	for (size_t i = 0; i < ne; i++) {
		const json_t *e = json_array_get(je2, i);
		char where[64];
		uint8_t leaf[32];
		snprintf(where, sizeof where, "log.entries[%zu]", i);
		if (entry_leaf(e, where, leaf, err, errlen) != 0)
			goto out;
		long long seq = (long long)json_integer_value(json_object_get(e, "seq"));
		if (seq <= last) {
			sw_errf(err, errlen, SW_EINVAL, "%s: seq %lld is not after %lld", where, seq,
				last);
			goto out;
		}
		last = seq;
		const json_t *pr = json_object_get(e, "proof");
		if (!json_is_array(pr) || json_array_size(pr) > MERKLE_MAX_PROOF) {
			sw_errf(err, errlen, SW_EINVAL, "%s.proof: not an array of node indexes", where);
			goto out;
		}
		np = json_array_size(pr);
		for (size_t k = 0; k < np; k++) {
			const json_t *x = json_array_get(pr, k);
			if (!json_is_integer(x) || json_integer_value(x) < 0 ||
			    (size_t)json_integer_value(x) >= nn) {
				sw_errf(err, errlen, SW_EINVAL, "%s.proof[%zu]: not an index into log.nodes",
					where, k);
				goto out;
			}
			memcpy(proof[k], nodes[json_integer_value(x)], 32);
			used[json_integer_value(x)] = 1;
		}
		if ((uint64_t)seq >= cp.size ||
		    merkle_verify_inclusion((uint64_t)seq, cp.size, leaf, (const uint8_t(*)[32])proof,
					    np, cp.root) != 0) {
			sw_errf(err, errlen, SW_EINVAL,
				"%s (seq %lld, %s): not in the log: its inclusion proof does not lead "
				"to the signed checkpoint's root (the entry or its proof was edited)",
				where, seq, sget(e, "action"));
			goto out;
		}
	}
	r->entries = ne;

	/* 3. The views: exactly what the entries say. */
	const json_t *pol = json_object_get(b, "policy");
	const char *doc = json_is_object(pol) ? sget(pol, "document") : NULL;
	if (json_is_object(pol) && json_object_get(pol, "document") != NULL && doc == NULL) {
		sw_errf(err, errlen, SW_EINVAL, "policy.document: not a string");
		goto out;
	}
	char why[300];
	views = evidence_views(je2, id, doc, why, sizeof why);
	if (views == NULL) {
		sw_errf(err, errlen, SW_EINVAL, "%s", why);
		goto out;
	}
	static const char *const V[] = { "deployment", "release", "policy", "timeline",
					 "approvals", "decisions", NULL };
	for (const char *const *k = V; *k; k++) {
		char path[256];
		snprintf(path, sizeof path, "%s", *k);
		if (first_diff(json_object_get(b, *k), json_object_get(views, *k), path, sizeof path,
			       why, sizeof why)) {
			sw_errf(err, errlen, SW_EINVAL, "%s: %s", path, why);
			goto out;
		}
	}
	/* A node no proof uses is not part of the evidence (checked after the
	 * views, which name a dropped entry better). */
	for (size_t i = 0; i < nn; i++)
		if (!used[i]) {
			sw_errf(err, errlen, SW_EINVAL, "log.nodes[%zu]: used by no proof", i);
			goto out;
		}
	r->timeline = json_array_size(json_object_get(views, "timeline"));
	r->approvals = json_array_size(json_object_get(views, "approvals"));
	r->decisions = json_array_size(json_object_get(views, "decisions"));

	/* 4. The release's signed provenance. */
	if (check_provenance(b, o, r, err, errlen) != 0)
		goto out;

	/* 5. The checkpoint seen before: the newest must extend it. */
	const json_t *sc = json_object_get(log, "state_consistency");
	if (sc != NULL) {
		static const char *const SC[] = { "from_size", "hashes", NULL };
		if (keys_exact(sc, "log.state_consistency", SC, NULL, err, errlen) != 0 ||
		    !json_is_integer(json_object_get(sc, "from_size")) ||
		    hash_list(json_object_get(sc, "hashes"), "log.state_consistency.hashes", proof,
			      &np, err, errlen) != 0) {
			if (!err[0])
				sw_errf(err, errlen, SW_EINVAL, "log.state_consistency: malformed");
			goto out;
		}
	}
	const struct auditstate *st = o->state;
	const struct auditstate_cp *lt = st != NULL ? auditstate_latest(st) : NULL;
	if (lt != NULL && lt->size > 0) {
		if (st->origin[0] && strcmp(st->origin, cp.origin) != 0) {
			sw_errf(err, errlen, SW_EINVAL,
				"the bundle is from log '%s', the state file knows log '%s'", cp.origin,
				st->origin);
			goto out;
		}
		if (lt->size > nw.size) {
			sw_errf(err, errlen, SW_EINVAL,
				"log.newest_checkpoint: size %llu is smaller than the checkpoint seen "
				"before (size %llu, state file): the log was rolled back (or the bundle "
				"predates the state: export it again)",
				(unsigned long long)nw.size, (unsigned long long)lt->size);
			goto out;
		}
		if (lt->size == nw.size) {
			if (memcmp(lt->root, nw.root, 32) != 0) {
				sw_errf(err, errlen, SW_EINVAL,
					"log.newest_checkpoint: the root at size %llu differs from the "
					"one seen before (state file): the log was forked or rewritten",
					(unsigned long long)nw.size);
				goto out;
			}
		} else {
			if (sc == NULL ||
			    (uint64_t)json_integer_value(json_object_get(sc, "from_size")) != lt->size) {
				sw_errf(err, errlen, SW_EINVAL,
					"log.state_consistency: the bundle holds no consistency proof "
					"from the checkpoint seen before (size %llu): export it with "
					"--state",
					(unsigned long long)lt->size);
				goto out;
			}
			if (merkle_verify_consistency(lt->size, nw.size, lt->root, nw.root,
						      (const uint8_t(*)[32])proof, np) != 0) {
				sw_errf(err, errlen, SW_EINVAL,
					"log.state_consistency: the newest checkpoint (size %llu) does "
					"not extend the one seen before (size %llu, state file): the log "
					"was rolled back or forked",
					(unsigned long long)nw.size, (unsigned long long)lt->size);
				goto out;
			}
		}
		r->state_checked = 1;
	}
	rc = 0;
out:
	free(nodes);
	free(used);
	json_decref(views);
	json_decref(b);
	return rc;
}
