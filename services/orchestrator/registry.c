/*
 * registry.c - the agents: registration, heartbeats and loss detection.
 *
 * Heartbeats are the hottest path (thousands per second): they only touch
 * an in-memory table under a mutex, so their handler runs on the
 * completion-queue thread. A flusher writes what changed to PostgreSQL in
 * one multi-row UPDATE per round (every heartbeat_interval / 2), and marks
 * agents lost whose last heartbeat is older than three intervals; the
 * planner then fails a lost agent's in-flight targets. Every replica
 * flushes and detects; both are idempotent.
 *
 * A database outage must not read as agents lost: a flush that fails keeps
 * its heartbeats (they are written by the next one that succeeds), and
 * loss detection is suspended while flushes fail and resumes one interval
 * after they succeed again, so every agent's newest heartbeat is in the
 * database before anyone is judged by it; a flush that stalled (a lock, an
 * overloaded server) restarts that grace too. Agents registered with another
 * replica are learnt from the database every round, so a heartbeat that
 * fails over here is known (re-registering would re-send its task).
 */
#include "clock.h"
#include "digest.h"
#include "err.h"
#include "hash.h"
#include "log.h"
#include "names.h"
#include "orch.h"
#include "spiffe.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BUCKETS 65536
#define FLUSH_CHUNK 500

struct agent_mem {
	struct agent_mem *next;
	char *id;
	int64_t last_ms;
	uint64_t highest;
	uint8_t *runtime;  /* packed AgentRuntime */
	size_t runtime_len;
	char digest[80];
	int dirty;
	int lost;
};

struct orch_registry {
	int64_t started_ms;
	int64_t writable_since_ms; /* first successful flush after a failure (0: failing) */
	int64_t flushed_at_ms;     /* every heartbeat received before this is in the database */
	int64_t refreshed_ms;      /* agents registered before this are known */
	pthread_mutex_t mu;
	struct agent_mem *buckets[BUCKETS];
	pthread_t flusher;
	pthread_cond_t cv;
};

static uint32_t hash_id(const char *s)
{
	uint32_t h = 2166136261u;
	for (; *s; s++) {
		h ^= (unsigned char)*s;
		h *= 16777619u;
	}
	return h & (BUCKETS - 1);
}

static struct agent_mem *find(struct orch_registry *r, const char *id)
{
	for (struct agent_mem *a = r->buckets[hash_id(id)]; a; a = a->next)
		if (strcmp(a->id, id) == 0)
			return a;
	return NULL;
}

static struct agent_mem *find_or_add(struct orch_registry *r, const char *id)
{
	struct agent_mem *a = find(r, id);
	if (a != NULL)
		return a;
	a = calloc(1, sizeof *a);
	if (a == NULL || (a->id = strdup(id)) == NULL) {
		free(a);
		return NULL;
	}
	uint32_t h = hash_id(id);
	a->next = r->buckets[h];
	r->buckets[h] = a;
	return a;
}

int orch_runtime_ok(const Slipway__V1__AgentRuntime *rt)
{
	/* The digest goes to a text column in a multi-row UPDATE shared by many
	 * agents: bytes PostgreSQL refuses would fail every agent's flush. */
	return rt == NULL || (slipway__v1__agent_runtime__get_packed_size(rt) <= ORCH_RUNTIME_MAX &&
			      (rt->digest[0] == '\0' || digest_parse(rt->digest, NULL) == 0));
}

