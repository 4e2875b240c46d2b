/*
 * demo-app - the small HTTP application the demo deploys (web@1.0.0,
 * 2.0.0 and 3.0.0, built by scripts/make-bundles). Not part of Slipway
 * itself: it stands for a customer's service.
 *
 *   GET /         200 {"app":"web","version":"<DEMO_VERSION>","secret":"present|absent"}
 *   GET /healthz  200 "ok", or 500 when DEMO_HEALTHY=false (v3 is built that way),
 *                 or once DEMO_FAIL_AFTER_MS have passed since the start (v5:
 *                 healthy when deployed, then degrades; canary tests use it)
 *
 * It listens on 127.0.0.1:$PORT (the port the agent picked; HOST overrides
 * the address) and exits 0 on SIGTERM. Whether a secret was handed over is
 * shown (the environment variable named by DEMO_SECRET_ENV, or a file named
 * DEMO_SECRET_FILE in $SLIPWAY_SECRETS_DIR), never its value.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

static void on_term(int sig)
{
	(void)sig;
	stop = 1;
}

static const char *env_or(const char *name, const char *def)
{
	const char *v = getenv(name);
	return v != NULL && v[0] != '\0' ? v : def;
}

static int secret_present(void)
{
	const char *e = getenv("DEMO_SECRET_ENV");
	if (e != NULL && e[0] != '\0' && getenv(e) != NULL && getenv(e)[0] != '\0')
		return 1;
	const char *f = getenv("DEMO_SECRET_FILE"), *d = getenv("SLIPWAY_SECRETS_DIR");
	if (f != NULL && d != NULL && f[0] != '\0' && strchr(f, '/') == NULL) {
		char path[4096];
		struct stat st;
		if ((size_t)snprintf(path, sizeof path, "%s/%s", d, f) < sizeof path &&
		    stat(path, &st) == 0 && st.st_size > 0)
			return 1;
	}
	return 0;
}

static void reply(int fd, int status, const char *reason, const char *body)
{
	char buf[1024];
	int n = snprintf(buf, sizeof buf,
			 "HTTP/1.0 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
			 "Connection: close\r\n\r\n%s",
			 status, reason, strlen(body), body);
	if (n > 0 && (size_t)n < sizeof buf && send(fd, buf, (size_t)n, MSG_NOSIGNAL) < 0)
		return;
}

static void serve(int fd, const char *version, int healthy)
{
	char req[2048];
	size_t got = 0;
	struct pollfd pf = { .fd = fd, .events = POLLIN };
	/* Read the request line (bounded in time and size). */
	while (got < sizeof req - 1 && memchr(req, '\n', got) == NULL) {
		if (poll(&pf, 1, 2000) <= 0)
			return;
		ssize_t r = recv(fd, req + got, sizeof req - 1 - got, 0);
		if (r <= 0)
			return;
		got += (size_t)r;
	}
	req[got] = '\0';
	char method[8] = "", path[256] = "";
	if (sscanf(req, "%7s %255s", method, path) != 2 || strcmp(method, "GET") != 0) {
		reply(fd, 405, "Method Not Allowed", "GET only\n");
		return;
	}
	if (strcmp(path, "/healthz") == 0) {
		if (healthy)
			reply(fd, 200, "OK", "ok\n");
		else
			reply(fd, 500, "Internal Server Error", "unhealthy (built to fail)\n");
	} else if (strcmp(path, "/") == 0) {
		char body[512];
		snprintf(body, sizeof body, "{\"app\":\"web\",\"version\":\"%s\",\"secret\":\"%s\"}\n",
			 version, secret_present() ? "present" : "absent");
		reply(fd, 200, "OK", body);
	} else {
		reply(fd, 404, "Not Found", "not found\n");
	}
}

int main(void)
{
	const char *port_s = getenv("PORT");
	const char *host = env_or("HOST", "127.0.0.1");
	const char *version = env_or("DEMO_VERSION", "unknown");
	int healthy = strcmp(env_or("DEMO_HEALTHY", "true"), "false") != 0;
	char *end = NULL;
	long port = port_s ? strtol(port_s, &end, 10) : 0;
	if (port_s == NULL || end == port_s || *end != '\0' || port <= 0 || port > 65535) {
		fprintf(stderr, "demo-app: PORT must be set to a port number\n");
		return 2;
	}
	/* DEMO_START_DELAY_MS: a slow start (tests that need a task in flight). */
	long delay = strtol(env_or("DEMO_START_DELAY_MS", "0"), NULL, 10);
	if (delay > 0 && delay <= 60000) {
		struct timespec ts = { delay / 1000, (delay % 1000) * 1000000L };
		nanosleep(&ts, NULL);
	}
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_term;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int one = 1;
	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	if (ls < 0 || inet_pton(AF_INET, host, &a.sin_addr) != 1 ||
	    bind(ls, (struct sockaddr *)&a, sizeof a) != 0 || listen(ls, 64) != 0) {
		fprintf(stderr, "demo-app: cannot listen on %s:%ld: %s\n", host, port, strerror(errno));
		return 1;
	}
	printf("demo-app: web %s listening on %s:%ld (health %s, secret %s)\n", version, host, port,
	       healthy ? "ok" : "failing", secret_present() ? "present" : "absent");
	fflush(stdout);
	long fail_after = strtol(env_or("DEMO_FAIL_AFTER_MS", "0"), NULL, 10);
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	while (!stop) {
		struct pollfd pf = { .fd = ls, .events = POLLIN };
		if (poll(&pf, 1, 500) <= 0)
			continue;
		int fd = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0)
			continue;
		clock_gettime(CLOCK_MONOTONIC, &t1);
		long up_ms = (long)(t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
		serve(fd, version, healthy && !(fail_after > 0 && up_ms >= fail_after));
		close(fd);
	}
	close(ls);
	printf("demo-app: web %s stopping\n", version);
	return 0;
}
