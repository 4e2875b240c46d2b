/*
 * harness.c - see harness.h.
 */
#include "harness.h"
#include "pki.h"
#include "spiffe.h"
#include "tls.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <sys/socket.h>

#include "grpc/health/v1/health.pb-c.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

const char *h_env(const char *name)
{
	const char *v = getenv(name);
	if (v == NULL || *v == '\0') {
		fprintf(stderr, "harness: %s is not set (run through tests/run)\n", name);
		exit(1);
	}
	return v;
}

const char *h_tmpdir(const char *tag)
{
	static char buf[8][512];
	static int next;
	char *out = buf[next++ % 8];
	const char *base = getenv("SLIPWAY_TEST_TMP");
	snprintf(out, 512, "%s/%s.XXXXXX", base ? base : "/tmp", tag);
	if (mkdtemp(out) == NULL) {
		perror("mkdtemp");
		exit(1);
	}
	chmod(out, 0755);
	return out;
}

char *h_read_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (f == NULL)
		return NULL;
	size_t cap = 4096, len = 0;
	char *b = malloc(cap);
	size_t r;
	while (b != NULL && (r = fread(b + len, 1, cap - len - 1, f)) > 0) {
		len += r;
		if (len + 1 == cap) {
			char *nb = realloc(b, cap *= 2);
			if (nb == NULL) {
				free(b);
				b = NULL;
			}
			b = nb;
		}
	}
	fclose(f);
	if (b != NULL)
		b[len] = '\0';
	return b;
}

int h_grep_count(const char *path, const char *needle)
{
	FILE *f = fopen(path, "r");
	if (f == NULL)
		return 0;
	char line[8192];
	int n = 0;
	while (fgets(line, sizeof line, f) != NULL)
		if (strstr(line, needle) != NULL)
			n++;
	fclose(f);
	return n;
}

void h_issue(const char *pki_dir, const char *out_prefix, const char *uri, const char *second_uri,
	     int server)
{
	struct pki_issue_req r;
	char err[256];
	memset(&r, 0, sizeof r);
	r.dir = pki_dir;
	r.out_prefix = out_prefix;
	r.common_name = "test";
	int k = 0;
	if (uri)
		r.uris[k++] = uri;
	if (second_uri)
		r.uris[k++] = second_uri;
	r.dns[0] = "localhost";
	r.ips[0] = "127.0.0.1";
	r.server = server;
	if (pki_issue(&r, err, sizeof err) != 0) {
		fprintf(stderr, "harness: issue %s: %s\n", out_prefix, err);
		exit(1);
	}
}

const char *h_server_id;

/*
 * The identity a test client pins: the stack's service at that address
 * (SLIPWAY_<SVC>_ADDR), else h_server_id when a test set it, else, for a
 * server a test started itself, the ID its certificate carries, read once
 * over TLS (trust on first use: these clients test other things; pinning
 * itself is tested by tests/security/impersonation.sh). A server that
 * cannot be reached (tests of unreachable peers) gets a pin no server
 * holds: service/unreachable.
 */
