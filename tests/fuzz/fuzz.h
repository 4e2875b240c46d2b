/*
 * fuzz.h - what every harness under tests/fuzz/ shares: the libFuzzer entry
 * point's prototype, the invariant check, and a small reader that turns the
 * fuzzer's bytes into structured input (numbers, bounded strings).
 *
 * A harness is built twice: with clang and -fsanitize=fuzzer for real
 * fuzzing (tests/fuzz/Makefile, `make fuzz`), and with the project's
 * compiler and flags together with tests/fuzz/replay.c, which feeds it every
 * file of its seed corpus and crash regressions as a unit test. FUZZ_CHECK
 * aborts in both, so a broken invariant is a crash to libFuzzer and a
 * failed test to tests/run.
 */
#ifndef SLIPWAY_FUZZ_H
#define SLIPWAY_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

/* Called once per input; returns 0 (libFuzzer ignores other values). */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Aborts with the file, line and a message when cond is false. */
#define FUZZ_CHECK(cond, ...)                                                        \
	do {                                                                         \
		if (!(cond)) {                                                       \
			fprintf(stderr, "%s:%d: invariant violated: %s: ", __FILE__,  \
				__LINE__, #cond);                                    \
			fprintf(stderr, __VA_ARGS__);                                \
			fputc('\n', stderr);                                         \
			abort();                                                     \
		}                                                                    \
	} while (0)

/* Reads structured values from the input; past the end everything reads
 * as zero, so every input is a valid sequence of values. */
struct fz {
	const uint8_t *p;
	size_t n;
};

static inline uint8_t fz_u8(struct fz *f)
{
	if (f->n == 0)
		return 0;
	f->n--;
	return *f->p++;
}

static inline uint32_t fz_u32(struct fz *f)
{
	uint32_t v = 0;
	for (int i = 0; i < 4; i++)
		v = v << 8 | fz_u8(f);
	return v;
}

static inline uint64_t fz_u64(struct fz *f)
{
	uint64_t v = (uint64_t)fz_u32(f) << 32;
	return v | fz_u32(f);
}

/* Copies a string of at most max bytes (one length byte, then the bytes;
 * NUL bytes end it early) into out[max + 1]. Returns its length. */
static inline size_t fz_str(struct fz *f, char *out, size_t max)
{
	size_t want = fz_u8(f);
	if (max < 255)
		want %= max + 1;
	if (want > max)
		want = max;
	if (want > f->n)
		want = f->n;
	size_t k = 0;
	for (size_t i = 0; i < want; i++) {
		char c = (char)f->p[i];
		if (c == '\0')
			break;
		out[k++] = c;
	}
	f->p += want;
	f->n -= want;
	out[k] = '\0';
	return k;
}

/* Copies the rest of the input into a new NUL-terminated string (NUL
 * bytes inside stay: C string functions see a prefix). Free with free(). */
static inline char *fz_rest(struct fz *f, size_t *len)
{
	char *s = malloc(f->n + 1);
	if (s == NULL)
		abort();
	memcpy(s, f->p, f->n);
	s[f->n] = '\0';
	if (len != NULL)
		*len = f->n;
	f->p += f->n;
	f->n = 0;
	return s;
}

static inline int fuzz_rm_one(const char *path, const struct stat *st, int flag,
			      struct FTW *ftw)
{
	(void)st;
	(void)ftw;
	if (flag == FTW_DP || flag == FTW_DNR)
		rmdir(path);
	else
		unlink(path);
	return 0;
}

/* Removes a tree without following symlinks (missing is fine). */
static inline void fuzz_rmtree(const char *path)
{
	nftw(path, fuzz_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static char fuzz_tmp_path[256];

static inline void fuzz_tmp_cleanup(void)
{
	if (fuzz_tmp_path[0] != '\0')
		fuzz_rmtree(fuzz_tmp_path);
}

/* A private temporary directory for this process (created on first use,
 * removed at exit), under $TMPDIR or /tmp. */
static inline const char *fuzz_tmpdir(void)
{
	if (fuzz_tmp_path[0] == '\0') {
		const char *t = getenv("TMPDIR");
		snprintf(fuzz_tmp_path, sizeof fuzz_tmp_path, "%s/slipway-fuzz.XXXXXX",
			 t != NULL && t[0] != '\0' ? t : "/tmp");
		if (mkdtemp(fuzz_tmp_path) == NULL) {
			perror("mkdtemp");
			abort();
		}
		atexit(fuzz_tmp_cleanup);
	}
	return fuzz_tmp_path;
}

#endif
