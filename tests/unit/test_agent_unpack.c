/*
 * Unit tests for the agent's bundle unpacker (services/agent/unpack.c):
 * every archive is built here with libarchive, including the malicious
 * ones (absolute paths, "..", symlink and hard link escapes, writing
 * through a symlink, devices, FIFOs, setuid bits, oversize), and the test
 * checks both the refusal and that nothing outside the tree changed.
 */
#include "agent.h"
#include "err.h"

#include <archive.h>
#include <archive_entry.h>

#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

struct ent {
	const char *path;
	char type;          /* f file, d dir, l symlink, h hard link, c char device, p FIFO */
	const char *arg;    /* file data, or link target */
	mode_t perm;
	long long size;     /* f: bytes of zeros when arg is NULL */
};

static char base[256], dest[300], arc[300], outside[300];

static int setup(void **state)
{
	(void)state;
	snprintf(base, sizeof base, "/tmp/test_agent_unpack.XXXXXX");
	if (mkdtemp(base) == NULL)
		return -1;
	snprintf(dest, sizeof dest, "%s/dest", base);
	snprintf(arc, sizeof arc, "%s/bundle.tar.gz", base);
	snprintf(outside, sizeof outside, "%s/outside.txt", base);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	agent_rmtree(base);
	return 0;
}

/* Fresh empty dest, and a sentinel file next to it that must never change. */
static void reset(void)
{
	agent_rmtree(dest);
	assert_int_equal(mkdir(dest, 0755), 0);
	FILE *f = fopen(outside, "w");
	assert_non_null(f);
	fputs("sentinel", f);
	fclose(f);
}

static void sentinel_intact(void)
{
	char buf[64] = "";
	FILE *f = fopen(outside, "r");
	assert_non_null(f);
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = '\0';
	assert_string_equal(buf, "sentinel");
}

static void build(const struct ent *e, size_t n)
{
	struct archive *a = archive_write_new();
	assert_non_null(a);
	archive_write_add_filter_gzip(a);
	archive_write_set_format_pax_restricted(a);
	assert_int_equal(archive_write_open_filename(a, arc), ARCHIVE_OK);
	for (size_t i = 0; i < n; i++) {
		struct archive_entry *x = archive_entry_new();
		archive_entry_set_pathname(x, e[i].path);
		archive_entry_set_perm(x, e[i].perm ? e[i].perm : 0644);
		long long size = 0;
		switch (e[i].type) {
		case 'f':
			archive_entry_set_filetype(x, AE_IFREG);
			size = e[i].arg ? (long long)strlen(e[i].arg) : e[i].size;
			archive_entry_set_size(x, size);
			break;
		case 'd':
			archive_entry_set_filetype(x, AE_IFDIR);
			archive_entry_set_perm(x, e[i].perm ? e[i].perm : 0755);
			break;
		case 'l':
			archive_entry_set_filetype(x, AE_IFLNK);
			archive_entry_set_symlink(x, e[i].arg);
			break;
		case 'h':
			archive_entry_set_filetype(x, AE_IFREG);
			archive_entry_set_hardlink(x, e[i].arg);
			archive_entry_set_size(x, 0);
			break;
		case 'c':
			archive_entry_set_filetype(x, AE_IFCHR);
			archive_entry_set_rdevmajor(x, 1);
			archive_entry_set_rdevminor(x, 3);
			break;
		case 'p':
			archive_entry_set_filetype(x, AE_IFIFO);
			break;
		}
		assert_int_equal(archive_write_header(a, x), ARCHIVE_OK);
		if (e[i].type == 'f') {
			if (e[i].arg) {
				archive_write_data(a, e[i].arg, (size_t)size);
			} else {
				static char zeros[65536];
				for (long long off = 0; off < size; off += (long long)sizeof zeros) {
					size_t k = size - off < (long long)sizeof zeros ? (size_t)(size - off)
											: sizeof zeros;
					archive_write_data(a, zeros, k);
				}
			}
		}
		archive_entry_free(x);
	}
	assert_int_equal(archive_write_close(a), ARCHIVE_OK);
	archive_write_free(a);
}

