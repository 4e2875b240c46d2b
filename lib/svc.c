/*
 * svc.c - the shared daemon skeleton of svc.h, including the
 * grpc.health.v1.Health service.
 */
#include "svc.h"
#include "err.h"
#include "log.h"
#include "spiffe.h"
#include "tls.h"

#include "grpc/health/v1/health.pb-c.h"
#include "clock.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define MAX_DRAIN 8
#define PROBE_CACHE_MS 1000
#define WATCH_TICK_MS 200

/* An open Health/Watch stream: deferred, so it holds no thread. Whoever
 * takes it off the list (the ticker, on_cancel or the drain) finishes the
 * call and frees it, exactly once. */
struct watcher {
	struct watcher *next;
	struct svc *s;
	struct rpc_ctx *ctx;
	char service[64];
	int unknown; /* asks about a service this process is not */
	int last;    /* status last sent; -1 none */
};

struct svc {
	char name[32];
	const struct svc_config *c;
	struct rpc_server *srv;
	svc_probe_fn probe;
	void *probe_arg;
	pthread_mutex_t mu;
	int64_t probe_at_ms;
	int probe_ok;
	atomic_int draining;
	void (*drain_fn[MAX_DRAIN])(void *);
	void *drain_arg[MAX_DRAIN];
	int ndrain;
	/* Health/Watch: the deferred watchers and the thread that tells them */
	pthread_mutex_t wmu;
	pthread_cond_t wcv;
	struct watcher *watchers;
	int ticker_started, ticker_stop;
	int watch_new; /* a watcher waits for its first status */
	pthread_t ticker;
	struct metrics_http *metrics;
	char spiffe_id[256]; /* ours, read from --cert at start: a reload keeps it */
};

int svc_metrics_check(const char *listen, int allow_remote, char *err, size_t errlen)
{
	if (listen == NULL || listen[0] == '\0')
		return 0;
	int lb = metrics_listen_is_loopback(listen);
	if (lb < 0)
		return sw_errf(err, errlen, SW_EINVAL,
			       "--metrics-listen: '%s' is not HOST:PORT (an IP address or localhost)",
			       listen);
	if (lb == 0 && !allow_remote)
		return sw_errf(err, errlen, SW_EINVAL,
			       "--metrics-listen: %s is not a loopback address; pass "
			       "--metrics-allow-remote to serve metrics beyond this host",
			       listen);
	return 0;
}

/* svc_metrics_check on the values of a service's table. */
static int check_metrics_listen(const struct cfg_opt *opts, size_t n, char *err, size_t errlen)
{
	const char *listen = NULL;
	int remote = 0;
	for (size_t i = 0; i < n; i++) {
		if (strcmp(opts[i].name, "metrics-listen") == 0)
			listen = *(char **)opts[i].dst;
		else if (strcmp(opts[i].name, "metrics-allow-remote") == 0)
			remote = *(int *)opts[i].dst;
	}
	return svc_metrics_check(listen, remote, err, errlen);
}

static int (*reload_fn)(void *, char *, size_t);
static void *reload_arg;

int svc_configure(const char *name, const char *env_prefix, struct cfg_opt *opts, size_t n,
		  int argc, char **argv, int *exit_code, char *err, size_t errlen)
{
	int rc2;
	*exit_code = -1;
	int rc = cfg_parse(env_prefix, opts, n, argc, argv, err, errlen);
	if (rc < 0)
		return rc;
	if (rc == CFG_HELP) {
		char prog[64];
		snprintf(prog, sizeof prog, "slipway-%s", name);
		cfg_print_help(stdout, prog, env_prefix, opts, n);
		*exit_code = 0;
		return 0;
	}
	/* Find the log level among the options (SVC_COMMON_OPTS has it). */
	enum log_level lvl = LOG_INFO;
	for (size_t i = 0; i < n; i++) {
		if (strcmp(opts[i].name, "log-level") == 0) {
			const char *v = *(char **)opts[i].dst;
			if (v != NULL && log_level_parse(v, &lvl) != 0)
				return sw_errf(err, errlen, SW_EINVAL, "--log-level: unknown level '%s'", v);
		}
	}
	if ((rc2 = check_metrics_listen(opts, n, err, errlen)) != 0)
		return rc2;
	if (rc == CFG_CHECK) {
		cfg_print_values(stdout, opts, n);
		printf("configuration ok\n");
		*exit_code = 0;
		return 0;
	}
	log_init(name, lvl);
	svc_process_init();
	return 0;
}

