/*
 * supervise.c - the live release: the process that serves now.
 *
 * The supervisor thread wakes a few times a second. A live process that
 * ended is restarted after an exponential backoff (reset once it has stayed
 * up for the crash-loop window); too many restarts inside the window puts
 * it in PROCESS_CRASHLOOP, which heartbeats report, while the agent keeps
 * trying at the longest backoff. A running process is probed every
 * live_interval_ms and the result is what heartbeats call "healthy".
 *
 * run/app.json records the live process (pid, start time, port, release,
 * version, secrets directory) so that a restarted agent adopts the running
 * application instead of starting a second copy: the agent is not in the
 * serving path, and restarting it must not take production down. Every
 * process the agent starts also carries its root in its environment
 * (AGENT_MARK_ENV), so that agent_adopt finds the processes a killed agent
 * started but never recorded, and keeps exactly one.
 *
 * Locking: agent.mu guards `live`. A probe runs without agent.mu (it may
 * take seconds) but holds agent.probe_mu, which agent_promote takes before
 * freeing the manifest the probe may be reading.
 */
#include "agent.h"
#include "clock.h"
#include "err.h"
#include "log.h"

#include <jansson.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define TICK_MS 100

static const char *const inherited_env[] = { "PATH", "LANG", "LC_ALL", "TZ", "HOME",
					      "ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS" };

int agent_build_env(struct agent *a, const struct agent_manifest *m, const char *hex,
		    const char *version, int port, const char *secrets_dir, int with_secrets,
		    struct agent_env *out, char *err, size_t errlen)
{
	char buf[AGENT_PATH_MAX];
	int rc = 0;
	memset(out, 0, sizeof *out);
	if (m->nsecrets > 0 && with_secrets) {
		if (secrets_dir == NULL || secrets_dir[0] == '\0') {
			rc = sw_errf(err, errlen, SW_EPRECOND, "the release needs secrets it does not have");
			goto out;
		}
		if ((rc = agent_secrets_env(secrets_dir, out, err, errlen)) != 0)
			goto out;
	}
	int own_home = a->user.mode == AGENT_USER_SWITCH;
	for (size_t i = 0; i < sizeof inherited_env / sizeof inherited_env[0]; i++) {
		/* The agent's HOME is not the application user's: it gets data/. */
		if (own_home && strcmp(inherited_env[i], "HOME") == 0)
			continue;
		const char *v = getenv(inherited_env[i]);
		if (v == NULL && strcmp(inherited_env[i], "PATH") == 0)
			v = "/usr/local/bin:/usr/bin:/bin";
		if (v != NULL && (rc = agent_env_add(out, inherited_env[i], v)) != 0)
			goto out;
	}
	const char *app = agent_labels_get(&a->cfg->labels, "app");
	snprintf(buf, sizeof buf, "%d", port);
	if ((rc = agent_env_add(out, "PORT", buf)) != 0 ||
	    (rc = agent_env_add(out, "SLIPWAY_APP", app ? app : "")) != 0 ||
	    (rc = agent_env_add(out, "SLIPWAY_VERSION", version)) != 0)
		goto out;
	snprintf(buf, sizeof buf, "sha256:%s", hex);
	if ((rc = agent_env_add(out, "SLIPWAY_DIGEST", buf)) != 0)
		goto out;
	agent_store_path(&a->store, buf, sizeof buf, "releases/%s", hex);
	if ((rc = agent_env_add(out, "SLIPWAY_RELEASE_DIR", buf)) != 0)
		goto out;
	agent_store_path(&a->store, buf, sizeof buf, "data");
	if ((rc = agent_env_add(out, "SLIPWAY_DATA_DIR", buf)) != 0 ||
	    (own_home && (rc = agent_env_add(out, "HOME", buf)) != 0))
		goto out;
	if (secrets_dir != NULL && secrets_dir[0] != '\0' &&
	    (rc = agent_env_add(out, "SLIPWAY_SECRETS_DIR", secrets_dir)) != 0)
		goto out;
	for (size_t i = 0; i < m->nenv; i++) {
		const char *eq = strchr(m->env[i], '=');
		char name[160];
		snprintf(name, sizeof name, "%.*s", (int)(eq - m->env[i]), m->env[i]);
		if ((rc = agent_env_add(out, name, eq + 1)) != 0)
			goto out;
	}
out:
	if (rc != 0) {
		if (rc == SW_ENOMEM || rc == SW_ELIMIT)
			sw_errf(err, errlen, rc, "environment too large");
		agent_env_free(out);
	}
	return rc;
}

