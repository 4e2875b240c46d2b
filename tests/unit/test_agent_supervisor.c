/*
 * Unit tests for the agent's process handling, supervisor and executor
 * (services/agent/proc.c, supervise.c, exec.c) without any server: the
 * releases are placed under releases/<hex> as if already pulled and
 * unpacked (the executor then skips the pull; the pull, digest check and
 * unpack over the real artifact service are in it_agent_exec.c). The
 * application is the real demo app (build/demo/demo-app).
 *
 * Covered: process groups and stopping them, a deploy that switches, a
 * deploy that fails its health check and leaves the old release serving,
 * re-running a deploy, rollback, crash restarts with backoff, crash loops,
 * adoption of the running app by a restarted agent, secrets given to the
 * child's environment, and a task abandoned at a safe point.
 */
#include "agent.h"
#include "err.h"
#include "log.h"
#include "pki.h"
#include "rpc.h"
#include "sealed.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

static char dir[256], root[300], pki[300], cert[320], key[320], demo_app[4096];
static struct agent_config cfg;
static struct agent *ag;

static void sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) != 0)
		;
}

static void new_agent(void)
{
	char err[512];
	if (agent_new(&cfg, &ag, err, sizeof err) != 0)
		fail_msg("agent_new: %s", err);
}

static int setup(void **state)
{
	(void)state;
	char err[256];
	snprintf(dir, sizeof dir, "/tmp/test_agent_supervisor.XXXXXX");
	if (mkdtemp(dir) == NULL)
		return -1;
	/* As root the applications run as an unprivileged user, which must
	 * reach the root's releases. */
	chmod(dir, 0755);
	if (realpath("build/demo/demo-app", demo_app) == NULL) {
		fprintf(stderr, "build/demo/demo-app is missing: run make\n");
		return -1;
	}
	snprintf(root, sizeof root, "%s/root", dir);
	snprintf(pki, sizeof pki, "%s/pki", dir);
	snprintf(cert, sizeof cert, "%s/agent.crt", dir);
	snprintf(key, sizeof key, "%s/agent.key", dir);
	if (pki_init(pki, "slipway", 1, err, sizeof err) != 0)
		return -1;
	char prefix[320];
	snprintf(prefix, sizeof prefix, "%s/agent", dir);
	struct pki_issue_req r = { .dir = pki, .out_prefix = prefix, .common_name = "agent" };
	r.uris[0] = "spiffe://slipway/agent/eu/host-1";
	if (pki_issue(&r, err, sizeof err) != 0)
		return -1;
	memset(&cfg, 0, sizeof cfg);
	cfg.root = root;
	cfg.ca = cert; /* only read, never used for a connection here */
	cfg.cert = cert;
	cfg.key = key;
	cfg.orchestrator_addr = "";
	cfg.artifact_addr = "127.0.0.1:9"; /* never called: releases are local */
	cfg.secrets_addr = "";
	cfg.seal_key = "";
	cfg.secrets_sign_key = "";
	cfg.hostname = "";
	cfg.shm_dir = "/dev/shm";
	char e2[128];
	agent_labels_add_list(&cfg.labels, "app=web,environment=prod,region=eu", e2, sizeof e2);
	cfg.poll_wait_ms = 25000;
	cfg.heartbeat_ms = 5000;
	cfg.keep_releases = 3;
	cfg.max_blob_bytes = 1 << 30;
	cfg.max_unpacked_bytes = 1 << 30;
	cfg.max_entries = 10000;
	cfg.restart_backoff_ms = 20;
	cfg.restart_backoff_max_ms = 200;
	cfg.crashloop_restarts = 3;
	cfg.crashloop_window_ms = 2000;
	cfg.shutdown_grace_ms = 5000;
	cfg.task_timeout_ms = 60000;
	cfg.pull_retry_ms = 5000;
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	if (ag != NULL) {
		agent_stop_app(ag);
		agent_free(ag);
	}
	agent_rmtree(dir);
	return 0;
}

/* ---------------------------------------------------------------- helpers */

static void hex_of(char c, char hex[AGENT_HEX_LEN + 1])
{
	memset(hex, c, AGENT_HEX_LEN);
	hex[AGENT_HEX_LEN] = '\0';
}

