/*
 * unpack.c - extracting a release bundle (.tar.gz) safely.
 *
 * A bundle comes from the artifact service and its digest was verified, but
 * the bytes were still built by someone else: the unpacker treats them as
 * hostile. libarchive reads the archive; every entry is checked before
 * anything touches the disk (path, type, mode, size), and the tree is
 * written by this file, relative to a directory descriptor, one component
 * at a time with O_NOFOLLOW, so no entry can ever be written through a
 * symlink, even one an earlier entry created.
 */
#include "agent.h"
#include "err.h"

#include <archive.h>
#include <archive_entry.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_DEPTH 64
#define MAX_NAME 1024

/* Normalises an archive path into out: drops leading "./" and trailing
 * "/", then checks it is a safe relative path. Returns 0, 1 for the root
 * itself ("." or "./"), or SW_EINVAL. */
static int norm_path(const char *in, char *out, size_t outlen)
{
	if (in == NULL || in[0] == '/' || strlen(in) >= outlen || strlen(in) > MAX_NAME)
		return SW_EINVAL;
	while (in[0] == '.' && in[1] == '/')
		in += 2;
	snprintf(out, outlen, "%s", in);
	size_t n = strlen(out);
	while (n > 0 && out[n - 1] == '/')
		out[--n] = '\0';
	if (n == 0 || strcmp(out, ".") == 0)
		return 1;
	if (!agent_relpath_ok(out))
		return SW_EINVAL;
	int depth = 1;
	for (const char *p = out; *p; p++)
		depth += *p == '/';
	return depth > MAX_DEPTH ? SW_EINVAL : 0;
}

/* Does a symlink at rel_path with target `target` stay inside the tree?
 * Lexical: ".." components may only lead the target (at most as many as
 * the link's directory depth), then it only descends. That is sound
 * because the link's own directories are real ones (nothing is ever
 * created below a symlink: O_NOFOLLOW walks), so climbing from there is
 * exact, and descending from inside the tree, even through other links
 * that obey the same rule, stays inside. A ".." after a descent could
 * climb out of wherever a symlink led (a -> ".", b -> "a/.." is the
 * release's parent), so it is refused. */
static int link_target_ok(const char *rel_path, const char *target)
{
	if (target == NULL || target[0] == '\0' || target[0] == '/' || strlen(target) > MAX_NAME)
		return 0;
	int depth = 0, descended = 0;
	for (const char *p = rel_path; *p; p++)
		depth += *p == '/';
	const char *s = target;
	while (*s != '\0') {
		const char *slash = strchr(s, '/');
		size_t n = slash ? (size_t)(slash - s) : strlen(s);
		for (size_t i = 0; i < n; i++)
			if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
				return 0;
		if (n == 2 && s[0] == '.' && s[1] == '.') {
			if (descended || --depth < 0)
				return 0;
		} else if (n > 0 && !(n == 1 && s[0] == '.')) {
			descended = 1;
		}
		if (slash == NULL)
			break;
		s = slash + 1;
	}
	return 1;
}

/* Walks to the parent directory of rel (creating missing directories when
 * create is set) and returns its descriptor; *leaf points at the last
 * component of rel. Never follows a symlink. */
