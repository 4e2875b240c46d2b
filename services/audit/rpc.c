/*
 * rpc.c - the slipway.v1.Audit RPCs: decode, validate, authorize, call the
 * store or the checkpointer, encode.
 *
 * Appends are authorized by identity (the caller must be the producing
 * service); every read asks the policy service for `read` on `audit`.
 */
#include "audit.h"
#include "auditlog.h"
#include "cfg.h"
#include "err.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PAGE_DEFAULT 100
#define PAGE_MAX 1000
#define EXPORT_CHUNK 1000

static int can_read(struct aud *a, struct rpc_ctx *ctx, const char *action)
{
	if (a->authz == NULL)
		return rpc_errorf(ctx, SW_EPERM,
				  "reads are denied: no policy service is configured (--policy-addr)");
	return authz_require(a->authz, ctx, action, "audit", NULL, NULL, NULL);
}

/* A group commit finished: answer the deferred call. Batcher thread. */
static void appended(void *arg, int rc, const char *err)
{
	struct rpc_ctx *ctx = arg;
	rpc_finish(ctx, rc ? rpc_errorf(ctx, rc, "%s", err) : 0);
}

/* Validation is CPU only and queueing never blocks, so Append runs on the
 * completion-queue thread and the call waits for its commit without
 * holding any thread. */
static int append(struct rpc_ctx *ctx, const ProtobufCMessage *reqm, ProtobufCMessage *respm,
		  void *data)
{
	struct aud *a = data;
	const Slipway__V1__AppendRequest *req = (const void *)reqm;
	char err[256];
	int rc = aud_validate_event(a, rpc_peer(ctx), req->event, err, sizeof err);
	if (rc != 0)
		return rpc_errorf(ctx, rc, "%s", err);
	struct aud_job *job = rpc_alloc(ctx, sizeof *job);
	uint8_t(*hash)[32] = rpc_alloc(ctx, 32);
	Slipway__V1__AuditEvent **ev = rpc_alloc(ctx, sizeof *ev);
	if (job == NULL || hash == NULL || ev == NULL)
		return SW_ENOMEM;
	*ev = req->event;
	rpc_defer(ctx);
	rc = aud_append(a, job, ev, 1, (void *)respm, hash, appended, ctx, err, sizeof err);
	if (rc != 0)
		rpc_finish(ctx, rpc_errorf(ctx, rc, "%s", err));
	return RPC_DEFERRED;
}

static int append_batch(struct rpc_ctx *ctx, const ProtobufCMessage *reqm, ProtobufCMessage *respm,
			void *data)
{
	struct aud *a = data;
	const Slipway__V1__AppendBatchRequest *req = (const void *)reqm;
	Slipway__V1__AppendBatchResponse *resp = (void *)respm;
	char err[256];
	if (req->n_events == 0)
		return rpc_errorf(ctx, SW_EINVAL, "events: at least one event is required");
	if (req->n_events > AUD_MAX_BATCH_EVENTS)
		return rpc_errorf(ctx, SW_EINVAL, "events: at most %d per batch",
				  AUD_MAX_BATCH_EVENTS);
	for (size_t i = 0; i < req->n_events; i++) {
		int rc = aud_validate_event(a, rpc_peer(ctx), req->events[i], err, sizeof err);
		if (rc != 0)
			return rpc_errorf(ctx, rc, "events[%zu]: %s", i, err);
	}
	size_t n = req->n_events;
	Slipway__V1__AppendResponse *res = rpc_alloc(ctx, n * sizeof *res);
	Slipway__V1__AppendResponse **ptrs = rpc_alloc(ctx, n * sizeof *ptrs);
	uint8_t(*hashes)[32] = rpc_alloc(ctx, n * 32);
	if (!res || !ptrs || !hashes)
		return SW_ENOMEM;
	for (size_t i = 0; i < n; i++) {
		slipway__v1__append_response__init(&res[i]);
		ptrs[i] = &res[i];
	}
	struct aud_job *job = rpc_alloc(ctx, sizeof *job);
	if (job == NULL)
		return SW_ENOMEM;
	resp->n_results = n;
	resp->results = ptrs;
	rpc_defer(ctx);
	int rc = aud_append(a, job, req->events, n, res, hashes, appended, ctx, err, sizeof err);
	if (rc != 0)
		rpc_finish(ctx, rpc_errorf(ctx, rc, "%s", err));
	return RPC_DEFERRED;
}