void svc_process_init(void)
{
	/* Signals are handled by one thread (svc_wait): block them before any
	 * thread (gRPC's included) starts, so every thread inherits the mask. */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);

	/* Our daemons hold key material: never write it to a core file, and
	 * let no other process of the same user attach to us or read our
	 * memory and environment (/proc/PID/mem, environ: the S3 secret key).
	 * Not dumpable also makes the /proc/PID files owned by root. */
	struct rlimit rl = { 0, 0 };
	setrlimit(RLIMIT_CORE, &rl);
	if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
		log_warn("cannot make the process non-dumpable", "error=%s", strerror(errno));

	rpc_init();
}

/* ---- grpc.health.v1.Health ---- */

static int serving(struct svc *s, char *why, size_t whylen)
{
	if (atomic_load(&s->draining)) {
		snprintf(why, whylen, "shutting down");
		return 0;
	}
	if (s->probe == NULL)
		return 1;
	pthread_mutex_lock(&s->mu);
	int64_t t = clock_mono_ms();
	int ok = s->probe_ok;
	int fresh = s->probe_at_ms != 0 && t - s->probe_at_ms < PROBE_CACHE_MS;
	pthread_mutex_unlock(&s->mu);
	if (fresh)
		return ok;
	ok = s->probe(s->probe_arg, why, whylen) == 0;
	pthread_mutex_lock(&s->mu);
	s->probe_ok = ok;
	s->probe_at_ms = clock_mono_ms();
	pthread_mutex_unlock(&s->mu);
	if (!ok)
		log_warn("not serving", "reason=%s", why);
	return ok;
}

static int health_status(struct svc *s, const char *service)
{
	char why[256] = "";
	if (service[0] != '\0' && strcmp(service, s->name) != 0)
		return GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN;
	return serving(s, why, sizeof why)
		       ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
		       : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
}

static int health_check(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
			ProtobufCMessage *respm, void *data)
{
	const Grpc__Health__V1__HealthCheckRequest *req = (const void *)reqm;
	Grpc__Health__V1__HealthCheckResponse *resp = (void *)respm;
	int st = health_status(data, req->service);
	if (st == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN)
		return rpc_errorf(ctx, SW_ENOTFOUND, "unknown service '%s'", req->service);
	resp->status = st;
	return 0;
}

/* Sends the status to w if it changed. Returns 0, or non-zero when the
 * stream is over (the client went away). Caller holds w (off the list or
 * under wmu). */
static int watch_send(struct watcher *w, int st)
{
	if (rpc_cancelled(w->ctx))
		return SW_ECANCELLED;
	if (st == w->last)
		return 0;
	Grpc__Health__V1__HealthCheckResponse r = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
	r.status = st;
	int rc = rpc_send_async(w->ctx, &r.base);
	if (rc == 0)
		w->last = st;
	return rc == SW_ELIMIT ? 0 : rc; /* a slow reader gets the newest later */
}

/* Unlinks w from the list if it is there. Under wmu. Returns 1 if it was. */
static int watch_unlink(struct svc *s, struct watcher *w)
{
	for (struct watcher **pp = &s->watchers; *pp != NULL; pp = &(*pp)->next)
		if (*pp == w) {
			*pp = w->next;
			return 1;
		}
	return 0;
}

/* The client went away (completion-queue thread): end the stream if it is
 * still listed, else whoever unlinked it does. Never blocks for long. */
static void watch_cancelled(struct rpc_ctx *ctx, void *arg)
{
	struct watcher *w = arg;
	struct svc *s = w->s;
	pthread_mutex_lock(&s->wmu);
	int mine = watch_unlink(s, w);
	pthread_mutex_unlock(&s->wmu);
	if (mine) {
		rpc_finish(ctx, SW_ECANCELLED);
		free(w);
	}
}