int agent_start_release(struct agent *a, const struct agent_manifest *m, const char *hex,
			const char *version, int port, const char *secrets_dir,
			struct agent_proc *p, char *err, size_t errlen)
{
	char cwd[AGENT_PATH_MAX], logp[AGENT_PATH_MAX];
	struct agent_env env;
	if (agent_store_path(&a->store, cwd, sizeof cwd, "releases/%s/%s", hex, m->workdir) != 0)
		return sw_errf(err, errlen, SW_EINVAL, "working directory path too long");
	agent_store_path(&a->store, logp, sizeof logp, "logs/app.log");
	int rc = agent_build_env(a, m, hex, version, port, secrets_dir, 1, &env, err, errlen);
	if (rc != 0)
		return rc;
	/* The mark a restarted agent finds its processes by (agent_adopt),
	 * whatever it managed to record before it died. */
	if ((rc = agent_env_add(&env, AGENT_MARK_ENV, a->store.root)) != 0) {
		agent_env_free(&env);
		return sw_errf(err, errlen, rc, "environment too large");
	}
	struct agent_spawn sp = { .argv = m->argv, .envp = env.envp, .cwd = cwd, .log_path = logp,
				  .user = &a->user };
	rc = agent_proc_spawn(&sp, p, err, errlen);
	agent_env_free(&env);
	if (rc == 0) {
		p->port = port;
		log_info("release started", "release=%.12s version=%s pid=%d port=%d", hex, version,
			 (int)p->pid, port);
	}
	return rc;
}

void agent_save_live_locked(struct agent *a)
{
	char path[AGENT_PATH_MAX], pidp[AGENT_PATH_MAX], err[256];
	struct agent_live *l = &a->live;
	agent_store_path(&a->store, path, sizeof path, "run/app.json");
	agent_store_path(&a->store, pidp, sizeof pidp, "run/app.pid");
	if (!l->have) {
		unlink(path);
		unlink(pidp);
		return;
	}
	json_t *j = json_pack("{s:I, s:I, s:i, s:s, s:s, s:s}", "pid", (json_int_t)l->proc.pid,
			      "start_time", (json_int_t)l->proc.start_time, "port", l->proc.port,
			      "release", l->hex, "version", l->version, "secrets_dir", l->secrets_dir);
	if (j != NULL && l->retiring.pid > 0)
		json_object_set_new(j, "retiring",
				    json_pack("{s:I, s:I, s:s, s:s}", "pid",
					      (json_int_t)l->retiring.pid, "start_time",
					      (json_int_t)l->retiring.start_time, "release",
					      l->retiring_hex, "secrets_dir", l->retiring_sd));
	char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
	if (text == NULL || agent_write_file_sync(path, text, strlen(text), err, sizeof err) != 0)
		log_error("cannot record the live process", "path=%s", path);
	free(text);
	json_decref(j);
	if (l->proc.pid > 0) {
		char num[32];
		int n = snprintf(num, sizeof num, "%d\n", (int)l->proc.pid);
		agent_write_file_sync(pidp, num, (size_t)n, err, sizeof err);
	} else {
		unlink(pidp);
	}
}

int agent_load_release(struct agent *a, const char *hex, struct agent_manifest **m, char *err,
		       size_t errlen)
{
	char dir[AGENT_PATH_MAX];
	agent_store_path(&a->store, dir, sizeof dir, "releases/%s", hex);
	int rc = agent_manifest_load(dir, m, err, errlen);
	if (rc == 0 && (rc = agent_manifest_resolve(*m, dir)) != 0) {
		agent_manifest_free(*m);
		*m = NULL;
		sw_errf(err, errlen, rc, "out of memory");
	}
	return rc;
}

