/*
 * fuzz_unpack.c - the bundle unpacker (services/agent/unpack.c): the agent
 * extracts archives someone else built, and promises that nothing is ever
 * written outside the release directory and that nothing in it points
 * outside.
 *
 * The first input byte picks how the archive is made:
 *   even  the rest of the input is the archive (tar or tar.gz);
 *   odd   the rest describes up to 12 entries (type, path, link target,
 *         mode bits, contents) that libarchive writes as a pax tar,
 *         gzipped or not, so the fuzzer reaches the symlink, hard link,
 *         duplicate and mode rules quickly.
 *
 * Each run unpacks into <tmp>/<n>/dest next to <tmp>/<n>/outside, which
 * holds a sentinel file, with limits of 64 entries and 256 KiB. Whatever
 * agent_unpack returns (a refusal leaves a partial tree, which the agent
 * removes), the harness checks:
 *  - <tmp>/<n> holds only dest and outside, and outside only the
 *    unchanged sentinel (nothing was written outside);
 *  - dest holds only directories, regular files and symlinks; no set-id
 *    or sticky bits, nothing writable by group or others;
 *  - every existing path a symlink resolves to (realpath) is inside dest;
 *  - every regular file's link count equals its names inside dest (no
 *    hard link reaches a file outside), and the files' bytes stay within
 *    the limit;
 */
#include "fuzz.h"

#include "../../services/agent/agent.h"
#include "err.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>

#define MAX_BYTES (256u * 1024)
#define MAX_ENTRIES 64

static unsigned iteration;
static char top[PATH_MAX - 64], dest[PATH_MAX], outside[PATH_MAX - 32], sentinel[PATH_MAX];
static char dest_real[PATH_MAX];

/* ---- building an archive from a description ---- */

static void put_entry(struct archive *a, struct fz *f)
{
	static const char *const targets[] = { "x", "../x", "..", ".", "sub/..", "a/b/../..",
					       "../outside/sentinel", "../../etc/passwd",
					       "/etc/passwd", "l1/..", "l2/../.." };
	char path[80], target[80];
	uint8_t type = fz_u8(f) % 8;
	fz_str(f, path, 64);
	if (fz_u8(f) & 1)
		snprintf(target, sizeof target, "%s", targets[fz_u8(f) % (sizeof targets / sizeof *targets)]);
	else
		fz_str(f, target, 64);
	unsigned perm = fz_u8(f) | (unsigned)(fz_u8(f) & 0x0f) << 8;
	size_t len = fz_u8(f);
	if (len > f->n)
		len = f->n;
	struct archive_entry *e = archive_entry_new();
	archive_entry_set_pathname(e, path);
	archive_entry_set_perm(e, perm & 07777);
	switch (type) {
	case 0:
	case 1:
		archive_entry_set_filetype(e, AE_IFREG);
		archive_entry_set_size(e, (la_int64_t)len);
		break;
	case 2:
		archive_entry_set_filetype(e, AE_IFDIR);
		len = 0;
		break;
	case 3:
	case 4:
		archive_entry_set_filetype(e, AE_IFLNK);
		archive_entry_set_symlink(e, target);
		len = 0;
		break;
	case 5:
		archive_entry_set_filetype(e, AE_IFREG);
		archive_entry_set_hardlink(e, target);
		archive_entry_set_size(e, 0);
		len = 0;
		break;
	case 6:
		archive_entry_set_filetype(e, AE_IFIFO);
		len = 0;
		break;
	default:
		archive_entry_set_filetype(e, AE_IFCHR);
		archive_entry_set_rdev(e, 0x0103);
		len = 0;
	}
	if (archive_write_header(a, e) == ARCHIVE_OK && len > 0)
		archive_write_data(a, f->p, len);
	f->p += len;
	f->n -= len;
	archive_entry_free(e);
}

static size_t build(struct fz *f, uint8_t *buf, size_t cap)
{
	struct archive *a = archive_write_new();
	size_t used = 0;
	FUZZ_CHECK(a != NULL, "archive_write_new");
	archive_write_set_format_pax_restricted(a);
	if (fz_u8(f) & 1)
		archive_write_add_filter_gzip(a);
	archive_write_set_bytes_in_last_block(a, 1);
	FUZZ_CHECK(archive_write_open_memory(a, buf, cap, &used) == ARCHIVE_OK, "open memory");
	int n = 1 + fz_u8(f) % 12;
	for (int i = 0; i < n && f->n > 0; i++)
		put_entry(a, f);
	archive_write_close(a);
	archive_write_free(a);
	return used;
}

/* ---- checking the result ---- */

struct inode {
	dev_t dev;
	ino_t ino;
	nlink_t nlink;
	nlink_t seen;
	off_t size;
};

static struct inode inodes[4096];
static size_t ninodes;

