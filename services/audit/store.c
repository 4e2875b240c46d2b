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

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct aud_job {
	struct aud_job *next;
	Slipway__V1__AuditEvent **events;
	size_t n;
	Slipway__V1__AppendResponse *results;
	uint8_t (*hashes)[AUDITLOG_HASH];
	int done, rc;
	char err[256];
	pthread_cond_t cv;
};

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

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
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

/* ---- the append transaction ---- */

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
	/* filled by the transaction (recomputed on a retry) */
	struct aud_block *arena;
	struct row *rows;
	size_t nrows;
	struct merkle_node *nodes;
	size_t nnodes, capnodes;
	struct merkle_range range;
	uint64_t size;
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

/* Existing (event id -> seq, hash) pairs found in the database. */
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
	return bsearch(&key, k, n, sizeof *k, cmp_known);
}

static int insert_rows(struct db_conn *c, struct batch *b, char *err, size_t errlen)
{
	enum { COLS = 13, CHUNK = 400 };
	char *sql = NULL;
	int rc = 0;
	for (size_t start = 0; start < b->nrows; start += CHUNK) {
		size_t n = b->nrows - start < CHUNK ? b->nrows - start : CHUNK;
		size_t cap = 200 + n * COLS * 8;
		sql = malloc(cap);
		const char **vals = calloc(n * COLS, sizeof *vals);
		int *lens = calloc(n * COLS, sizeof *lens);
		int *fmts = calloc(n * COLS, sizeof *fmts);
		char (*nums)[24] = calloc(n * 4, sizeof *nums);
		if (!sql || !vals || !lens || !fmts || !nums) {
			free(vals);
			free(lens);
			free(fmts);
			free(nums);
			rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
			goto out;
		}
		size_t off = (size_t)snprintf(sql, cap,
					      "INSERT INTO entries (seq, event_id, actor, service, action,"
					      " resource, outcome, request_id, time_ms, logged_ms, details,"
					      " prev_hash, entry_hash) VALUES ");
		for (size_t i = 0; i < n; i++) {
			const struct row *r = &b->rows[start + i];
			size_t k = i * COLS;
			off += (size_t)snprintf(sql + off, cap - off, "%s(", i ? "," : "");
			for (int col = 0; col < COLS; col++)
				off += (size_t)snprintf(sql + off, cap - off, "%s$%zu", col ? "," : "",
							k + (size_t)col + 1);
			off += (size_t)snprintf(sql + off, cap - off, ")");
			vals[k + 0] = db_i64(nums[i * 4 + 0], (int64_t)r->seq);
			vals[k + 1] = r->ev->event_id;
			vals[k + 2] = r->ev->actor;
			vals[k + 3] = r->ev->service;
			vals[k + 4] = r->ev->action;
			vals[k + 5] = r->ev->resource;
			vals[k + 6] = db_i64(nums[i * 4 + 1], r->ev->outcome);
			vals[k + 7] = r->ev->request_id;
			vals[k + 8] = db_i64(nums[i * 4 + 2], r->ev->time_unix_ms);
			vals[k + 9] = db_i64(nums[i * 4 + 3], r->logged);
			vals[k + 10] = r->details;
			vals[k + 11] = (const char *)r->prev;
			lens[k + 11] = AUDITLOG_HASH;
			fmts[k + 11] = 1;
			vals[k + 12] = (const char *)r->hash;
			lens[k + 12] = AUDITLOG_HASH;
			fmts[k + 12] = 1;
		}
		rc = db_exec(c, sql, (int)(n * COLS), vals, lens, fmts, 0, NULL, err, errlen);
		free(vals);
		free(lens);
		free(fmts);
		free(nums);
		free(sql);
		sql = NULL;
		if (rc != 0)
			goto out;
	}
	for (size_t start = 0; start < b->nnodes; start += 2000) {
		size_t n = b->nnodes - start < 2000 ? b->nnodes - start : 2000;
		size_t cap = 100 + n * 24;
		sql = malloc(cap);
		const char **vals = calloc(n * 3, sizeof *vals);
		int *lens = calloc(n * 3, sizeof *lens);
		int *fmts = calloc(n * 3, sizeof *fmts);
		char (*nums)[24] = calloc(n * 2, sizeof *nums);
		if (!sql || !vals || !lens || !fmts || !nums) {
			free(vals);
			free(lens);
			free(fmts);
			free(nums);
			rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
			goto out;
		}
		size_t off = (size_t)snprintf(sql, cap, "INSERT INTO tree_nodes (level, idx, hash) VALUES ");
		for (size_t i = 0; i < n; i++) {
			const struct merkle_node *nd = &b->nodes[start + i];
			off += (size_t)snprintf(sql + off, cap - off, "%s($%zu,$%zu,$%zu)", i ? "," : "",
						3 * i + 1, 3 * i + 2, 3 * i + 3);
			vals[3 * i] = db_i64(nums[2 * i], nd->level);
			vals[3 * i + 1] = db_i64(nums[2 * i + 1], (int64_t)nd->index);
			vals[3 * i + 2] = (const char *)nd->hash;
			lens[3 * i + 2] = MERKLE_HASH;
			fmts[3 * i + 2] = 1;
		}
		rc = db_exec(c, sql, (int)(n * 3), vals, lens, fmts, 0, NULL, err, errlen);
		free(vals);
		free(lens);
		free(fmts);
		free(nums);
		free(sql);
		sql = NULL;
		if (rc != 0)
			goto out;
	}
out:
	free(sql);
	return rc;
}