/* Places releases/<hex> as the executor would after pull + unpack. */
static void place_release(char c, const char *version, int healthy, const char *command_json,
			  const char *extra)
{
	char hex[AGENT_HEX_LEN + 1], p[AGENT_PATH_MAX], cmd[8192];
	hex_of(c, hex);
	snprintf(p, sizeof p, "%s/releases/%s", root, hex);
	if (mkdir(p, 0755) != 0 && errno == EEXIST)
		return;
	snprintf(p, sizeof p, "%s/releases/%s/bin", root, hex);
	assert_int_equal(mkdir(p, 0755), 0);
	snprintf(cmd, sizeof cmd, "cp '%s' '%s/releases/%s/bin/demo-app'", demo_app, root, hex);
	assert_int_equal(system(cmd), 0);
	snprintf(p, sizeof p, "%s/releases/%s/slipway.json", root, hex);
	FILE *f = fopen(p, "w");
	assert_non_null(f);
	fprintf(f,
		"{\"schema\":1,\"app\":\"web\",\"version\":\"%s\","
		"\"start\":{\"command\":%s,\"env\":{\"DEMO_VERSION\":\"%s\",\"DEMO_HEALTHY\":\"%s\","
		"\"DEMO_SECRET_ENV\":\"DEMO_SECRET\"}},"
		"\"health\":{\"http\":{\"path\":\"/healthz\"},\"interval_ms\":50,\"timeout_ms\":1000,"
		"\"retries\":8,\"deadline_ms\":10000,\"live_interval_ms\":100},"
		"\"stop\":{\"grace_ms\":3000}%s}",
		version, command_json ? command_json : "[\"bin/demo-app\"]", version,
		healthy ? "true" : "false", extra ? extra : "");
	fclose(f);
}

static struct agent_task make_task(char c, const char *version, uint64_t gen)
{
	struct agent_task t;
	memset(&t, 0, sizeof t);
	snprintf(t.task_id, sizeof t.task_id, "dep-%s/host-1/deploy", version);
	t.generation = gen;
	t.kind = AGENT_TASK_DEPLOY;
	snprintf(t.deployment_id, sizeof t.deployment_id, "dep-%s", version);
	snprintf(t.app, sizeof t.app, "web");
	snprintf(t.environment, sizeof t.environment, "prod");
	snprintf(t.version, sizeof t.version, "%s", version);
	char hex[AGENT_HEX_LEN + 1];
	hex_of(c, hex);
	snprintf(t.digest, sizeof t.digest, "sha256:%s", hex);
	return t;
}

/* GET path on 127.0.0.1:port; returns the body (static) or NULL. */
static const char *http_get(int port, const char *path, int *status)
{
	static char buf[4096];
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
		if (fd >= 0)
			close(fd);
		return NULL;
	}
	char req[256];
	int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\n\r\n", path);
	if (send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
		close(fd);
		return NULL;
	}
	size_t got = 0;
	ssize_t r;
	while (got < sizeof buf - 1 && (r = recv(fd, buf + got, sizeof buf - 1 - got, 0)) > 0)
		got += (size_t)r;
	close(fd);
	buf[got] = '\0';
	if (sscanf(buf, "HTTP/1.0 %d", status) != 1)
		return NULL;
	char *body = strstr(buf, "\r\n\r\n");
	return body ? body + 4 : NULL;
}

/* Alive and not a zombie (init here may be slow to reap orphans). */
static int pid_alive(pid_t pid)
{
	char path[64], buf[512];
	snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
	FILE *f = fopen(path, "r");
	if (f == NULL)
		return 0;
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = '\0';
	char *p = strrchr(buf, ')');
	return p != NULL && p[1] == ' ' && p[2] != 'Z' && p[2] != 'X';
}

/* Any live process left in process group pg? */
static int group_alive(pid_t pg)
{
	char cmd[128];
	snprintf(cmd, sizeof cmd,
		 "ps -eo pgid=,stat= | awk '$1 == %d && $2 !~ /^Z/ { f = 1 } END { exit !f }'",
		 (int)pg);
	return system(cmd) == 0;
}

static int run(const struct agent_task *t, struct agent_result *res)
{
	return agent_exec(ag, t, NULL, NULL, res);
}

/* ---------------------------------------------------------------- tests */