/* Every WATCH_TICK_MS while anyone watches: probe once, tell each watcher
 * whose status changed, end the streams whose client went away. One thread
 * for all watchers. */
static void *watch_ticker(void *arg)
{
	struct svc *s = arg;
	pthread_mutex_lock(&s->wmu);
	while (!s->ticker_stop) {
		if (!s->watch_new) {
			struct timespec dl = clock_after(CLOCK_MONOTONIC, WATCH_TICK_MS);
			pthread_cond_timedwait(&s->wcv, &s->wmu, &dl);
		}
		s->watch_new = 0;
		if (s->ticker_stop || s->watchers == NULL)
			continue;
		pthread_mutex_unlock(&s->wmu);
		char why[256] = "";
		int st = serving(s, why, sizeof why)
				 ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
				 : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
		pthread_mutex_lock(&s->wmu);
		struct watcher *done = NULL;
		for (struct watcher **pp = &s->watchers; *pp != NULL;) {
			struct watcher *w = *pp;
			int wst = w->unknown
					  ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN
					  : st;
			if (watch_send(w, wst) != 0) {
				*pp = w->next;
				w->next = done;
				done = w;
			} else {
				pp = &w->next;
			}
		}
		pthread_mutex_unlock(&s->wmu);
		while (done != NULL) {
			struct watcher *w = done;
			done = w->next;
			rpc_finish(w->ctx, SW_ECANCELLED);
			free(w);
		}
		pthread_mutex_lock(&s->wmu);
	}
	pthread_mutex_unlock(&s->wmu);
	return NULL;
}

/* Ends every watch: the service is shutting down (its last status,
 * NOT_SERVING, goes first). Any thread. */
static void watch_end_all(struct svc *s)
{
	pthread_mutex_lock(&s->wmu);
	struct watcher *list = s->watchers;
	s->watchers = NULL;
	pthread_mutex_unlock(&s->wmu);
	while (list != NULL) {
		struct watcher *w = list;
		list = w->next;
		if (!w->unknown)
			watch_send(w, GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING);
		rpc_finish(w->ctx, 0);
		free(w);
	}
}

/*
 * Health/Watch: a deferred stream (no thread while it waits), run inline on
 * the completion-queue thread: it only registers the watcher and wakes the
 * ticker, which sends the first status at once and then each change (the
 * probe may block, so only the ticker runs it). The stream counts against
 * the caller's stream limit (--max-streams-per-peer) like any other.
 */
static int health_watch(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
			ProtobufCMessage *respm, void *data)
{
	(void)respm;
	struct svc *s = data;
	const Grpc__Health__V1__HealthCheckRequest *req = (const void *)reqm;
	if (strlen(req->service) >= sizeof((struct watcher *)0)->service)
		return rpc_errorf(ctx, SW_EINVAL, "service name too long");
	struct watcher *w = calloc(1, sizeof *w);
	if (w == NULL)
		return SW_ENOMEM;
	w->s = s;
	w->ctx = ctx;
	w->last = -1;
	snprintf(w->service, sizeof w->service, "%s", req->service);
	w->unknown = w->service[0] != '\0' && strcmp(w->service, s->name) != 0;
	int rc = rpc_stream_defer(ctx, watch_cancelled, w);
	if (rc != RPC_DEFERRED) {
		free(w);
		return rc;
	}
	/* From here the call is ours to finish, exactly once. */
	pthread_mutex_lock(&s->wmu);
	int over = atomic_load(&s->draining);
	if (!over) {
		w->next = s->watchers;
		s->watchers = w;
		s->watch_new = 1;
	}
	pthread_cond_signal(&s->wcv);
	pthread_mutex_unlock(&s->wmu);
	if (over) {
		rpc_finish(ctx, 0);
		free(w);
	}
	return RPC_DEFERRED;
}

static const struct rpc_method health_methods[] = {
	{ "Check", RPC_UNARY, 0, health_check, RPC_PEER_ANY },
	{ "Watch", RPC_SERVER_STREAM, RPC_INLINE, health_watch, RPC_PEER_ANY },
};

/* ---- life cycle ---- */

