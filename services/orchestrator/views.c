/*
 * views.c - read models: a deployment with its targets and timeline, lists,
 * an environment's status (why each waiting deployment waits, drift), and
 * the agents. Everything is allocated in the call's arena. The queries
 * about deployments and targets are the store's (store.c).
 */
#include "err.h"
#include "log.h"
#include "names.h"
#include "orch.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *s(struct rpc_ctx *ctx, PGresult *r, int row, int col)
{
	char *v = rpc_strdup(ctx, db_text(r, row, col));
	return v ? v : "";
}

int orch_deployment_from_row(struct rpc_ctx *ctx, PGresult *r, int row, Slipway__V1__Deployment *d)
{
	slipway__v1__deployment__init(d);
	d->id = s(ctx, r, row, 0);
	d->app = s(ctx, r, row, 1);
	d->environment = s(ctx, r, row, 2);
	d->version = s(ctx, r, row, 3);
	d->digest = s(ctx, r, row, 4);
	d->state = (Slipway__V1__DeploymentState)db_int64(r, row, 5);
	json_error_t je;
	json_t *st = json_loads(db_text(r, row, 6), 0, &je);
	json_t *fp = json_loads(db_text(r, row, 7), 0, &je);
	Slipway__V1__Strategy *strategy = rpc_alloc(ctx, sizeof *strategy);
	Slipway__V1__RollingStrategy *rolling = rpc_alloc(ctx, sizeof *rolling);
	Slipway__V1__FailurePolicy *fail = rpc_alloc(ctx, sizeof *fail);
	if (strategy && rolling && fail) {
		slipway__v1__strategy__init(strategy);
		slipway__v1__rolling_strategy__init(rolling);
		slipway__v1__failure_policy__init(fail);
		rolling->batch_size = (uint32_t)json_integer_value(json_object_get(st, "batch_size"));
		rolling->batch_percent = (uint32_t)json_integer_value(json_object_get(st, "batch_percent"));
		rolling->max_unavailable = (uint32_t)json_integer_value(json_object_get(st, "max_unavailable"));
		rolling->pause_ms = json_integer_value(json_object_get(st, "pause_ms"));
		const char *kind = json_string_value(json_object_get(st, "kind"));
		Slipway__V1__CanaryStrategy *canary = NULL;
		if (kind != NULL && strcmp(kind, "canary") == 0 &&
		    (canary = rpc_alloc(ctx, sizeof *canary)) != NULL) {
			slipway__v1__canary_strategy__init(canary);
			canary->canary_size = (uint32_t)json_integer_value(json_object_get(st, "canary_size"));
			canary->canary_percent =
				(uint32_t)json_integer_value(json_object_get(st, "canary_percent"));
			canary->bake_ms = json_integer_value(json_object_get(st, "bake_ms"));
			canary->manual_promotion = json_is_true(json_object_get(st, "manual_promotion"));
			canary->rollout = rolling;
			strategy->kind_case = SLIPWAY__V1__STRATEGY__KIND_CANARY;
			strategy->canary = canary;
		} else {
			strategy->kind_case = SLIPWAY__V1__STRATEGY__KIND_ROLLING;
			strategy->rolling = rolling;
		}
		fail->action = (Slipway__V1__FailureAction)json_integer_value(json_object_get(fp, "action"));
		fail->max_failed = (uint32_t)json_integer_value(json_object_get(fp, "max_failed"));
		fail->max_failed_percent = (uint32_t)json_integer_value(json_object_get(fp, "max_failed_percent"));
		fail->retries = (uint32_t)json_integer_value(json_object_get(fp, "retries"));
		fail->retry_backoff_ms = json_integer_value(json_object_get(fp, "retry_backoff_ms"));
		fail->progress_deadline_ms = json_integer_value(json_object_get(fp, "progress_deadline_ms"));
		d->strategy = strategy;
		d->failure_policy = fail;
	}
	json_decref(st);
	json_decref(fp);
	d->priority = (Slipway__V1__Priority)db_int64(r, row, 8);
	d->requester = s(ctx, r, row, 9);
	d->created_unix_ms = db_int64(r, row, 10);
	d->started_unix_ms = db_int64(r, row, 11);
	d->finished_unix_ms = db_int64(r, row, 12);
	d->reason = s(ctx, r, row, 13);
	d->is_rollback = db_bool(r, row, 14);
	d->rollback_of = s(ctx, r, row, 15);
	d->total_batches = (uint32_t)db_int64(r, row, 16);
	d->current_batch = (uint32_t)db_int64(r, row, 17);
	d->rollback_duration_ms = db_int64(r, row, 18);
	d->break_glass = db_bool(r, row, 19);
	d->break_glass_reason = s(ctx, r, row, 20);
	d->targets_total = (uint32_t)db_int64(r, row, 21);
	d->targets_succeeded = (uint32_t)db_int64(r, row, 22);
	d->targets_failed = (uint32_t)db_int64(r, row, 23);
	return 0;
}

