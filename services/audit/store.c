/*
 * store.c - the audit log in PostgreSQL.
 *
 * Appends go through one batcher thread: concurrent requests queue up and
 * are written together in one transaction (group commit, durable with
 * synchronous_commit = on). Inside it the head row is locked (so replicas
 * append one batch at a time), retried event ids are answered with their
 * original sequence numbers, and for each new entry the chain hash, the
 * Merkle leaf and every complete subtree the leaf finishes are computed in
 * order and inserted. A request is acknowledged only after the commit.
 */
#include "audit.h"
#include "auditlog.h"
#include "err.h"
#include "hash.h"
#include "log.h"
#include "clock.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>


/* ---- a small arena for per-batch and per-page allocations ---- */

struct aud_block {
	struct aud_block *next;
	size_t used, cap;
	_Alignas(16) unsigned char data[];
};

static void *arena_alloc(struct aud_block **head, size_t n)
{
	n = (n + 15) & ~(size_t)15;
	struct aud_block *b = *head;
	if (b == NULL || b->cap - b->used < n) {
		size_t cap = n > 65536 ? n : 65536;
		b = malloc(sizeof *b + cap);
		if (b == NULL)
			return NULL;
		b->next = *head;
		b->used = 0;
		b->cap = cap;
		*head = b;
	}
	void *p = b->data + b->used;
	b->used += n;
	return p;
}

static char *arena_strdup(struct aud_block **head, const char *s)
{
	size_t n = strlen(s);
	char *d = arena_alloc(head, n + 1);
	if (d != NULL)
		memcpy(d, s, n + 1);
	return d;
}

static void arena_free(struct aud_block *b)
{
	while (b != NULL) {
		struct aud_block *next = b->next;
		free(b);
		b = next;
	}
}

/* ---- stored nodes ---- */

static int fill_plan_conn(struct db_conn *c, struct merkle_plan *p, char *err, size_t errlen)
{
	if (p->n == 0)
		return 0;
	char lv[MERKLE_MAX_PLAN * 4 + 4], ix[MERKLE_MAX_PLAN * 21 + 4];
	size_t lo = 0, io = 0;
	lv[lo++] = '{';
	ix[io++] = '{';
	for (size_t i = 0; i < p->n; i++) {
		lo += (size_t)snprintf(lv + lo, sizeof lv - lo, "%s%u", i ? "," : "", p->nodes[i].level);
		io += (size_t)snprintf(ix + io, sizeof ix - io, "%s%llu", i ? "," : "",
				       (unsigned long long)p->nodes[i].index);
	}
	snprintf(lv + lo, sizeof lv - lo, "}");
	snprintf(ix + io, sizeof ix - io, "}");
	PGresult *r = NULL;
	const char *v[2] = { lv, ix };
	int rc = db_q(c,
		      "SELECT t.level, t.idx, t.hash FROM tree_nodes t"
		      " JOIN unnest($1::smallint[], $2::bigint[]) AS w(level, idx)"
		      " ON t.level = w.level AND t.idx = w.idx",
		      2, v, &r, err, errlen);
	if (rc != 0)
		return rc;
	size_t found = 0;
	for (int row = 0; row < PQntuples(r); row++) {
		int level = (int)db_int64(r, row, 0);
		uint64_t idx = (uint64_t)db_int64(r, row, 1);
		for (size_t i = 0; i < p->n; i++) {
			if (p->nodes[i].level == level && p->nodes[i].index == idx) {
				if (db_bytea(r, row, 2, p->nodes[i].hash, MERKLE_HASH) != MERKLE_HASH) {
					PQclear(r);
					return sw_errf(err, errlen, SW_EDATALOSS,
						       "stored tree node (%d, %llu) is damaged", level,
						       (unsigned long long)idx);
				}
				found++;
			}
		}
	}
	PQclear(r);
	if (found != p->n)
		return sw_errf(err, errlen, SW_EDATALOSS,
			       "the stored Merkle tree is missing %zu of %zu nodes", p->n - found, p->n);
	return 0;
}

int aud_fill_plan(struct aud *a, struct merkle_plan *p, char *err, size_t errlen)
{
	struct db_conn *c = NULL;
	int rc = db_acquire(a->db, &c, 5000, err, errlen);
	if (rc != 0)
		return rc;
	rc = fill_plan_conn(c, p, err, errlen);
	db_release(a->db, c);
	return rc;
}