static int walk_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)ftw;
	FUZZ_CHECK(flag != FTW_NS, "cannot stat %s", path);
	mode_t t = st->st_mode & S_IFMT;
	FUZZ_CHECK(t == S_IFDIR || t == S_IFREG || t == S_IFLNK, "%s has type 0%o", path,
		   (unsigned)t);
	if (t == S_IFLNK) {
		char real[PATH_MAX];
		if (realpath(path, real) != NULL) {
			size_t dl = strlen(dest_real);
			FUZZ_CHECK(strncmp(real, dest_real, dl) == 0 && (real[dl] == '/' || real[dl] == '\0'),
				   "symlink %s resolves outside the release: %s", path, real);
		}
		return 0;
	}
	FUZZ_CHECK((st->st_mode & (S_ISUID | S_ISGID | S_ISVTX)) == 0, "%s has mode 0%o", path,
		   (unsigned)st->st_mode);
	FUZZ_CHECK((st->st_mode & 022) == 0, "%s is writable by others: 0%o", path,
		   (unsigned)st->st_mode);
	if (t == S_IFREG) {
		size_t i;
		for (i = 0; i < ninodes; i++)
			if (inodes[i].dev == st->st_dev && inodes[i].ino == st->st_ino)
				break;
		if (i == ninodes) {
			FUZZ_CHECK(ninodes < sizeof inodes / sizeof *inodes, "too many files");
			inodes[ninodes++] = (struct inode){ st->st_dev, st->st_ino, st->st_nlink, 0,
							    st->st_size };
		}
		inodes[i].seen++;
	}
	return 0;
}

static void check_dir_holds(const char *dir, const char *a, const char *b)
{
	DIR *d = opendir(dir);
	FUZZ_CHECK(d != NULL, "opendir %s", dir);
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		FUZZ_CHECK(strcmp(e->d_name, a) == 0 || (b != NULL && strcmp(e->d_name, b) == 0),
			   "'%s' was written in %s", e->d_name, dir);
	}
	closedir(d);
}

static void check_tree(int rc)
{
	check_dir_holds(top, "dest", "outside");
	check_dir_holds(outside, "sentinel", NULL);
	check_dir_holds(fuzz_tmpdir(), top + strlen(fuzz_tmpdir()) + 1, "bundle.tar");
	struct stat st;
	FUZZ_CHECK(lstat(sentinel, &st) == 0 && S_ISREG(st.st_mode) && st.st_size == 8 &&
			   st.st_nlink == 1,
		   "the sentinel outside the release changed");
	char buf[16];
	int fd = open(sentinel, O_RDONLY | O_NOFOLLOW);
	FUZZ_CHECK(fd >= 0 && read(fd, buf, sizeof buf) == 8 && memcmp(buf, "sentinel", 8) == 0,
		   "the sentinel's bytes changed");
	close(fd);

	ninodes = 0;
	FUZZ_CHECK(nftw(dest, walk_one, 32, FTW_PHYS) == 0, "walk %s", dest);
	uint64_t bytes = 0;
	for (size_t i = 0; i < ninodes; i++) {
		FUZZ_CHECK(inodes[i].seen == inodes[i].nlink,
			   "a file has %lu links but %lu names in the release",
			   (unsigned long)inodes[i].nlink, (unsigned long)inodes[i].seen);
		bytes += (uint64_t)inodes[i].size;
	}
	FUZZ_CHECK(bytes <= MAX_BYTES, "%llu bytes unpacked (rc %d)", (unsigned long long)bytes,
		   rc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint8_t archive[1 << 20];
	static int init;
	if (!init) {
		umask(022);
		init = 1;
	}
	struct fz f = { data, size };
	uint8_t mode = fz_u8(&f);
	size_t alen;
	const uint8_t *abytes;
	if (mode & 1) {
		alen = build(&f, archive, sizeof archive);
		abytes = archive;
	} else {
		alen = f.n;
		abytes = f.p;
	}

	const char *tmp = fuzz_tmpdir();
	char apath[PATH_MAX];
	snprintf(apath, sizeof apath, "%s/bundle.tar", tmp);
	int fd = open(apath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	FUZZ_CHECK(fd >= 0 && (alen == 0 || write(fd, abytes, alen) == (ssize_t)alen),
		   "write archive");
	close(fd);

	snprintf(top, sizeof top, "%s/%u", tmp, iteration++);
	snprintf(dest, sizeof dest, "%s/dest", top);
	snprintf(outside, sizeof outside, "%s/outside", top);
	snprintf(sentinel, sizeof sentinel, "%s/sentinel", outside);
	FUZZ_CHECK(mkdir(top, 0700) == 0 && mkdir(dest, 0700) == 0 && mkdir(outside, 0700) == 0,
		   "mkdir");
	fd = open(sentinel, O_WRONLY | O_CREAT | O_EXCL, 0644);
	FUZZ_CHECK(fd >= 0 && write(fd, "sentinel", 8) == 8, "sentinel");
	close(fd);
	FUZZ_CHECK(realpath(dest, dest_real) != NULL, "realpath");

	struct agent_unpack_limits lim = { MAX_BYTES, MAX_ENTRIES };
	char err[512];
	int rc = agent_unpack(apath, dest, &lim, NULL, NULL, err, sizeof err);
	FUZZ_CHECK(rc == 0 || rc == SW_EINVAL || rc == SW_ELIMIT || rc == SW_EIO,
		   "agent_unpack: %d %s", rc, err);
	check_tree(rc);

	fuzz_rmtree(top);
	unlink(apath);
	return 0;
}