static int authorize_read(struct orch *o, struct rpc_ctx *ctx, const char *app, const char *env,
			  char *err, size_t errlen)
{
	return orch_authorize(o, ctx, "read", app, env, err, errlen);
}

int orch_get_detail(struct orch *o, struct rpc_ctx *ctx, const char *id,
		    Slipway__V1__DeploymentDetail *out, char *err, size_t errlen)
{
	char app[64], env[64];
	struct db_conn *c = NULL;
	PGresult *r = NULL;
	int rc = orch_deployment_scope(o, id, app, env, err, errlen);
	if (rc != 0)
		return rc;
	if ((rc = authorize_read(o, ctx, app, env, err, errlen)) != 0)
		return rc;
	if ((rc = db_acquire(o->db, &c, 5000, err, errlen)) != 0)
		return rc;
	rc = store_deployment_row(c, id, &r, err, errlen);
	if (rc != 0) {
		db_release(o->db, c);
		return rc;
	}
	Slipway__V1__Deployment *d = rpc_alloc(ctx, sizeof *d);
	if (d == NULL) {
		db_release(o->db, c);
		PQclear(r);
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	}
	orch_deployment_from_row(ctx, r, 0, d);
	PQclear(r);
	out->deployment = d;
	rc = store_targets_of(c, id, &r, err, errlen);
	if (rc == 0) {
		int n = PQntuples(r);
		out->targets = rpc_alloc(ctx, (size_t)(n ? n : 1) * sizeof *out->targets);
		for (int i = 0; out->targets && i < n; i++) {
			Slipway__V1__TargetStatus *t = rpc_alloc(ctx, sizeof *t);
			if (t == NULL)
				break;
			slipway__v1__target_status__init(t);
			t->agent = s(ctx, r, i, 0);
			t->batch = (uint32_t)db_int64(r, i, 1);
			t->state = (Slipway__V1__TargetState)db_int64(r, i, 2);
			t->attempts = (uint32_t)db_int64(r, i, 3);
			t->message = s(ctx, r, i, 4);
			t->updated_unix_ms = db_int64(r, i, 5);
			t->previous_digest = s(ctx, r, i, 6);
			out->targets[out->n_targets++] = t;
		}
		PQclear(r);
		r = NULL;
	}
	if (rc == 0)
		rc = store_timeline_of(c, id, &r, err, errlen);
	db_release(o->db, c);
	if (rc != 0)
		return rc;
	int n = PQntuples(r);
	out->timeline = rpc_alloc(ctx, (size_t)(n ? n : 1) * sizeof *out->timeline);
	for (int i = 0; out->timeline && i < n; i++) {
		Slipway__V1__TimelineEvent *e = rpc_alloc(ctx, sizeof *e);
		if (e == NULL)
			break;
		slipway__v1__timeline_event__init(e);
		e->time_unix_ms = db_int64(r, i, 0);
		e->event = s(ctx, r, i, 1);
		e->detail = s(ctx, r, i, 2);
		out->timeline[out->n_timeline++] = e;
	}
	PQclear(r);
	return 0;
}