int aud_root(struct aud *a, uint64_t size, uint8_t root[MERKLE_HASH], char *err, size_t errlen)
{
	struct merkle_plan p;
	int rc = merkle_plan_root(size, &p);
	if (rc == 0)
		rc = aud_fill_plan(a, &p, err, errlen);
	if (rc == 0)
		rc = merkle_root(size, &p, root);
	return rc;
}

int aud_size(struct aud *a, uint64_t *size, char *err, size_t errlen)
{
	struct db_conn *c = NULL;
	PGresult *r = NULL;
	int rc = db_acquire(a->db, &c, 5000, err, errlen);
	if (rc != 0)
		return rc;
	rc = db_q(c, "SELECT size FROM head WHERE id = 1", 0, NULL, &r, err, errlen);
	if (rc == 0)
		*size = (uint64_t)db_int64(r, 0, 0);
	PQclear(r);
	db_release(a->db, c);
	return rc;
}

/* ---- the append pipeline ---- */

struct row {
	const Slipway__V1__AuditEvent *ev;
	uint64_t seq;
	int64_t logged;
	char *details;
	uint8_t prev[AUDITLOG_HASH], hash[AUDITLOG_HASH];
};

struct batch {
	struct aud *a;
	struct aud_job *jobs;
	/* rebuilt on every attempt */
	struct aud_block *arena;
	struct row *rows;
	size_t nrows;
	struct merkle_node *nodes;
	size_t nnodes, capnodes;
	struct merkle_range range;
	uint64_t size, old_size;
	uint8_t last[AUDITLOG_HASH];
	int failed_nodes;
};

static void collect_node(const struct merkle_node *n, void *arg)
{
	struct batch *b = arg;
	if (b->nnodes == b->capnodes) {
		size_t cap = b->capnodes ? b->capnodes * 2 : 256;
		struct merkle_node *nn = realloc(b->nodes, cap * sizeof *nn);
		if (nn == NULL) {
			b->failed_nodes = 1;
			return;
		}
		b->nodes = nn;
		b->capnodes = cap;
	}
	b->nodes[b->nnodes++] = *n;
}

static int cmp_str(const void *x, const void *y)
{
	return strcmp(*(const char *const *)x, *(const char *const *)y);
}

/* Event ids already in the log (event id -> seq, hash). */
struct known {
	const char *id;
	uint64_t seq;
	uint8_t hash[AUDITLOG_HASH];
};

static int cmp_known(const void *x, const void *y)
{
	return strcmp(((const struct known *)x)->id, ((const struct known *)y)->id);
}

static struct known *find_known(struct known *k, size_t n, const char *id)
{
	struct known key = { .id = id };
	return n ? bsearch(&key, k, n, sizeof *k, cmp_known) : NULL;
}

/* The write: every entry, every finished tree node and the new head in ONE
 * statement, so it commits (one WAL flush) or fails whole without an
 * explicit transaction. The primary keys on entries.seq and tree_nodes make
 * a concurrent writer's batch conflict (SW_EEXIST, retried); the final
 * division by the number of head rows updated aborts the statement when
 * the head moved under us (a run-time error, not one the planner folds). */
