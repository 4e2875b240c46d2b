/*
 * artifact_s3.c - the baselines of the artifact benchmark (bench/artifact.sh):
 * a direct S3 PUT and GET of a file with libs3 through lib/s3 (the same
 * client code the artifact service uses, against the same S3 server), and
 * the throughput of lib/digest's SHA-256 alone. Prints one JSON object.
 * Benchmarks only.
 *
 *   bench-artifact_s3 put FILE KEY      PUT FILE (with Content-MD5) as KEY
 *   bench-artifact_s3 get KEY [FILE]    GET KEY, SHA-256 it, optionally write FILE
 *   bench-artifact_s3 sha256 MIB        hash MIB MiB in memory, 1 MiB updates
 *
 * S3 settings come from SLIPWAY_S3_HOST, _BUCKET, _ACCESS_KEY, _SECRET_KEY.
 */
#include "digest.h"
#include "err.h"
#include "s3.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static const char *env(const char *n)
{
	const char *v = getenv(n);
	if (v == NULL || *v == '\0') {
		fprintf(stderr, "bench-artifact_s3: %s is not set\n", n);
		exit(2);
	}
	return v;
}

struct sink {
	struct digest sha;
	int fd;
	uint64_t n;
};

static int on_data(const uint8_t *p, size_t n, void *arg)
{
	struct sink *k = arg;
	digest_update(&k->sha, p, n);
	k->n += n;
	if (k->fd >= 0 && write(k->fd, p, n) != (ssize_t)n)
		return 1;
	return 0;
}

int main(int argc, char **argv)
{
	char err[512];
	if (argc >= 3 && strcmp(argv[1], "sha256") == 0) {
		long mib = strtol(argv[2], NULL, 10);
		if (mib <= 0 || mib > 4096)
			return 2;
		size_t len = (size_t)mib << 20;
		uint8_t *buf = malloc(len), out[32];
		if (buf == NULL)
			return 1;
		for (size_t i = 0; i < len; i++)
			buf[i] = (uint8_t)(i * 131 + (i >> 13));
		struct digest d;
		digest_init(&d, DIGEST_SHA256);
		double t0 = now_s();
		for (size_t off = 0; off < len; off += 1u << 20)
			digest_update(&d, buf + off, 1u << 20);
		digest_final(&d, out);
		double t = now_s() - t0;
		digest_cleanup(&d);
		free(buf);
		printf("{\"bytes\": %zu, \"seconds\": %.6f, \"mb_per_s\": %.1f}\n", len, t,
		       (double)len / t / 1e6);
		return 0;
	}
	if (argc < 3 || (strcmp(argv[1], "put") != 0 && strcmp(argv[1], "get") != 0)) {
		fprintf(stderr, "usage: bench-artifact_s3 put FILE KEY | get KEY [FILE] | sha256 MIB\n");
		return 2;
	}
	if (s3_global_init(err, sizeof err) != 0) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	struct s3_opts o = { .host = env("SLIPWAY_S3_HOST"), .bucket = env("SLIPWAY_S3_BUCKET"),
			     .access_key = env("SLIPWAY_S3_ACCESS_KEY"),
			     .secret_key = env("SLIPWAY_S3_SECRET_KEY") };
	struct s3 *s = NULL;
	if (s3_new(&o, &s, err, sizeof err) != 0) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	int rc = 1;
	if (strcmp(argv[1], "put") == 0 && argc == 4) {
		int fd = open(argv[2], O_RDONLY);
		struct stat st;
		uint8_t md5[16];
		if (fd < 0 || fstat(fd, &st) != 0) {
			perror(argv[2]);
			goto out;
		}
		/* Content-MD5 as a client would send it: computed from the file
		 * before the upload, and counted in the time. */
		double t0 = now_s();
		struct digest d;
		digest_init(&d, DIGEST_MD5);
		uint8_t *b = malloc(1u << 20);
		ssize_t n;
		while ((n = read(fd, b, 1u << 20)) > 0)
			digest_update(&d, b, (size_t)n);
		digest_final(&d, md5);
		digest_cleanup(&d);
		free(b);
		lseek(fd, 0, SEEK_SET);
		double tm = now_s() - t0;
		if (s3_put_fd(s, argv[3], fd, (uint64_t)st.st_size, md5, err, sizeof err) != 0) {
			fprintf(stderr, "put: %s\n", err);
			close(fd);
			goto out;
		}
		double t = now_s() - t0;
		close(fd);
		printf("{\"bytes\": %lld, \"seconds\": %.6f, \"md5_seconds\": %.6f, "
		       "\"mb_per_s\": %.1f}\n",
		       (long long)st.st_size, t, tm, (double)st.st_size / t / 1e6);
		rc = 0;
	} else if (strcmp(argv[1], "get") == 0) {
		struct sink k = { .fd = -1 };
		uint8_t sha[32];
		char hex[DIGEST_STR_LEN];
		if (argc >= 4 && (k.fd = open(argv[3], O_WRONLY | O_CREAT | O_TRUNC, 0644)) < 0) {
			perror(argv[3]);
			goto out;
		}
		digest_init(&k.sha, DIGEST_SHA256);
		double t0 = now_s();
		int grc = s3_get(s, argv[2], 0, 0, on_data, &k, err, sizeof err);
		double t = now_s() - t0;
		digest_final(&k.sha, sha);
		digest_cleanup(&k.sha);
		if (k.fd >= 0)
			close(k.fd);
		if (grc != 0) {
			fprintf(stderr, "get: %s\n", err);
			goto out;
		}
		digest_format(sha, hex);
		printf("{\"bytes\": %llu, \"seconds\": %.6f, \"mb_per_s\": %.1f, \"digest\": \"%s\"}\n",
		       (unsigned long long)k.n, t, (double)k.n / t / 1e6, hex);
		rc = 0;
	}
out:
	s3_free(s);
	s3_global_cleanup();
	return rc;
}
