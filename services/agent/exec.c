/*
 * exec.c - the task executor: "make this agent run `digest`, healthy".
 * TASK_DEPLOY and TASK_ROLLBACK do the same thing; a rollback is simply a
 * deploy of the last known-good digest, which is usually still unpacked.
 *
 *   1. check the task is for this agent's app and environment
 *   2. already running that digest and healthy? succeed at once
 *   3. releases/<hex> missing: pull the blob, verify the digest, unpack it
 *      safely into releases/.tmp-*, validate the manifest, rename into place
 *   4. fetch and inject the deployment's secrets (tmpfs)
 *   5. start the new release next to the old one, on a free port
 *   6. health check with retries, an interval and a deadline
 *   7. healthy: switch `current` atomically, stop the old process, prune;
 *      not healthy: stop the new process, the old one keeps serving
 *
 * Safe points (where a superseded task or an agent shutdown abandons the
 * work, leaving the old release serving) are between every step and
 * between health attempts; after the switch the task always completes.
 */
#include "agent.h"
#include "err.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct run {
	struct agent *a;
	const struct agent_task *t;
	agent_task_cancel_fn fn;
	void *arg;
	char hex[AGENT_HEX_LEN + 1];
	int64_t deadline;             /* monotonic */
};

static int cancelled(void *p)
{
	struct run *r = p;
	return r->fn != NULL && r->fn(r->a, r->t, r->arg);
}

/* Sleeps up to ms in small slices; returns 1 if cancelled meanwhile. */
static int nap(struct run *r, long long ms)
{
	int64_t until = agent_now_ms() + ms;
	while (agent_now_ms() < until) {
		if (cancelled(r))
			return 1;
		int64_t left = until - agent_now_ms();
		long step = left > 50 ? 50 : (long)left;
		if (step <= 0)
			break;
		struct timespec ts = { 0, step * 1000000L };
		nanosleep(&ts, NULL);
	}
	return cancelled(r);
}

static int check_task(struct run *r, char *msg, size_t len)
{
	const struct agent_task *t = r->t;
	const struct agent_labels *lb = &r->a->cfg->labels;
	const char *app = agent_labels_get(lb, "app"), *env = agent_labels_get(lb, "environment");
	if (t->invalid[0] != '\0')
		return sw_errf(msg, len, SW_EINVAL, "invalid task: %s", t->invalid);
	if (t->kind != AGENT_TASK_DEPLOY && t->kind != AGENT_TASK_ROLLBACK)
		return sw_errf(msg, len, SW_EINVAL, "unknown task kind %d", t->kind);
	if (!agent_digest_ok(t->digest, r->hex))
		return sw_errf(msg, len, SW_EINVAL, "digest '%.80s' is not sha256:<64 hex>", t->digest);
	if (t->app[0] != '\0' && app != NULL && strcmp(t->app, app) != 0)
		return sw_errf(msg, len, SW_EINVAL, "task for app %s, this agent runs %s", t->app, app);
	if (t->environment[0] != '\0' && env != NULL && strcmp(t->environment, env) != 0)
		return sw_errf(msg, len, SW_EINVAL, "task for environment %s, this agent is in %s",
			       t->environment, env);
	return 0;
}