static int write_batch(struct db_conn *c, struct batch *b, char *err, size_t errlen)
{
	enum { EC = 13, NC = 3 };
	size_t np = b->nrows * EC + b->nnodes * NC + 3;
	size_t cap = 512 + b->nrows * EC * 9 + b->nnodes * NC * 9;
	char *sql = malloc(cap);
	const char **vals = calloc(np, sizeof *vals);
	int *lens = calloc(np, sizeof *lens), *fmts = calloc(np, sizeof *fmts);
	char (*nums)[24] = calloc(b->nrows * 4 + b->nnodes * 2 + 2, sizeof *nums);
	int rc = 0;
	if (!sql || !vals || !lens || !fmts || !nums) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		goto out;
	}
	size_t k = 0, off = 0, nn = 0;
	off += (size_t)snprintf(sql + off, cap - off,
				"WITH e AS (INSERT INTO entries (seq, event_id, actor, service, action,"
				" resource, outcome, request_id, time_ms, logged_ms, details, prev_hash,"
				" entry_hash) VALUES ");
	for (size_t i = 0; i < b->nrows; i++) {
		const struct row *r = &b->rows[i];
		off += (size_t)snprintf(sql + off, cap - off, "%s(", i ? "," : "");
		for (int col = 0; col < EC; col++)
			off += (size_t)snprintf(sql + off, cap - off, "%s$%zu", col ? "," : "",
						k + (size_t)col + 1);
		off += (size_t)snprintf(sql + off, cap - off, ")");
		vals[k + 0] = db_i64(nums[nn++], (int64_t)r->seq);
		vals[k + 1] = r->ev->event_id;
		vals[k + 2] = r->ev->actor;
		vals[k + 3] = r->ev->service;
		vals[k + 4] = r->ev->action;
		vals[k + 5] = r->ev->resource;
		vals[k + 6] = db_i64(nums[nn++], r->ev->outcome);
		vals[k + 7] = r->ev->request_id;
		vals[k + 8] = db_i64(nums[nn++], r->ev->time_unix_ms);
		vals[k + 9] = db_i64(nums[nn++], r->logged);
		vals[k + 10] = r->details;
		vals[k + 11] = (const char *)r->prev;
		lens[k + 11] = AUDITLOG_HASH;
		fmts[k + 11] = 1;
		vals[k + 12] = (const char *)r->hash;
		lens[k + 12] = AUDITLOG_HASH;
		fmts[k + 12] = 1;
		k += EC;
	}
	off += (size_t)snprintf(sql + off, cap - off, "), n AS (INSERT INTO tree_nodes (level, idx, hash) VALUES ");
	for (size_t i = 0; i < b->nnodes; i++) {
		const struct merkle_node *nd = &b->nodes[i];
		off += (size_t)snprintf(sql + off, cap - off, "%s($%zu,$%zu,$%zu)", i ? "," : "", k + 1,
					k + 2, k + 3);
		vals[k] = db_i64(nums[nn++], nd->level);
		vals[k + 1] = db_i64(nums[nn++], (int64_t)nd->index);
		vals[k + 2] = (const char *)nd->hash;
		lens[k + 2] = MERKLE_HASH;
		fmts[k + 2] = 1;
		k += NC;
	}
	snprintf(sql + off, cap - off,
		 "), h AS (UPDATE head SET size = $%zu, last_hash = $%zu WHERE id = 1 AND size = $%zu"
		 " RETURNING 1) SELECT 1 / (SELECT count(*)::int FROM h)",
		 k + 1, k + 2, k + 3);
	vals[k] = db_i64(nums[nn++], (int64_t)b->size);
	vals[k + 1] = (const char *)b->last;
	lens[k + 1] = AUDITLOG_HASH;
	fmts[k + 1] = 1;
	vals[k + 2] = db_i64(nums[nn++], (int64_t)b->old_size);
	k += 3;
	rc = db_exec(c, sql, (int)k, vals, lens, fmts, 0, NULL, err, errlen);
	if (rc == SW_EINVAL && strstr(err, "22012") != NULL)
		rc = sw_errf(err, errlen, SW_EABORTED, "the log head moved during the append");
out:
	free(sql);
	free(vals);
	free(lens);
	free(fmts);
	free(nums);
	return rc;
}

/* One attempt at a batch: read the head and the retried ids (one round
 * trip), build the entries, write them (one round trip). */
