/*
 * it_policy.h - helpers shared by the policy service's integration tests
 * (it_policy.c, it_policy_approval.c): certificates for test principals,
 * documents with the stack's trust domain, and thin RPC wrappers. Included
 * by exactly one .c file per test binary.
 */
#ifndef SLIPWAY_IT_POLICY_H
#define SLIPWAY_IT_POLICY_H

#include "err.h"
#include "harness.h"
#include "pki.h"
#include "rpc.h"

#include "slipway/v1/audit.pb-c.h"
#include "slipway/v1/policy.pb-c.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static char ph_dir[512], ph_td[128], ph_ca[600], ph_pki[600];

static void ph_init(const char *tag) __attribute__((unused));
static void ph_init(const char *tag)
{
	char err[256];
	snprintf(ph_dir, sizeof ph_dir, "%s", h_tmpdir(tag));
	snprintf(ph_pki, sizeof ph_pki, "%s", h_env("SLIPWAY_PKI_DIR"));
	snprintf(ph_ca, sizeof ph_ca, "%s", h_env("SLIPWAY_CA"));
	if (pki_trust_domain(ph_pki, ph_td, sizeof ph_td, err, sizeof err) != 0) {
		fprintf(stderr, "trust domain: %s\n", err);
		exit(1);
	}
}

/* "spiffe://<td>/<who>" in a rotating static buffer; who = "user/alice". */
static const char *ph_id(const char *who) __attribute__((unused));
static const char *ph_id(const char *who)
{
	static char b[16][300];
	static int k;
	char *o = b[k++ % 16];
	snprintf(o, 300, "spiffe://%s/%s", ph_td, who);
	return o;
}

/* A client authenticated as `who` (issuing its certificate once); addr
 * NULL = the stack's policy service. */
static struct rpc_client *ph_client_at(const char *who, const char *addr) __attribute__((unused));
static struct rpc_client *ph_client_at(const char *who, const char *addr)
{
	char prefix[1200], crt[1300], key[1300], name[300];
	snprintf(name, sizeof name, "%s", who);
	for (char *p = name; *p; p++)
		if (*p == '/')
			*p = '_';
	snprintf(prefix, sizeof prefix, "%s/%s", ph_dir, name);
	snprintf(crt, sizeof crt, "%s.crt", prefix);
	snprintf(key, sizeof key, "%s.key", prefix);
	struct stat st;
	if (stat(crt, &st) != 0)
		h_issue(ph_pki, prefix, ph_id(who), NULL, 0);
	return h_client(addr ? addr : h_env("SLIPWAY_POLICY_ADDR"), ph_ca, crt, key);
}

static struct rpc_client *ph_client(const char *who) __attribute__((unused));
static struct rpc_client *ph_client(const char *who)
{
	return ph_client_at(who, NULL);
}

/* Replaces every "@TD@" in tmpl with the trust domain (new string). */
static char *ph_doc(const char *tmpl) __attribute__((unused));
static char *ph_doc(const char *tmpl)
{
	size_t n = strlen(tmpl) + 1, cnt = 0;
	for (const char *p = tmpl; (p = strstr(p, "@TD@")) != NULL; p += 4)
		cnt++;
	char *out = malloc(n + cnt * strlen(ph_td)), *o = out;
	for (const char *p = tmpl; *p;) {
		if (strncmp(p, "@TD@", 4) == 0) {
			memcpy(o, ph_td, strlen(ph_td));
			o += strlen(ph_td);
			p += 4;
		} else {
			*o++ = *p++;
		}
	}
	*o = '\0';
	return out;
}

static int ph_apply(struct rpc_client *c, const char *tmpl, uint64_t expected, int dry,
		    uint64_t *rev, int *changed, char *err, size_t errlen) __attribute__((unused));