int orch_heartbeat(struct orch *o, const char *agent, const Slipway__V1__AgentRuntime *rt,
		   uint64_t highest_generation)
{
	struct orch_registry *r = o->reg;
	uint8_t *packed = NULL;
	size_t len = 0;
	if (!orch_runtime_ok(rt))
		return SW_EINVAL;
	if (rt != NULL) {
		len = slipway__v1__agent_runtime__get_packed_size(rt);
		packed = malloc(len ? len : 1);
		if (packed == NULL)
			return SW_ENOMEM;
		slipway__v1__agent_runtime__pack(rt, packed);
	}
	pthread_mutex_lock(&r->mu);
	struct agent_mem *a = find(r, agent);
	if (a == NULL) {
		pthread_mutex_unlock(&r->mu);
		free(packed);
		return SW_ENOTFOUND;
	}
	a->last_ms = clock_wall_ms();
	if (highest_generation > a->highest)
		a->highest = highest_generation;
	if (packed != NULL) {
		free(a->runtime);
		a->runtime = packed;
		a->runtime_len = len;
		snprintf(a->digest, sizeof a->digest, "%s", rt->digest);
	}
	a->dirty = 1;
	a->lost = 0;
	pthread_mutex_unlock(&r->mu);
	return 0;
}

int orch_agent_online(struct orch *o, const char *agent)
{
	pthread_mutex_lock(&o->reg->mu);
	struct agent_mem *a = find(o->reg, agent);
	int ok = a != NULL && !a->lost;
	pthread_mutex_unlock(&o->reg->mu);
	return ok;
}

static int label_ok(const char *k, const char *v)
{
	size_t kl = strlen(k), vl = strlen(v);
	if (kl == 0 || kl > 63 || vl > 128)
		return 0;
	for (size_t i = 0; i < kl; i++)
		if (!((k[i] >= 'a' && k[i] <= 'z') || (k[i] >= '0' && k[i] <= '9') || k[i] == '.' ||
		      k[i] == '_' || k[i] == '-'))
			return 0;
	for (size_t i = 0; i < vl; i++)
		if ((unsigned char)v[i] < 0x20 || v[i] == 0x7f)
			return 0;
	return 1;
}

struct reg_tx {
	struct orch *o;
	const char *agent;
	const Slipway__V1__RegisterRequest *req;
	const char *app, *env, *region, *grp;
	char *labels;
	int is_new, ahead;
	char redispatched[64];
};

static int register_tx(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	struct reg_tx *t = arg;
	const Slipway__V1__RegisterRequest *req = t->req;
	char now[24];
	PGresult *r = NULL;
	int64_t ms = clock_wall_ms();
	const char *v[9] = { t->agent, t->app, t->env, t->region, t->grp, t->labels,
			     (const char *)req->seal_public_key.data, req->hostname,
			     db_i64(now, ms) };
	const char *v9[10];
	memcpy(v9, v, sizeof v);
	v9[9] = req->agent_version;
	int lens[10] = { 0 }, fmts[10] = { 0 };
	lens[6] = (int)req->seal_public_key.len;
	fmts[6] = 1;
	int rc = db_exec(c,
			 "INSERT INTO agents (id, app, environment, region, grp, labels, seal_key,"
			 " hostname, registered_ms, last_heartbeat_ms, agent_version)"
			 " VALUES ($1, $2, $3, $4, $5, $6::json, $7, $8, $9, $9, $10)"
			 " ON CONFLICT (id) DO UPDATE SET app = $2, environment = $3, region = $4,"
			 " grp = $5, labels = $6::json, seal_key = $7, hostname = $8,"
			 " last_heartbeat_ms = $9, agent_version = $10, lost = false"
			 " RETURNING (xmax = 0)",
			 10, v9, lens, fmts, 0, &r, err, errlen);
	if (rc != 0)
		return rc;
	t->is_new = db_bool(r, 0, 0);
	PQclear(r);
	r = NULL;
	/* The agent has seen generations the database does not know of (it was
	 * restored from an older backup): new tasks must be numbered above
	 * them, or the agent would ignore them as stale. */
	if (req->highest_generation > 0) {
		char hg[24];
		rc = db_q(c,
			  "UPDATE agents SET highest_seen = greatest(highest_seen, $2::bigint)"
			  " WHERE id = $1 RETURNING next_generation < $2::bigint",
			  2, (const char *[]){ t->agent, db_i64(hg, (int64_t)req->highest_generation) },
			  &r, err, errlen);
		if (rc != 0)
			return rc;
		t->ahead = PQntuples(r) == 1 && db_bool(r, 0, 0);
		PQclear(r);
		r = NULL;
		if (t->ahead)
			rc = orch_audit(t->o, c, t->o->self_id, "agent.generation_ahead", t->agent,
					SLIPWAY__V1__OUTCOME__OUTCOME_FAILURE, "highest_generation", hg,
					"hint", "the database may have been restored from an older backup",
					err, errlen);
		if (rc != 0)
			return rc;
	}
	rc = store_resend_running(c, t->o, t->agent, ms, t->redispatched, sizeof t->redispatched, err,
				  errlen);
	if (rc != 0)
		return rc;
	if (rc == 0 && t->is_new)
		rc = orch_audit(t->o, c, t->agent, "agent.register", t->agent,
				SLIPWAY__V1__OUTCOME__OUTCOME_SUCCESS, "app", t->app, "environment",
				t->env, err, errlen);
	return rc;
}