int agent_candidate_record(struct agent *a, const struct agent_proc *p, const char *hex,
			   const char *version, const char *secrets_dir)
{
	char path[AGENT_PATH_MAX], err[256];
	agent_store_path(&a->store, path, sizeof path, "run/candidate.json");
	json_t *j = json_pack("{s:I, s:I, s:i, s:s, s:s, s:s}", "pid", (json_int_t)p->pid,
			      "start_time", (json_int_t)p->start_time, "port", p->port, "release", hex,
			      "version", version, "secrets_dir", secrets_dir ? secrets_dir : "");
	char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
	int rc = text ? agent_write_file_sync(path, text, strlen(text), err, sizeof err) : SW_ENOMEM;
	free(text);
	json_decref(j);
	return rc;
}

void agent_candidate_clear(struct agent *a)
{
	char path[AGENT_PATH_MAX];
	agent_store_path(&a->store, path, sizeof path, "run/candidate.json");
	unlink(path);
}

/* ------------------------------------------------------ start-up reconcile */

/*
 * A process a previous agent on this root may have left running. They come
 * from three places, in order of preference for adoption: run/app.json
 * (the live process and, while a deploy stops it, the one it replaces),
 * run/candidate.json (a new process being health-checked or just switched
 * to), and a scan of /proc for processes whose environment carries this
 * root's mark (AGENT_MARK_ENV): that scan finds what the records missed,
 * because the agent died between starting a process and recording it.
 */
struct leftover {
	struct agent_proc p;          /* pid: the process, or its group when !leader */
	char hex[AGENT_HEX_LEN + 1];  /* its release ("" = unknown) */
	char version[AGENT_VERSION_MAX + 1];
	char secrets_dir[AGENT_PATH_MAX];
	int leader;                   /* leads its own group: may be adopted */
	int marked_group;             /* a marked process runs in its group */
	const char *from;
};

#define MAX_LEFTOVERS 64

struct leftovers {
	struct leftover v[MAX_LEFTOVERS];
	size_t n;
};

static struct leftover *leftover_find(struct leftovers *lo, pid_t pid)
{
	for (size_t i = 0; i < lo->n; i++)
		if (lo->v[i].p.pid == pid)
			return &lo->v[i];
	return NULL;
}

/* Adds one record {pid, start_time, port?, release?, version?,
 * secrets_dir?} (malformed ones are skipped; pid 0 = the live release was
 * down: kept for its port and secrets). */
static void leftover_add_json(struct leftovers *lo, json_t *j, const char *from)
{
	json_int_t pid = 0, st = 0;
	int port = 0;
	const char *rel = "", *ver = "", *sd = "";
	if (j == NULL || lo->n == MAX_LEFTOVERS ||
	    json_unpack(j, "{s:I, s:I, s?i, s?s, s?s, s?s}", "pid", &pid, "start_time", &st,
			"port", &port, "release", &rel, "version", &ver, "secrets_dir", &sd) != 0 ||
	    pid < 0 || pid >= (1 << 30) || port < 0 || port > 65535 ||
	    strlen(ver) > AGENT_VERSION_MAX || strlen(sd) >= AGENT_PATH_MAX ||
	    (rel[0] != '\0' && strlen(rel) != AGENT_HEX_LEN) ||
	    (pid > 0 && leftover_find(lo, (pid_t)pid)))
		return;
	struct leftover *o = &lo->v[lo->n++];
	memset(o, 0, sizeof *o);
	o->p.pid = (pid_t)pid;
	o->p.start_time = (uint64_t)st;
	o->p.port = port;
	o->leader = 1; /* the agent records only processes it started: group leaders */
	o->from = from;
	snprintf(o->hex, sizeof o->hex, "%s", rel);
	snprintf(o->version, sizeof o->version, "%s", ver);
	snprintf(o->secrets_dir, sizeof o->secrets_dir, "%s", sd);
}