/* Copies a checkpoint into call memory and frees the original. */
static Slipway__V1__Checkpoint *keep_checkpoint(struct rpc_ctx *ctx, Slipway__V1__Checkpoint *cp)
{
	Slipway__V1__Checkpoint *out = rpc_alloc(ctx, sizeof *out);
	if (out != NULL) {
		slipway__v1__checkpoint__init(out);
		out->note = rpc_strdup(ctx, cp->note);
		out->origin = rpc_strdup(ctx, cp->origin);
		out->size = cp->size;
		out->signed_unix_ms = cp->signed_unix_ms;
		out->root_hash.data = (uint8_t *)rpc_memdup(ctx, cp->root_hash.data, cp->root_hash.len);
		out->root_hash.len = cp->root_hash.len;
	}
	aud_checkpoint_free(cp);
	return out;
}

static void copy_checkpoint(Slipway__V1__Checkpoint *dst, const Slipway__V1__Checkpoint *src)
{
	dst->note = src->note;
	dst->origin = src->origin;
	dst->size = src->size;
	dst->root_hash = src->root_hash;
	dst->signed_unix_ms = src->signed_unix_ms;
}

/* Builds an inclusion proof of seq in tree_size into call memory. */
static int build_inclusion(struct rpc_ctx *ctx, struct aud *a, uint64_t seq, uint64_t tree_size,
			   Slipway__V1__InclusionProof *out)
{
	char err[256];
	struct merkle_plan *p = rpc_alloc(ctx, sizeof *p);
	uint8_t(*proof)[MERKLE_HASH] = rpc_alloc(ctx, MERKLE_MAX_PROOF * MERKLE_HASH);
	ProtobufCBinaryData *hs = rpc_alloc(ctx, MERKLE_MAX_PROOF * sizeof *hs);
	uint8_t *leaf = rpc_alloc(ctx, MERKLE_HASH);
	if (!p || !proof || !hs || !leaf)
		return SW_ENOMEM;
	int rc = merkle_plan_inclusion(seq, tree_size, p);
	if (rc != 0)
		return rpc_errorf(ctx, SW_ERANGE, "seq %llu is not in a tree of size %llu",
				  (unsigned long long)seq, (unsigned long long)tree_size);
	/* The leaf itself is node (0, seq). */
	struct merkle_node *ln = &p->nodes[p->n++];
	ln->level = 0;
	ln->index = seq;
	if ((rc = aud_fill_plan(a, p, err, sizeof err)) != 0)
		return rpc_errorf(ctx, rc, "%s", err);
	memcpy(leaf, ln->hash, MERKLE_HASH);
	size_t n = 0;
	if ((rc = merkle_inclusion(seq, tree_size, p, proof, &n)) != 0)
		return rpc_errorf(ctx, SW_EINTERNAL, "cannot build the proof");
	slipway__v1__inclusion_proof__init(out);
	out->leaf_index = seq;
	out->tree_size = tree_size;
	out->leaf_hash.data = leaf;
	out->leaf_hash.len = MERKLE_HASH;
	for (size_t i = 0; i < n; i++) {
		hs[i].data = proof[i];
		hs[i].len = MERKLE_HASH;
	}
	out->n_hashes = n;
	out->hashes = hs;
	return 0;
}

static int latest_size(struct rpc_ctx *ctx, struct aud *a, uint64_t *size)
{
	char err[256];
	int rc = aud_latest_size(a, size, err, sizeof err);
	return rc ? rpc_errorf(ctx, rc, "%s", err) : 0;
}

