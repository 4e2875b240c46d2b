/*
 * agent_harness.c - see agent_harness.h.
 */
#include "agent_harness.h"
#include "err.h"
#include "harness.h"
#include "hash.h"
#include "rpc.h"

#include "slipway/v1/artifact.pb-c.h"

#include <archive.h>
#include <libpq-fe.h>
#include <archive_entry.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int ah_file_digest(const char *path, char out[72])
{
	char *buf = NULL;
	FILE *f = fopen(path, "rb");
	if (f == NULL)
		return -1;
	size_t cap = 1 << 20, len = 0, r;
	buf = malloc(cap);
	while (buf != NULL && (r = fread(buf + len, 1, cap - len, f)) > 0) {
		len += r;
		if (len == cap) {
			char *nb = realloc(buf, cap * 2);
			if (nb == NULL) {
				free(buf);
				buf = NULL;
				break;
			}
			buf = nb;
			cap *= 2;
		}
	}
	fclose(f);
	if (buf == NULL)
		return -1;
	uint8_t h[HASH_SHA256_LEN];
	hash_sha256(buf, len, NULL, 0, NULL, 0, h);
	free(buf);
	memcpy(out, "sha256:", 7);
	hash_hex(h, HASH_SHA256_LEN, out + 7);
	return 0;
}

int ah_push(const char *file, const char *app, const char *version, char digest[72], char *err,
	    size_t errlen)
{
	struct rpc_client *c = h_client(h_env("SLIPWAY_ARTIFACT_ADDR"), h_env("SLIPWAY_CA"),
					h_env("SLIPWAY_CERT"), h_env("SLIPWAY_KEY"));
	struct rpc_stream *s = NULL;
	struct rpc_call_opts o = { .timeout_ms = 60000 };
	int rc = rpc_stream_open(c, &slipway__v1__artifact__descriptor, "Push", &o, &s, err, errlen);
	if (rc != 0) {
		rpc_client_free(c);
		return rc;
	}
	Slipway__V1__Provenance pv = SLIPWAY__V1__PROVENANCE__INIT;
	pv.repository = "https://git.example.com/shop/web";
	pv.commit = "0123456789abcdef0123456789abcdef01234567";
	pv.ref = "refs/heads/main";
	pv.builder = "it_agent";
	Slipway__V1__PushHeader h = SLIPWAY__V1__PUSH_HEADER__INIT;
	h.app = (char *)app;
	h.version = (char *)version;
	h.provenance = &pv;
	Slipway__V1__PushRequest m = SLIPWAY__V1__PUSH_REQUEST__INIT;
	m.msg_case = SLIPWAY__V1__PUSH_REQUEST__MSG_HEADER;
	m.header = &h;
	rpc_stream_send(s, &m.base);
	FILE *f = fopen(file, "rb");
	static uint8_t buf[256 * 1024];
	size_t n;
	while (f != NULL && (n = fread(buf, 1, sizeof buf, f)) > 0) {
		Slipway__V1__PushRequest d = SLIPWAY__V1__PUSH_REQUEST__INIT;
		d.msg_case = SLIPWAY__V1__PUSH_REQUEST__MSG_CHUNK;
		d.chunk.data = buf;
		d.chunk.len = n;
		if (rpc_stream_send(s, &d.base) != 0)
			break;
	}
	if (f != NULL)
		fclose(f);
	rpc_stream_close_send(s);
	ProtobufCMessage *resp = NULL;
	if (rpc_stream_recv(s, &resp) == 1) {
		Slipway__V1__PushResponse *r = (void *)resp;
		if (r->release != NULL)
			snprintf(digest, 72, "%s", r->release->digest);
		protobuf_c_message_free_unpacked(resp, NULL);
	}
	rc = rpc_stream_finish(s, err, errlen);
	rpc_client_free(c);
	return rc;
}

void ah_evil_bundle(const char *path, const char *evil_name, const char *link_target)
{
	static const char manifest[] =
		"{\"schema\":1,\"app\":\"web\",\"start\":{\"command\":[\"bin/demo-app\"]},"
		"\"health\":{\"http\":{\"path\":\"/healthz\"}}}";
	struct archive *a = archive_write_new();
	archive_write_add_filter_gzip(a);
	archive_write_set_format_pax_restricted(a);
	if (archive_write_open_filename(a, path) != ARCHIVE_OK) {
		fprintf(stderr, "agent_harness: cannot write %s\n", path);
		exit(1);
	}
	struct archive_entry *e = archive_entry_new();
	archive_entry_set_pathname(e, "slipway.json");
	archive_entry_set_filetype(e, AE_IFREG);
	archive_entry_set_perm(e, 0644);
	archive_entry_set_size(e, (la_int64_t)(sizeof manifest - 1));
	archive_write_header(a, e);
	archive_write_data(a, manifest, sizeof manifest - 1);
	archive_entry_clear(e);
	archive_entry_set_pathname(e, evil_name);
	archive_entry_set_perm(e, 0644);
	if (link_target != NULL) {
		archive_entry_set_filetype(e, AE_IFLNK);
		archive_entry_set_symlink(e, link_target);
		archive_write_header(a, e);
	} else {
		archive_entry_set_filetype(e, AE_IFREG);
		archive_entry_set_size(e, 5);
		archive_write_header(a, e);
		archive_write_data(a, "pwned", 5);
	}
	archive_entry_free(e);
	archive_write_close(a);
	archive_write_free(a);
}