/* Already running this digest and healthy right now? */
static int already_running(struct run *r, char *msg, size_t len)
{
	struct agent *a = r->a;
	char cwd[AGENT_PATH_MAX], logp[AGENT_PATH_MAX], detail[AGENT_MSG_MAX];
	int ok = 0;
	pthread_mutex_lock(&a->probe_mu);
	pthread_mutex_lock(&a->mu);
	struct agent_live *l = &a->live;
	int same = l->have && strcmp(l->hex, r->hex) == 0 && l->proc.pid > 0 &&
		   l->state == AGENT_PROC_RUNNING;
	const struct agent_manifest *m = l->m;
	int port = l->proc.port;
	pid_t pid = l->proc.pid;
	char sd[AGENT_PATH_MAX];
	snprintf(sd, sizeof sd, "%s", l->secrets_dir);
	pthread_mutex_unlock(&a->mu);
	if (same && m->health.kind != AGENT_CHECK_COMMAND) {
		agent_store_path(&a->store, cwd, sizeof cwd, "releases/%s/%s", r->hex, m->workdir);
		agent_store_path(&a->store, logp, sizeof logp, "logs/app.log");
		ok = agent_health_probe(&m->health, port, cwd, NULL, logp, &a->user, detail,
					sizeof detail);
	} else if (same) {
		struct agent_env env;
		char err[256];
		agent_store_path(&a->store, cwd, sizeof cwd, "releases/%s/%s", r->hex, m->workdir);
		agent_store_path(&a->store, logp, sizeof logp, "logs/app.log");
		if (agent_build_env(a, m, r->hex, r->t->version, port, sd, 0, &env, err,
				    sizeof err) == 0) {
			ok = agent_health_probe(&m->health, port, cwd, env.envp, logp, &a->user,
						detail, sizeof detail);
			agent_env_free(&env);
		}
	}
	if (ok) {
		pthread_mutex_lock(&a->mu);
		if (l->proc.pid == pid && strcmp(l->hex, r->hex) == 0) {
			l->healthy = 1;
			snprintf(l->health_detail, sizeof l->health_detail, "%s", detail);
			l->health_at_ms = agent_wall_ms();
			if (r->t->version[0] != '\0' && strcmp(l->version, r->t->version) != 0) {
				snprintf(l->version, sizeof l->version, "%s", r->t->version);
				agent_save_live_locked(a);
			}
		}
		pthread_mutex_unlock(&a->mu);
		snprintf(msg, len, "already running %.64s (pid %d, port %d) and healthy: %.100s",
			 r->t->version, (int)pid, port, detail);
	}
	pthread_mutex_unlock(&a->probe_mu);
	return ok;
}

/* Makes sure releases/<hex> holds the unpacked, validated bundle. */
static int ensure_release(struct run *r, char *msg, size_t len)
{
	struct agent *a = r->a;
	const struct agent_config *c = a->cfg;
	char dir[AGENT_PATH_MAX], tmp[AGENT_PATH_MAX], blob[AGENT_PATH_MAX], err[256];
	struct stat st;
	int rc;

	agent_store_path(&a->store, dir, sizeof dir, "releases/%s", r->hex);
	if (lstat(dir, &st) == 0 && S_ISDIR(st.st_mode))
		return 0; /* renamed into place only once complete and valid */
	agent_store_path(&a->store, blob, sizeof blob, "blobs/%s.tar.gz", r->hex);
	log_info("pulling the bundle", "digest=%s", r->t->digest);
	rc = agent_fetch_blob(a->artifact, r->t->digest, blob, (uint64_t)c->max_blob_bytes,
			      r->deadline, c->pull_retry_ms, cancelled, r, err, sizeof err);
	if (rc != 0)
		return sw_errf(msg, len, rc, "%s", err);
	agent_store_path(&a->store, tmp, sizeof tmp, "releases/.tmp-%.16s-%d", r->hex,
			 (int)getpid());
	agent_rmtree(tmp);
	/* The agent's, readable by the application user (whatever the umask). */
	if (mkdir(tmp, 0755) != 0 || chmod(tmp, 0755) != 0)
		return sw_errf(msg, len, SW_EIO, "mkdir %s: %s", tmp, strerror(errno));
	struct agent_unpack_limits lim = { .max_bytes = (uint64_t)c->max_unpacked_bytes,
					   .max_entries = (uint64_t)c->max_entries };
	rc = agent_unpack(blob, tmp, &lim, cancelled, r, err, sizeof err);
	if (rc == 0) {
		struct agent_manifest *m = NULL;
		rc = agent_manifest_load(tmp, &m, err, sizeof err);
		agent_manifest_free(m);
		if (rc != 0)
			rc = sw_errf(msg, len, rc, "bundle manifest: %s", err);
	} else if (rc != SW_ECANCELLED) {
		rc = sw_errf(msg, len, rc, "bundle refused: %s", err);
		log_error("bundle refused", "digest=%s reason=%s", r->t->digest, err);
	}
	if (rc != 0) {
		agent_rmtree(tmp);
		/* A bundle that cannot be a release never will be: drop it. */
		if (rc != SW_ECANCELLED)
			unlink(blob);
		return rc;
	}
	if (rename(tmp, dir) != 0) {
		rc = sw_errf(msg, len, SW_EIO, "install release: %s", strerror(errno));
		agent_rmtree(tmp);
		return rc;
	}
	int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd >= 0) {
		fsync(dfd);
		close(dfd);
	}
	unlink(blob);
	log_info("release unpacked", "release=%.12s", r->hex);
	return 0;
}