static void test_process_groups(void **state)
{
	(void)state;
	char err[256], logp[400];
	snprintf(logp, sizeof logp, "%s/proc.log", dir);
	/* A process and a child of its own: both in one group, both stopped. */
	char a0[] = "/bin/sh", a1[] = "-c", a2[] = "sleep 60 & sleep 60";
	char *argv[] = { a0, a1, a2, NULL };
	char e0[] = "PATH=/usr/bin:/bin";
	char *envp[] = { e0, NULL };
	struct agent_spawn sp = { .argv = argv, .envp = envp, .cwd = "/", .log_path = logp };
	struct agent_proc p;
	assert_int_equal(agent_proc_spawn(&sp, &p, err, sizeof err), 0);
	assert_int_equal(getpgid(p.pid), p.pid);
	assert_true(p.start_time > 0);
	assert_int_equal(agent_proc_alive(&p), 1);
	sleep_ms(100);
	pid_t pg = p.pid;
	assert_int_equal(agent_proc_stop(&p, 2000), 0);
	assert_false(group_alive(pg)); /* the whole group is gone */
	/* One that ignores SIGTERM is killed after the grace period. */
	char b2[] = "trap '' TERM; sleep 60";
	char *argv2[] = { a0, a1, b2, NULL };
	sp.argv = argv2;
	assert_int_equal(agent_proc_spawn(&sp, &p, err, sizeof err), 0);
	sleep_ms(100);
	pg = p.pid;
	assert_int_equal(agent_proc_stop(&p, 200), 0);
	assert_false(group_alive(pg));
	/* Adopted processes are watched through /proc: a zombie is dead. */
	char c2[] = "exit 3";
	char *argv3[] = { a0, a1, c2, NULL };
	sp.argv = argv3;
	assert_int_equal(agent_proc_spawn(&sp, &p, err, sizeof err), 0);
	pid_t zpid = p.pid;
	p.is_child = 0;
	sleep_ms(200);
	assert_int_equal(agent_proc_alive(&p), 0);
	int st;
	assert_int_equal(waitpid(zpid, &st, 0), zpid);
	/* ... and a reused pid with another start time is not ours. */
	char d2[] = "sleep 60";
	char *argv4[] = { a0, a1, d2, NULL };
	sp.argv = argv4;
	assert_int_equal(agent_proc_spawn(&sp, &p, err, sizeof err), 0);
	struct agent_proc fake = p;
	fake.is_child = 0;
	fake.start_time = p.start_time + 12345;
	assert_int_equal(agent_proc_alive(&fake), 0);
	assert_int_equal(agent_proc_alive(&p), 1);
	agent_proc_stop(&p, 1000);
	/* Commands with a timeout. */
	char e2[] = "sleep 5";
	char *argv5[] = { a0, a1, e2, NULL };
	sp.argv = argv5;
	assert_int_equal(agent_proc_run(&sp, 100, &st, err, sizeof err), 0);
	assert_int_equal(st, -1);
	char f2[] = "exit 4";
	char *argv6[] = { a0, a1, f2, NULL };
	sp.argv = argv6;
	assert_int_equal(agent_proc_run(&sp, 5000, &st, err, sizeof err), 0);
	assert_int_equal(st, 4);
	/* A program that does not exist fails to start. */
	char g0[] = "/nonexistent/prog";
	char *argv7[] = { g0, NULL };
	sp.argv = argv7;
	assert_int_not_equal(agent_proc_spawn(&sp, &p, err, sizeof err), 0);
}