static void pin_for(const char *target, const char *ca, const char *cert, const char *key,
		    char *out, size_t outlen)
{
	static const char *const svcs[] = { "audit", "policy", "secrets", "artifact",
					     "orchestrator" };
	char env[64], err[256], td[128];
	for (size_t i = 0; i < sizeof svcs / sizeof svcs[0]; i++) {
		snprintf(env, sizeof env, "SLIPWAY_%s_ADDR", svcs[i]);
		for (char *p = env; *p; p++)
			if (*p >= 'a' && *p <= 'z')
				*p = (char)(*p - 'a' + 'A');
		const char *a = getenv(env);
		const char *pki = getenv("SLIPWAY_PKI_DIR");
		if (a != NULL && strcmp(a, target) == 0 && pki != NULL &&
		    pki_trust_domain(pki, td, sizeof td, err, sizeof err) == 0 &&
		    spiffe_format(out, outlen, td, SPIFFE_SERVICE, svcs[i]) == 0)
			return;
	}
	if (h_server_id != NULL) {
		snprintf(out, outlen, "%s", h_server_id);
		return;
	}
	const char *colon = strrchr(target, ':');
	struct sockaddr_in sa = { .sin_family = AF_INET };
	char host[64];
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	SSL *ssl = NULL;
	X509 *x = NULL;
	int fd = -1, ok = 0;
	if (colon == NULL || (size_t)(colon - target) >= sizeof host || ctx == NULL)
		goto out;
	snprintf(host, sizeof host, "%.*s", (int)(colon - target), target);
	if (strcmp(host, "localhost") == 0)
		snprintf(host, sizeof host, "127.0.0.1");
	sa.sin_port = htons((uint16_t)strtol(colon + 1, NULL, 10));
	if (inet_pton(AF_INET, host, &sa.sin_addr) != 1 || (fd = socket(AF_INET, SOCK_STREAM, 0)) < 0 ||
	    connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
		goto out;
	if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1 ||
	    (cert && SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) ||
	    (key && SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1))
		goto out;
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	static const unsigned char alpn[] = "\x02h2";
	SSL_CTX_set_alpn_protos(ctx, alpn, sizeof alpn - 1);
	if ((ssl = SSL_new(ctx)) == NULL || SSL_set_fd(ssl, fd) != 1 || SSL_connect(ssl) != 1 ||
	    (x = SSL_get1_peer_certificate(ssl)) == NULL)
		goto out;
	BIO *b = BIO_new(BIO_s_mem());
	char *pem = NULL;
	long n = 0;
	if (b != NULL && PEM_write_bio_X509(b, x) == 1 && (n = BIO_get_mem_data(b, &pem)) > 0) {
		char *copy = strndup(pem, (size_t)n);
		ok = copy != NULL && tls_cert_spiffe_id(copy, out, outlen, err, sizeof err) == 0;
		free(copy);
	}
	BIO_free(b);
out:
	X509_free(x);
	if (ssl != NULL)
		SSL_shutdown(ssl);
	SSL_free(ssl);
	SSL_CTX_free(ctx);
	if (fd >= 0)
		close(fd);
	const char *pki = getenv("SLIPWAY_PKI_DIR");
	if (!ok && (pki == NULL || pki_trust_domain(pki, td, sizeof td, err, sizeof err) != 0 ||
		    spiffe_format(out, outlen, td, SPIFFE_SERVICE, "unreachable") != 0)) {
		fprintf(stderr, "harness: cannot learn the SPIFFE ID of the server at %s\n", target);
		exit(1);
	}
}

static struct rpc_client *make_client(const char *target, const char *ca, const char *cert,
				      const char *key, int fail_fast)
{
	char *ca_pem = NULL, *cert_pem = NULL, *key_pem = NULL, err[256];
	struct rpc_client *c = NULL;
	if (tls_read_pem(ca, &ca_pem, err, sizeof err) != 0 ||
	    (cert && tls_read_pem(cert, &cert_pem, err, sizeof err) != 0) ||
	    (key && tls_read_pem(key, &key_pem, err, sizeof err) != 0)) {
		fprintf(stderr, "harness: %s\n", err);
		exit(1);
	}
	/* Each test client gets its own connection, so handshakes are not
	 * shared between clients with different certificates. */
	char server_id[SPIFFE_ID_MAX + 2];
	pin_for(target, ca, cert, key, server_id, sizeof server_id);
	struct rpc_client_opts o = { .target = target, .ca_pem = ca_pem, .cert_pem = cert_pem,
				     .key_pem = key_pem, .own_connection = 1, .fail_fast = fail_fast,
				     .server_id = server_id };
	if (rpc_client_new(&o, &c, err, sizeof err) != 0) {
		fprintf(stderr, "harness: client: %s\n", err);
		exit(1);
	}
	free(ca_pem);
	free(cert_pem);
	free(key_pem);
	return c;
}

struct rpc_client *h_client(const char *target, const char *ca, const char *cert, const char *key)
{
	return make_client(target, ca, cert, key, 1);
}

struct rpc_client *h_service_client(const char *target, const char *ca, const char *cert,
				    const char *key)
{
	return make_client(target, ca, cert, key, 0);
}

long long h_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void h_sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static int status_of(int st)
{
	if (WIFEXITED(st))
		return WEXITSTATUS(st);
	if (WIFSIGNALED(st))
		return 128 + WTERMSIG(st);
	return -1;
}

int h_wait(struct h_proc *p, int timeout_ms)
{
	long long end = h_now_ms() + timeout_ms;
	int st;
	for (;;) {
		pid_t r = waitpid(p->pid, &st, WNOHANG);
		if (r == p->pid) {
			p->pid = 0;
			return status_of(st);
		}
		if (r < 0)
			return -1;
		if (h_now_ms() > end)
			return -1;
		h_sleep_ms(10);
	}
}