/* The deploy-time health check of a candidate process. Returns 0 when
 * healthy (detail says how), SW_ECANCELLED, or a failure with msg. */
static int health_gate(struct run *r, const struct agent_manifest *m, struct agent_proc *p,
		       const char *sd, char *detail, size_t detlen, char *msg, size_t len)
{
	struct agent *a = r->a;
	const struct agent_health *h = &m->health;
	char cwd[AGENT_PATH_MAX], logp[AGENT_PATH_MAX], err[256];
	struct agent_env env = { 0 };
	int rc = SW_EUNAVAIL;
	agent_store_path(&a->store, cwd, sizeof cwd, "releases/%s/%s", r->hex, m->workdir);
	agent_store_path(&a->store, logp, sizeof logp, "logs/app.log");
	if (h->kind == AGENT_CHECK_COMMAND &&
	    (rc = agent_build_env(a, m, r->hex, r->t->version, p->port, sd, 0, &env, err,
				  sizeof err)) != 0)
		return sw_errf(msg, len, rc, "health command environment: %s", err);
	int64_t start = agent_now_ms();
	int64_t until = start + h->deadline_ms;
	if (until > r->deadline)
		until = r->deadline;
	int attempts = h->retries + 1;
	snprintf(detail, detlen, "no attempt yet");
	for (int i = 1;; i++) {
		if (cancelled(r)) {
			rc = SW_ECANCELLED;
			break;
		}
		if (!agent_proc_alive(p)) {
			rc = sw_errf(msg, len, SW_EPRECOND,
				     "the new process exited with status %d during the health check",
				     p->exit_status);
			break;
		}
		if (agent_health_probe(h, p->port, cwd, env.envp, logp, &a->user, detail, detlen)) {
			rc = 0;
			break;
		}
		if (i >= attempts) {
			rc = sw_errf(msg, len, SW_EPRECOND, "health check failed %d times: %.160s", i,
				     detail);
			break;
		}
		if (agent_now_ms() + h->interval_ms >= until) {
			rc = sw_errf(msg, len, SW_ETIMEDOUT,
				     "health check not passing after %lld ms (%d attempts): %.150s",
				     (long long)(agent_now_ms() - start), i, detail);
			break;
		}
		if (nap(r, h->interval_ms)) {
			rc = SW_ECANCELLED;
			break;
		}
	}
	agent_env_free(&env);
	return rc;
}