int orch_list(struct orch *o, struct rpc_ctx *ctx, const Slipway__V1__ListDeploymentsRequest *req,
	      Slipway__V1__ListDeploymentsResponse *out, char *err, size_t errlen)
{
	long long before = 0;
	int limit = req->page_size == 0 ? 50 : req->page_size > 500 ? 500 : (int)req->page_size;
	if (req->page_token[0] && (sscanf(req->page_token, "%lld", &before) != 1 || before <= 0))
		return sw_errf(err, errlen, SW_EINVAL, "page_token is not one this service issued");
	if (req->state < 0 || req->state > OS_ROLLED_BACK)
		return sw_errf(err, errlen, SW_EINVAL, "state: unknown value");
	int rc = authorize_read(o, ctx, req->app, req->environment, err, errlen);
	if (rc != 0)
		return rc;
	struct db_conn *c = NULL;
	PGresult *r = NULL;
	if ((rc = db_acquire(o->db, &c, 5000, err, errlen)) != 0)
		return rc;
	rc = store_list(c, req->app, req->environment, (int)req->state, before, limit + 1, &r, err,
			errlen);
	db_release(o->db, c);
	if (rc != 0)
		return rc;
	int rows = PQntuples(r), n = rows > limit ? limit : rows;
	out->deployments = rpc_alloc(ctx, (size_t)(n ? n : 1) * sizeof *out->deployments);
	for (int i = 0; out->deployments && i < n; i++) {
		Slipway__V1__Deployment *d = rpc_alloc(ctx, sizeof *d);
		if (d == NULL)
			break;
		orch_deployment_from_row(ctx, r, i, d);
		out->deployments[out->n_deployments++] = d;
	}
	if (rows > limit)
		out->next_page_token = rpc_strdup(ctx, db_text(r, limit - 1, 25));
	PQclear(r);
	return 0;
}

static Slipway__V1__Release *release(struct rpc_ctx *ctx, const char *app, const char *version,
				     const char *digest)
{
	if (digest[0] == '\0')
		return NULL;
	Slipway__V1__Release *rel = rpc_alloc(ctx, sizeof *rel);
	if (rel == NULL)
		return NULL;
	slipway__v1__release__init(rel);
	rel->app = rpc_strdup(ctx, app);
	rel->version = rpc_strdup(ctx, version);
	rel->digest = rpc_strdup(ctx, digest);
	return rel;
}