static void on_marked(pid_t pid, pid_t pgid, uint64_t start, const char *env, size_t len,
		      void *arg)
{
	struct leftovers *lo = arg;
	int leader = pid == pgid;
	/* A helper of a release is reached through its group. */
	pid_t key = leader ? pid : pgid;
	struct leftover *o = leftover_find(lo, key);
	if (o == NULL) {
		if (lo->n == MAX_LEFTOVERS)
			return;
		o = &lo->v[lo->n++];
		memset(o, 0, sizeof *o);
		o->p.pid = key;
		o->p.start_time = leader ? start : 0;
		o->leader = leader;
		o->from = "scan";
	}
	o->marked_group = 1;
	if (!leader)
		return;
	/* Fill what the record did not say (older records lack fields). */
	const char *dg = agent_env_lookup(env, len, "SLIPWAY_DIGEST");
	const char *ver = agent_env_lookup(env, len, "SLIPWAY_VERSION");
	const char *port = agent_env_lookup(env, len, "PORT");
	const char *sd = agent_env_lookup(env, len, "SLIPWAY_SECRETS_DIR");
	if (o->hex[0] == '\0' && dg != NULL && agent_digest_ok(dg, NULL))
		snprintf(o->hex, sizeof o->hex, "%s", dg + 7);
	if (o->version[0] == '\0' && ver != NULL)
		snprintf(o->version, sizeof o->version, "%s", ver);
	if (o->p.port == 0 && port != NULL) {
		char *end = NULL;
		long v = strtol(port, &end, 10);
		if (end != port && *end == '\0' && v > 0 && v < 65536)
			o->p.port = (int)v;
	}
	if (o->secrets_dir[0] == '\0' && sd != NULL && strlen(sd) < sizeof o->secrets_dir)
		snprintf(o->secrets_dir, sizeof o->secrets_dir, "%s", sd);
	o->leader = 1;
}

/* Collects every leftover: the records first (their order is the
 * preference for adoption), then the /proc scan. */
static void leftovers_collect(struct agent *a, struct leftovers *lo)
{
	char path[AGENT_PATH_MAX];
	json_error_t je;
	agent_store_path(&a->store, path, sizeof path, "run/app.json");
	json_t *app = json_load_file(path, 0, &je);
	leftover_add_json(lo, app, "app.json");
	agent_store_path(&a->store, path, sizeof path, "run/candidate.json");
	json_t *cand = json_load_file(path, 0, &je);
	leftover_add_json(lo, cand, "candidate.json");
	leftover_add_json(lo, app ? json_object_get(app, "retiring") : NULL, "app.json retiring");
	json_decref(cand);
	json_decref(app);
	if (agent_proc_find_env(AGENT_MARK_ENV, a->store.root, a->user.uid, on_marked, lo) < 0)
		log_warn("cannot scan /proc for processes left by a previous agent", NULL);
}

/* Removes a secrets directory named by a leftover: only one the agent
 * could have made (directly under --shm-dir), never the kept one's. */
static void remove_leftover_secrets(struct agent *a, const char *sd, const char *keep_sd)
{
	const char *base = a->cfg->shm_dir ? a->cfg->shm_dir : "/dev/shm";
	size_t bl = strlen(base);
	if (sd[0] == '\0' || strcmp(sd, keep_sd) == 0 || strncmp(sd, base, bl) != 0 ||
	    sd[bl] != '/' || strchr(sd + bl + 1, '/') != NULL || strstr(sd, "..") != NULL)
		return;
	agent_secrets_remove(sd);
}