static int run_task(struct run *r, char *msg, size_t len)
{
	struct agent *a = r->a;
	const struct agent_task *t = r->t;
	struct agent_manifest *m = NULL;
	struct agent_proc p = { 0 };
	char sd[AGENT_PATH_MAX] = "", err[256], detail[AGENT_MSG_MAX];
	int rc, port = 0;

	if ((rc = check_task(r, msg, len)) != 0 ||
	    (rc = agent_verify_provenance(a, t, r->deadline, msg, len)) != 0)
		return rc;
	if (agent_now_ms() >= r->deadline)
		return sw_errf(msg, len, SW_ETIMEDOUT, "the task's deadline passed before it started");
	if (already_running(r, msg, len))
		return 0;
	if (cancelled(r))
		return SW_ECANCELLED;
	if ((rc = ensure_release(r, msg, len)) != 0)
		return rc;
	if (cancelled(r))
		return SW_ECANCELLED;
	if ((rc = agent_load_release(a, r->hex, &m, err, sizeof err)) != 0)
		return sw_errf(msg, len, rc, "bundle manifest: %s", err);
	if (m->app[0] != '\0' && t->app[0] != '\0' && strcmp(m->app, t->app) != 0) {
		rc = sw_errf(msg, len, SW_EINVAL, "the bundle is for app %s, not %s", m->app, t->app);
		goto fail;
	}
	if (m->nsecrets > 0) {
		if (!t->has_secrets) {
			rc = sw_errf(msg, len, SW_EPRECOND,
				     "the release needs %zu secret(s) but the deployment carries none",
				     m->nsecrets);
			goto fail;
		}
		rc = agent_secrets_materialize(a->secrets, &a->keys, t->deployment_id, m,
					       a->cfg->shm_dir, &a->user, sd, sizeof sd, err,
					       sizeof err);
		if (rc != 0) {
			rc = sw_errf(msg, len, rc, "%s", err);
			goto fail;
		}
	}
	if (cancelled(r)) {
		rc = SW_ECANCELLED;
		goto fail;
	}
	if ((rc = agent_free_port(&port, err, sizeof err)) != 0 ||
	    (rc = agent_start_release(a, m, r->hex, t->version, port, sd, &p, err, sizeof err)) != 0) {
		rc = sw_errf(msg, len, rc, "start: %s", err);
		goto fail;
	}
	agent_crash_point("after-spawn");
	if (agent_candidate_record(a, &p, r->hex, t->version, sd) != 0)
		log_warn("cannot record the new process", "pid=%d", (int)p.pid);
	rc = health_gate(r, m, &p, sd, detail, sizeof detail, msg, len);
	if (rc != 0)
		goto fail;
	/* Healthy: from here on the task completes. */
	if ((rc = agent_store_switch(&a->store, r->hex, err, sizeof err)) != 0) {
		rc = sw_errf(msg, len, rc, "%s", err);
		goto fail;
	}
	agent_crash_point("after-switch");
	agent_promote(a, r->hex, t->version, m, &p, sd, detail);
	agent_candidate_clear(a);
	m = NULL;
	agent_store_prune(&a->store, (int)a->cfg->keep_releases);
	snprintf(msg, len, "running %.64s (pid %d, port %d): %.120s", t->version, (int)p.pid,
		 p.port, detail);
	return 0;
fail:
	if (p.pid > 0) {
		log_info("stopping the new process; the previous release keeps serving",
			 "release=%.12s pid=%d", r->hex, (int)p.pid);
		agent_proc_stop(&p, m ? m->stop_grace_ms : 10000);
		agent_candidate_clear(a);
	}
	agent_secrets_remove(sd);
	agent_manifest_free(m);
	return rc;
}

int agent_exec(struct agent *a, const struct agent_task *t, agent_task_cancel_fn cancel,
	       void *cancel_arg, struct agent_result *res)
{
	struct run r = { .a = a, .t = t, .fn = cancel, .arg = cancel_arg };
	int64_t t0 = agent_now_ms();
	memset(res, 0, sizeof *res);
	int64_t budget = a->cfg->task_timeout_ms;
	if (t->deadline_unix_ms > 0)
		budget = t->deadline_unix_ms - agent_wall_ms();
	r.deadline = t0 + budget;

	pthread_mutex_lock(&a->exec_mu);
	log_info("task started", "task=%s generation=%llu kind=%d digest=%s version=%s", t->task_id,
		 (unsigned long long)t->generation, t->kind, t->digest, t->version);
	int rc = run_task(&r, res->message, sizeof res->message);
	pthread_mutex_unlock(&a->exec_mu);

	res->duration_ms = agent_now_ms() - t0;
	if (rc == SW_ECANCELLED) {
		log_info("task abandoned at a safe point", "task=%s", t->task_id);
		snprintf(res->message, sizeof res->message, "abandoned");
		return SW_ECANCELLED;
	}
	res->result = rc == 0 ? AGENT_RESULT_SUCCEEDED : AGENT_RESULT_FAILED;
	if (rc == 0)
		log_info("task succeeded", "task=%s duration_ms=%lld detail=%s", t->task_id,
			 (long long)res->duration_ms, res->message);
	else
		log_warn("task failed", "task=%s duration_ms=%lld reason=%s", t->task_id,
			 (long long)res->duration_ms, res->message);
	return 0;
}