static int append_once(struct aud *a, struct db_conn *c, struct batch *b, char *err, size_t errlen)
{
	PGresult *r = NULL;
	int rc;
	size_t total = 0;
	const char **ids = NULL;
	struct known *known = NULL;
	size_t nknown = 0;

	arena_free(b->arena);
	b->arena = NULL;
	b->nrows = 0;
	b->nnodes = 0;
	b->failed_nodes = 0;
	for (struct aud_job *j = b->jobs; j; j = j->next)
		total += j->n;
	ids = calloc(total, sizeof *ids);
	free(b->rows);
	b->rows = calloc(total, sizeof *b->rows);
	if (ids == NULL || b->rows == NULL) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		goto out;
	}
	size_t k = 0, alen = 3;
	for (struct aud_job *j = b->jobs; j; j = j->next)
		for (size_t i = 0; i < j->n; i++) {
			ids[k++] = j->events[i]->event_id;
			alen += strlen(j->events[i]->event_id) + 3;
		}
	qsort(ids, total, sizeof *ids, cmp_str);
	char *arr = arena_alloc(&b->arena, alen);
	if (arr == NULL) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		goto out;
	}
	size_t off = 0;
	arr[off++] = '{';
	for (size_t i = 0; i < total; i++) {
		if (i > 0 && strcmp(ids[i], ids[i - 1]) == 0)
			continue;
		/* Ids are [A-Za-z0-9._:-]: quoting makes "NULL" a string. */
		off += (size_t)snprintf(arr + off, alen - off, "%s\"%s\"", off > 1 ? "," : "", ids[i]);
	}
	arr[off++] = '}';
	arr[off] = '\0';
	rc = db_q(c,
		  "SELECT h.size, h.last_hash, e.event_id, e.seq, e.entry_hash FROM head h"
		  " LEFT JOIN entries e ON e.event_id = ANY($1::text[]) WHERE h.id = 1",
		  1, (const char *[]){ arr }, &r, err, errlen);
	if (rc != 0)
		goto out;
	if (PQntuples(r) < 1 || db_bytea(r, 0, 1, b->last, AUDITLOG_HASH) != AUDITLOG_HASH) {
		rc = sw_errf(err, errlen, SW_EDATALOSS, "the log head is missing or damaged");
		goto out;
	}
	b->size = b->old_size = (uint64_t)db_int64(r, 0, 0);
	known = arena_alloc(&b->arena, (size_t)PQntuples(r) * sizeof *known);
	for (int i = 0; known && i < PQntuples(r); i++) {
		if (db_isnull(r, i, 2))
			continue;
		known[nknown].id = arena_strdup(&b->arena, db_text(r, i, 2));
		known[nknown].seq = (uint64_t)db_int64(r, i, 3);
		db_bytea(r, i, 4, known[nknown].hash, AUDITLOG_HASH);
		nknown++;
	}
	PQclear(r);
	r = NULL;
	if (known == NULL) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		goto out;
	}
	qsort(known, nknown, sizeof *known, cmp_known);

	/* The frontier of the tree at the current size (cached in memory). */
	if (a->range_valid && a->range.size == b->size) {
		b->range = a->range;
	} else {
		struct merkle_plan p;
		if ((rc = merkle_plan_root(b->size, &p)) != 0 ||
		    (rc = fill_plan_conn(c, &p, err, errlen)) != 0 ||
		    (rc = merkle_range_load(&b->range, b->size, &p)) != 0)
			goto out;
	}

	int64_t logged = clock_wall_ms();
	uint8_t canon[AUDITLOG_CANON_MAX];
	for (struct aud_job *j = b->jobs; j; j = j->next) {
		for (size_t i = 0; i < j->n; i++) {
			const Slipway__V1__AuditEvent *ev = j->events[i];
			Slipway__V1__AppendResponse *res = &j->results[i];
			struct known *kn = find_known(known, nknown, ev->event_id);
			if (kn != NULL) {
				res->seq = kn->seq;
				memcpy(j->hashes[i], kn->hash, AUDITLOG_HASH);
				res->duplicate = 1;
				continue;
			}
			/* A repeat inside this batch answers like a retry. */
			int repeat = 0;
			for (size_t q = 0; q < b->nrows && !repeat; q++)
				if (strcmp(b->rows[q].ev->event_id, ev->event_id) == 0) {
					res->seq = b->rows[q].seq;
					memcpy(j->hashes[i], b->rows[q].hash, AUDITLOG_HASH);
					res->duplicate = 1;
					repeat = 1;
				}
			if (repeat)
				continue;
			struct row *row = &b->rows[b->nrows];
			const char *keys[AUDITLOG_MAX_DETAILS], *values[AUDITLOG_MAX_DETAILS];
			char *dj = aud_details_json(ev, keys, values);
			if (dj == NULL) {
				rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
				goto out;
			}
			row->details = arena_strdup(&b->arena, dj);
			free(dj);
			row->ev = ev;
			row->seq = b->size;
			row->logged = logged;
			struct auditlog_entry e = {
				.seq = row->seq, .event_id = ev->event_id, .actor = ev->actor,
				.service = ev->service, .action = ev->action, .resource = ev->resource,
				.request_id = ev->request_id, .outcome = (int)ev->outcome,
				.time_unix_ms = ev->time_unix_ms, .logged_unix_ms = logged,
				.ndetails = ev->n_details, .keys = keys, .values = values,
			};
			size_t clen;
			uint8_t leaf[MERKLE_HASH];
			if (row->details == NULL || auditlog_canonical(&e, canon, sizeof canon, &clen) != 0) {
				rc = sw_errf(err, errlen, SW_EINTERNAL, "cannot encode entry");
				goto out;
			}
			memcpy(row->prev, b->last, AUDITLOG_HASH);
			auditlog_hashes(b->last, canon, clen, row->hash, leaf);
			memcpy(b->last, row->hash, AUDITLOG_HASH);
			merkle_range_append(&b->range, leaf, collect_node, b);
			res->seq = row->seq;
			memcpy(j->hashes[i], row->hash, AUDITLOG_HASH);
			res->duplicate = 0;
			b->size++;
			b->nrows++;
		}
	}
	if (b->failed_nodes) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		goto out;
	}
	if (b->nrows > 0)
		rc = write_batch(c, b, err, errlen);