static int check_tree_size(struct rpc_ctx *ctx, struct aud *a, uint64_t size)
{
	char err[256];
	uint64_t have = 0;
	/* A signed checkpoint never covers more than the log holds. */
	if (aud_latest_size(a, &have, err, sizeof err) == 0 && size <= have)
		return 0;
	int rc = aud_size(a, &have, err, sizeof err);
	if (rc != 0)
		return rpc_errorf(ctx, rc, "%s", err);
	if (size > have)
		return rpc_errorf(ctx, SW_ERANGE, "tree size %llu is beyond the log (%llu entries)",
				  (unsigned long long)size, (unsigned long long)have);
	return 0;
}

static int get_inclusion_proof(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
			       ProtobufCMessage *respm, void *data)
{
	struct aud *a = data;
	const Slipway__V1__GetInclusionProofRequest *req = (const void *)reqm;
	int rc = can_read(a, ctx, "read");
	if (rc != 0)
		return rc;
	uint64_t size = req->tree_size;
	if (size == 0 && (rc = latest_size(ctx, a, &size)) != 0)
		return rc;
	if ((rc = check_tree_size(ctx, a, size)) != 0)
		return rc;
	if (req->seq >= size)
		return rpc_errorf(ctx, SW_ERANGE, "seq %llu is not below tree size %llu",
				  (unsigned long long)req->seq, (unsigned long long)size);
	return build_inclusion(ctx, a, req->seq, size, (void *)respm);
}

static int get_consistency_proof(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
				 ProtobufCMessage *respm, void *data)
{
	struct aud *a = data;
	const Slipway__V1__GetConsistencyProofRequest *req = (const void *)reqm;
	Slipway__V1__ConsistencyProof *resp = (void *)respm;
	char err[256];
	int rc = can_read(a, ctx, "read");
	if (rc != 0)
		return rc;
	uint64_t size = req->new_size;
	if (size == 0 && (rc = latest_size(ctx, a, &size)) != 0)
		return rc;
	if (req->old_size == 0)
		return rpc_errorf(ctx, SW_EINVAL, "old_size must be at least 1");
	if (req->old_size > size)
		return rpc_errorf(ctx, SW_ERANGE, "old_size %llu is larger than new_size %llu",
				  (unsigned long long)req->old_size, (unsigned long long)size);
	if ((rc = check_tree_size(ctx, a, size)) != 0)
		return rc;
	struct merkle_plan *p = rpc_alloc(ctx, sizeof *p);
	uint8_t(*proof)[MERKLE_HASH] = rpc_alloc(ctx, MERKLE_MAX_PROOF * MERKLE_HASH);
	ProtobufCBinaryData *hs = rpc_alloc(ctx, MERKLE_MAX_PROOF * sizeof *hs);
	if (!p || !proof || !hs)
		return SW_ENOMEM;
	size_t n = 0;
	if ((rc = merkle_plan_consistency(req->old_size, size, p)) != 0 ||
	    (rc = aud_fill_plan(a, p, err, sizeof err)) != 0 ||
	    (rc = merkle_consistency(req->old_size, size, p, proof, &n)) != 0)
		return rpc_errorf(ctx, rc, "cannot build the proof: %s", err);
	for (size_t i = 0; i < n; i++) {
		hs[i].data = proof[i];
		hs[i].len = MERKLE_HASH;
	}
	resp->old_size = req->old_size;
	resp->new_size = size;
	resp->n_hashes = n;
	resp->hashes = hs;
	return 0;
}