int orch_status(struct orch *o, struct rpc_ctx *ctx, const char *app, const char *env,
		Slipway__V1__EnvironmentStatus *out, char *err, size_t errlen)
{
	char cap[24];
	struct db_conn *c = NULL;
	PGresult *r = NULL;
	if (!name_app_ok(app) || !name_app_ok(env))
		return sw_errf(err, errlen, SW_EINVAL, "app and environment: 1-63 characters of [a-z0-9-]");
	int rc = authorize_read(o, ctx, app, env, err, errlen);
	if (rc != 0)
		return rc;
	if ((rc = db_acquire(o->db, &c, 5000, err, errlen)) != 0)
		return rc;
	out->app = rpc_strdup(ctx, app);
	out->environment = rpc_strdup(ctx, env);
	rc = db_q(c,
		  "SELECT current_version, current_digest, last_good_version, last_good_digest"
		  " FROM environments WHERE app = $1 AND environment = $2",
		  2, (const char *[]){ app, env }, &r, err, errlen);
	if (rc == 0 && PQntuples(r) == 1) {
		out->current = release(ctx, app, db_text(r, 0, 0), db_text(r, 0, 1));
		out->last_good = release(ctx, app, db_text(r, 0, 2), db_text(r, 0, 3));
	}
	PQclear(r);
	r = NULL;
	const char *cur = out->current ? out->current->digest : "";
	/* The active deployment, then the waiting ones in admission order. */
	if (rc == 0)
		rc = store_env_deployments(c, app, env, &r, err, errlen);
	int64_t running = 0, queued = 0;
	if (rc == 0)
		rc = store_counts(c, &running, &queued, err, errlen);
	if (rc != 0) {
		db_release(o->db, c);
		PQclear(r);
		return rc;
	}
	int n = PQntuples(r);
	out->waiting = rpc_alloc(ctx, (size_t)(n ? n : 1) * sizeof *out->waiting);
	const char *active_id = NULL;
	const char *first_queued = NULL;
	for (int i = 0; out->waiting && i < n; i++) {
		Slipway__V1__Deployment *d = rpc_alloc(ctx, sizeof *d);
		if (d == NULL)
			break;
		orch_deployment_from_row(ctx, r, i, d);
		if (d->state == OS_RUNNING || d->state == OS_PAUSED || d->state == OS_ROLLING_BACK) {
			out->active = d;
			active_id = d->id;
			continue;
		}
		char why[600];
		if (d->state == OS_PENDING_APPROVAL) {
			snprintf(why, sizeof why, "waiting for approval: %s",
				 d->reason[0] ? d->reason : "policy evaluation pending");
		} else if (active_id != NULL) {
			snprintf(why, sizeof why, "queued behind %s (active in %s/%s)", active_id, app, env);
		} else if (first_queued != NULL) {
			snprintf(why, sizeof why, "queued behind %s (earlier in the queue for %s/%s)",
				 first_queued, app, env);
		} else if (running >= o->c.max_running) {
			snprintf(cap, sizeof cap, "%lld", o->c.max_running);
			snprintf(why, sizeof why,
				 "queued: %lld deployments are running, the global cap is %s",
				 (long long)running, cap);
		} else {
			snprintf(why, sizeof why, "%s",
				 d->is_rollback ? "queued: starting"
						: "queued: starting once the policy allows it again");
		}
		if (d->state == OS_QUEUED && first_queued == NULL)
			first_queued = d->id;
		d->reason = rpc_strdup(ctx, why);
		out->waiting[out->n_waiting++] = d;
	}
	/* Queue positions (global admission order). */
	for (size_t i = 0; i < out->n_waiting; i++) {
		Slipway__V1__Deployment *d = out->waiting[i];
		if (d->state != OS_QUEUED)
			continue;
		store_queue_position(c, d->id, &d->queue_position, err, errlen);
	}
	PQclear(r);
	r = NULL;
	rc = db_q(c,
		  "SELECT id, running_digest, lost FROM agents WHERE app = $1 AND environment = $2"
		  " ORDER BY id",
		  2, (const char *[]){ app, env }, &r, err, errlen);
	db_release(o->db, c);
	if (rc != 0)
		return rc;
	n = PQntuples(r);
	out->drifted = rpc_alloc(ctx, (size_t)(n ? n : 1) * sizeof *out->drifted);
	out->targets = (uint32_t)n;
	for (int i = 0; i < n; i++) {
		int same = cur[0] && strcmp(db_text(r, i, 1), cur) == 0;
		if (same && !db_bool(r, i, 2))
			out->targets_healthy++;
		if (cur[0] && !same && out->drifted && !out->active)
			out->drifted[out->n_drifted++] = s(ctx, r, i, 0);
	}
	PQclear(r);
	return 0;
}