out:
	PQclear(r);
	free(ids);
	return rc;
}

/* Writes a batch, retrying when another replica appended concurrently. */
static int append_batch(struct aud *a, struct batch *b, char *err, size_t errlen)
{
	struct db_conn *c = NULL;
	int rc = db_acquire(a->db, &c, 10000, err, errlen);
	if (rc != 0)
		return rc;
	for (int attempt = 0; attempt < 5; attempt++) {
		rc = append_once(a, c, b, err, errlen);
		if (rc != SW_EEXIST && rc != SW_EABORTED)
			break;
		a->range_valid = 0; /* someone else moved the head */
	}
	db_release(a->db, c);
	return rc == SW_EEXIST ? sw_errf(err, errlen, SW_EABORTED, "concurrent appends kept conflicting")
			       : rc;
}

/* ---- the batcher ---- */

static void *batcher_main(void *arg)
{
	struct aud *a = arg;
	char err[256];
	for (;;) {
		pthread_mutex_lock(&a->mu);
		while (a->head == NULL && !a->stopping)
			pthread_cond_wait(&a->cv, &a->mu);
		if (a->head == NULL && a->stopping) {
			pthread_mutex_unlock(&a->mu);
			return NULL;
		}
		/* Take queued jobs up to the batch size (at least one). */
		struct aud_job *first = a->head, *last = a->head;
		long long events = (long long)first->n;
		while (last->next != NULL && events + (long long)last->next->n <= a->c.batch_max) {
			last = last->next;
			events += (long long)last->n;
		}
		a->head = last->next;
		if (a->head == NULL)
			a->tail = NULL;
		last->next = NULL;
		pthread_mutex_unlock(&a->mu);

		struct batch b = { .a = a, .jobs = first };
		int rc;
		if (atomic_load(&a->integrity_failed))
			rc = sw_errf(err, sizeof err, SW_EPRECOND,
				     "the audit log failed its integrity check; appends are stopped");
		else
			rc = append_batch(a, &b, err, sizeof err);
		if (rc == 0) {
			a->range = b.range;
			a->range_valid = 1;
		} else {
			a->range_valid = 0;
			if (rc != SW_EPRECOND)
				log_warn("append batch failed", "events=%lld error=%s", events, err);
		}
		pthread_mutex_lock(&a->mu);
		a->pending -= events;
		pthread_mutex_unlock(&a->mu);
		/* Acknowledge only now, after the commit. */
		for (struct aud_job *j = first; j;) {
			struct aud_job *next = j->next;
			if (rc == 0)
				for (size_t i = 0; i < j->n; i++) {
					j->results[i].entry_hash.data = j->hashes[i];
					j->results[i].entry_hash.len = AUDITLOG_HASH;
				}
			j->done(j->arg, rc, rc ? err : "");
			j = next;
		}
		arena_free(b.arena);
		free(b.rows);
		free(b.nodes);
	}
}