static int get_checkpoint(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
			  ProtobufCMessage *respm, void *data)
{
	struct aud *a = data;
	const Slipway__V1__GetCheckpointRequest *req = (const void *)reqm;
	char err[256];
	int rc = can_read(a, ctx, "read");
	if (rc != 0)
		return rc;
	uint64_t size;
	if (req->which_case == SLIPWAY__V1__GET_CHECKPOINT_REQUEST__WHICH_LATEST && req->latest)
		size = 0;
	else if (req->which_case == SLIPWAY__V1__GET_CHECKPOINT_REQUEST__WHICH_SIZE && req->size > 0)
		size = req->size;
	else
		return rpc_errorf(ctx, SW_EINVAL, "set latest = true or a size > 0");
	Slipway__V1__Checkpoint *cp = NULL;
	if ((rc = aud_checkpoint_get(a, size, &cp, err, sizeof err)) != 0)
		return rpc_errorf(ctx, rc, "%s", err);
	Slipway__V1__Checkpoint *kept = keep_checkpoint(ctx, cp);
	if (kept == NULL)
		return SW_ENOMEM;
	copy_checkpoint((void *)respm, kept);
	return 0;
}

static int sign_checkpoint(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
			   ProtobufCMessage *respm, void *data)
{
	(void)reqm;
	struct aud *a = data;
	char err[256];
	int rc = can_read(a, ctx, "checkpoint");
	if (rc != 0)
		return rc;
	Slipway__V1__Checkpoint *cp = NULL;
	if ((rc = aud_checkpoint_sign(a, &cp, err, sizeof err)) != 0)
		return rpc_errorf(ctx, rc, "%s", err);
	Slipway__V1__Checkpoint *kept = keep_checkpoint(ctx, cp);
	if (kept == NULL)
		return SW_ENOMEM;
	copy_checkpoint((void *)respm, kept);
	return 0;
}

static int list_checkpoints(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
			    ProtobufCMessage *respm, void *data)
{
	struct aud *a = data;
	const Slipway__V1__ListCheckpointsRequest *req = (const void *)reqm;
	Slipway__V1__ListCheckpointsResponse *resp = (void *)respm;
	char err[256], nums[2][24];
	int rc = can_read(a, ctx, "read");
	if (rc != 0)
		return rc;
	long long from = (long long)req->from_size;
	if (req->page_token[0] != '\0' && (cfg_parse_ll(req->page_token, &from) != 0 || from < 0))
		return rpc_errorf(ctx, SW_EINVAL, "page_token is not one this service issued");
	int limit = req->page_size == 0 ? PAGE_DEFAULT
		    : req->page_size > PAGE_MAX ? PAGE_MAX
						  : (int)req->page_size;
	struct db_conn *c = NULL;
	PGresult *r = NULL;
	if ((rc = db_acquire(a->db, &c, 5000, err, sizeof err)) != 0)
		return rpc_errorf(ctx, rc, "%s", err);
	const char *v[2] = { db_i64(nums[0], from), db_i64(nums[1], limit + 1) };
	rc = db_q(c,
		  "SELECT size, root, note, signed_ms FROM checkpoints WHERE size >= $1"
		  " ORDER BY size LIMIT $2",
		  2, v, &r, err, sizeof err);
	db_release(a->db, c);
	if (rc != 0)
		return rpc_errorf(ctx, rc, "%s", err);
	int rows = PQntuples(r);
	int n = rows > limit ? limit : rows;
	resp->checkpoints = rpc_alloc(ctx, (size_t)(n ? n : 1) * sizeof *resp->checkpoints);
	for (int i = 0; resp->checkpoints && i < n; i++) {
		Slipway__V1__Checkpoint *cp = rpc_alloc(ctx, sizeof *cp);
		uint8_t *root = rpc_alloc(ctx, MERKLE_HASH);
		if (cp == NULL || root == NULL)
			break;
		slipway__v1__checkpoint__init(cp);
		cp->size = (uint64_t)db_int64(r, i, 0);
		db_bytea(r, i, 1, root, MERKLE_HASH);
		cp->root_hash.data = root;
		cp->root_hash.len = MERKLE_HASH;
		cp->note = rpc_strdup(ctx, db_text(r, i, 2));
		cp->origin = a->c.origin;
		cp->signed_unix_ms = db_int64(r, i, 3);
		resp->checkpoints[resp->n_checkpoints++] = cp;
	}
	if (rows > limit) {
		char next[24];
		resp->next_page_token = rpc_strdup(ctx, db_i64(next, db_int64(r, limit, 0)));
	}
	PQclear(r);
	return resp->checkpoints ? 0 : SW_ENOMEM;
}