void ah_bundle(const char *path, const char *manifest, const char *app_bin)
{
	struct archive *a = archive_write_new();
	archive_write_add_filter_gzip(a);
	archive_write_set_format_pax_restricted(a);
	if (archive_write_open_filename(a, path) != ARCHIVE_OK) {
		fprintf(stderr, "agent_harness: cannot write %s\n", path);
		exit(1);
	}
	struct archive_entry *e = archive_entry_new();
	archive_entry_set_pathname(e, "slipway.json");
	archive_entry_set_filetype(e, AE_IFREG);
	archive_entry_set_perm(e, 0644);
	archive_entry_set_size(e, (la_int64_t)strlen(manifest));
	archive_write_header(a, e);
	archive_write_data(a, manifest, strlen(manifest));
	archive_entry_clear(e);
	char *bin = NULL;
	size_t len = 0;
	FILE *f = fopen(app_bin, "rb");
	if (f != NULL) {
		fseek(f, 0, SEEK_END);
		long n = ftell(f);
		fseek(f, 0, SEEK_SET);
		if (n > 0 && (bin = malloc((size_t)n)) != NULL)
			len = fread(bin, 1, (size_t)n, f);
		fclose(f);
	}
	if (bin == NULL) {
		fprintf(stderr, "agent_harness: cannot read %s\n", app_bin);
		exit(1);
	}
	archive_entry_set_pathname(e, "bin/demo-app");
	archive_entry_set_filetype(e, AE_IFREG);
	archive_entry_set_perm(e, 0755);
	archive_entry_set_size(e, (la_int64_t)len);
	archive_write_header(a, e);
	archive_write_data(a, bin, len);
	free(bin);
	archive_entry_free(e);
	archive_write_close(a);
	archive_write_free(a);
}

char *ah_http_get(int port, const char *path, int *status)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
		if (fd >= 0)
			close(fd);
		return NULL;
	}
	char req[512];
	int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\n\r\n", path);
	if (send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
		close(fd);
		return NULL;
	}
	char buf[4096];
	size_t got = 0;
	ssize_t r;
	while (got < sizeof buf - 1 && (r = recv(fd, buf + got, sizeof buf - 1 - got, 0)) > 0)
		got += (size_t)r;
	close(fd);
	buf[got] = '\0';
	if (sscanf(buf, "HTTP/%*d.%*d %d", status) != 1)
		return NULL;
	char *body = strstr(buf, "\r\n\r\n");
	return strdup(body ? body + 4 : "");
}

int ah_read_pid(const char *file)
{
	char *s = h_read_file(file);
	int pid = s ? (int)strtol(s, NULL, 10) : 0;
	free(s);
	return pid;
}

int ah_pid_alive(int pid)
{
	char path[64], buf[512];
	if (pid <= 0)
		return 0;
	snprintf(path, sizeof path, "/proc/%d/stat", pid);
	FILE *f = fopen(path, "r");
	if (f == NULL)
		return 0;
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = '\0';
	char *p = strrchr(buf, ')');
	return p != NULL && p[1] == ' ' && p[2] != 'Z' && p[2] != 'X';
}

void ah_kill_group(int pid)
{
	if (pid <= 0)
		return;
	kill(-pid, SIGTERM);
	for (int i = 0; i < 100 && ah_pid_alive(pid); i++)
		h_sleep_ms(50);
	if (ah_pid_alive(pid))
		kill(-pid, SIGKILL);
}

void ah_wait_outbox_drained(int timeout_ms)
{
	const char *url = getenv("SLIPWAY_PGURL");
	if (url == NULL)
		return;
	PGconn *c = PQconnectdb(url);
	if (PQstatus(c) != CONNECTION_OK) {
		PQfinish(c);
		return;
	}
	long long until = h_now_ms() + timeout_ms;
	for (;;) {
		/* Each service keeps its outbox in its own schema. */
		PGresult *r = PQexec(c, "SELECT table_schema FROM information_schema.tables "
					"WHERE table_name = 'outbox'");
		long long pending = 0;
		for (int i = 0; PQresultStatus(r) == PGRES_TUPLES_OK && i < PQntuples(r); i++) {
			char *schema = PQescapeIdentifier(c, PQgetvalue(r, i, 0),
							  strlen(PQgetvalue(r, i, 0)));
			char q[256];
			snprintf(q, sizeof q, "SELECT count(*) FROM %s.outbox", schema ? schema : "x");
			PQfreemem(schema);
			PGresult *n = PQexec(c, q);
			if (PQresultStatus(n) == PGRES_TUPLES_OK)
				pending += strtoll(PQgetvalue(n, 0, 0), NULL, 10);
			PQclear(n);
		}
		PQclear(r);
		if (pending == 0 || h_now_ms() >= until)
			break;
		h_sleep_ms(100);
	}
	PQfinish(c);
}