int agent_adopt(struct agent *a, char *err, size_t errlen)
{
	char hex[AGENT_HEX_LEN + 1] = "";
	struct agent_manifest *m = NULL;
	struct agent_live *l = &a->live;
	struct leftovers *lo = NULL;
	int rc = 0;

	/* `current` is the commit point of a deploy: once it names the new
	 * release, the new release is what must run, whatever else happened. */
	int have_cur = agent_store_link(&a->store, "current", hex) == 0;
	if (have_cur && (rc = agent_load_release(a, hex, &m, err, errlen)) != 0)
		return rc;
	if ((lo = calloc(1, sizeof *lo)) == NULL) {
		agent_manifest_free(m);
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	}
	leftovers_collect(a, lo);

	/* Keep at most one process: alive, leading its group, running the
	 * current release; the records are preferred to the scan. */
	struct leftover *keep = NULL;
	for (size_t i = 0; have_cur && keep == NULL && i < lo->n; i++) {
		struct leftover *o = &lo->v[i];
		if (o->leader && strcmp(o->hex, hex) == 0 && agent_proc_alive(&o->p))
			keep = o;
	}
	/* What the live release had recorded (its port and secrets survive a
	 * restart of the process). */
	struct leftover *rec = NULL;
	if (have_cur && lo->n > 0 && strcmp(lo->v[0].from, "app.json") == 0 &&
	    strcmp(lo->v[0].hex, hex) == 0)
		rec = &lo->v[0];
	const char *keep_sd = keep ? keep->secrets_dir : rec ? rec->secrets_dir : "";

	/* Everything else goes: a new process whose deploy never switched, the
	 * old process of a deploy that switched but did not stop it, a second
	 * copy started but not recorded. */
	long long grace = m ? m->stop_grace_ms : 10000;
	for (size_t i = 0; i < lo->n; i++) {
		struct leftover *o = &lo->v[i];
		if (o == keep || (keep != NULL && o->p.pid == keep->p.pid))
			continue;
		struct agent_proc p = o->p;
		if (o->p.pid > 0 && (agent_proc_alive(&p) || o->marked_group)) {
			log_warn("stopping a process left by the previous agent",
				 "pid=%d release=%.12s from=%s", (int)o->p.pid,
				 o->hex[0] ? o->hex : "unknown", o->from);
			if (agent_proc_stop(&p, grace) != 0)
				log_error("a process left by the previous agent survived SIGKILL",
					  "pid=%d", (int)o->p.pid);
		}
		remove_leftover_secrets(a, o->secrets_dir, keep_sd);
	}

	pthread_mutex_lock(&a->mu);
	memset(l, 0, sizeof *l);
	if (!have_cur) {
		log_info("nothing deployed yet", NULL);
	} else {
		l->have = 1;
		l->m = m;
		m = NULL;
		snprintf(l->hex, sizeof l->hex, "%s", hex);
		l->backoff_ms = a->cfg->restart_backoff_ms;
		if (keep != NULL) {
			l->proc = keep->p;
			l->proc.is_child = 0;
			snprintf(l->version, sizeof l->version, "%s",
				 keep->version[0] ? keep->version : rec ? rec->version : "");
			snprintf(l->secrets_dir, sizeof l->secrets_dir, "%s", keep->secrets_dir);
			l->state = AGENT_PROC_RUNNING;
			l->up_since_ms = agent_now_ms();
			l->next_health_ms = agent_now_ms();
			snprintf(l->health_detail, sizeof l->health_detail, "adopted; not checked yet");
			log_info("adopted the running release",
				 "release=%.12s version=%s pid=%d port=%d from=%s", hex, l->version,
				 (int)l->proc.pid, l->proc.port, keep->from);
		} else {
			/* Not running (it crashed while the agent was away, or the
			 * host rebooted): start it again, on its old port when it had
			 * one. */
			if (rec != NULL) {
				l->proc.port = rec->p.port;
				snprintf(l->version, sizeof l->version, "%s", rec->version);
				snprintf(l->secrets_dir, sizeof l->secrets_dir, "%s", rec->secrets_dir);
			}
			l->state = AGENT_PROC_STARTING;
			l->next_restart_ms = agent_now_ms();
			log_info("the current release is not running: starting it", "release=%.12s",
				 hex);
		}
	}
	agent_save_live_locked(a);
	pthread_mutex_unlock(&a->mu);
	/* Recorded as the live process above: the candidate record is done. */
	agent_candidate_clear(a);
	agent_manifest_free(m);
	free(lo);
	return 0;
}

static int crashloop_count(struct agent *a, int64_t now)
{
	struct agent_live *l = &a->live;
	int n = 0;
	unsigned cap = sizeof l->restart_at / sizeof l->restart_at[0];
	unsigned n_at = l->nrestart_at < cap ? l->nrestart_at : cap;
	for (unsigned i = 0; i < n_at; i++)
		if (now - l->restart_at[i] <= a->cfg->crashloop_window_ms)
			n++;
	return n;
}