static void *arena_pb_alloc(void *d, size_t n)
{
	return rpc_alloc(d, n);
}

static void noop_free(void *d, void *p)
{
	(void)d;
	(void)p;
}

/* Copies a page's entries into call memory for a unary response. */
static Slipway__V1__AuditEntry *dup_entry(struct rpc_ctx *ctx, const Slipway__V1__AuditEntry *e)
{
	size_t len = slipway__v1__audit_entry__get_packed_size(e);
	uint8_t *buf = malloc(len ? len : 1);
	if (buf == NULL)
		return NULL;
	slipway__v1__audit_entry__pack(e, buf);
	/* Unpack into the call arena through a protobuf-c allocator. */
	Slipway__V1__AuditEntry *out = NULL;
	ProtobufCAllocator al = { .alloc = arena_pb_alloc, .free = noop_free, .allocator_data = ctx };
	out = slipway__v1__audit_entry__unpack(&al, len, buf);
	free(buf);
	return out;
}

/* A filter string: at most max bytes of printable ASCII, so a search
 * cannot carry control characters into the query or the logs. */
static int filter_text(struct rpc_ctx *ctx, const char *name, const char *v, size_t max)
{
	size_t n = v ? strlen(v) : 0;
	if (n > max)
		return rpc_errorf(ctx, SW_EINVAL, "filter.%s: at most %zu characters", name, max);
	for (size_t i = 0; i < n; i++)
		if (v[i] < 0x20 || v[i] > 0x7e)
			return rpc_errorf(ctx, SW_EINVAL,
					  "filter.%s: only printable ASCII characters", name);
	return 0;
}

/* Checks a ListEntries/ExportEntries filter; a bad one gets
 * INVALID_ARGUMENT and nothing is read. NULL is "no filter". */
static int check_filter(struct rpc_ctx *ctx, const Slipway__V1__EntryFilter *f)
{
	int rc;
	if (f == NULL)
		return 0;
	if (f->outcome < 0 || f->outcome > SLIPWAY__V1__OUTCOME__OUTCOME_DENIED)
		return rpc_errorf(ctx, SW_EINVAL, "filter.outcome: unknown value %d", (int)f->outcome);
	if (f->from_unix_ms < 0 || f->to_unix_ms < 0)
		return rpc_errorf(ctx, SW_EINVAL, "filter times are unix milliseconds, not negative");
	if (f->from_unix_ms > 0 && f->to_unix_ms > 0 && f->from_unix_ms >= f->to_unix_ms)
		return rpc_errorf(ctx, SW_EINVAL,
				  "filter.from_unix_ms must be before filter.to_unix_ms");
	if ((rc = filter_text(ctx, "actor", f->actor, 512)) != 0 ||
	    (rc = filter_text(ctx, "service", f->service, 64)) != 0 ||
	    (rc = filter_text(ctx, "action", f->action, 128)) != 0 ||
	    (rc = filter_text(ctx, "resource_prefix", f->resource_prefix, 512)) != 0 ||
	    (rc = filter_text(ctx, "request_id", f->request_id, 128)) != 0 ||
	    (rc = filter_text(ctx, "app", f->app, 128)) != 0 ||
	    (rc = filter_text(ctx, "environment", f->environment, 128)) != 0)
		return rc;
	return 0;
}