static void on_drain(void *arg)
{
	struct svc *s = arg;
	atomic_store(&s->draining, 1);
	watch_end_all(s);
	for (int i = 0; i < s->ndrain; i++)
		s->drain_fn[i](s->drain_arg[i]);
}

int svc_reload_files(const char *ca, const char *cert, const char *key, const char *expect_id,
		     struct rpc_server *srv, char *err, size_t errlen)
{
	char *ca_pem = NULL, *cert_pem = NULL, *key_pem = NULL;
	struct tls_cert_info info;
	char why[512];
	int rc;
	if ((rc = tls_read_pem(ca, &ca_pem, why, sizeof why)) != 0 ||
	    (rc = tls_read_pem(cert, &cert_pem, why, sizeof why)) != 0 ||
	    (rc = tls_read_pem(key, &key_pem, why, sizeof why)) != 0 ||
	    (rc = tls_check_material(ca_pem, cert_pem, key_pem, &info, why, sizeof why)) != 0) {
		rc = sw_errf(err, errlen, SW_EINVAL, "%s", why);
		goto out;
	}
	/* A server's certificate must be one clients accept as a server
	 * (serverAuth, not an agent's or a user's), as their pins check. */
	if (srv != NULL && tls_check_server_cert(cert_pem, info.spiffe_id, why, sizeof why) != 0) {
		rc = sw_errf(err, errlen, SW_EINVAL, "not a server certificate: %s", why);
		goto out;
	}
	if (expect_id != NULL && strcmp(info.spiffe_id, expect_id) != 0) {
		rc = sw_errf(err, errlen, SW_EINVAL,
			     "the new certificate is for %s, not %s (a reload keeps the identity)",
			     info.spiffe_id, expect_id);
		goto out;
	}
	/* Clients first: a client that cannot be switched keeps its old
	 * channel, and the server then still switches (both are checked). */
	int n = rpc_client_reload_all(ca_pem, cert_pem, key_pem, why, sizeof why);
	if (n < 0)
		log_warn("a client kept its old certificate", "error=%s", why);
	if (srv != NULL && (rc = rpc_server_set_tls(srv, ca_pem, cert_pem, key_pem)) != 0) {
		rc = sw_errf(err, errlen, rc, "out of memory");
		goto out;
	}
	log_info("certificate reloaded", "serial=%s not_after=%s spiffe_id=%s clients=%d",
		 info.serial, info.not_after, info.spiffe_id, n < 0 ? 0 : n);
out:
	if (key_pem != NULL) {
		memset(key_pem, 0, strlen(key_pem));
		free(key_pem);
	}
	free(ca_pem);
	free(cert_pem);
	return rc;
}

/* SIGHUP: the service's certificate, key and CA again (svc_reload_files). */
static int reload_tls(void *arg, char *err, size_t errlen)
{
	struct svc *s = arg;
	return svc_reload_files(s->c->ca, s->c->cert, s->c->key, s->spiffe_id, s->srv, err, errlen);
}

void svc_on_reload(int (*fn)(void *arg, char *err, size_t errlen), void *arg)
{
	reload_fn = fn;
	reload_arg = arg;
}

int svc_new(const char *name, const struct svc_config *c, svc_probe_fn probe, void *probe_arg,
	    struct svc **out, char *err, size_t errlen)
{
	int rc = 0;
	char *ca = NULL, *cert = NULL, *key = NULL;
	struct svc *s = NULL;