static int ph_apply(struct rpc_client *c, const char *tmpl, uint64_t expected, int dry,
		    uint64_t *rev, int *changed, char *err, size_t errlen)
{
	Slipway__V1__ApplyPolicyRequest req = SLIPWAY__V1__APPLY_POLICY_REQUEST__INIT;
	char *doc = ph_doc(tmpl);
	req.document = doc;
	req.expected_revision = expected;
	req.dry_run = dry;
	ProtobufCMessage *out = NULL;
	int rc = rpc_call(c, &slipway__v1__policy__descriptor, "ApplyPolicy", &req.base, &out, NULL,
			  err, errlen);
	free(doc);
	if (rc == 0) {
		Slipway__V1__ApplyPolicyResponse *r = (void *)out;
		if (rev)
			*rev = r->revision;
		if (changed)
			*changed = r->changed;
		protobuf_c_message_free_unpacked(out, NULL);
	}
	return rc;
}

/* Applies as the stack admin and fails the test run on error. */
static uint64_t ph_apply_admin(const char *tmpl) __attribute__((unused));
static uint64_t ph_apply_admin(const char *tmpl)
{
	struct rpc_client *c = h_client(h_env("SLIPWAY_POLICY_ADDR"), ph_ca, h_env("SLIPWAY_CERT"),
					h_env("SLIPWAY_KEY"));
	char err[1024];
	uint64_t rev = 0;
	int rc = ph_apply(c, tmpl, 0, 0, &rev, NULL, err, sizeof err);
	rpc_client_free(c);
	if (rc != 0) {
		fprintf(stderr, "apply as admin failed: %s\n", err);
		exit(1);
	}
	return rev;
}

/* Asks Authorize; returns the call's code, *allowed and the reasons
 * joined with "; ". */
static int ph_authz(struct rpc_client *c, const char *principal, const char *action,
		    const char *kind, const char *app, const char *env, const char *name,
		    int *allowed, char *reasons, size_t len) __attribute__((unused));
static int ph_authz(struct rpc_client *c, const char *principal, const char *action,
		    const char *kind, const char *app, const char *env, const char *name,
		    int *allowed, char *reasons, size_t len)
{
	Slipway__V1__AuthorizeRequest req = SLIPWAY__V1__AUTHORIZE_REQUEST__INIT;
	Slipway__V1__Resource res = SLIPWAY__V1__RESOURCE__INIT;
	req.principal = (char *)principal;
	req.action = (char *)action;
	res.kind = (char *)kind;
	res.app = (char *)(app ? app : "");
	res.environment = (char *)(env ? env : "");
	res.name = (char *)(name ? name : "");
	req.resource = &res;
	ProtobufCMessage *out = NULL;
	char err[512];
	int rc = rpc_call(c, &slipway__v1__policy__descriptor, "Authorize", &req.base, &out, NULL,
			  err, sizeof err);
	if (reasons != NULL && len > 0)
		snprintf(reasons, len, "%s", rc ? err : "");
	if (rc != 0)
		return rc;
	Slipway__V1__AuthorizeResponse *r = (void *)out;
	*allowed = r->allowed;
	size_t off = 0;
	for (size_t i = 0; reasons != NULL && i < r->n_reasons && off + 1 < len; i++) {
		int n = snprintf(reasons + off, len - off, "%s%s", i ? "; " : "", r->reasons[i]);
		if (n < 0)
			break;
		off += (size_t)n;
	}
	protobuf_c_message_free_unpacked(out, NULL);
	return 0;
}

/* Shorthand: 1 allowed, 0 denied, negative: the call failed. */
static int ph_can(struct rpc_client *svc, const char *who, const char *action, const char *kind,
		  const char *app, const char *env) __attribute__((unused));
static int ph_can(struct rpc_client *svc, const char *who, const char *action, const char *kind,
		  const char *app, const char *env)
{
	int allowed = 0;
	int rc = ph_authz(svc, ph_id(who), action, kind, app, env, NULL, &allowed, NULL, 0);
	return rc != 0 ? rc : allowed;
}