static int list_entries(struct rpc_ctx *ctx, const ProtobufCMessage *reqm, ProtobufCMessage *respm,
			void *data)
{
	struct aud *a = data;
	const Slipway__V1__ListEntriesRequest *req = (const void *)reqm;
	Slipway__V1__ListEntriesResponse *resp = (void *)respm;
	char err[256];
	int rc = can_read(a, ctx, "read");
	if (rc != 0)
		return rc;
	long long from = 0;
	if (req->page_token[0] != '\0' && (cfg_parse_ll(req->page_token, &from) != 0 || from < 0))
		return rpc_errorf(ctx, SW_EINVAL, "page_token is not one this service issued");
	const Slipway__V1__EntryFilter *f = req->filter;
	if ((rc = check_filter(ctx, f)) != 0)
		return rc;
	int limit = req->page_size == 0 ? PAGE_DEFAULT
		    : req->page_size > PAGE_MAX ? PAGE_MAX
						  : (int)req->page_size;
	struct aud_page pg;
	if ((rc = aud_read_page(a, (uint64_t)from, 0, f, limit + 1, &pg, err, sizeof err)) != 0)
		return rpc_errorf(ctx, rc, "%s", err);
	size_t n = pg.n > (size_t)limit ? (size_t)limit : pg.n;
	resp->entries = rpc_alloc(ctx, (n ? n : 1) * sizeof *resp->entries);
	for (size_t i = 0; resp->entries && i < n; i++) {
		resp->entries[i] = dup_entry(ctx, pg.entries[i]);
		if (resp->entries[i] == NULL)
			break;
		resp->n_entries++;
	}
	if (pg.n > (size_t)limit) {
		char next[24];
		resp->next_page_token = rpc_strdup(ctx, db_i64(next, (int64_t)pg.entries[limit]->seq));
	}
	aud_page_free(&pg);
	return resp->n_entries == n ? 0 : SW_ENOMEM;
}

static int export_entries(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
			  ProtobufCMessage *respm, void *data)
{
	(void)respm;
	struct aud *a = data;
	const Slipway__V1__ExportEntriesRequest *req = (const void *)reqm;
	char err[256];
	int rc = can_read(a, ctx, "read");
	if (rc != 0)
		return rc;
	if ((rc = check_filter(ctx, req->filter)) != 0)
		return rc;
	uint64_t to = req->to_seq;
	if (to == 0 && (rc = aud_size(a, &to, err, sizeof err)) != 0)
		return rpc_errorf(ctx, rc, "%s", err);
	if (req->from_seq > to)
		return rpc_errorf(ctx, SW_ERANGE, "from_seq %llu is after to_seq %llu",
				  (unsigned long long)req->from_seq, (unsigned long long)to);
	uint64_t next = req->from_seq;
	while (next < to) {
		if (rpc_cancelled(ctx))
			return rpc_errorf(ctx, SW_ECANCELLED, "export cancelled");
		struct aud_page pg;
		if ((rc = aud_read_page(a, next, to, req->filter, EXPORT_CHUNK, &pg, err,
					sizeof err)) != 0)
			return rpc_errorf(ctx, rc, "%s", err);
		if (pg.n == 0) {
			aud_page_free(&pg);
			break;
		}
		Slipway__V1__ExportEntriesResponse msg = SLIPWAY__V1__EXPORT_ENTRIES_RESPONSE__INIT;
		msg.n_entries = pg.n;
		msg.entries = pg.entries;
		rc = rpc_send(ctx, &msg.base);
		next = pg.next;
		aud_page_free(&pg);
		if (rc != 0)
			return rpc_errorf(ctx, rc, "export interrupted at seq %llu",
					  (unsigned long long)next);
	}
	return 0;
}