	*out = NULL;
	if ((rc = tls_read_pem(c->ca, &ca, err, errlen)) != 0 ||
	    (rc = tls_read_pem(c->cert, &cert, err, errlen)) != 0 ||
	    (rc = tls_read_pem(c->key, &key, err, errlen)) != 0)
		goto out;
	s = calloc(1, sizeof *s);
	if (s == NULL) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		goto out;
	}
	snprintf(s->name, sizeof s->name, "%s", name);
	s->c = c;
	s->probe = probe;
	s->probe_arg = probe_arg;
	pthread_mutex_init(&s->mu, NULL);
	pthread_mutex_init(&s->wmu, NULL);
	pthread_condattr_t cattr;
	pthread_condattr_init(&cattr);
	pthread_condattr_setclock(&cattr, CLOCK_MONOTONIC);
	pthread_cond_init(&s->wcv, &cattr);
	pthread_condattr_destroy(&cattr);
	atomic_init(&s->draining, 0);
	struct rpc_server_opts o = {
		.service = name,
		.listen = c->listen,
		.ca_pem = ca,
		.cert_pem = cert,
		.key_pem = key,
		.trust_domain = c->trust_domain,
		.max_msg_bytes = (size_t)c->max_msg,
		.cq_threads = (int)c->cq_threads,
		.workers = (int)c->workers,
		.max_queue = (int)c->max_queue,
		.requests_per_method = 8,
		.stream_window = c->stream_window > 0 ? (size_t)c->stream_window : 0,
		.max_streams = (int)c->max_streams,
		.max_streams_per_peer = (int)c->max_streams_per_peer,
		.max_calls_per_peer = (int)c->max_calls_per_peer,
		.max_worker_streams = (int)c->max_worker_streams,
		.stream_idle_ms = c->stream_idle_ms,
		.no_access_log = c->no_access_log,
	};
	if ((rc = tls_cert_spiffe_id(cert, s->spiffe_id, sizeof s->spiffe_id, err, errlen)) != 0)
		goto out;
	if ((rc = rpc_server_new(&o, &s->srv, err, errlen)) != 0)
		goto out;
	rpc_server_on_drain(s->srv, on_drain, s);
	svc_on_reload(reload_tls, s);
	rc = rpc_server_add_service(s->srv, &grpc__health__v1__health__descriptor, health_methods,
				    2, s, err, errlen);
	if (rc != 0)
		goto out;
	*out = s;
	s = NULL;
out:
	if (key != NULL) {
		memset(key, 0, strlen(key));
		free(key);
	}
	free(ca);
	free(cert);
	svc_free(s);
	return rc;
}

struct rpc_server *svc_server(struct svc *s)
{
	return s->srv;
}

void svc_on_drain(struct svc *s, void (*fn)(void *), void *arg)
{
	if (s->ndrain < MAX_DRAIN) {
		s->drain_fn[s->ndrain] = fn;
		s->drain_arg[s->ndrain++] = arg;
	}
}

int svc_client(const struct svc_config *c, const char *target, const char *service,
	       struct rpc_client **out, char *err, size_t errlen)
{
	char *ca = NULL, *cert = NULL, *key = NULL;
	int rc;
	*out = NULL;
	if (target == NULL || target[0] == '\0')
		return sw_errf(err, errlen, SW_EINVAL, "no address given");
	char id[SPIFFE_ID_MAX + 1];
	if (spiffe_format(id, sizeof id, c->trust_domain, SPIFFE_SERVICE, service) != 0)
		return sw_errf(err, errlen, SW_EINVAL, "no valid SPIFFE ID for service '%s' in '%s'",
			       service, c->trust_domain);
	if ((rc = tls_read_pem(c->ca, &ca, err, errlen)) == 0 &&
	    (rc = tls_read_pem(c->cert, &cert, err, errlen)) == 0 &&
	    (rc = tls_read_pem(c->key, &key, err, errlen)) == 0) {
		struct rpc_client_opts o = { .target = target, .ca_pem = ca, .cert_pem = cert,
					     .key_pem = key, .max_msg_bytes = (size_t)c->max_msg,
					     .server_id = id, .reloadable = 1 };
		rc = rpc_client_new(&o, out, err, errlen);
	}
	if (key != NULL) {
		memset(key, 0, strlen(key));
		free(key);
	}
	free(ca);
	free(cert);
	return rc;
}

int svc_write_file_atomic(const char *path, const char *text, char *err, size_t errlen)
{
	char tmp[4096];
	int n = snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
	if (n < 0 || (size_t)n >= sizeof tmp)
		return sw_errf(err, errlen, SW_EINVAL, "path too long");
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return sw_errf(err, errlen, SW_EIO, "open %s: %s", tmp, strerror(errno));
	size_t len = strlen(text);
	ssize_t w = write(fd, text, len);
	int bad = (w < 0 || (size_t)w != len) || fsync(fd) != 0;
	close(fd);
	if (bad || rename(tmp, path) != 0) {
		unlink(tmp);
		return sw_errf(err, errlen, SW_EIO, "write %s failed", path);
	}
	return 0;
}