static int open_parent(int root, const char *rel, int create, const char **leaf)
{
	char comp[MAX_NAME + 1];
	int cur = dup(root);
	if (cur < 0)
		return -1;
	const char *s = rel;
	for (;;) {
		const char *slash = strchr(s, '/');
		if (slash == NULL)
			break;
		size_t n = (size_t)(slash - s);
		memcpy(comp, s, n);
		comp[n] = '\0';
		int next = openat(cur, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (next < 0 && errno == ENOENT && create) {
			if (mkdirat(cur, comp, 0755) != 0 && errno != EEXIST) {
				close(cur);
				return -1;
			}
			next = openat(cur, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (next >= 0)
				fchmod(next, 0755); /* whatever the umask */
		}
		close(cur);
		if (next < 0)
			return -1;
		cur = next;
		s = slash + 1;
	}
	*leaf = s;
	return cur;
}

struct ctx {
	struct archive *a;
	int root;
	const struct agent_unpack_limits *lim;
	uint64_t bytes, entries;
	agent_cancel_fn cancel;
	void *cancel_arg;
	char *err;
	size_t errlen;
};

static int write_file(struct ctx *c, int dir, const char *leaf, const char *rel, mode_t mode)
{
	int fd = openat(dir, leaf, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
	if (fd < 0)
		return sw_errf(c->err, c->errlen, errno == EEXIST ? SW_EINVAL : SW_EIO,
			       "entry '%.200s': %s", rel,
			       errno == EEXIST ? "duplicate entry" : strerror(errno));
	int rc = 0;
	char buf[65536];
	/* Exactly mode, whatever the agent's umask: the application user
	 * reads (and runs) the release's files. */
	if (fchmod(fd, mode) != 0)
		rc = sw_errf(c->err, c->errlen, SW_EIO, "chmod '%.200s': %s", rel, strerror(errno));
	while (rc == 0) {
		la_ssize_t n = archive_read_data(c->a, buf, sizeof buf);
		if (n == 0)
			break;
		if (n < 0) {
			rc = sw_errf(c->err, c->errlen, SW_EINVAL, "entry '%.200s': %s", rel,
				     archive_error_string(c->a) ? archive_error_string(c->a)
								: "corrupt archive");
			break;
		}
		c->bytes += (uint64_t)n;
		if (c->bytes > c->lim->max_bytes) {
			rc = sw_errf(c->err, c->errlen, SW_ELIMIT,
				     "bundle unpacks to more than %llu bytes",
				     (unsigned long long)c->lim->max_bytes);
			break;
		}
		for (la_ssize_t off = 0; off < n;) {
			ssize_t w = write(fd, buf + off, (size_t)(n - off));
			if (w < 0) {
				if (errno == EINTR)
					continue;
				rc = sw_errf(c->err, c->errlen, SW_EIO, "write '%.200s': %s", rel,
					     strerror(errno));
				break;
			}
			off += w;
		}
		if (rc != 0)
			break;
		if (c->cancel != NULL && c->cancel(c->cancel_arg)) {
			rc = sw_errf(c->err, c->errlen, SW_ECANCELLED, "cancelled");
			break;
		}
	}
	if (close(fd) != 0 && rc == 0)
		rc = sw_errf(c->err, c->errlen, SW_EIO, "close '%.200s' failed", rel);
	return rc;
}

static int one_entry(struct ctx *c, struct archive_entry *e)
{
	char rel[MAX_NAME + 1], trel[MAX_NAME + 1];
	const char *raw = archive_entry_pathname(e);
	int rc, dir = -1;

	int nr = norm_path(raw, rel, sizeof rel);
	if (nr < 0)
		return sw_errf(c->err, c->errlen, SW_EINVAL,
			       "unsafe path '%.200s' (absolute, '..', empty component or not "
			       "printable ASCII)", raw ? raw : "(undecodable)");
	mode_t perm = archive_entry_perm(e);
	if (perm & (S_ISUID | S_ISGID))
		return sw_errf(c->err, c->errlen, SW_EINVAL, "entry '%.200s' has a setuid/setgid bit",
			       rel);
	const char *hard = archive_entry_hardlink(e);
	mode_t type = archive_entry_filetype(e);
	if (nr == 1) { /* the root itself */
		if (hard == NULL && type == AE_IFDIR)
			return 0;
		return sw_errf(c->err, c->errlen, SW_EINVAL, "entry '%.200s' replaces the root", raw);
	}
	if (hard == NULL && type != AE_IFREG && type != AE_IFDIR && type != AE_IFLNK)
		return sw_errf(c->err, c->errlen, SW_EINVAL,
			       "entry '%.200s' is a device, FIFO or socket: refused", rel);
	if (archive_entry_size_is_set(e) && archive_entry_size(e) > 0 &&
	    (uint64_t)archive_entry_size(e) > c->lim->max_bytes - c->bytes)
		return sw_errf(c->err, c->errlen, SW_ELIMIT,
			       "entry '%.200s' (%lld bytes) exceeds the unpacked size limit of %llu",
			       rel, (long long)archive_entry_size(e),
			       (unsigned long long)c->lim->max_bytes);

	const char *leaf = NULL;
	if ((dir = open_parent(c->root, rel, 1, &leaf)) < 0)
		return sw_errf(c->err, c->errlen, SW_EINVAL,
			       "entry '%.200s': its directory is not a directory inside the tree (%s)",
			       rel, strerror(errno));
	if (hard != NULL) {
		const char *tleaf = NULL;
		struct stat st;
		int tdir = -1;
		if (norm_path(hard, trel, sizeof trel) != 0 ||
		    (tdir = open_parent(c->root, trel, 0, &tleaf)) < 0 ||
		    fstatat(tdir, tleaf, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode)) {
			if (tdir >= 0)
				close(tdir);
			rc = sw_errf(c->err, c->errlen, SW_EINVAL,
				     "hard link '%.200s' -> '%.200s' does not name a file inside the tree",
				     rel, hard);
			goto out;
		}
		int lr = linkat(tdir, tleaf, dir, leaf, 0);
		int le = errno;
		close(tdir);
		if (lr != 0) {
			rc = sw_errf(c->err, c->errlen, le == EEXIST ? SW_EINVAL : SW_EIO,
				     "hard link '%.200s': %s", rel,
				     le == EEXIST ? "duplicate entry" : strerror(le));
			goto out;
		}
		rc = 0;
		goto out;
	}
	switch (type) {
	case AE_IFDIR:
		if (mkdirat(dir, leaf, 0755) != 0) {
			struct stat st;
			if (errno != EEXIST || fstatat(dir, leaf, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
			    !S_ISDIR(st.st_mode)) {
				rc = sw_errf(c->err, c->errlen, SW_EINVAL,
					     "directory '%.200s' clashes with another entry", rel);
				goto out;
			}
		}
		/* 0755 whatever the umask (a directory, not a symlink: checked
		 * above or just made, and nothing else writes in the tree). */
		rc = fchmodat(dir, leaf, 0755, 0) == 0
			     ? 0
			     : sw_errf(c->err, c->errlen, SW_EIO, "chmod '%.200s': %s", rel,
				       strerror(errno));
		break;
	case AE_IFLNK: {
		const char *target = archive_entry_symlink(e);
		if (!link_target_ok(rel, target)) {
			rc = sw_errf(c->err, c->errlen, SW_EINVAL,
				     "symlink '%.200s' -> '%.200s' points outside the bundle", rel,
				     target ? target : "(none)");
			goto out;
		}
		if (symlinkat(target, dir, leaf) != 0) {
			rc = sw_errf(c->err, c->errlen, errno == EEXIST ? SW_EINVAL : SW_EIO,
				     "symlink '%.200s': %s", rel,
				     errno == EEXIST ? "duplicate entry" : strerror(errno));
			goto out;
		}
		rc = 0;
		break;
	}
	default: /* AE_IFREG */
		rc = write_file(c, dir, leaf, rel, (perm & 0111) ? 0755 : 0644);
		break;
	}
out:
	close(dir);
	return rc;
}

int agent_unpack(const char *archive_path, const char *dest, const struct agent_unpack_limits *lim,
		 agent_cancel_fn cancel, void *cancel_arg, char *err, size_t errlen)
{
	int rc = 0;
	struct ctx c = { .root = -1, .lim = lim, .cancel = cancel, .cancel_arg = cancel_arg,
			 .err = err, .errlen = errlen };

	c.root = open(dest, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (c.root < 0)
		return sw_errf(err, errlen, SW_EIO, "open %s: %s", dest, strerror(errno));
	if ((c.a = archive_read_new()) == NULL) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		goto out;
	}
	archive_read_support_filter_gzip(c.a);
	archive_read_support_format_tar(c.a);
	if (archive_read_open_filename(c.a, archive_path, 65536) != ARCHIVE_OK) {
		rc = sw_errf(err, errlen, SW_EINVAL, "bundle is not a readable .tar.gz: %s",
			     archive_error_string(c.a) ? archive_error_string(c.a) : "?");
		goto out;
	}
	for (;;) {
		struct archive_entry *e = NULL;
		int r = archive_read_next_header(c.a, &e);
		if (r == ARCHIVE_EOF)
			break;
		if (r != ARCHIVE_OK) {
			/* Warnings (e.g. unknown pax keywords) are errors here too:
			 * a bundle the reader does not fully understand is refused. */
			rc = sw_errf(err, errlen, SW_EINVAL, "bundle is not a valid .tar.gz: %s",
				     archive_error_string(c.a) ? archive_error_string(c.a) : "?");
			goto out;
		}
		if (++c.entries > lim->max_entries) {
			rc = sw_errf(err, errlen, SW_ELIMIT, "bundle has more than %llu entries",
				     (unsigned long long)lim->max_entries);
			goto out;
		}
		if (cancel != NULL && cancel(cancel_arg)) {
			rc = sw_errf(err, errlen, SW_ECANCELLED, "cancelled");
			goto out;
		}
		if ((rc = one_entry(&c, e)) != 0)
			goto out;
	}
	if (c.entries == 0)
		rc = sw_errf(err, errlen, SW_EINVAL, "bundle is empty");
out:
	if (c.a != NULL)
		archive_read_free(c.a);
	close(c.root);
	return rc;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)ftw;
	if (flag == FTW_DP || flag == FTW_DNR)
		rmdir(path);
	else
		unlink(path);
	return 0;
}

int agent_rmtree(const char *path)
{
	struct stat st;
	if (lstat(path, &st) != 0)
		return errno == ENOENT ? 0 : SW_EIO;
	if (!S_ISDIR(st.st_mode))
		return unlink(path) == 0 ? 0 : SW_EIO;
	nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	return lstat(path, &st) == 0 ? SW_EIO : 0;
}
