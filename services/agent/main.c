/*
 * slipway-agent - the execution plane: runs on each target host, receives
 * tasks from the orchestrator and makes the host run the release it is
 * told to, healthy. It has no listener (it only calls out), so main.c uses
 * lib/cfg, lib/log and its own signal loop instead of svc_start:
 *
 *   config -> logging -> signals blocked (before any thread) -> the agent
 *   (root, keys, clients) -> adopt what runs -> supervisor -> control
 *   threads -> wait for SIGTERM -> stop polling, let the task reach a safe
 *   point -> exit 0, leaving the application running.
 */
#include "agent.h"
#include "cfg.h"
#include "err.h"
#include "log.h"
#include "rpc.h"
#include "svc.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* SIGHUP: the agent's certificate, key and CA again, for its clients of
 * the control plane (svc_reload_files; the identity must stay the same). */
struct reload_arg {
	const struct agent_config *c;
	const struct agent *a;
};

static int reload_tls(void *arg, char *err, size_t errlen)
{
	const struct reload_arg *r = arg;
	return svc_reload_files(r->c->ca, r->c->cert, r->c->key, r->a->keys.self_id, NULL, err,
				errlen);
}

int main(int argc, char **argv)
{
	struct agent_config c;
	char *orch = NULL, *artifact = NULL, *secrets = NULL, *ca = NULL, *cert = NULL,
	     *key = NULL, *root = NULL, *labels = NULL, *sign_key = NULL, *seal_key = NULL,
	     *hostname = NULL, *shm = NULL, *log_level = NULL, *builder_keys = NULL,
	     *app_user = NULL;
	struct agent *a = NULL;
	struct {
		char *metrics_listen;
		int metrics_allow_remote;
	} mc = { 0 };
	struct metrics_http *metrics = NULL;
	char err[512];
	int rc, code = 2;

	memset(&c, 0, sizeof c);
	struct cfg_opt opts[] = {
		{ "orchestrator-addr", CFG_STR, NULL, 0, 0, CFG_REQUIRED,
		  "the orchestrator (host:port), or its replicas a,b,...: a call that fails or "
		  "times out moves to the next", &orch },
		{ "artifact-addr", CFG_STR, NULL, 0, 0, CFG_REQUIRED,
		  "the artifact service (host:port): bundles are pulled from it", &artifact },
		{ "secrets-addr", CFG_STR, NULL, 0, 0, 0,
		  "the secrets service (host:port); empty = releases cannot have secrets", &secrets },
		{ "ca", CFG_PATH, NULL, 0, 0, CFG_REQUIRED, "deployment CA certificate (PEM)", &ca },
		{ "cert", CFG_PATH, NULL, 0, 0, CFG_REQUIRED,
		  "this agent's certificate (spiffe://<td>/agent/<region>/<host>)", &cert },
		{ "key", CFG_PATH, NULL, 0, 0, CFG_REQUIRED, "this agent's private key (PEM, 0600)",
		  &key },
		{ "root", CFG_PATH, NULL, 0, 0, CFG_REQUIRED,
		  "the agent's state directory (releases, current, state, logs)", &root },
		{ "labels", CFG_STR, NULL, 0, 0, 0,
		  "labels k=v,k=v (app and environment required); --label k=v may repeat", &labels },
		{ "secrets-sign-key", CFG_STR, NULL, 0, 0, 0,
		  "pinned Ed25519 public key of the secrets service: base64, hex or a file",
		  &sign_key },
		{ "seal-key", CFG_PATH, NULL, 0, 0, 0,
		  "X25519 key file secrets are sealed to (created 0600); default <root>/seal.key",
		  &seal_key },
		{ "hostname", CFG_STR, NULL, 0, 0, 0, "host name to register (default: the system's)",
		  &hostname },
		{ "shm-dir", CFG_PATH, "/dev/shm", 0, 0, 0,
		  "tmpfs directory for secrets handed to releases", &shm },
		{ "app-user", CFG_STR, NULL, 0, 0, 0,
		  "user applications run as: USER[:GROUP], or per environment ENV=USER[:GROUP],... "
		  "(default " AGENT_APP_USER_DEFAULT " if it exists, else nobody; root only when "
		  "named; needs root or CAP_SETUID+CAP_SETGID)",
		  &app_user },
		{ "log-level", CFG_STR, "info", 0, 0, 0, "debug, info, warn or error", &log_level },
		{ "poll-wait", CFG_MS, "25s", 1000, 120000, 0, "long poll wait asked of the orchestrator",
		  &c.poll_wait_ms },
		{ "heartbeat-interval", CFG_MS, "5s", 100, 600000, 0,
		  "heartbeat interval until the orchestrator sets one", &c.heartbeat_ms },
		{ "keep-releases", CFG_INT, "3", 2, 100, 0,
		  "releases kept on disk (current and previous included)", &c.keep_releases },
		{ "max-bundle-size", CFG_SIZE, "1GiB", 1024, 64LL << 30, 0,
		  "largest bundle accepted", &c.max_blob_bytes },
		{ "max-unpacked-size", CFG_SIZE, "4GiB", 1024, 256LL << 30, 0,
		  "largest total size of a bundle's files", &c.max_unpacked_bytes },
		{ "max-entries", CFG_INT, "100000", 1, 10000000, 0, "most entries in a bundle",
		  &c.max_entries },
		{ "restart-backoff", CFG_MS, "1s", 10, 600000, 0,
		  "first delay before restarting a crashed application", &c.restart_backoff_ms },
		{ "restart-backoff-max", CFG_MS, "30s", 10, 3600000, 0,
		  "longest delay between restarts", &c.restart_backoff_max_ms },
		{ "crashloop-restarts", CFG_INT, "5", 1, 1000, 0,
		  "restarts within the window that make a crash loop", &c.crashloop_restarts },
		{ "crashloop-window", CFG_MS, "60s", 1000, 86400000, 0,
		  "crash loop window (also: stable after this long up)", &c.crashloop_window_ms },
		{ "shutdown-grace", CFG_MS, "30s", 0, 600000, 0,
		  "how long the running task may take to reach a safe point on SIGTERM",
		  &c.shutdown_grace_ms },
		{ "task-timeout", CFG_MS, "15m", 1000, 86400000, 0,
		  "deadline of a task that carries none", &c.task_timeout_ms },
		{ "pull-retry", CFG_MS, "30s", 1000, 3600000, 0,
		  "how long a bundle download is retried without progress", &c.pull_retry_ms },
		{ "trusted-builder-keys", CFG_PATH, NULL, 0, 0, 0,
		  "trusted builder keys (the artifact service's --trusted-keys format): releases "
		  "of apps it requires signatures of run only with a provenance statement that "
		  "verifies here", &builder_keys },
		SVC_METRICS_OPTS(&mc),
	};
	size_t nopts = sizeof opts / sizeof opts[0];

	/* ---- config */
	if ((rc = agent_labels_take_flags(&argc, argv, &c.labels, err, sizeof err)) != 0) {
		fprintf(stderr, "slipway-agent: %s\n", err);
		return 2;
	}
	rc = cfg_parse("AGENT", opts, nopts, argc, argv, err, sizeof err);
	if (rc < 0) {
		fprintf(stderr, "slipway-agent: %s\n", err);
		goto out;
	}
	if (rc == CFG_HELP) {
		cfg_print_help(stdout, "slipway-agent", "AGENT", opts, nopts);
		code = 0;
		goto out;
	}
	enum log_level lvl = LOG_INFO;
	if (log_level_parse(log_level, &lvl) != 0) {
		fprintf(stderr, "slipway-agent: --log-level: unknown level '%s'\n", log_level);
		goto out;
	}
	if (labels != NULL && agent_labels_add_list(&c.labels, labels, err, sizeof err) != 0) {
		fprintf(stderr, "slipway-agent: --labels: %s\n", err);
		goto out;
	}
	if (agent_labels_get(&c.labels, "app") == NULL ||
	    agent_labels_get(&c.labels, "environment") == NULL) {
		fprintf(stderr, "slipway-agent: labels app and environment are required "
				"(--label app=web --label environment=prod)\n");
		goto out;
	}
	if (svc_metrics_check(mc.metrics_listen, mc.metrics_allow_remote, err, sizeof err) != 0) {
		fprintf(stderr, "slipway-agent: %s\n", err);
		goto out;
	}
	if (c.restart_backoff_max_ms < c.restart_backoff_ms)
		c.restart_backoff_max_ms = c.restart_backoff_ms;
	if (rc == CFG_CHECK) {
		cfg_print_values(stdout, opts, nopts);
		for (size_t i = 0; i < c.labels.n; i++)
			printf("label %s=%s\n", c.labels.v[i].key, c.labels.v[i].value);
		printf("configuration ok\n");
		code = 0;
		goto out;
	}
	c.orchestrator_addr = orch;
	c.artifact_addr = artifact;
	c.secrets_addr = secrets ? secrets : "";
	c.ca = ca;
	c.cert = cert;
	c.key = key;
	c.root = root;
	c.secrets_sign_key = sign_key ? sign_key : "";
	c.seal_key = seal_key ? seal_key : "";
	c.hostname = hostname ? hostname : "";
	c.shm_dir = shm;
	c.trusted_builder_keys = builder_keys ? builder_keys : "";
	c.app_user = app_user ? app_user : "";

	/* ---- logging */
	log_init("agent", lvl);

	/* ---- signals blocked, no core dumps (the agent holds its X25519 key
	 * and, briefly, secret values), gRPC: before any thread starts */
	svc_process_init();

	/* ---- the agent: root, keys, clients; then what already runs */
	if ((rc = agent_new(&c, &a, err, sizeof err)) != 0) {
		log_error("cannot start", "error=%s", err);
		goto out_rpc;
	}
	if ((rc = agent_adopt(a, err, sizeof err)) != 0)
		log_error("cannot adopt the current release; waiting for a task", "error=%s", err);
	if ((rc = agent_sup_start(a, err, sizeof err)) != 0 ||
	    (rc = agent_control_start(a, err, sizeof err)) != 0) {
		log_error("cannot start", "error=%s", err);
		goto out_agent;
	}
	agent_metrics_init();
	if ((rc = svc_metrics_start("agent", mc.metrics_listen, mc.metrics_allow_remote, &metrics,
				    err, sizeof err)) != 0) {
		log_error("cannot start", "error=%s", err);
		goto out_agent;
	}
	log_info("agent running", "agent=%s root=%s orchestrator=%s pid=%d", a->keys.self_id,
		 a->store.root, orch, (int)getpid());

	/* ---- the loop: signals only (SIGHUP reloads the certificate) */
	struct reload_arg ra = { &c, a };
	svc_on_reload(reload_tls, &ra);
	int sig = svc_wait_signal();
	svc_on_reload(NULL, NULL);
	log_info("shutting down; the application keeps running", "signal=%d grace_ms=%lld", sig,
		 c.shutdown_grace_ms);

	/* ---- shutdown */
	metrics_http_stop(metrics);
	metrics = NULL;
	if (agent_control_stop(a) != 0) {
		/* Threads are still blocked in calls: exit without tearing down
		 * what they use. A task that did not finish is recorded as not
		 * finished and is delivered again after a restart. */
		log_warn("exiting with calls still in flight", NULL);
		_exit(0);
	}
	code = 0;
out_agent:
	metrics_http_stop(metrics);
	agent_sup_stop(a);
	agent_free(a);
	if (code == 0)
		log_info("stopped", NULL);
out_rpc:
	rpc_shutdown();
out:
	cfg_free(opts, nopts);
	return code;
}