static int unpack_with(uint64_t max_bytes, uint64_t max_entries, char *err, size_t errlen)
{
	struct agent_unpack_limits lim = { .max_bytes = max_bytes, .max_entries = max_entries };
	return agent_unpack(arc, dest, &lim, NULL, NULL, err, errlen);
}

static int unpack(char *err, size_t errlen)
{
	return unpack_with(64u << 20, 1000, err, errlen);
}

static char *slurp(const char *rel)
{
	static char buf[4096];
	char p[512];
	snprintf(p, sizeof p, "%s/%s", dest, rel);
	FILE *f = fopen(p, "r");
	if (f == NULL)
		return NULL;
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = '\0';
	return buf;
}

static mode_t mode_of(const char *rel)
{
	char p[512];
	struct stat st;
	snprintf(p, sizeof p, "%s/%s", dest, rel);
	if (lstat(p, &st) != 0)
		return 0;
	return st.st_mode;
}

static void test_valid_bundle(void **state)
{
	(void)state;
	char err[256];
	const struct ent e[] = {
		{ "./", 'd', NULL, 0, 0 },
		{ "./slipway.json", 'f', "{}", 0664, 0 },
		{ "./bin/", 'd', NULL, 0775, 0 },
		{ "./bin/app", 'f', "#!/bin/sh\n", 04755 & 0777, 0 },
		{ "lib/deep/er/file.txt", 'f', "deep", 0600, 0 },   /* parents implied */
		{ "lib/current", 'l', "deep/er/file.txt", 0, 0 },
		{ "lib/up", 'l', "../bin/app", 0, 0 },
		{ "bin/app-again", 'h', "bin/app", 0, 0 },
	};
	reset();
	build(e, sizeof e / sizeof e[0]);
	assert_int_equal(unpack(err, sizeof err), 0);
	assert_string_equal(slurp("slipway.json"), "{}");
	assert_string_equal(slurp("lib/deep/er/file.txt"), "deep");
	assert_string_equal(slurp("lib/current"), "deep");
	assert_string_equal(slurp("bin/app-again"), "#!/bin/sh\n");
	/* Modes are normalised: no group/other write, exec kept. */
	assert_int_equal(mode_of("bin/app") & 07777, 0755);
	assert_int_equal(mode_of("slipway.json") & 07777, 0644);
	assert_int_equal(mode_of("lib/deep/er/file.txt") & 07777, 0644);
	assert_true(S_ISLNK(mode_of("lib/up")));
	sentinel_intact();
}

static void expect_refused(const struct ent *e, size_t n, int code, const char *needle)
{
	char err[256] = "";
	reset();
	build(e, n);
	int rc = unpack(err, sizeof err);
	if (rc != code)
		fail_msg("expected %d, got %d (%s)", code, rc, err);
	if (needle != NULL && strstr(err, needle) == NULL)
		fail_msg("message '%s' lacks '%s'", err, needle);
	sentinel_intact();
}

static void test_absolute_path(void **state)
{
	(void)state;
	char abs[400];
	snprintf(abs, sizeof abs, "%s", outside);
	const struct ent e[] = { { "ok.txt", 'f', "x", 0, 0 }, { abs, 'f', "pwned", 0, 0 } };
	expect_refused(e, 2, SW_EINVAL, "unsafe path");
}

static void test_dotdot(void **state)
{
	(void)state;
	const struct ent e1[] = { { "../outside.txt", 'f', "pwned", 0, 0 } };
	expect_refused(e1, 1, SW_EINVAL, "unsafe path");
	const struct ent e2[] = { { "a/b/../../../outside.txt", 'f', "pwned", 0, 0 } };
	expect_refused(e2, 1, SW_EINVAL, "unsafe path");
	const struct ent e3[] = { { "a/./b", 'f', "x", 0, 0 } };
	expect_refused(e3, 1, SW_EINVAL, "unsafe path");
}