static int append_tx(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	struct batch *b = arg;
	struct aud *a = b->a;
	PGresult *r = NULL;
	int rc;
	size_t total = 0;
	struct known *known = NULL;
	size_t nknown = 0;
	const char **ids = NULL;

	/* A retry starts from scratch. */
	arena_free(b->arena);
	b->arena = NULL;
	b->nrows = 0;
	b->nnodes = 0;
	b->failed_nodes = 0;

	if ((rc = db_q(c, "SELECT size, last_hash FROM head WHERE id = 1 FOR UPDATE", 0, NULL, &r,
		       err, errlen)) != 0)
		return rc;
	b->size = (uint64_t)db_int64(r, 0, 0);
	if (db_bytea(r, 0, 1, b->last, AUDITLOG_HASH) != AUDITLOG_HASH) {
		PQclear(r);
		return sw_errf(err, errlen, SW_EDATALOSS, "the log head is damaged");
	}
	PQclear(r);
	r = NULL;

	for (struct aud_job *j = b->jobs; j; j = j->next)
		total += j->n;
	ids = calloc(total, sizeof *ids);
	b->rows = calloc(total, sizeof *b->rows);
	if (ids == NULL || b->rows == NULL) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		goto out;
	}

	/* Event ids already in the log are answered, not appended again. */
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
	if ((rc = db_q(c, "SELECT event_id, seq, entry_hash FROM entries WHERE event_id = ANY($1::text[])",
		       1, (const char *[]){ arr }, &r, err, errlen)) != 0)
		goto out;
	nknown = (size_t)PQntuples(r);
	known = arena_alloc(&b->arena, (nknown ? nknown : 1) * sizeof *known);
	if (known == NULL) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < nknown; i++) {
		known[i].id = arena_strdup(&b->arena, db_text(r, (int)i, 0));
		known[i].seq = (uint64_t)db_int64(r, (int)i, 1);
		db_bytea(r, (int)i, 2, known[i].hash, AUDITLOG_HASH);
	}
	PQclear(r);
	r = NULL;
	qsort(known, nknown, sizeof *known, cmp_known);

	/* The frontier of the tree at the current size. */
	if (a->range_valid && a->range.size == b->size) {
		b->range = a->range;
	} else {
		struct merkle_plan p;
		if ((rc = merkle_plan_root(b->size, &p)) != 0 ||
		    (rc = fill_plan_conn(c, &p, err, errlen)) != 0 ||
		    (rc = merkle_range_load(&b->range, b->size, &p)) != 0)
			goto out;
	}

	int64_t logged = now_ms();
	uint8_t canon[AUDITLOG_CANON_MAX];
	for (struct aud_job *j = b->jobs; j; j = j->next) {
		for (size_t i = 0; i < j->n; i++) {
			const Slipway__V1__AuditEvent *ev = j->events[i];
			Slipway__V1__AppendResponse *res = &j->results[i];
			struct known *kn = find_known(known, nknown, ev->event_id);
			if (kn == NULL) {
				/* A repeat inside this batch answers like a retry. */
				for (size_t q = 0; q < b->nrows; q++)
					if (strcmp(b->rows[q].ev->event_id, ev->event_id) == 0) {
						res->seq = b->rows[q].seq;
						memcpy(j->hashes[i], b->rows[q].hash, AUDITLOG_HASH);
						res->duplicate = 1;
						goto next;
					}
			} else {
				res->seq = kn->seq;
				memcpy(j->hashes[i], kn->hash, AUDITLOG_HASH);
				res->duplicate = 1;
				goto next;
			}
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
		next:;
		}
	}
	if (b->failed_nodes) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		goto out;
	}
	if (b->nrows == 0)
		goto out; /* every event was a retry */
	if ((rc = insert_rows(c, b, err, errlen)) != 0)
		goto out;
	char sz[24];
	const char *hv[2] = { db_i64(sz, (int64_t)b->size), (const char *)b->last };
	int hl[2] = { 0, AUDITLOG_HASH }, hf[2] = { 0, 1 };
	rc = db_exec(c, "UPDATE head SET size = $1, last_hash = $2 WHERE id = 1", 2, hv, hl, hf, 0,
		     NULL, err, errlen);