static int get_entry(struct rpc_ctx *ctx, const ProtobufCMessage *reqm, ProtobufCMessage *respm,
		     void *data)
{
	struct aud *a = data;
	const Slipway__V1__GetEntryRequest *req = (const void *)reqm;
	Slipway__V1__GetEntryResponse *resp = (void *)respm;
	char err[256];
	int rc = can_read(a, ctx, "read");
	if (rc != 0)
		return rc;
	struct aud_page pg;
	if ((rc = aud_read_page(a, req->seq, req->seq + 1, NULL, 1, &pg, err, sizeof err)) != 0)
		return rpc_errorf(ctx, rc, "%s", err);
	if (pg.n == 0) {
		aud_page_free(&pg);
		return rpc_errorf(ctx, SW_ENOTFOUND, "no entry with seq %llu",
				  (unsigned long long)req->seq);
	}
	resp->entry = dup_entry(ctx, pg.entries[0]);
	aud_page_free(&pg);
	if (resp->entry == NULL)
		return SW_ENOMEM;
	/* Prove it against the latest checkpoint, signing one first when the
	 * entry is newer than every checkpoint. */
	Slipway__V1__Checkpoint *cp = NULL;
	rc = aud_checkpoint_get(a, 0, &cp, err, sizeof err);
	if (rc == 0 && cp->size <= req->seq) {
		aud_checkpoint_free(cp);
		cp = NULL;
		rc = aud_checkpoint_sign(a, &cp, err, sizeof err);
	} else if (rc == SW_ENOTFOUND) {
		rc = aud_checkpoint_sign(a, &cp, err, sizeof err);
	}
	if (rc != 0)
		return rpc_errorf(ctx, rc, "%s", err);
	Slipway__V1__Checkpoint *kept = keep_checkpoint(ctx, cp);
	Slipway__V1__InclusionProof *proof = rpc_alloc(ctx, sizeof *proof);
	if (kept == NULL || proof == NULL)
		return SW_ENOMEM;
	resp->checkpoint = kept;
	if ((rc = build_inclusion(ctx, a, req->seq, kept->size, proof)) != 0)
		return rc;
	resp->proof = proof;
	return 0;
}

static int get_log_info(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
			ProtobufCMessage *respm, void *data)
{
	(void)reqm;
	struct aud *a = data;
	Slipway__V1__GetLogInfoResponse *resp = (void *)respm;
	char err[256];
	int rc = can_read(a, ctx, "read");
	if (rc != 0)
		return rc;
	uint64_t size = 0;
	if ((rc = aud_size(a, &size, err, sizeof err)) != 0)
		return rpc_errorf(ctx, rc, "%s", err);
	resp->origin = a->c.origin;
	resp->key_name = a->verifier.name;
	resp->verifier_key = a->verifier_text;
	resp->size = size;
	return 0;
}

static const struct rpc_method methods[] = {
	{ "Append", RPC_UNARY, RPC_INLINE, append, RPC_PEER_SERVICE },
	{ "AppendBatch", RPC_UNARY, 0, append_batch, RPC_PEER_SERVICE },
	{ "GetEntry", RPC_UNARY, 0, get_entry, RPC_PEER_USER | RPC_PEER_SERVICE },
	{ "ListEntries", RPC_UNARY, 0, list_entries, RPC_PEER_USER | RPC_PEER_SERVICE },
	{ "ExportEntries", RPC_SERVER_STREAM, 0, export_entries, RPC_PEER_USER | RPC_PEER_SERVICE },
	{ "GetInclusionProof", RPC_UNARY, 0, get_inclusion_proof,
	  RPC_PEER_USER | RPC_PEER_SERVICE },
	{ "GetConsistencyProof", RPC_UNARY, 0, get_consistency_proof,
	  RPC_PEER_USER | RPC_PEER_SERVICE },
	{ "GetCheckpoint", RPC_UNARY, 0, get_checkpoint, RPC_PEER_USER | RPC_PEER_SERVICE },
	{ "ListCheckpoints", RPC_UNARY, 0, list_checkpoints, RPC_PEER_USER | RPC_PEER_SERVICE },
	{ "SignCheckpoint", RPC_UNARY, 0, sign_checkpoint, RPC_PEER_USER | RPC_PEER_SERVICE },
	{ "GetLogInfo", RPC_UNARY, 0, get_log_info, RPC_PEER_USER | RPC_PEER_SERVICE },
};

int aud_rpc_register(struct aud *a, struct rpc_server *srv, char *err, size_t errlen)
{
	return rpc_server_add_service(srv, &slipway__v1__audit__descriptor, methods,
				      sizeof methods / sizeof methods[0], a, err, errlen);
}
