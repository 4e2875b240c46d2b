/*
 * replay.c - a standalone driver that runs a fuzz harness over saved
 * inputs, so that every seed corpus and every crash regression is a unit
 * test built with the project's own compiler and flags (and, under
 * SANITIZE=1, with ASan and UBSan).
 *
 *   build/tests/test_fuzz_<name> [FILE|DIR ...]
 *
 * Without arguments it replays tests/fuzz/corpus/<name>/ and
 * tests/fuzz/crashes/<name>/ (relative to the working directory, which
 * tests/run sets to the top of the tree), <name> coming from the program's
 * own name. Each input is fed to LLVMFuzzerTestOneInput; a harness that
 * aborts (a broken invariant) or a sanitizer report ends the process with a
 * failure. Exits 0 after at least one input was replayed, 1 when there was
 * none or one could not be read.
 */
#include "fuzz.h"

#include <dirent.h>
#include <errno.h>

static int replay_file(const char *path, unsigned *count)
{
	FILE *f = fopen(path, "rb");
	uint8_t *buf = NULL;
	size_t len = 0, cap = 0;
	int rc = 0;
	if (f == NULL) {
		fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
		return 1;
	}
	for (;;) {
		if (len == cap) {
			cap = cap ? cap * 2 : 4096;
			if (cap > (64u << 20)) {
				fprintf(stderr, "replay: %s: larger than 64 MiB\n", path);
				rc = 1;
				goto out;
			}
			uint8_t *nb = realloc(buf, cap);
			if (nb == NULL) {
				rc = 1;
				goto out;
			}
			buf = nb;
		}
		size_t got = fread(buf + len, 1, cap - len, f);
		len += got;
		if (got == 0)
			break;
	}
	if (ferror(f)) {
		fprintf(stderr, "replay: %s: read error\n", path);
		rc = 1;
		goto out;
	}
	/* An exact-size copy, so ASan sees a read past the input's end. */
	uint8_t *exact = malloc(len ? len : 1);
	if (exact == NULL) {
		rc = 1;
		goto out;
	}
	memcpy(exact, buf, len);
	LLVMFuzzerTestOneInput(exact, len);
	free(exact);
	(*count)++;
out:
	free(buf);
	fclose(f);
	return rc;
}

static int cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Replays every regular file of dir in name order (hidden files skipped).
 * A missing directory is fine when optional. */
static int replay_dir(const char *dir, int optional, unsigned *count)
{
	DIR *d = opendir(dir);
	char **names = NULL;
	size_t n = 0, cap = 0;
	int rc = 0;
	if (d == NULL) {
		if (optional && errno == ENOENT)
			return 0;
		fprintf(stderr, "replay: %s: %s\n", dir, strerror(errno));
		return 1;
	}
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 64;
			char **nn = realloc(names, cap * sizeof *names);
			if (nn == NULL) {
				rc = 1;
				goto out;
			}
			names = nn;
		}
		if ((names[n] = strdup(e->d_name)) == NULL) {
			rc = 1;
			goto out;
		}
		n++;
	}
	if (n > 0)
		qsort(names, n, sizeof *names, cmp_names);
	for (size_t i = 0; i < n && rc == 0; i++) {
		char path[4096];
		struct stat st;
		snprintf(path, sizeof path, "%s/%s", dir, names[i]);
		if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
			continue;
		rc = replay_file(path, count);
	}
out:
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
	closedir(d);
	return rc;
}

static int replay_arg(const char *arg, unsigned *count)
{
	struct stat st;
	if (stat(arg, &st) != 0) {
		fprintf(stderr, "replay: %s: %s\n", arg, strerror(errno));
		return 1;
	}
	return S_ISDIR(st.st_mode) ? replay_dir(arg, 0, count) : replay_file(arg, count);
}

int main(int argc, char **argv)
{
	unsigned count = 0;
	int rc = 0;
	if (argc > 1) {
		for (int i = 1; i < argc && rc == 0; i++)
			rc = replay_arg(argv[i], &count);
	} else {
		/* build/tests/test_fuzz_spiffe -> spiffe */
		const char *base = strrchr(argv[0], '/');
		base = base ? base + 1 : argv[0];
		const char *name = strstr(base, "fuzz_");
		if (name == NULL || name[5] == '\0') {
			fprintf(stderr, "usage: %s FILE|DIR ... (or run as test_fuzz_<name>)\n",
				argv[0]);
			return 2;
		}
		name += 5;
		char dir[512];
		snprintf(dir, sizeof dir, "tests/fuzz/corpus/%s", name);
		rc = replay_dir(dir, 0, &count);
		snprintf(dir, sizeof dir, "tests/fuzz/crashes/%s", name);
		if (rc == 0)
			rc = replay_dir(dir, 1, &count);
	}
	if (rc == 0 && count == 0) {
		fprintf(stderr, "replay: no inputs\n");
		rc = 1;
	}
	if (rc == 0)
		printf("replayed %u inputs\n", count);
	return rc;
}