static void test_deploy_fail_keep_old_rollback(void **state)
{
	(void)state;
	struct agent_result res;
	struct agent_runtime rt;
	char hex[AGENT_HEX_LEN + 1];
	int status = 0;
	new_agent();
	char e[256];
	assert_int_equal(agent_adopt(ag, e, sizeof e), 0);
	assert_int_equal(agent_sup_start(ag, e, sizeof e), 0);
	agent_runtime(ag, &rt);
	assert_int_equal(rt.process, AGENT_PROC_NONE);

	place_release('1', "1.0.0", 1, NULL, NULL);
	place_release('2', "2.0.0", 1, NULL, NULL);
	place_release('3', "3.0.0", 0, NULL, NULL);

	/* v1 */
	struct agent_task t1 = make_task('1', "1.0.0", 1);
	assert_int_equal(run(&t1, &res), 0);
	if (res.result != AGENT_RESULT_SUCCEEDED)
		fail_msg("v1: %s", res.message);
	agent_runtime(ag, &rt);
	assert_int_equal(rt.process, AGENT_PROC_RUNNING);
	assert_true(rt.healthy);
	assert_string_equal(rt.version, "1.0.0");
	assert_int_equal(agent_store_link(&ag->store, "current", hex), 0);
	assert_int_equal(hex[0], '1');
	const char *body = http_get(rt.port, "/", &status);
	assert_non_null(body);
	assert_int_equal(status, 200);
	assert_non_null(strstr(body, "\"version\":\"1.0.0\""));
	assert_non_null(strstr(body, "\"secret\":\"absent\""));
	int v1_port = rt.port;
	pid_t v1_pid = ag->live.proc.pid;

	/* v3 fails its health check: v1 keeps serving, current unchanged. */
	struct agent_task t3 = make_task('3', "3.0.0", 2);
	assert_int_equal(run(&t3, &res), 0);
	assert_int_equal(res.result, AGENT_RESULT_FAILED);
	assert_non_null(strstr(res.message, "health check"));
	assert_non_null(strstr(res.message, "HTTP 500"));
	assert_int_equal(agent_store_link(&ag->store, "current", hex), 0);
	assert_int_equal(hex[0], '1');
	assert_true(pid_alive(v1_pid));
	body = http_get(v1_port, "/", &status);
	assert_non_null(body);
	assert_non_null(strstr(body, "\"version\":\"1.0.0\""));
	agent_runtime(ag, &rt);
	assert_string_equal(rt.version, "1.0.0");

	/* v2 switches; v1 is stopped; previous -> v1. */
	struct agent_task t2 = make_task('2', "2.0.0", 3);
	assert_int_equal(run(&t2, &res), 0);
	if (res.result != AGENT_RESULT_SUCCEEDED)
		fail_msg("v2: %s", res.message);
	agent_runtime(ag, &rt);
	assert_string_equal(rt.version, "2.0.0");
	assert_int_not_equal(rt.port, v1_port);
	body = http_get(rt.port, "/", &status);
	assert_non_null(body);
	assert_non_null(strstr(body, "\"version\":\"2.0.0\""));
	for (int i = 0; i < 100 && pid_alive(v1_pid); i++)
		sleep_ms(20);
	assert_false(pid_alive(v1_pid));
	assert_int_equal(agent_store_link(&ag->store, "previous", hex), 0);
	assert_int_equal(hex[0], '1');

	/* The same deploy again: harmless and quick. */
	pid_t v2_pid = ag->live.proc.pid;
	t2.generation = 4;
	assert_int_equal(run(&t2, &res), 0);
	assert_int_equal(res.result, AGENT_RESULT_SUCCEEDED);
	assert_non_null(strstr(res.message, "already running"));
	assert_int_equal(ag->live.proc.pid, v2_pid);

	/* Rollback to v1 (still on disk). */
	struct agent_task rb = make_task('1', "1.0.0", 5);
	rb.kind = AGENT_TASK_ROLLBACK;
	assert_int_equal(run(&rb, &res), 0);
	assert_int_equal(res.result, AGENT_RESULT_SUCCEEDED);
	agent_runtime(ag, &rt);
	assert_string_equal(rt.version, "1.0.0");
	assert_int_equal(agent_store_link(&ag->store, "previous", hex), 0);
	assert_int_equal(hex[0], '2');

	/* Tasks for another app or environment, or with a bad digest, fail. */
	struct agent_task bad = make_task('2', "2.0.0", 6);
	snprintf(bad.app, sizeof bad.app, "api");
	assert_int_equal(run(&bad, &res), 0);
	assert_int_equal(res.result, AGENT_RESULT_FAILED);
	assert_non_null(strstr(res.message, "app api"));
	bad = make_task('2', "2.0.0", 7);
	snprintf(bad.environment, sizeof bad.environment, "staging");
	assert_int_equal(run(&bad, &res), 0);
	assert_int_equal(res.result, AGENT_RESULT_FAILED);
	bad = make_task('2', "2.0.0", 8);
	snprintf(bad.digest, sizeof bad.digest, "sha256:../../etc");
	assert_int_equal(run(&bad, &res), 0);
	assert_int_equal(res.result, AGENT_RESULT_FAILED);
	assert_non_null(strstr(res.message, "digest"));
	agent_runtime(ag, &rt);
	assert_string_equal(rt.version, "1.0.0");
	assert_true(rt.healthy);
}