out:
	PQclear(r);
	free(ids);
	return rc;
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
			rc = db_tx(a->db, NULL, append_tx, &b, err, sizeof err);

		pthread_mutex_lock(&a->mu);
		if (rc == 0) {
			a->range = b.range;
			a->range_valid = 1;
		} else {
			a->range_valid = 0;
			if (rc != SW_EPRECOND)
				log_warn("append batch failed", "events=%lld error=%s", events, err);
		}
		for (struct aud_job *j = first; j;) {
			struct aud_job *next = j->next;
			j->rc = rc;
			if (rc != 0)
				snprintf(j->err, sizeof j->err, "%s", err);
			j->done = 1;
			a->pending -= (long long)j->n;
			pthread_cond_signal(&j->cv);
			j = next;
		}
		pthread_mutex_unlock(&a->mu);
		arena_free(b.arena);
		free(b.rows);
		free(b.nodes);
	}
}

int aud_append(struct aud *a, Slipway__V1__AuditEvent **events, size_t n,
	       Slipway__V1__AppendResponse *results, uint8_t (*hashes)[AUDITLOG_HASH], char *err,
	       size_t errlen)
{
	struct aud_job j;
	memset(&j, 0, sizeof j);
	j.events = events;
	j.n = n;
	j.results = results;
	j.hashes = hashes;
	pthread_cond_init(&j.cv, NULL);
	pthread_mutex_lock(&a->mu);
	if (a->stopping) {
		pthread_mutex_unlock(&a->mu);
		pthread_cond_destroy(&j.cv);
		return sw_errf(err, errlen, SW_EUNAVAIL, "the audit service is shutting down");
	}
	if (a->pending + (long long)n > a->c.max_pending) {
		pthread_mutex_unlock(&a->mu);
		pthread_cond_destroy(&j.cv);
		return sw_errf(err, errlen, SW_ELIMIT, "too many appends waiting (%lld); retry later",
			       a->pending);
	}
	a->pending += (long long)n;
	if (a->tail)
		a->tail->next = &j;
	else
		a->head = &j;
	a->tail = &j;
	pthread_cond_signal(&a->cv);
	while (!j.done)
		pthread_cond_wait(&j.cv, &a->mu);
	pthread_mutex_unlock(&a->mu);
	pthread_cond_destroy(&j.cv);
	int rc = j.rc;
	if (rc != 0)
		return sw_errf(err, errlen, rc, "%s", j.err);
	for (size_t i = 0; i < n; i++) {
		results[i].entry_hash.data = j.hashes[i];
		results[i].entry_hash.len = AUDITLOG_HASH;
	}
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
	char sql[1024], nums[6][24];
	const char *vals[12];
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