struct denied_tx {
	struct orch *o;
	const char *agent, *reason;
};

static int denied_tx(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	struct denied_tx *t = arg;
	return orch_audit(t->o, c, t->agent, "agent.register", t->agent,
			  SLIPWAY__V1__OUTCOME__OUTCOME_DENIED, "reason", t->reason, NULL, NULL, err,
			  errlen);
}

int orch_register_denied(struct orch *o, const char *agent, const char *reason)
{
	char err[512];
	struct denied_tx t = { o, agent, reason };
	int rc = db_tx(o->db, NULL, denied_tx, &t, err, sizeof err);
	if (rc != 0)
		log_error("cannot record a refused registration", "agent=%s error=%s", agent, err);
	log_warn("registration refused", "agent=%s reason=%s", agent, reason);
	return rc;
}

/* A label the agent sends that names its scope must say what its
 * enrollment says (an agent never chooses its own scope). */
static int scope_label(const char *key, const char *value, const char *enrolled, char *err,
		       size_t errlen)
{
	if (strcmp(value, enrolled) == 0)
		return 0;
	return sw_errf(err, errlen, SW_EPERM,
		       "label %s=%.63s is outside this agent's enrollment (%s=%s); an admin "
		       "changes it with slipway agents enroll",
		       key, value, key, enrolled);
}