/* One supervisor step for a dead or due process. a->mu held. */
static void restart_step(struct agent *a, int64_t now)
{
	struct agent_live *l = &a->live;
	char err[256];
	if (l->proc.pid > 0 && !agent_proc_alive(&l->proc)) {
		log_warn("the application exited; restarting it after a backoff",
			 "release=%.12s pid=%d status=%d backoff_ms=%lld", l->hex, (int)l->proc.pid,
			 l->proc.exit_status, l->backoff_ms);
		/* A process that stayed up for a whole window starts over. */
		if (l->up_since_ms != 0 && now - l->up_since_ms >= a->cfg->crashloop_window_ms)
			l->backoff_ms = a->cfg->restart_backoff_ms;
		l->proc.pid = 0;
		l->healthy = 0;
		snprintf(l->health_detail, sizeof l->health_detail, "process exited with status %d",
			 l->proc.exit_status);
		l->health_at_ms = agent_wall_ms();
		l->next_restart_ms = now + l->backoff_ms;
		l->backoff_ms = l->backoff_ms * 2 > a->cfg->restart_backoff_max_ms
					? a->cfg->restart_backoff_max_ms
					: l->backoff_ms * 2;
		if (l->state != AGENT_PROC_CRASHLOOP)
			l->state = AGENT_PROC_STARTING;
		agent_save_live_locked(a);
	}
	if (l->proc.pid == 0 && l->next_restart_ms != 0 && now >= l->next_restart_ms) {
		unsigned cap = sizeof l->restart_at / sizeof l->restart_at[0];
		l->restart_at[l->nrestart_at % cap] = now;
		l->nrestart_at++;
		l->restarts++;
		agent_metrics_restart();
		l->next_restart_ms = 0;
		if (crashloop_count(a, now) >= a->cfg->crashloop_restarts &&
		    l->state != AGENT_PROC_CRASHLOOP) {
			l->state = AGENT_PROC_CRASHLOOP;
			log_error("crash loop: the application keeps exiting", "release=%.12s restarts=%u",
				  l->hex, l->restarts);
		}
		int port = l->proc.port;
		if (port == 0 && agent_free_port(&port, err, sizeof err) != 0)
			port = 0;
		struct agent_proc p;
		if (agent_start_release(a, l->m, l->hex, l->version, port, l->secrets_dir, &p, err,
					sizeof err) == 0) {
			agent_crash_point("after-restart-spawn");
			l->proc = p;
			l->up_since_ms = now;
			l->next_health_ms = now + l->m->health.interval_ms;
		} else {
			log_error("cannot restart the application", "release=%.12s error=%s", l->hex,
				  err);
			snprintf(l->health_detail, sizeof l->health_detail, "restart failed: %.200s", err);
			l->next_restart_ms = now + l->backoff_ms;
			l->backoff_ms = l->backoff_ms * 2 > a->cfg->restart_backoff_max_ms
						? a->cfg->restart_backoff_max_ms
						: l->backoff_ms * 2;
		}
		agent_save_live_locked(a);
	}
	/* Up for a whole window: no longer a crash loop. */
	if (l->proc.pid > 0 && l->state == AGENT_PROC_CRASHLOOP &&
	    now - l->up_since_ms >= a->cfg->crashloop_window_ms) {
		l->state = AGENT_PROC_RUNNING;
		l->nrestart_at = 0;
		l->backoff_ms = a->cfg->restart_backoff_ms;
		log_info("the application is stable again", "release=%.12s", l->hex);
	}
	if (l->proc.pid > 0 && l->state == AGENT_PROC_STARTING)
		l->state = AGENT_PROC_RUNNING;
}