int svc_start(struct svc *s, char *err, size_t errlen)
{
	int port = 0;
	/* The metrics endpoint first: a refused or taken address fails the
	 * start-up before the service accepts any call. */
	int rc = svc_metrics_start(s->name, s->c->metrics_listen, s->c->metrics_allow_remote,
				   &s->metrics, err, errlen);
	if (rc != 0)
		return rc;
	if ((rc = rpc_server_start(s->srv, &port, err, errlen)) != 0)
		return rc;
	if (pthread_create(&s->ticker, NULL, watch_ticker, s) != 0)
		return sw_errf(err, errlen, SW_ENOMEM, "cannot start the health watch thread");
	s->ticker_started = 1;
	if (s->c->port_file != NULL && s->c->port_file[0] != '\0') {
		char text[32];
		snprintf(text, sizeof text, "%d\n", port);
		if ((rc = svc_write_file_atomic(s->c->port_file, text, err, errlen)) != 0)
			return rc;
	}
	log_info("serving", "listen=%s port=%d pid=%d", s->c->listen, port, (int)getpid());
	return 0;
}

int svc_metrics_start(const char *name, const char *listen, int allow_remote,
		      struct metrics_http **out, char *err, size_t errlen)
{
	*out = NULL;
	metrics_process_init(name);
	if (listen == NULL || listen[0] == '\0')
		return 0;
	int rc = metrics_http_start(listen, allow_remote, out, err, errlen);
	if (rc == 0)
		log_info("serving metrics", "listen=%s port=%d", listen, metrics_http_port(*out));
	return rc;
}

static void *second_signal(void *arg)
{
	(void)arg;
	sigset_t set;
	int sig;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	if (sigwait(&set, &sig) == 0) {
		log_warn("second signal: exiting now", "signal=%d", sig);
		_exit(1);
	}
	return NULL;
}

int svc_wait_signal(void)
{
	sigset_t set;
	int sig = 0;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	for (;;) {
		if (sigwait(&set, &sig) != 0)
			continue;
		if (sig == SIGHUP) {
			char err[768];
			if (reload_fn == NULL)
				log_info("SIGHUP ignored: nothing to reload", NULL);
			else if (reload_fn(reload_arg, err, sizeof err) != 0)
				log_error("certificate reload refused; the old certificate stays in service",
					  "error=%s", err);
			continue;
		}
		break;
	}
	pthread_t t;
	if (pthread_create(&t, NULL, second_signal, NULL) == 0)
		pthread_detach(t);
	return sig;
}

int svc_wait(struct svc *s)
{
	int sig = svc_wait_signal();
	log_info("shutting down", "signal=%d grace_ms=%lld", sig, s->c->grace_ms);
	return sig;
}

static void stop_ticker(struct svc *s)
{
	if (!s->ticker_started)
		return;
	pthread_mutex_lock(&s->wmu);
	s->ticker_stop = 1;
	pthread_cond_signal(&s->wcv);
	pthread_mutex_unlock(&s->wmu);
	pthread_join(s->ticker, NULL);
	s->ticker_started = 0;
}

void svc_stop(struct svc *s)
{
	metrics_http_stop(s->metrics);
	s->metrics = NULL;
	int cancelled = rpc_server_shutdown(s->srv, (int)s->c->grace_ms);
	stop_ticker(s);
	log_info("stopped serving", "cancelled_calls=%d", cancelled);
}

void svc_free(struct svc *s)
{
	if (s == NULL)
		return;
	metrics_http_stop(s->metrics);
	if (reload_arg == s)
		svc_on_reload(NULL, NULL);
	rpc_server_free(s->srv); /* ends every watch (drain) */
	stop_ticker(s);
	pthread_mutex_destroy(&s->mu);
	pthread_mutex_destroy(&s->wmu);
	pthread_cond_destroy(&s->wcv);
	free(s);
}