int aud_append(struct aud *a, struct aud_job *j, Slipway__V1__AuditEvent **events, size_t n,
	       Slipway__V1__AppendResponse *results, uint8_t (*hashes)[32], aud_done_fn done,
	       void *arg, char *err, size_t errlen)
{
	memset(j, 0, sizeof *j);
	j->events = events;
	j->n = n;
	j->results = results;
	j->hashes = hashes;
	j->done = done;
	j->arg = arg;
	pthread_mutex_lock(&a->mu);
	if (a->stopping) {
		pthread_mutex_unlock(&a->mu);
		return sw_errf(err, errlen, SW_EUNAVAIL, "the audit service is shutting down");
	}
	if (a->pending + (long long)n > a->c.max_pending) {
		long long p = a->pending;
		pthread_mutex_unlock(&a->mu);
		return sw_errf(err, errlen, SW_ELIMIT, "too many appends waiting (%lld); retry later", p);
	}
	a->pending += (long long)n;
	if (a->tail)
		a->tail->next = j;
	else
		a->head = j;
	a->tail = j;
	pthread_cond_signal(&a->cv);
	pthread_mutex_unlock(&a->mu);
	return 0;
}

int aud_store_start(struct aud *a, char *err, size_t errlen)
{
	pthread_mutex_init(&a->mu, NULL);
	pthread_cond_init(&a->cv, NULL);
	if (pthread_create(&a->batcher, NULL, batcher_main, a) != 0)
		return sw_errf(err, errlen, SW_EINTERNAL, "cannot start the batcher");
	return 0;
}

void aud_store_stop(struct aud *a)
{
	pthread_mutex_lock(&a->mu);
	a->stopping = 1;
	pthread_cond_signal(&a->cv);
	pthread_mutex_unlock(&a->mu);
	pthread_join(a->batcher, NULL);
	pthread_mutex_destroy(&a->mu);
	pthread_cond_destroy(&a->cv);
}

/* ---- reads ---- */

static int entry_from_row(struct aud_page *pg, PGresult *r, int row, Slipway__V1__AuditEntry **out,
			  char *err, size_t errlen)
{
	struct aud_block **ar = &pg->blocks;
	Slipway__V1__AuditEntry *e = arena_alloc(ar, sizeof *e);
	Slipway__V1__AuditEvent *ev = arena_alloc(ar, sizeof *ev);
	uint8_t *hashes = arena_alloc(ar, 2 * AUDITLOG_HASH);
	if (!e || !ev || !hashes)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	slipway__v1__audit_entry__init(e);
	slipway__v1__audit_event__init(ev);
	e->seq = (uint64_t)db_int64(r, row, 0);
	ev->event_id = arena_strdup(ar, db_text(r, row, 1));
	ev->actor = arena_strdup(ar, db_text(r, row, 2));
	ev->service = arena_strdup(ar, db_text(r, row, 3));
	ev->action = arena_strdup(ar, db_text(r, row, 4));
	ev->resource = arena_strdup(ar, db_text(r, row, 5));
	ev->outcome = (Slipway__V1__Outcome)db_int64(r, row, 6);
	ev->request_id = arena_strdup(ar, db_text(r, row, 7));
	ev->time_unix_ms = db_int64(r, row, 8);
	e->logged_unix_ms = db_int64(r, row, 9);
	if (!ev->event_id || !ev->actor || !ev->service || !ev->action || !ev->resource ||
	    !ev->request_id)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	/* Details as stored; a damaged value is returned as it is, so that a
	 * verifier sees the damage instead of a repaired copy. */
	json_error_t je;
	json_t *d = json_loads(db_text(r, row, 10), 0, &je);
	if (json_is_array(d) && json_array_size(d) <= AUDITLOG_MAX_DETAILS) {
		size_t n = json_array_size(d);
		ev->details = arena_alloc(ar, (n ? n : 1) * sizeof *ev->details);
		for (size_t i = 0; ev->details && i < n; i++) {
			json_t *pair = json_array_get(d, i);
			Slipway__V1__KeyValue *kv = arena_alloc(ar, sizeof *kv);
			if (kv == NULL)
				break;
			slipway__v1__key_value__init(kv);
			kv->key = arena_strdup(ar, json_string_value(json_array_get(pair, 0))
							   ? json_string_value(json_array_get(pair, 0))
							   : "");
			kv->value = arena_strdup(ar, json_string_value(json_array_get(pair, 1))
							     ? json_string_value(json_array_get(pair, 1))
							     : "");
			ev->details[ev->n_details++] = kv;
		}
	}
	json_decref(d);
	int pl = db_bytea(r, row, 11, hashes, AUDITLOG_HASH);
	int hl = db_bytea(r, row, 12, hashes + AUDITLOG_HASH, AUDITLOG_HASH);
	e->prev_hash.data = hashes;
	e->prev_hash.len = pl > 0 ? (size_t)pl : 0;
	e->entry_hash.data = hashes + AUDITLOG_HASH;
	e->entry_hash.len = hl > 0 ? (size_t)hl : 0;
	e->event = ev;
	*out = e;
	return 0;
}