/* Probes the live process when due. Called without a->mu. */
static void probe_step(struct agent *a)
{
	char hex[AGENT_HEX_LEN + 1], version[AGENT_VERSION_MAX + 1], sd[AGENT_PATH_MAX];
	char cwd[AGENT_PATH_MAX], logp[AGENT_PATH_MAX], detail[AGENT_MSG_MAX], err[256];
	pthread_mutex_lock(&a->probe_mu);
	pthread_mutex_lock(&a->mu);
	struct agent_live *l = &a->live;
	int64_t now = agent_now_ms();
	if (!l->have || l->proc.pid <= 0 || now < l->next_health_ms) {
		pthread_mutex_unlock(&a->mu);
		pthread_mutex_unlock(&a->probe_mu);
		return;
	}
	const struct agent_manifest *m = l->m;
	pid_t pid = l->proc.pid;
	int port = l->proc.port;
	snprintf(hex, sizeof hex, "%s", l->hex);
	snprintf(version, sizeof version, "%s", l->version);
	snprintf(sd, sizeof sd, "%s", l->secrets_dir);
	l->next_health_ms = now + m->health.live_interval_ms;
	pthread_mutex_unlock(&a->mu);

	struct agent_env env = { 0 };
	int ok = 0;
	agent_store_path(&a->store, cwd, sizeof cwd, "releases/%s/%s", hex, m->workdir);
	agent_store_path(&a->store, logp, sizeof logp, "logs/app.log");
	if (m->health.kind == AGENT_CHECK_COMMAND &&
	    agent_build_env(a, m, hex, version, port, sd, 0, &env, err, sizeof err) != 0)
		snprintf(detail, sizeof detail, "health command environment: %.200s", err);
	else
		ok = agent_health_probe(&m->health, port, cwd, env.envp, logp, &a->user, detail,
					sizeof detail);
	agent_env_free(&env);

	pthread_mutex_lock(&a->mu);
	if (l->have && l->proc.pid == pid && strcmp(l->hex, hex) == 0) {
		if (ok != l->healthy)
			log_info(ok ? "the application is healthy" : "the application is unhealthy",
				 "release=%.12s detail=%s", hex, detail);
		l->healthy = ok;
		snprintf(l->health_detail, sizeof l->health_detail, "%s", detail);
		l->health_at_ms = agent_wall_ms();
	}
	pthread_mutex_unlock(&a->mu);
	pthread_mutex_unlock(&a->probe_mu);
}

static void *sup_main(void *arg)
{
	struct agent *a = arg;
	log_set_request_id(NULL);
	while (!atomic_load(&a->stopping)) {
		pthread_mutex_lock(&a->mu);
		if (a->live.have)
			restart_step(a, agent_now_ms());
		struct timespec ts = clock_after(CLOCK_REALTIME, TICK_MS);
		pthread_mutex_unlock(&a->mu);
		probe_step(a);
		pthread_mutex_lock(&a->mu);
		if (!atomic_load(&a->stopping))
			pthread_cond_timedwait(&a->cond, &a->mu, &ts);
		pthread_mutex_unlock(&a->mu);
	}
	return NULL;
}

int agent_sup_start(struct agent *a, char *err, size_t errlen)
{
	if (pthread_create(&a->sup_thread, NULL, sup_main, a) != 0)
		return sw_errf(err, errlen, SW_EINTERNAL, "cannot start the supervisor thread");
	a->sup_started = 1;
	return 0;
}

void agent_sup_stop(struct agent *a)
{
	if (!a->sup_started)
		return;
	atomic_store(&a->stopping, 1);
	pthread_mutex_lock(&a->mu);
	pthread_cond_broadcast(&a->cond);
	pthread_mutex_unlock(&a->mu);
	pthread_join(a->sup_thread, NULL);
	a->sup_started = 0;
}