static void test_symlink_escape(void **state)
{
	(void)state;
	const struct ent e1[] = { { "escape", 'l', "../outside.txt", 0, 0 } };
	expect_refused(e1, 1, SW_EINVAL, "points outside");
	const struct ent e2[] = { { "a/b/escape", 'l', "../../../outside.txt", 0, 0 } };
	expect_refused(e2, 1, SW_EINVAL, "points outside");
	const struct ent e3[] = { { "abs", 'l', "/etc/passwd", 0, 0 } };
	expect_refused(e3, 1, SW_EINVAL, "points outside");
	/* Down then up past the root inside one target. */
	const struct ent e4[] = { { "x", 'l', "a/../../outside.txt", 0, 0 } };
	expect_refused(e4, 1, SW_EINVAL, "points outside");
}

static void test_write_through_symlink(void **state)
{
	(void)state;
	/* An in-tree symlink to a directory, then an entry below it: even
	 * though the link stays inside, nothing is written through links. */
	const struct ent e[] = {
		{ "real/", 'd', NULL, 0, 0 },
		{ "via", 'l', "real", 0, 0 },
		{ "via/file", 'f', "x", 0, 0 },
	};
	expect_refused(e, 3, SW_EINVAL, "not a directory inside the tree");
	/* And a symlink replaced by a file of the same name. */
	const struct ent e2[] = {
		{ "target.txt", 'f', "t", 0, 0 },
		{ "link", 'l', "target.txt", 0, 0 },
		{ "link", 'f', "overwrite", 0, 0 },
	};
	expect_refused(e2, 3, SW_EINVAL, "duplicate");
	assert_string_equal(slurp("target.txt"), "t");
}

static void test_hardlink_escape(void **state)
{
	(void)state;
	const struct ent e1[] = { { "h", 'h', "../outside.txt", 0, 0 } };
	expect_refused(e1, 1, SW_EINVAL, "hard link");
	char abs[400];
	snprintf(abs, sizeof abs, "%s", outside);
	const struct ent e2[] = { { "h", 'h', abs, 0, 0 } };
	expect_refused(e2, 1, SW_EINVAL, "hard link");
	/* A hard link to a symlink inside the tree (which points nowhere
	 * harmful) is still refused: only regular files may be linked. */
	const struct ent e3[] = { { "s", 'l', "x", 0, 0 }, { "h", 'h', "s", 0, 0 } };
	expect_refused(e3, 2, SW_EINVAL, "hard link");
	/* A hard link to a file that is not (yet) in the tree. */
	const struct ent e4[] = { { "h", 'h', "later", 0, 0 }, { "later", 'f', "x", 0, 0 } };
	expect_refused(e4, 2, SW_EINVAL, "hard link");
	struct stat st;
	assert_int_equal(stat(outside, &st), 0);
	assert_int_equal(st.st_nlink, 1);
}

static void test_devices_and_fifos(void **state)
{
	(void)state;
	const struct ent e1[] = { { "dev/null", 'c', NULL, 0, 0 } };
	expect_refused(e1, 1, SW_EINVAL, "device, FIFO or socket");
	const struct ent e2[] = { { "pipe", 'p', NULL, 0, 0 } };
	expect_refused(e2, 1, SW_EINVAL, "device, FIFO or socket");
	assert_int_equal(mode_of("dev/null"), 0);
	assert_int_equal(mode_of("pipe"), 0);
}

static void test_setuid(void **state)
{
	(void)state;
	const struct ent e1[] = { { "bin/su", 'f', "x", 04755, 0 } };
	expect_refused(e1, 1, SW_EINVAL, "setuid");
	const struct ent e2[] = { { "bin/sg", 'f', "x", 02755, 0 } };
	expect_refused(e2, 1, SW_EINVAL, "setuid");
	assert_int_equal(mode_of("bin/su"), 0);
}