static void test_crash_restart_and_crashloop(void **state)
{
	(void)state;
	struct agent_runtime rt;
	struct agent_result res;
	char marker[400];
	snprintf(marker, sizeof marker, "%s/crash", dir);
	/* Crashes at start while the marker exists. */
	char cmd[1024];
	snprintf(cmd, sizeof cmd,
		 "[\"/bin/sh\",\"-c\",\"if [ -e %s ]; then exit 3; fi; exec bin/demo-app\"]", marker);
	place_release('4', "4.0.0", 1, cmd, NULL);
	struct agent_task t = make_task('4', "4.0.0", 20);
	assert_int_equal(run(&t, &res), 0);
	if (res.result != AGENT_RESULT_SUCCEEDED)
		fail_msg("v4: %s", res.message);
	agent_runtime(ag, &rt);
	assert_int_equal(rt.restarts, 0);
	pid_t pid = ag->live.proc.pid;

	/* A crash: restarted after the backoff, on the same port. */
	int port = rt.port;
	kill(-pid, SIGKILL);
	for (int i = 0; i < 200; i++) {
		agent_runtime(ag, &rt);
		if (rt.restarts >= 1 && rt.process == AGENT_PROC_RUNNING && rt.healthy &&
		    ag->live.proc.pid != pid)
			break;
		sleep_ms(25);
	}
	assert_int_equal(rt.restarts, 1);
	assert_int_equal(rt.process, AGENT_PROC_RUNNING);
	assert_int_equal(rt.port, port);
	assert_true(rt.healthy);

	/* Keeps crashing: a crash loop, reported as such. */
	FILE *f = fopen(marker, "w");
	assert_non_null(f);
	fclose(f);
	kill(-ag->live.proc.pid, SIGKILL);
	for (int i = 0; i < 400; i++) {
		agent_runtime(ag, &rt);
		if (rt.process == AGENT_PROC_CRASHLOOP)
			break;
		sleep_ms(25);
	}
	assert_int_equal(rt.process, AGENT_PROC_CRASHLOOP);
	assert_false(rt.healthy);
	assert_true(rt.restarts >= 3);
	/* Fixed: it comes back and, after a quiet window, is no longer a crash loop. */
	unlink(marker);
	for (int i = 0; i < 400; i++) {
		agent_runtime(ag, &rt);
		if (rt.process == AGENT_PROC_RUNNING && rt.healthy)
			break;
		sleep_ms(25);
	}
	assert_int_equal(rt.process, AGENT_PROC_RUNNING);
	assert_true(rt.healthy);
}

static void test_adoption_after_agent_restart(void **state)
{
	(void)state;
	struct agent_runtime rt;
	char e[256];
	agent_runtime(ag, &rt);
	pid_t pid = ag->live.proc.pid;
	assert_true(pid_alive(pid));
	char version[AGENT_VERSION_MAX + 1];
	snprintf(version, sizeof version, "%s", rt.version);
	/* The agent goes away: the application stays. */
	agent_free(ag);
	ag = NULL;
	assert_true(pid_alive(pid));
	new_agent();
	assert_int_equal(agent_adopt(ag, e, sizeof e), 0);
	assert_int_equal(ag->live.proc.pid, pid);
	assert_int_equal(ag->live.proc.is_child, 0);
	assert_int_equal(agent_sup_start(ag, e, sizeof e), 0);
	agent_runtime(ag, &rt);
	assert_string_equal(rt.version, version);
	assert_int_equal(rt.process, AGENT_PROC_RUNNING);
	/* The adopted process dies: the new agent restarts it. It was not our
	 * child, so it is reaped by someone else; reap it here. */
	kill(-pid, SIGKILL);
	waitpid(pid, NULL, 0);
	for (int i = 0; i < 200; i++) {
		agent_runtime(ag, &rt);
		if (rt.restarts >= 1 && rt.healthy && ag->live.proc.pid != pid)
			break;
		sleep_ms(25);
	}
	assert_true(rt.restarts >= 1);
	assert_true(rt.healthy);
	assert_int_equal(ag->live.proc.is_child, 1);
}

