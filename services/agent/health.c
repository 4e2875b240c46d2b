/*
 * health.c - one health probe of a release, bounded by its timeout: an
 * HTTP/1.0 GET on 127.0.0.1 whose status must be 2xx (or the status the
 * manifest names), a TCP connect, or a command that must exit 0. The
 * retries, the interval and the overall deadline are the caller's
 * (exec.c while deploying, supervise.c while running).
 */
#include "agent.h"
#include "err.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Connects to 127.0.0.1:port within the time left. Returns the socket or
 * -1 with the reason in detail. */
static int connect_until(int port, int64_t until, char *detail, size_t detlen)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		snprintf(detail, detlen, "socket: %s", strerror(errno));
		return -1;
	}
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
		if (errno != EINPROGRESS) {
			snprintf(detail, detlen, "connect to port %d: %s", port, strerror(errno));
			close(fd);
			return -1;
		}
		struct pollfd pf = { .fd = fd, .events = POLLOUT };
		int64_t left = until - agent_now_ms();
		int r = left > 0 ? poll(&pf, 1, (int)left) : 0;
		int soerr = 0;
		socklen_t sl = sizeof soerr;
		if (r <= 0) {
			snprintf(detail, detlen, "connect to port %d timed out", port);
			close(fd);
			return -1;
		}
		getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
		if (soerr != 0) {
			snprintf(detail, detlen, "connect to port %d: %s", port, strerror(soerr));
			close(fd);
			return -1;
		}
	}
	return fd;
}

static int http_probe(const struct agent_health *h, int port, int64_t until, char *detail,
		      size_t detlen)
{
	int fd = connect_until(port, until, detail, detlen);
	if (fd < 0)
		return 0;
	char req[1200], resp[512];
	int n = snprintf(req, sizeof req,
			 "GET %s HTTP/1.0\r\nHost: 127.0.0.1:%d\r\nUser-Agent: slipway-agent\r\n"
			 "Connection: close\r\n\r\n",
			 h->path, port);
	size_t off = 0, got = 0;
	int ok = 0;
	while (off < (size_t)n) {
		ssize_t w = send(fd, req + off, (size_t)n - off, MSG_NOSIGNAL);
		if (w > 0) {
			off += (size_t)w;
			continue;
		}
		if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
			struct pollfd pf = { .fd = fd, .events = POLLOUT };
			int64_t left = until - agent_now_ms();
			if (left > 0 && poll(&pf, 1, (int)left) > 0)
				continue;
		}
		snprintf(detail, detlen, "GET %.64s: send failed", h->path);
		goto out;
	}
	/* The status line is all we need. */
	while (got < sizeof resp - 1 && memchr(resp, '\n', got) == NULL) {
		struct pollfd pf = { .fd = fd, .events = POLLIN };
		int64_t left = until - agent_now_ms();
		if (left <= 0 || poll(&pf, 1, (int)left) <= 0) {
			snprintf(detail, detlen, "GET %.64s: no answer within the timeout", h->path);
			goto out;
		}
		ssize_t r = recv(fd, resp + got, sizeof resp - 1 - got, 0);
		if (r < 0 && (errno == EAGAIN || errno == EINTR))
			continue;
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	resp[got] = '\0';
	int major = 0, minor = 0, status = 0;
	if (sscanf(resp, "HTTP/%d.%d %d", &major, &minor, &status) != 3 || status < 100 ||
	    status > 599) {
		snprintf(detail, detlen, "GET %.64s: not an HTTP answer", h->path);
		goto out;
	}
	ok = h->expect_status ? status == h->expect_status : (status >= 200 && status < 300);
	snprintf(detail, detlen, "GET %.64s: HTTP %d", h->path, status);
out:
	close(fd);
	return ok;
}

int agent_health_probe(const struct agent_health *h, int port, const char *cwd,
		       char *const *envp, const char *log_path, const struct agent_user *user,
		       char *detail, size_t detlen)
{
	int64_t until = agent_now_ms() + h->timeout_ms;
	int target = h->port ? h->port : port;
	switch (h->kind) {
	case AGENT_CHECK_HTTP:
		return http_probe(h, target, until, detail, detlen);
	case AGENT_CHECK_TCP: {
		int fd = connect_until(target, until, detail, detlen);
		if (fd < 0)
			return 0;
		close(fd);
		snprintf(detail, detlen, "TCP port %d accepts connections", target);
		return 1;
	}
	case AGENT_CHECK_COMMAND: {
		struct agent_spawn sp = { .argv = h->argv, .envp = envp, .cwd = cwd,
					  .log_path = log_path, .user = user };
		int status = -1;
		char err[256];
		if (agent_proc_run(&sp, h->timeout_ms, &status, err, sizeof err) != 0) {
			snprintf(detail, detlen, "health command: %s", err);
			return 0;
		}
		if (status == -1)
			snprintf(detail, detlen, "health command timed out after %lld ms",
				 h->timeout_ms);
		else
			snprintf(detail, detlen, "health command exited %d", status);
		return status == 0;
	}
	}
	snprintf(detail, detlen, "no health check");
	return 0;
}