int orch_list_agents(struct orch *o, struct rpc_ctx *ctx, const Slipway__V1__ListAgentsRequest *req,
		     Slipway__V1__ListAgentsResponse *out, char *err, size_t errlen)
{
	struct authz_req q = { rpc_peer(ctx), "read", "agent", req->app, req->environment, NULL };
	char why[512], lim[24];
	int rc = authz_check(o->authz, ctx, &q, why, sizeof why);
	if (rc != 0)
		return sw_errf(err, errlen, rc, "permission denied: %s", why);
	int limit = req->page_size == 0 ? 1000 : req->page_size > 5000 ? 5000 : (int)req->page_size;
	snprintf(lim, sizeof lim, "%d", limit + 1);
	struct db_conn *c = NULL;
	PGresult *r = NULL;
	if ((rc = db_acquire(o->db, &c, 5000, err, errlen)) != 0)
		return rc;
	rc = db_q(c,
		  "SELECT id, labels::text, lost, runtime, last_heartbeat_ms, registered_ms, hostname,"
		  " agent_version FROM agents WHERE ($1 = '' OR app = $1) AND ($2 = '' OR environment = $2)"
		  " AND id > $3 ORDER BY id LIMIT $4",
		  4, (const char *[]){ req->app, req->environment, req->page_token, lim }, &r, err, errlen);
	db_release(o->db, c);
	if (rc != 0)
		return rc;
	int rows = PQntuples(r), n = rows > limit ? limit : rows;
	out->agents = rpc_alloc(ctx, (size_t)(n ? n : 1) * sizeof *out->agents);
	for (int i = 0; out->agents && i < n; i++) {
		Slipway__V1__AgentInfo *a = rpc_alloc(ctx, sizeof *a);
		if (a == NULL)
			break;
		slipway__v1__agent_info__init(a);
		a->id = s(ctx, r, i, 0);
		json_error_t je;
		json_t *l = json_loads(db_text(r, i, 1), 0, &je);
		size_t nl = json_object_size(l);
		a->labels = rpc_alloc(ctx, (nl ? nl : 1) * sizeof *a->labels);
		const char *k;
		json_t *v;
		json_object_foreach(l, k, v)
		{
			Slipway__V1__KeyValue *kv = rpc_alloc(ctx, sizeof *kv);
			if (kv == NULL || a->labels == NULL)
				break;
			slipway__v1__key_value__init(kv);
			kv->key = rpc_strdup(ctx, k);
			kv->value = rpc_strdup(ctx, json_string_value(v) ? json_string_value(v) : "");
			a->labels[a->n_labels++] = kv;
		}
		json_decref(l);
		a->health = db_bool(r, i, 2) ? SLIPWAY__V1__AGENT_HEALTH__AGENT_LOST
					     : SLIPWAY__V1__AGENT_HEALTH__AGENT_ONLINE;
		uint8_t buf[4096];
		int len = db_bytea(r, i, 3, buf, sizeof buf);
		if (len > 0) {
			Slipway__V1__AgentRuntime *rt =
				slipway__v1__agent_runtime__unpack(NULL, (size_t)len, buf);
			if (rt != NULL) {
				Slipway__V1__AgentRuntime *copy = rpc_alloc(ctx, sizeof *copy);
				if (copy != NULL) {
					slipway__v1__agent_runtime__init(copy);
					copy->app = rpc_strdup(ctx, rt->app);
					copy->version = rpc_strdup(ctx, rt->version);
					copy->digest = rpc_strdup(ctx, rt->digest);
					copy->process = rt->process;
					copy->healthy = rt->healthy;
					copy->health_detail = rpc_strdup(ctx, rt->health_detail);
					copy->restarts = rt->restarts;
					copy->health_checked_unix_ms = rt->health_checked_unix_ms;
					copy->endpoint = rpc_strdup(ctx, rt->endpoint);
					a->runtime = copy;
				}
				slipway__v1__agent_runtime__free_unpacked(rt, NULL);
			}
		}
		a->last_heartbeat_unix_ms = db_int64(r, i, 4);
		a->registered_unix_ms = db_int64(r, i, 5);
		a->hostname = s(ctx, r, i, 6);
		a->agent_version = s(ctx, r, i, 7);
		out->agents[out->n_agents++] = a;
	}
	if (rows > limit)
		out->next_page_token = s(ctx, r, limit - 1, 0);
	PQclear(r);
	return 0;
}