int aud_read_page(struct aud *a, uint64_t from, uint64_t to, const Slipway__V1__EntryFilter *f,
		  int limit, struct aud_page *out, char *err, size_t errlen)
{
	char sql[1280], nums[6][24];
	const char *vals[14];
	int n = 0, rc;
	size_t off;
	struct db_conn *c = NULL;
	PGresult *r = NULL;

	memset(out, 0, sizeof *out);
	out->next = from;
	off = (size_t)snprintf(sql, sizeof sql,
			       "SELECT seq, event_id, actor, service, action, resource, outcome,"
			       " request_id, time_ms, logged_ms, details, prev_hash, entry_hash"
			       " FROM entries WHERE seq >= $1");
	vals[n++] = db_i64(nums[0], (int64_t)from);
	/* Filters append fixed SQL fragments; values are always parameters. */
#define COND(fragment, value)                                                                    \
	do {                                                                                         \
		vals[n++] = (value);                                                                 \
		off += (size_t)snprintf(sql + off, sizeof sql - off, " AND " fragment, n);          \
	} while (0)
	if (to > 0)
		COND("seq < $%d", db_i64(nums[1], (int64_t)to));
	if (f != NULL) {
		if (f->from_unix_ms > 0)
			COND("logged_ms >= $%d", db_i64(nums[2], f->from_unix_ms));
		if (f->to_unix_ms > 0)
			COND("logged_ms < $%d", db_i64(nums[3], f->to_unix_ms));
		if (f->actor[0])
			COND("actor = $%d", f->actor);
		if (f->service[0])
			COND("service = $%d", f->service);
		if (f->action[0])
			COND("action = $%d", f->action);
		if (f->resource_prefix[0])
			COND("starts_with(resource, $%d)", f->resource_prefix);
		if (f->outcome != 0)
			COND("outcome = $%d", db_i64(nums[4], f->outcome));
		if (f->request_id[0])
			COND("request_id = $%d", f->request_id);
		/* Indexed: entries_app_env (app, env, seq) and entries_env. */
		if (f->app != NULL && f->app[0])
			COND("app = $%d", f->app);
		if (f->environment != NULL && f->environment[0])
			COND("env = $%d", f->environment);
	}
#undef COND
	vals[n++] = db_i64(nums[5], limit);
	snprintf(sql + off, sizeof sql - off, " ORDER BY seq LIMIT $%d", n);

	if ((rc = db_acquire(a->db, &c, 5000, err, errlen)) != 0)
		return rc;
	rc = db_q(c, sql, n, vals, &r, err, errlen);
	db_release(a->db, c);
	if (rc != 0)
		return rc;
	int rows = PQntuples(r);
	out->entries = arena_alloc(&out->blocks, (size_t)(rows ? rows : 1) * sizeof *out->entries);
	if (out->entries == NULL) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		goto out;
	}
	for (int i = 0; i < rows; i++) {
		if ((rc = entry_from_row(out, r, i, &out->entries[i], err, errlen)) != 0)
			goto out;
		out->n++;
		out->next = out->entries[i]->seq + 1;
	}
out:
	PQclear(r);
	if (rc != 0)
		aud_page_free(out);
	return rc;
}

void aud_page_free(struct aud_page *p)
{
	arena_free(p->blocks);
	memset(p, 0, sizeof *p);
}