int h_start(struct h_proc *p, char *const argv[], const char *port_file, const char *log)
{
	memset(p, 0, sizeof *p);
	snprintf(p->log, sizeof p->log, "%s", log);
	if (port_file != NULL) {
		snprintf(p->port_file, sizeof p->port_file, "%s", port_file);
		unlink(port_file);
	}
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
			close(fd);
		}
		sigset_t none;
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		execv(argv[0], argv);
		_exit(127);
	}
	p->pid = pid;
	if (port_file == NULL)
		return 0;
	for (int i = 0; i < 2000; i++) {
		char *s = h_read_file(port_file);
		if (s != NULL && s[0] != '\0') {
			p->port = (int)strtol(s, NULL, 10);
			free(s);
			return 0;
		}
		free(s);
		int st;
		if (waitpid(pid, &st, WNOHANG) == pid) {
			p->pid = 0;
			return -1;
		}
		h_sleep_ms(10);
	}
	return -1;
}

int h_stop(struct h_proc *p, int sig, int timeout_ms)
{
	if (p->pid <= 0)
		return -1;
	kill(p->pid, sig);
	int rc = h_wait(p, timeout_ms);
	if (rc == -1 && p->pid > 0) {
		kill(p->pid, SIGKILL);
		h_wait(p, 5000);
	}
	return rc;
}

/* The stack runs PostgreSQL as the postgres user when we are root (initdb
 * refuses root); pg_ctl must run as the cluster's owner too. */
#define PG_SHELL_PRELUDE                                                                      \
	"set -e; PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}; d=\"$SLIPWAY_STACK_DIR/pg/data\"; " \
	"as_pg() { if [ \"$(id -u)\" -eq 0 ]; then runuser -u postgres -- \"$@\"; "          \
	"else \"$@\"; fi; }; "

int h_pg_stop(const char *mode)
{
	char cmd[1024];
	h_env("SLIPWAY_STACK_DIR");
	snprintf(cmd, sizeof cmd,
		 "bash -c '" PG_SHELL_PRELUDE
		 "as_pg \"$PGBIN/pg_ctl\" -D \"$d\" -m %s -w -t 30 stop >/dev/null'",
		 mode);
	int rc = system(cmd);
	if (rc != 0)
		fprintf(stderr, "harness: pg_ctl stop -m %s failed (%d)\n", mode, rc);
	return rc == 0 ? 0 : -1;
}

int h_pg_start(void)
{
	/* postmaster.opts holds the last command line, each argument in double
	 * quotes: the binary, -D and the data directory, then the -c options. */
	const char *cmd =
		"bash -c '" PG_SHELL_PRELUDE
		"eval \"a=($(cat \"$d/postmaster.opts\"))\"; "
		"as_pg setsid \"$PGBIN/pg_ctl\" -D \"$d\" -l \"$SLIPWAY_STACK_DIR/pg/server.log\" "
		"-w -t 60 -o \"${a[*]:3}\" start >/dev/null </dev/null; "
		"head -1 \"$d/postmaster.pid\" > \"$SLIPWAY_STACK_DIR/run/postgres.pid\"'";
	h_env("SLIPWAY_STACK_DIR");
	int rc = system(cmd);
	if (rc != 0)
		fprintf(stderr, "harness: pg_ctl start failed (%d)\n", rc);
	return rc == 0 ? 0 : -1;
}

int h_health(const char *addr)
{
	struct rpc_client *c =
		h_client(addr, h_env("SLIPWAY_CA"), h_env("SLIPWAY_CERT"), h_env("SLIPWAY_KEY"));
	Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
	ProtobufCMessage *out = NULL;
	struct rpc_call_opts o = { .timeout_ms = 5000 };
	char err[256];
	int st = -1;
	if (rpc_call(c, &grpc__health__v1__health__descriptor, "Check", &req.base, &out, &o, err,
		     sizeof err) == 0) {
		st = ((Grpc__Health__V1__HealthCheckResponse *)out)->status ==
		     GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
		protobuf_c_message_free_unpacked(out, NULL);
	}
	rpc_client_free(c);
	return st;
}

int h_enroll(const char *agent, const char *app, const char *env, const unsigned char *pk)
{
	char key[80] = "";
	if (pk != NULL) {
		memcpy(key, "--sealing-key ", 14);
		sodium_bin2hex(key + 14, 65, pk, 32);
	}
	return h_run("build/bin/slipway agents enroll '%s' --app '%s' --env '%s' %s >/dev/null", agent,
		     app, env, key);
}

int h_run(const char *fmt, ...)
{
	char cmd[2048];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(cmd, sizeof cmd, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof cmd)
		return -1;
	return system(cmd);
}