static void test_oversize(void **state)
{
	(void)state;
	char err[256];
	/* One file larger than the limit: refused from its header. */
	const struct ent e1[] = { { "big", 'f', NULL, 0, 2 << 20 } };
	reset();
	build(e1, 1);
	assert_int_equal(unpack_with(1 << 20, 1000, err, sizeof err), SW_ELIMIT);
	assert_non_null(strstr(err, "limit"));
	assert_int_equal(mode_of("big"), 0);
	/* Several files that together exceed it. */
	const struct ent e2[] = { { "a", 'f', NULL, 0, 400 << 10 }, { "b", 'f', NULL, 0, 400 << 10 },
				  { "c", 'f', NULL, 0, 400 << 10 } };
	reset();
	build(e2, 3);
	assert_int_equal(unpack_with(1 << 20, 1000, err, sizeof err), SW_ELIMIT);
	/* Within the limit it works. */
	reset();
	build(e2, 2);
	assert_int_equal(unpack_with(1 << 20, 1000, err, sizeof err), 0);
	/* Too many entries. */
	const struct ent e3[] = { { "1", 'f', "x", 0, 0 }, { "2", 'f', "x", 0, 0 },
				  { "3", 'f', "x", 0, 0 } };
	reset();
	build(e3, 3);
	assert_int_equal(unpack_with(1 << 20, 2, err, sizeof err), SW_ELIMIT);
	assert_non_null(strstr(err, "entries"));
}

static void test_not_an_archive(void **state)
{
	(void)state;
	char err[256];
	reset();
	FILE *f = fopen(arc, "w");
	assert_non_null(f);
	fputs("this is not a tarball at all, just text that goes on and on", f);
	fclose(f);
	assert_int_equal(unpack(err, sizeof err), SW_EINVAL);
	/* An empty archive is not a bundle either. */
	reset();
	build(NULL, 0);
	assert_int_equal(unpack(err, sizeof err), SW_EINVAL);
}

static void test_duplicate_and_root_entries(void **state)
{
	(void)state;
	const struct ent e1[] = { { "a", 'f', "1", 0, 0 }, { "./a", 'f', "2", 0, 0 } };
	expect_refused(e1, 2, SW_EINVAL, "duplicate");
	assert_string_equal(slurp("a"), "1");
	/* A file where a directory is implied. */
	const struct ent e2[] = { { "a", 'f', "1", 0, 0 }, { "a/b", 'f', "2", 0, 0 } };
	expect_refused(e2, 2, SW_EINVAL, NULL);
	/* The root itself as a symlink or a file. */
	const struct ent e3[] = { { "./", 'l', "..", 0, 0 } };
	expect_refused(e3, 1, SW_EINVAL, NULL);
}

static int stop_now(void *arg)
{
	(void)arg;
	return 1;
}

static void test_cancel(void **state)
{
	(void)state;
	char err[256];
	const struct ent e[] = { { "a", 'f', "1", 0, 0 } };
	reset();
	build(e, 1);
	struct agent_unpack_limits lim = { .max_bytes = 1 << 20, .max_entries = 10 };
	assert_int_equal(agent_unpack(arc, dest, &lim, stop_now, NULL, err, sizeof err),
			 SW_ECANCELLED);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_valid_bundle),
		cmocka_unit_test(test_absolute_path),
		cmocka_unit_test(test_dotdot),
		cmocka_unit_test(test_symlink_escape),
		cmocka_unit_test(test_write_through_symlink),
		cmocka_unit_test(test_hardlink_escape),
		cmocka_unit_test(test_devices_and_fifos),
		cmocka_unit_test(test_setuid),
		cmocka_unit_test(test_oversize),
		cmocka_unit_test(test_not_an_archive),
		cmocka_unit_test(test_duplicate_and_root_entries),
		cmocka_unit_test(test_cancel),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