static uint64_t ph_revision(struct rpc_client *c) __attribute__((unused));
static uint64_t ph_revision(struct rpc_client *c)
{
	Slipway__V1__GetRevisionRequest req = SLIPWAY__V1__GET_REVISION_REQUEST__INIT;
	ProtobufCMessage *out = NULL;
	char err[256];
	if (rpc_call(c, &slipway__v1__policy__descriptor, "GetRevision", &req.base, &out, NULL, err,
		     sizeof err) != 0)
		return (uint64_t)-1;
	uint64_t r = ((Slipway__V1__GetRevisionResponse *)out)->revision;
	protobuf_c_message_free_unpacked(out, NULL);
	return r;
}

/*
 * Waits (up to 30 s: the outbox relay delivers asynchronously) until the
 * audit log holds an entry from the policy service with this action (and
 * actor, when not NULL) whose
 * event id is event_id (when not NULL) or which has detail key=value (when
 * key is not NULL). Returns the entry (free with
 * slipway__v1__audit_entry__free_unpacked) or NULL. Reads as the stack
 * admin. Without an audit service in the stack, returns NULL at once.
 */
static Slipway__V1__AuditEntry *ph_audit_find(const char *action, const char *actor,
					      const char *event_id, const char *key,
					      const char *value) __attribute__((unused));
static Slipway__V1__AuditEntry *ph_audit_find(const char *action, const char *actor,
					      const char *event_id, const char *key,
					      const char *value)
{
	const char *addr = getenv("SLIPWAY_AUDIT_ADDR");
	if (addr == NULL || addr[0] == '\0')
		return NULL;
	struct rpc_client *c = h_client(addr, ph_ca, h_env("SLIPWAY_CERT"), h_env("SLIPWAY_KEY"));
	Slipway__V1__AuditEntry *found = NULL;
	long long end = h_now_ms() + 30000;
	while (found == NULL && h_now_ms() < end) {
		Slipway__V1__ListEntriesRequest req = SLIPWAY__V1__LIST_ENTRIES_REQUEST__INIT;
		Slipway__V1__EntryFilter f = SLIPWAY__V1__ENTRY_FILTER__INIT;
		f.service = "policy";
		f.action = (char *)action;
		f.actor = (char *)(actor ? actor : "");
		req.filter = &f;
		req.page_size = 500;
		char token[256] = "";
		for (;;) {
			req.page_token = token;
			ProtobufCMessage *m = NULL;
			char err[512];
			if (rpc_call(c, &slipway__v1__audit__descriptor, "ListEntries", &req.base, &m,
				     NULL, err, sizeof err) != 0) {
				fprintf(stderr, "ListEntries: %s\n", err);
				break;
			}
			Slipway__V1__ListEntriesResponse *r = (void *)m;
			for (size_t i = 0; i < r->n_entries && found == NULL; i++) {
				Slipway__V1__AuditEvent *e = r->entries[i]->event;
				int ok = e != NULL;
				if (ok && event_id != NULL)
					ok = strcmp(e->event_id, event_id) == 0;
				if (ok && key != NULL) {
					int have = 0;
					for (size_t k = 0; k < e->n_details && !have; k++)
						have = strcmp(e->details[k]->key, key) == 0 &&
						       strcmp(e->details[k]->value, value) == 0;
					ok = have;
				}
				if (ok) {
					size_t n = slipway__v1__audit_entry__get_packed_size(r->entries[i]);
					uint8_t *b = malloc(n + 1);
					slipway__v1__audit_entry__pack(r->entries[i], b);
					found = slipway__v1__audit_entry__unpack(NULL, n, b);
					free(b);
				}
			}
			snprintf(token, sizeof token, "%s", r->next_page_token);
			protobuf_c_message_free_unpacked(m, NULL);
			if (found != NULL || token[0] == '\0')
				break;
		}
		if (found == NULL)
			h_sleep_ms(100);
	}
	rpc_client_free(c);
	return found;
}

/* A detail's value in an audit entry ("" when absent). */
static const char *ph_detail(const Slipway__V1__AuditEntry *e, const char *key)
	__attribute__((unused));
static const char *ph_detail(const Slipway__V1__AuditEntry *e, const char *key)
{
	for (size_t k = 0; e->event && k < e->event->n_details; k++)
		if (strcmp(e->event->details[k]->key, key) == 0)
			return e->event->details[k]->value;
	return "";
}

#endif