static void test_secrets_need_a_grant(void **state)
{
	(void)state;
	struct agent_result res;
	place_release('5', "5.0.0", 1, NULL,
		      ",\"secrets\":[{\"name\":\"db-password\",\"env\":\"DEMO_SECRET\"}]");
	struct agent_task t = make_task('5', "5.0.0", 30);
	assert_int_equal(run(&t, &res), 0);
	assert_int_equal(res.result, AGENT_RESULT_FAILED);
	assert_non_null(strstr(res.message, "needs 1 secret"));
	/* With a grant but no secrets service configured: a clear failure. */
	t.has_secrets = 1;
	t.generation = 31;
	assert_int_equal(run(&t, &res), 0);
	assert_int_equal(res.result, AGENT_RESULT_FAILED);
	assert_non_null(strstr(res.message, "secrets"));
}

static void test_secret_env_reaches_the_child(void **state)
{
	(void)state;
	char sd[] = "/dev/shm/test-agent-secrets.XXXXXX", p[256], err[256], hex[AGENT_HEX_LEN + 1];
	struct agent_manifest *m = NULL;
	assert_non_null(mkdtemp(sd));
	snprintf(p, sizeof p, "%s/.env", sd);
	static const char envfile[] = "DEMO_SECRET=hunter2";
	assert_int_equal(sealed_secret_file_write(p, (const uint8_t *)envfile, sizeof envfile, 1,
						  err, sizeof err), 0);
	hex_of('5', hex);
	assert_int_equal(agent_load_release(ag, hex, &m, err, sizeof err), 0);
	int port;
	struct agent_proc proc;
	assert_int_equal(agent_free_port(&port, err, sizeof err), 0);
	assert_int_equal(agent_start_release(ag, m, hex, "5.0.0", port, sd, &proc, err, sizeof err),
			 0);
	const char *body = NULL;
	int status = 0;
	for (int i = 0; i < 100 && body == NULL; i++) {
		sleep_ms(20);
		body = http_get(port, "/", &status);
	}
	assert_non_null(body);
	assert_non_null(strstr(body, "\"secret\":\"present\""));
	assert_null(strstr(body, "hunter2"));
	agent_proc_stop(&proc, 2000);
	/* Without its secrets directory the release cannot start. */
	agent_secrets_remove(sd);
	struct stat st;
	assert_int_not_equal(stat(sd, &st), 0);
	assert_int_not_equal(agent_start_release(ag, m, hex, "5.0.0", port, sd, &proc, err, sizeof err),
			     0);
	agent_manifest_free(m);
}

static int cancel_after(struct agent *a, const struct agent_task *t, void *arg)
{
	(void)a;
	(void)t;
	int *n = arg;
	return --*n <= 0;
}

static void test_abandon_at_a_safe_point(void **state)
{
	(void)state;
	struct agent_result res;
	struct agent_runtime before, after;
	char hex[AGENT_HEX_LEN + 1];
	agent_runtime(ag, &before);
	pid_t pid = ag->live.proc.pid;
	/* v3 never gets healthy; the task is cancelled during its checks.
	 * (Pruning may have removed it: place it again.) */
	place_release('3', "3.0.0", 0, NULL, NULL);
	struct agent_task t = make_task('3', "3.0.0", 40);
	int budget = 6;
	int xrc = agent_exec(ag, &t, cancel_after, &budget, &res);
	if (xrc != SW_ECANCELLED)
		fail_msg("not abandoned: %d %s", xrc, res.message);
	agent_runtime(ag, &after);
	assert_string_equal(after.version, before.version);
	assert_int_equal(ag->live.proc.pid, pid);
	assert_int_equal(agent_store_link(&ag->store, "current", hex), 0);
	assert_int_equal(hex[0], '4');
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_process_groups),
		cmocka_unit_test(test_deploy_fail_keep_old_rollback),
		cmocka_unit_test(test_crash_restart_and_crashloop),
		cmocka_unit_test(test_adoption_after_agent_restart),
		cmocka_unit_test(test_secrets_need_a_grant),
		cmocka_unit_test(test_secret_env_reaches_the_child),
		cmocka_unit_test(test_abandon_at_a_safe_point),
	};
	signal(SIGPIPE, SIG_IGN);
	rpc_init();
	int rc = cmocka_run_group_tests(tests, setup, teardown);
	rpc_shutdown();
	return rc;
}