void agent_promote(struct agent *a, const char *hex, const char *version,
		   struct agent_manifest *m, const struct agent_proc *p, const char *secrets_dir,
		   const char *health_detail)
{
	struct agent_live *l = &a->live;
	pthread_mutex_lock(&a->mu);
	struct agent_proc old = l->proc;
	struct agent_manifest *old_m = l->m;
	char old_sd[AGENT_PATH_MAX], old_hex[AGENT_HEX_LEN + 1];
	snprintf(old_sd, sizeof old_sd, "%s", l->secrets_dir);
	snprintf(old_hex, sizeof old_hex, "%s", l->hex);
	int had = l->have;
	memset(l, 0, sizeof *l);
	l->have = 1;
	snprintf(l->hex, sizeof l->hex, "%s", hex);
	snprintf(l->version, sizeof l->version, "%s", version);
	l->m = m;
	l->proc = *p;
	snprintf(l->secrets_dir, sizeof l->secrets_dir, "%s", secrets_dir ? secrets_dir : "");
	l->state = AGENT_PROC_RUNNING;
	l->healthy = 1;
	snprintf(l->health_detail, sizeof l->health_detail, "%s", health_detail);
	l->health_at_ms = agent_wall_ms();
	l->next_health_ms = agent_now_ms() + m->health.live_interval_ms;
	l->backoff_ms = a->cfg->restart_backoff_ms;
	l->up_since_ms = agent_now_ms();
	/* Recorded with the new one until it is stopped, so that an agent
	 * killed meanwhile stops it on its next start. */
	int retire = had && old.pid > 0 && old.pid != p->pid;
	if (retire) {
		l->retiring = old;
		snprintf(l->retiring_hex, sizeof l->retiring_hex, "%s", old_hex);
		snprintf(l->retiring_sd, sizeof l->retiring_sd, "%s", old_sd);
	}
	agent_save_live_locked(a);
	pthread_mutex_unlock(&a->mu);
	agent_crash_point("after-record");

	if (retire) {
		long long grace = old_m ? old_m->stop_grace_ms : 10000;
		log_info("stopping the previous process", "pid=%d grace_ms=%lld", (int)old.pid, grace);
		if (agent_proc_stop(&old, grace) != 0)
			log_error("the previous process survived SIGKILL", "pid=%d", (int)old.pid);
		pthread_mutex_lock(&a->mu);
		memset(&l->retiring, 0, sizeof l->retiring);
		agent_save_live_locked(a);
		pthread_mutex_unlock(&a->mu);
	}
	if (had && old_sd[0] != '\0' && strcmp(old_sd, secrets_dir ? secrets_dir : "") != 0)
		agent_secrets_remove(old_sd);
	pthread_mutex_lock(&a->probe_mu);
	agent_manifest_free(old_m);
	pthread_mutex_unlock(&a->probe_mu);
}

void agent_stop_app(struct agent *a)
{
	struct agent_live *l = &a->live;
	pthread_mutex_lock(&a->probe_mu);
	pthread_mutex_lock(&a->mu);
	if (l->have) {
		if (l->proc.pid > 0)
			agent_proc_stop(&l->proc, l->m ? l->m->stop_grace_ms : 10000);
		agent_secrets_remove(l->secrets_dir);
		agent_manifest_free(l->m);
		memset(l, 0, sizeof *l);
		agent_save_live_locked(a);
	}
	pthread_mutex_unlock(&a->mu);
	pthread_mutex_unlock(&a->probe_mu);
}

void agent_runtime(struct agent *a, struct agent_runtime *rt)
{
	memset(rt, 0, sizeof *rt);
	const char *app = agent_labels_get(&a->cfg->labels, "app");
	snprintf(rt->app, sizeof rt->app, "%s", app ? app : "");
	pthread_mutex_lock(&a->mu);
	const struct agent_live *l = &a->live;
	if (!l->have) {
		rt->process = AGENT_PROC_NONE;
	} else {
		snprintf(rt->version, sizeof rt->version, "%s", l->version);
		snprintf(rt->digest, sizeof rt->digest, "sha256:%s", l->hex);
		rt->process = l->state ? l->state : AGENT_PROC_STARTING;
		if (l->proc.pid <= 0 && l->state == AGENT_PROC_RUNNING)
			rt->process = AGENT_PROC_STARTING;
		rt->healthy = l->healthy && l->proc.pid > 0;
		snprintf(rt->health_detail, sizeof rt->health_detail, "%s", l->health_detail);
		rt->restarts = l->restarts;
		rt->health_checked_unix_ms = l->health_at_ms;
		rt->port = l->proc.port;
	}
	pthread_mutex_unlock(&a->mu);
}