int orch_register(struct orch *o, struct rpc_ctx *ctx, const char *agent,
		  const Slipway__V1__RegisterRequest *req, const struct enrollment *en, char *err,
		  size_t errlen)
{
	(void)ctx;
	struct reg_tx t = { .o = o, .agent = agent, .req = req, .app = en->app, .env = en->env,
			    .region = en->region, .grp = en->group };
	if (req->seal_public_key.len != 32)
		return sw_errf(err, errlen, SW_EINVAL, "seal_public_key must be a 32-byte X25519 key");
	if (req->n_labels > 32)
		return sw_errf(err, errlen, SW_EINVAL, "at most 32 labels");
	if (strlen(req->hostname) > 255 || strlen(req->agent_version) > 64)
		return sw_errf(err, errlen, SW_EINVAL, "hostname or agent_version too long");
	json_t *labels = json_object();
	for (size_t i = 0; i < req->n_labels; i++) {
		const Slipway__V1__KeyValue *kv = req->labels[i];
		int rc = 0;
		if (!label_ok(kv->key, kv->value)) {
			json_decref(labels);
			return sw_errf(err, errlen, SW_EINVAL, "label '%.63s' is not valid", kv->key);
		}
		if (strcmp(kv->key, "app") == 0)
			rc = scope_label("app", kv->value, en->app, err, errlen);
		else if (strcmp(kv->key, "environment") == 0)
			rc = scope_label("environment", kv->value, en->env, err, errlen);
		else if (strcmp(kv->key, "region") == 0)
			rc = scope_label("region", kv->value, en->region, err, errlen);
		else if (strcmp(kv->key, "group") == 0)
			rc = scope_label("group", kv->value, en->group, err, errlen);
		if (rc != 0) {
			json_decref(labels);
			return rc;
		}
		json_object_set_new(labels, kv->key, json_string(kv->value));
	}
	/* The scope labels read back as enrolled. */
	json_object_set_new(labels, "app", json_string(en->app));
	json_object_set_new(labels, "environment", json_string(en->env));
	json_object_set_new(labels, "region", json_string(en->region));
	if (en->group[0])
		json_object_set_new(labels, "group", json_string(en->group));
	if (!name_app_ok(t.app) || !name_app_ok(t.env)) {
		json_decref(labels);
		return sw_errf(err, errlen, SW_EINVAL,
			       "labels app and environment are required ([a-z0-9-], 1-63)");
	}
	t.labels = json_dumps(labels, JSON_COMPACT | JSON_SORT_KEYS);
	json_decref(labels);
	if (t.labels == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	int rc = db_tx(o->db, NULL, register_tx, &t, err, errlen);
	free(t.labels);
	if (rc != 0)
		return rc;
	pthread_mutex_lock(&o->reg->mu);
	struct agent_mem *a = find_or_add(o->reg, agent);
	if (a != NULL) {
		a->last_ms = clock_wall_ms();
		a->lost = 0;
	}
	pthread_mutex_unlock(&o->reg->mu);
	if (t.redispatched[0])
		orch_engine_kick(o);
	if (t.ahead)
		log_warn("an agent has seen task generations this database never issued: was it"
			 " restored from an older backup? New tasks are numbered above them",
			 "agent=%s highest_generation=%llu", agent,
			 (unsigned long long)req->highest_generation);
	log_info("agent registered", "agent=%s app=%s environment=%s new=%d", agent, t.app, t.env,
		 t.is_new);
	return 0;
}

struct flush_tx {
	const char *lock_sql, *sql;
	int nparams;
	const char *const *vals;
	const int *lens, *fmts;
	PGresult *ahead; /* agents whose highest generation is above the database's counter */
};

/* Locks the agents' rows in id order, then updates them: dispatching a
 * rollout locks agent rows in the same order, and two statements that lock
 * the same rows in different orders deadlock (PostgreSQL notices after a
 * second and aborts one of them). */
static int flush_tx(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	struct flush_tx *f = arg;
	PQclear(f->ahead);
	f->ahead = NULL;
	int rc = db_exec(c, f->lock_sql, f->nparams, f->vals, f->lens, f->fmts, 0, NULL, err, errlen);
	if (rc == 0)
		rc = db_exec(c, f->sql, f->nparams, f->vals, f->lens, f->fmts, 0, &f->ahead, err, errlen);
	return rc;
}

/* Writes dirty heartbeats in chunks of multi-row UPDATEs. Returns 0 when
 * some were written, 1 when there was nothing to write, or -1 when a chunk
 * could not be written (its agents stay dirty, so the next
 * flush writes their newest heartbeats). */
static int flush(struct orch *o)
{
	struct orch_registry *r = o->reg;
	char err[256];
	int failed = 0, wrote = 0;
	for (;;) {
		/* Take up to FLUSH_CHUNK dirty agents. */
		struct snap {
			char *id;
			int64_t ms;
			uint64_t highest;
			uint8_t *rt;
			size_t rtlen;
			char digest[80];
		} *s = calloc(FLUSH_CHUNK, sizeof *s);
		size_t n = 0;
		if (s == NULL)
			return -1;
		pthread_mutex_lock(&r->mu);
		for (size_t b = 0; b < BUCKETS && n < FLUSH_CHUNK; b++)
			for (struct agent_mem *a = r->buckets[b]; a && n < FLUSH_CHUNK; a = a->next) {
				if (!a->dirty)
					continue;
				a->dirty = 0;
				s[n].id = strdup(a->id);
				s[n].ms = a->last_ms;
				s[n].highest = a->highest;
				if (a->runtime_len > 0) {
					s[n].rt = malloc(a->runtime_len);
					if (s[n].rt)
						memcpy(s[n].rt, a->runtime, a->runtime_len);
					s[n].rtlen = s[n].rt ? a->runtime_len : 0;
				}
				snprintf(s[n].digest, sizeof s[n].digest, "%s", a->digest);
				n++;
			}
		pthread_mutex_unlock(&r->mu);
		if (n > 0) {
			char *sql = db_values_sql(
				"UPDATE agents SET last_heartbeat_ms = greatest(agents.last_heartbeat_ms, v.ms::bigint),"
				" highest_seen = greatest(agents.highest_seen, v.g::bigint),"
				" runtime = CASE WHEN length(v.rt::bytea) > 0 THEN v.rt::bytea ELSE agents.runtime END,"
				" running_digest = v.d, lost = false FROM (VALUES",
				n, 5, ") AS v(id, ms, g, rt, d) WHERE agents.id = v.id"
				" RETURNING agents.id, v.g::bigint > agents.next_generation");
			char *lock_sql = db_values_sql("SELECT a.id FROM agents a JOIN (VALUES", n, 5,
						       ") AS v(id, ms, g, rt, d) ON a.id = v.id"
						       " ORDER BY a.id FOR UPDATE OF a");
			const char **vals = calloc(n * 5, sizeof *vals);
			int *lens = calloc(n * 5, sizeof *lens), *fmts = calloc(n * 5, sizeof *fmts);
			char (*nums)[24] = calloc(n * 2, sizeof *nums);
			if (sql && lock_sql && vals && lens && fmts && nums) {
				/* VALUES columns are text: the runtime travels as bytea hex. */
				for (size_t i = 0; i < n; i++) {
					char *hex = malloc(2 * s[i].rtlen + 3);
					if (hex != NULL) {
						hex[0] = '\\';
						hex[1] = 'x';
						hash_hex(s[i].rt ? s[i].rt : (const uint8_t *)"", s[i].rtlen, hex + 2);
					}
					free(s[i].rt);
					s[i].rt = (uint8_t *)hex;
					vals[5 * i] = s[i].id;
					vals[5 * i + 1] = db_i64(nums[2 * i], s[i].ms);
					vals[5 * i + 2] = db_i64(nums[2 * i + 1], (int64_t)s[i].highest);
					vals[5 * i + 3] = hex ? hex : "\\x";
					vals[5 * i + 4] = s[i].digest;
				}
				struct flush_tx f = { lock_sql, sql, (int)(n * 5), vals, lens, fmts, NULL };
				if (db_tx(o->db, NULL, flush_tx, &f, err, sizeof err) != 0) {
					log_warn("heartbeat flush failed; kept for the next one", "agents=%zu error=%s",
						 n, err);
					failed = 1;
				} else {
					for (int k = 0; f.ahead && k < PQntuples(f.ahead); k++)
						if (db_bool(f.ahead, k, 1))
							log_warn("an agent has seen task generations this database never"
								 " issued: was it restored from an older backup? New"
								 " tasks are numbered above them",
								 "agent=%s", db_text(f.ahead, k, 0));
				}
				PQclear(f.ahead);
			} else {
				failed = 1;
			}
			if (failed) {
				/* Keep them dirty: the heartbeats in memory are the newest. */
				pthread_mutex_lock(&r->mu);
				for (size_t i = 0; i < n; i++) {
					struct agent_mem *a = find(r, s[i].id);
					if (a != NULL)
						a->dirty = 1;
				}
				pthread_mutex_unlock(&r->mu);
			}
			free(sql);
			free(lock_sql);
			free(vals);
			free(lens);
			free(fmts);
			free(nums);
		}
		for (size_t i = 0; i < n; i++) {
			free(s[i].id);
			free(s[i].rt);
		}
		free(s);
		if (failed)
			return -1;
		if (n < FLUSH_CHUNK)
			return wrote || n > 0 ? 0 : 1;
		wrote = 1;
	}
}

struct lost_tx {
	struct orch *o;
	int64_t cutoff;
	PGresult *lost;
};

static int lost_tx(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	struct lost_tx *t = arg;
	char cut[24];
	PQclear(t->lost);
	t->lost = NULL;
	int rc = db_q(c,
		      "UPDATE agents SET lost = true WHERE NOT lost AND last_heartbeat_ms < $1"
		      " RETURNING id, app, environment",
		      1, (const char *[]){ db_i64(cut, t->cutoff) }, &t->lost, err, errlen);
	if (rc != 0 || PQntuples(t->lost) == 0)
		return rc;
	for (int i = 0; i < PQntuples(t->lost) && rc == 0; i++) {
		const char *id = db_text(t->lost, i, 0);
		rc = store_notify_lost(c, id, err, errlen);
		if (rc == 0)
			rc = orch_audit(t->o, c, t->o->self_id, "agent.lost", id,
					SLIPWAY__V1__OUTCOME__OUTCOME_FAILURE, "app", db_text(t->lost, i, 1),
					"environment", db_text(t->lost, i, 2), err, errlen);
	}
	return rc;
}

static void detect_lost(struct orch *o)
{
	char err[256];
	int64_t now = clock_wall_ms();
	/* Right after start, agents have not had the time to reach this
	 * replica: an orchestrator outage must not read as agents lost. Nor
	 * may a database outage: while heartbeats cannot be written, and for
	 * one interval after, nobody is judged. */
	if (now - o->reg->started_ms < 3 * o->c.heartbeat_ms)
		return;
	pthread_mutex_lock(&o->reg->mu);
	int64_t since = o->reg->writable_since_ms, flushed = o->reg->flushed_at_ms;
	pthread_mutex_unlock(&o->reg->mu);
	if (since == 0 || now - since < o->c.heartbeat_ms)
		return;
	/* Judged against what the database holds: the heartbeats received
	 * before the last successful flush started (a later statement may have
	 * waited on a lock), never against the time now. */
	struct lost_tx t = { .o = o, .cutoff = (flushed < now ? flushed : now) - 3 * o->c.heartbeat_ms };
	if (db_tx(o->db, NULL, lost_tx, &t, err, sizeof err) != 0) {
		log_warn("loss detection failed", "error=%s", err);
	} else if (t.lost != NULL) {
		pthread_mutex_lock(&o->reg->mu);
		for (int i = 0; i < PQntuples(t.lost); i++) {
			struct agent_mem *a = find(o->reg, db_text(t.lost, i, 0));
			if (a != NULL)
				a->lost = 1;
			log_warn("agent lost", "agent=%s", db_text(t.lost, i, 0));
		}
		pthread_mutex_unlock(&o->reg->mu);
		if (PQntuples(t.lost) > 0)
			orch_engine_kick(o);
	}
	PQclear(t.lost);
}

/* Learns the agents registered (with any replica) since the last look, so
 * a heartbeat that fails over to this replica is recognised. */
static void refresh(struct orch *o)
{
	struct orch_registry *r = o->reg;
	struct db_conn *c = NULL;
	PGresult *res = NULL;
	char err[256], since[24];
	int64_t now = clock_wall_ms();
	if (db_acquire(o->db, &c, 1000, err, sizeof err) != 0)
		return;
	int rc = db_q(c, "SELECT id, last_heartbeat_ms, lost, highest_seen FROM agents"
			 " WHERE registered_ms >= $1",
		      1, (const char *[]){ db_i64(since, r->refreshed_ms - 10000) }, &res, err, sizeof err);
	db_release(o->db, c);
	if (rc != 0)
		return;
	pthread_mutex_lock(&r->mu);
	for (int i = 0; i < PQntuples(res); i++) {
		if (find(r, db_text(res, i, 0)) != NULL)
			continue;
		struct agent_mem *a = find_or_add(r, db_text(res, i, 0));
		if (a == NULL)
			break;
		a->last_ms = db_int64(res, i, 1);
		a->lost = db_bool(res, i, 2);
		a->highest = (uint64_t)db_int64(res, i, 3);
	}
	r->refreshed_ms = now;
	pthread_mutex_unlock(&r->mu);
	PQclear(res);
}

static void *flusher_main(void *arg)
{
	struct orch *o = arg;
	int64_t period = o->c.heartbeat_ms / 2 > 50 ? o->c.heartbeat_ms / 2 : 50;
	while (!atomic_load(&o->stopping)) {
		struct timespec dl = clock_after(CLOCK_REALTIME, period);
		pthread_mutex_lock(&o->reg->mu);
		if (!atomic_load(&o->stopping))
			pthread_cond_timedwait(&o->reg->cv, &o->reg->mu, &dl);
		pthread_mutex_unlock(&o->reg->mu);
		int64_t t0 = clock_wall_ms();
		int f = flush(o); /* nothing to write says nothing of the database */
		int64_t t1 = clock_wall_ms();
		pthread_mutex_lock(&o->reg->mu);
		if (f >= 0)
			o->reg->flushed_at_ms = t0;
		if (f < 0)
			o->reg->writable_since_ms = 0;
		else if (f == 0 && (o->reg->writable_since_ms == 0 || t1 - t0 > period))
			/* Back, or back from a stall (a lock, an overloaded server):
			 * what this flush wrote was collected when it started, so
			 * the grace starts now. */
			o->reg->writable_since_ms = t1;
		pthread_mutex_unlock(&o->reg->mu);
		if (f >= 0)
			refresh(o);
		detect_lost(o);
	}
	flush(o);
	return NULL;
}

int orch_registry_start(struct orch *o, char *err, size_t errlen)
{
	struct orch_registry *r = calloc(1, sizeof *r);
	if (r == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	pthread_mutex_init(&r->mu, NULL);
	pthread_cond_init(&r->cv, NULL);
	r->started_ms = clock_wall_ms();
	r->writable_since_ms = r->started_ms;
	r->flushed_at_ms = r->started_ms;
	r->refreshed_ms = r->started_ms;
	o->reg = r;
	/* Agents registered before (with any replica) are known at once. */
	struct db_conn *c = NULL;
	PGresult *res = NULL;
	int rc = db_acquire(o->db, &c, 5000, err, errlen);
	if (rc == 0) {
		rc = db_q(c, "SELECT id, last_heartbeat_ms, lost, highest_seen FROM agents", 0, NULL,
			  &res, err, errlen);
		db_release(o->db, c);
	}
	if (rc != 0)
		return rc;
	for (int i = 0; i < PQntuples(res); i++) {
		struct agent_mem *a = find_or_add(r, db_text(res, i, 0));
		if (a == NULL) {
			PQclear(res);
			return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		}
		a->last_ms = db_int64(res, i, 1);
		a->lost = db_bool(res, i, 2);
		a->highest = (uint64_t)db_int64(res, i, 3);
	}
	PQclear(res);
	if (pthread_create(&r->flusher, NULL, flusher_main, o) != 0)
		return sw_errf(err, errlen, SW_EINTERNAL, "cannot start the heartbeat flusher");
	return 0;
}

/* ---- enrollment changes ---- */

static void forget(struct orch_registry *r, const char *id)
{
	pthread_mutex_lock(&r->mu);
	for (struct agent_mem **pp = &r->buckets[hash_id(id)]; *pp; pp = &(*pp)->next) {
		if (strcmp((*pp)->id, id) == 0) {
			struct agent_mem *a = *pp;
			*pp = a->next;
			free(a->id);
			free(a->runtime);
			free(a);
			break;
		}
	}
	pthread_mutex_unlock(&r->mu);
}

struct reconcile_tx {
	struct orch *o;
	const struct enrollment *en;
	int dropped;
};

/* The agent's registration must match its enrollment: scope and sealing
 * key. When it does not (unenrolled, moved, re-enrolled with another or no
 * key), the row goes: the agent is no target of new deployments, its
 * in-flight targets fail as lost, and its next heartbeat is told to
 * register again, through the enrollment check. */
static int reconcile_tx(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	struct reconcile_tx *t = arg;
	const struct enrollment *en = t->en;
	PGresult *r = NULL;
	t->dropped = 0;
	int rc = db_exec(c,
			 "SELECT app, environment, region, grp, seal_key FROM agents WHERE id = $1",
			 1, (const char *[]){ en->agent_id }, NULL, NULL, 1, &r, err, errlen);
	if (rc != 0 || PQntuples(r) == 0) {
		PQclear(r);
		return rc;
	}
	int keep = !en->removed && en->has_key && strcmp(PQgetvalue(r, 0, 0), en->app) == 0 &&
		   strcmp(PQgetvalue(r, 0, 1), en->env) == 0 &&
		   strcmp(PQgetvalue(r, 0, 2), en->region) == 0 &&
		   strcmp(PQgetvalue(r, 0, 3), en->group) == 0 && PQgetlength(r, 0, 4) == 32 &&
		   memcmp(PQgetvalue(r, 0, 4), en->seal_key, 32) == 0;
	PQclear(r);
	if (keep)
		return 0;
	rc = db_q(c, "DELETE FROM agents WHERE id = $1", 1, (const char *[]){ en->agent_id }, NULL,
		  err, errlen);
	if (rc == 0)
		rc = orch_audit(t->o, c, t->o->self_id, "agent.remove", en->agent_id,
				SLIPWAY__V1__OUTCOME__OUTCOME_SUCCESS, "reason",
				en->removed ? "unenrolled" : "its enrollment changed: it must register again",
				NULL, NULL, err, errlen);
	t->dropped = rc == 0;
	return rc;
}

int orch_agent_reconcile(struct orch *o, const struct enrollment *en, char *err, size_t errlen)
{
	struct reconcile_tx t = { o, en, 0 };
	int rc = db_tx(o->db, NULL, reconcile_tx, &t, err, errlen);
	if (rc == 0 && (t.dropped || en->removed))
		forget(o->reg, en->agent_id);
	if (rc == 0 && t.dropped)
		log_info("agent registration dropped", "agent=%s reason=%s", en->agent_id,
			 en->removed ? "unenrolled" : "enrollment changed");
	return rc;
}

struct unenrolled_tx {
	struct orch *o;
	const char *ids; /* a text[] literal of every enrolled agent */
	PGresult *gone;
};

static int unenrolled_tx(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	struct unenrolled_tx *t = arg;
	PQclear(t->gone);
	t->gone = NULL;
	int rc = db_q(c, "DELETE FROM agents WHERE NOT (id = ANY ($1::text[])) RETURNING id", 1,
		      (const char *[]){ t->ids }, &t->gone, err, errlen);
	for (int i = 0; rc == 0 && i < PQntuples(t->gone); i++)
		rc = orch_audit(t->o, c, t->o->self_id, "agent.remove", db_text(t->gone, i, 0),
				SLIPWAY__V1__OUTCOME__OUTCOME_SUCCESS, "reason", "not enrolled", NULL,
				NULL, err, errlen);
	return rc;
}

int orch_agents_drop_unenrolled(struct orch *o, const char *ids, char *err, size_t errlen)
{
	struct unenrolled_tx t = { o, ids, NULL };
	int rc = db_tx(o->db, NULL, unenrolled_tx, &t, err, errlen);
	for (int i = 0; rc == 0 && i < PQntuples(t.gone); i++) {
		forget(o->reg, db_text(t.gone, i, 0));
		log_info("agent registration dropped", "agent=%s reason=not enrolled",
			 db_text(t.gone, i, 0));
	}
	PQclear(t.gone);
	return rc;
}

void orch_registry_stop(struct orch *o)
{
	struct orch_registry *r = o->reg;
	if (r == NULL)
		return;
	pthread_mutex_lock(&r->mu);
	pthread_cond_signal(&r->cv);
	pthread_mutex_unlock(&r->mu);
	pthread_join(r->flusher, NULL);
	for (size_t b = 0; b < BUCKETS; b++)
		for (struct agent_mem *a = r->buckets[b]; a;) {
			struct agent_mem *next = a->next;
			free(a->id);
			free(a->runtime);
			free(a);
			a = next;
		}
	pthread_mutex_destroy(&r->mu);
	pthread_cond_destroy(&r->cv);
	free(r);
	o->reg = NULL;
}
