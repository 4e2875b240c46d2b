/*
 * store.c - the agent's root directory, its only durable state (modes in
 * brackets: the application user may enter the root and releases/ and read
 * the releases, and owns data/; everything else is the agent's alone):
 *
 *   [0711]                  the root: entered, never listed, by the application
 *   agent.lock              flock: one agent per root
 *   keys/ [0700]            the agent's keys:
 *     seal.key              X25519 secret key (0600), sealed secrets open with it
 *   data/ [0700]            the application user's: its writable directory
 *   state/generation        "<generation> <task id>": the highest task generation seen
 *   state/tasks/<h>         the final result of task <id> (h = SHA-256 of the id)
 *   blobs/<hex>.tar.gz      a verified bundle (.partial while downloading)
 *   releases/ [0711]
 *   releases/<hex>/ [0755]  an unpacked release; complete once renamed into place
 *   current -> releases/<hex>   what runs (switched with symlink + rename)
 *   previous -> releases/<hex>  what ran before (kept for instant rollback)
 *   run/app.json, app.pid   the supervised process (for adoption after a restart)
 *   logs/app.log            the application's stdout and stderr
 *
 * Everything that fences or decides is written with fsync + rename + fsync
 * of the directory, so a crash leaves either the old or the new state.
 */
#include "agent.h"
#include "cfg.h"
#include "err.h"
#include "hash.h"
#include "log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_RESULTS 256

int agent_store_path(const struct agent_store *s, char *out, size_t outlen, const char *fmt, ...)
{
	int n = snprintf(out, outlen, "%s/", s->root);
	if (n < 0 || (size_t)n >= outlen)
		return SW_EINVAL;
	va_list ap;
	va_start(ap, fmt);
	int m = vsnprintf(out + n, outlen - (size_t)n, fmt, ap);
	va_end(ap);
	if (m < 0 || (size_t)m >= outlen - (size_t)n)
		return SW_EINVAL;
	return 0;
}

static int fsync_dir_of(const char *path)
{
	char tmp[AGENT_PATH_MAX];
	snprintf(tmp, sizeof tmp, "%s", path);
	int fd = open(dirname(tmp), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return SW_EIO;
	int rc = fsync(fd) == 0 ? 0 : SW_EIO;
	close(fd);
	return rc;
}

int agent_write_file_sync(const char *path, const char *text, size_t len, char *err,
			  size_t errlen)
{
	char tmp[AGENT_PATH_MAX + 16];
	if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", path) >= sizeof tmp)
		return sw_errf(err, errlen, SW_EINVAL, "path too long");
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return sw_errf(err, errlen, SW_EIO, "open %s: %s", tmp, strerror(errno));
	size_t off = 0;
	int bad = 0;
	while (off < len) {
		ssize_t w = write(fd, text + off, len - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			bad = 1;
			break;
		}
		off += (size_t)w;
	}
	if (!bad && fsync(fd) != 0)
		bad = 1;
	close(fd);
	if (bad || rename(tmp, path) != 0) {
		unlink(tmp);
		return sw_errf(err, errlen, SW_EIO, "write %s failed", path);
	}
	if (fsync_dir_of(path) != 0)
		return sw_errf(err, errlen, SW_EIO, "fsync of the directory of %s failed", path);
	return 0;
}

static int mkdir_p(const char *path)
{
	if (mkdir(path, 0700) == 0 || errno == EEXIST) {
		struct stat st;
		if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode))
			return 0;
	}
	return SW_EIO;
}

/* Creates path (when missing) as a directory of uid:gid with exactly mode,
 * and makes an existing one so, never through a symlink. With agents_own,
 * an existing directory must already be the agent's: one owned by someone
 * else is refused rather than taken over. */
static int own_dir(const char *path, uid_t uid, gid_t gid, mode_t mode, int agents_own, char *err,
		   size_t errlen)
{
	if (mkdir(path, 0700) != 0 && errno != EEXIST)
		return sw_errf(err, errlen, SW_EIO, "cannot create %s: %s", path, strerror(errno));
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) != 0) {
		int e = errno;
		if (fd >= 0)
			close(fd);
		return sw_errf(err, errlen, SW_EIO, "%s: not a directory (%s)", path, strerror(e));
	}
	int rc = 0;
	if (agents_own && st.st_uid != uid)
		rc = sw_errf(err, errlen, SW_EPERM, "%s is owned by uid %u, not by the agent (uid %u)",
			     path, (unsigned)st.st_uid, (unsigned)uid);
	else if ((st.st_uid != uid || st.st_gid != gid) && fchown(fd, uid, gid) != 0)
		rc = sw_errf(err, errlen, SW_EIO, "chown %s: %s", path, strerror(errno));
	else if ((st.st_mode & 07777) != mode && fchmod(fd, mode) != 0)
		rc = sw_errf(err, errlen, SW_EIO, "chmod %s: %s", path, strerror(errno));
	close(fd);
	return rc;
}

int agent_store_data_dir(struct agent_store *s, uid_t uid, gid_t gid, char *err, size_t errlen)
{
	char path[AGENT_PATH_MAX];
	agent_store_path(s, path, sizeof path, "data");
	return own_dir(path, uid, gid, 0700, 0, err, errlen);
}

static int load_generation(struct agent_store *s, char *err, size_t errlen)
{
	char path[AGENT_PATH_MAX], buf[256];
	agent_store_path(s, path, sizeof path, "state/generation");
	FILE *f = fopen(path, "r");
	s->generation = 0;
	s->generation_task[0] = '\0';
	if (f == NULL)
		return errno == ENOENT ? 0 : sw_errf(err, errlen, SW_EIO, "%s: %s", path, strerror(errno));
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = '\0';
	char *sp = strchr(buf, ' ');
	char *nl = strchr(buf, '\n');
	if (sp == NULL || nl == NULL || nl < sp)
		return sw_errf(err, errlen, SW_EINVAL, "%s is corrupt", path);
	*sp = '\0';
	*nl = '\0';
	long long g;
	if (cfg_parse_ll(buf, &g) != 0 || g < 0 || strlen(sp + 1) > AGENT_ID_MAX)
		return sw_errf(err, errlen, SW_EINVAL, "%s is corrupt", path);
	s->generation = (uint64_t)g;
	snprintf(s->generation_task, sizeof s->generation_task, "%s", sp + 1);
	return 0;
}

int agent_store_open(const char *root, struct agent_store *s, char *err, size_t errlen)
{
	static const struct {
		const char *name;
		mode_t mode;
	} dirs[] = { { "keys", 0700 }, { "state", 0700 }, { "state/tasks", 0700 },
		     { "blobs", 0700 }, { "releases", 0711 }, { "run", 0700 }, { "logs", 0700 } };
	char path[AGENT_PATH_MAX];
	int rc;
	memset(s, 0, sizeof *s);
	s->lock_fd = -1;
	if (root == NULL || root[0] == '\0' || strlen(root) > AGENT_PATH_MAX - 200)
		return sw_errf(err, errlen, SW_EINVAL, "--root must be a directory path of at most %d bytes",
			       AGENT_PATH_MAX - 200);
	if (mkdir_p(root) != 0)
		return sw_errf(err, errlen, SW_EIO, "root %s: cannot create it or not a directory",
			       root);
	/* Absolute, because children get paths under it as their cwd. */
	char abs[PATH_MAX];
	if (realpath(root, abs) == NULL || strlen(abs) > AGENT_PATH_MAX - 200)
		return sw_errf(err, errlen, SW_EIO, "root %s: %s", root, strerror(errno));
	snprintf(s->root, sizeof s->root, "%s", abs);
	/* The application user enters the root and releases/ to reach its
	 * release: searchable, not listable; the rest is the agent's alone. */
	if ((rc = own_dir(s->root, geteuid(), getegid(), 0711, 1, err, errlen)) != 0)
		return rc;
	for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
		agent_store_path(s, path, sizeof path, "%s", dirs[i].name);
		if ((rc = own_dir(path, geteuid(), getegid(), dirs[i].mode, 1, err, errlen)) != 0)
			return rc;
	}
	agent_store_path(s, path, sizeof path, "agent.lock");
	s->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (s->lock_fd < 0)
		return sw_errf(err, errlen, SW_EIO, "open %s: %s", path, strerror(errno));
	if (flock(s->lock_fd, LOCK_EX | LOCK_NB) != 0) {
		close(s->lock_fd);
		s->lock_fd = -1;
		return sw_errf(err, errlen, SW_EPRECOND, "another agent holds %s", path);
	}
	return load_generation(s, err, errlen);
}

void agent_store_close(struct agent_store *s)
{
	if (s->lock_fd >= 0)
		close(s->lock_fd);
	s->lock_fd = -1;
}

int agent_store_set_generation(struct agent_store *s, uint64_t gen, const char *task_id,
			       char *err, size_t errlen)
{
	char path[AGENT_PATH_MAX], text[AGENT_ID_MAX + 32];
	if (gen < s->generation)
		return sw_errf(err, errlen, SW_EINVAL, "generation %" PRIu64 " is below %" PRIu64, gen,
			       s->generation);
	if (strlen(task_id) > AGENT_ID_MAX || strchr(task_id, '\n') != NULL)
		return sw_errf(err, errlen, SW_EINVAL, "task id not storable");
	agent_store_path(s, path, sizeof path, "state/generation");
	int n = snprintf(text, sizeof text, "%" PRIu64 " %s\n", gen, task_id);
	int rc = agent_write_file_sync(path, text, (size_t)n, err, errlen);
	if (rc == 0) {
		s->generation = gen;
		snprintf(s->generation_task, sizeof s->generation_task, "%s", task_id);
	}
	return rc;
}

static void result_path(const struct agent_store *s, const char *task_id, char *out, size_t len)
{
	uint8_t h[HASH_SHA256_LEN];
	char hex[2 * HASH_SHA256_LEN + 1];
	hash_sha256(task_id, strlen(task_id), NULL, 0, NULL, 0, h);
	hash_hex(h, 16, hex);
	agent_store_path(s, out, len, "state/tasks/%s", hex);
}

struct rec {
	char name[80];
	time_t mtime;
};

static int rec_newest_first(const void *a, const void *b)
{
	const struct rec *x = a, *y = b;
	return x->mtime < y->mtime ? 1 : x->mtime > y->mtime ? -1 : 0;
}

/* Keeps the MAX_RESULTS newest task records. */
static void prune_results(struct agent_store *s)
{
	char dir[AGENT_PATH_MAX], p[AGENT_PATH_MAX + 80];
	agent_store_path(s, dir, sizeof dir, "state/tasks");
	DIR *d = opendir(dir);
	if (d == NULL)
		return;
	struct rec *v = NULL;
	size_t n = 0, cap = 0;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.' || strlen(de->d_name) >= sizeof v->name ||
		    (size_t)snprintf(p, sizeof p, "%s/%s", dir, de->d_name) >= sizeof p)
			continue;
		struct stat st;
		if (lstat(p, &st) != 0)
			continue;
		if (n == cap) {
			size_t nc = cap ? cap * 2 : 512;
			struct rec *nv = realloc(v, nc * sizeof *v);
			if (nv == NULL)
				break;
			v = nv;
			cap = nc;
		}
		memcpy(v[n].name, de->d_name, strlen(de->d_name) + 1);
		v[n++].mtime = st.st_mtime;
	}
	closedir(d);
	if (n > MAX_RESULTS) {
		qsort(v, n, sizeof *v, rec_newest_first);
		for (size_t i = MAX_RESULTS; i < n; i++) {
			snprintf(p, sizeof p, "%s/%s", dir, v[i].name);
			unlink(p);
		}
	}
	free(v);
}

int agent_store_put_result(struct agent_store *s, const char *task_id, uint64_t gen, int result,
			   const char *msg, char *err, size_t errlen)
{
	char path[AGENT_PATH_MAX], text[AGENT_ID_MAX + AGENT_MSG_MAX + 64], clean[AGENT_MSG_MAX];
	snprintf(clean, sizeof clean, "%s", msg ? msg : "");
	for (char *c = clean; *c; c++)
		if (*c == '\n' || *c == '\r')
			*c = ' ';
	if (strchr(task_id, '\n') != NULL)
		return sw_errf(err, errlen, SW_EINVAL, "task id not storable");
	result_path(s, task_id, path, sizeof path);
	int n = snprintf(text, sizeof text, "%s\n%" PRIu64 "\n%d\n%s\n", task_id, gen, result, clean);
	int rc = agent_write_file_sync(path, text, (size_t)n, err, errlen);
	if (rc == 0 && ++s->puts % 32 == 0)
		prune_results(s);
	return rc;
}

int agent_store_get_result(struct agent_store *s, const char *task_id, uint64_t gen, int *result,
			   char *msg, size_t msglen)
{
	char path[AGENT_PATH_MAX], buf[AGENT_ID_MAX + AGENT_MSG_MAX + 64];
	result_path(s, task_id, path, sizeof path);
	FILE *f = fopen(path, "r");
	if (f == NULL)
		return SW_ENOTFOUND;
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = '\0';
	char *l1 = buf, *l2, *l3, *l4, *e;
	if ((l2 = strchr(l1, '\n')) == NULL)
		return SW_ENOTFOUND;
	*l2++ = '\0';
	if ((l3 = strchr(l2, '\n')) == NULL)
		return SW_ENOTFOUND;
	*l3++ = '\0';
	if ((l4 = strchr(l3, '\n')) == NULL)
		return SW_ENOTFOUND;
	*l4++ = '\0';
	if ((e = strchr(l4, '\n')) != NULL)
		*e = '\0';
	long long g, r;
	if (strcmp(l1, task_id) != 0 || cfg_parse_ll(l2, &g) != 0 || (uint64_t)g != gen ||
	    cfg_parse_ll(l3, &r) != 0 || (r != AGENT_RESULT_SUCCEEDED && r != AGENT_RESULT_FAILED))
		return SW_ENOTFOUND;
	*result = (int)r;
	snprintf(msg, msglen, "%s", l4);
	return 0;
}

int agent_store_link(const struct agent_store *s, const char *name, char hex[AGENT_HEX_LEN + 1])
{
	char path[AGENT_PATH_MAX], target[256];
	agent_store_path(s, path, sizeof path, "%s", name);
	ssize_t n = readlink(path, target, sizeof target - 1);
	if (n < 0)
		return SW_ENOTFOUND;
	target[n] = '\0';
	char d[AGENT_DIGEST_LEN + 1];
	if (strncmp(target, "releases/", 9) != 0 ||
	    (size_t)snprintf(d, sizeof d, "sha256:%s", target + 9) >= sizeof d ||
	    !agent_digest_ok(d, hex))
		return SW_ENOTFOUND;
	return 0;
}

static int set_link(struct agent_store *s, const char *name, const char *hex, char *err,
		    size_t errlen)
{
	char path[AGENT_PATH_MAX], tmp[AGENT_PATH_MAX], target[128];
	agent_store_path(s, path, sizeof path, "%s", name);
	agent_store_path(s, tmp, sizeof tmp, ".%s.tmp", name);
	snprintf(target, sizeof target, "releases/%s", hex);
	unlink(tmp);
	if (symlink(target, tmp) != 0 || rename(tmp, path) != 0) {
		unlink(tmp);
		return sw_errf(err, errlen, SW_EIO, "switch %s: %s", name, strerror(errno));
	}
	return 0;
}

int agent_store_switch(struct agent_store *s, const char *hex, char *err, size_t errlen)
{
	char old[AGENT_HEX_LEN + 1], dir[AGENT_PATH_MAX];
	int rc;
	if (agent_store_link(s, "current", old) == 0 && strcmp(old, hex) != 0 &&
	    (rc = set_link(s, "previous", old, err, errlen)) != 0)
		return rc;
	if ((rc = set_link(s, "current", hex, err, errlen)) != 0)
		return rc;
	agent_store_path(s, dir, sizeof dir, "current");
	if (fsync_dir_of(dir) != 0)
		return sw_errf(err, errlen, SW_EIO, "fsync %s failed", s->root);
	/* Most recently deployed releases are pruned last. */
	agent_store_path(s, dir, sizeof dir, "releases/%s", hex);
	utimensat(AT_FDCWD, dir, NULL, AT_SYMLINK_NOFOLLOW);
	return 0;
}

void agent_store_prune(struct agent_store *s, int keep)
{
	char dir[AGENT_PATH_MAX], p[AGENT_PATH_MAX + 80];
	char cur[AGENT_HEX_LEN + 1] = "", prev[AGENT_HEX_LEN + 1] = "";
	agent_store_link(s, "current", cur);
	agent_store_link(s, "previous", prev);
	agent_store_path(s, dir, sizeof dir, "releases");
	DIR *d = opendir(dir);
	if (d == NULL)
		return;
	struct rec *v = NULL;
	size_t n = 0, cap = 0;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		if (strlen(de->d_name) >= sizeof v->name ||
		    (size_t)snprintf(p, sizeof p, "%s/%s", dir, de->d_name) >= sizeof p)
			continue;
		if (strncmp(de->d_name, ".tmp-", 5) == 0) {
			/* Left by an interrupted unpack (the executor is the only
			 * writer and calls this between tasks). */
			agent_rmtree(p);
			continue;
		}
		char dg[AGENT_DIGEST_LEN + 24];
		if ((size_t)snprintf(dg, sizeof dg, "sha256:%s", de->d_name) >= sizeof dg ||
		    !agent_digest_ok(dg, NULL) || strcmp(de->d_name, cur) == 0 ||
		    strcmp(de->d_name, prev) == 0)
			continue;
		struct stat st;
		if (lstat(p, &st) != 0)
			continue;
		if (n == cap) {
			size_t nc = cap ? cap * 2 : 16;
			struct rec *nv = realloc(v, nc * sizeof *v);
			if (nv == NULL)
				break;
			v = nv;
			cap = nc;
		}
		memcpy(v[n].name, de->d_name, strlen(de->d_name) + 1);
		v[n++].mtime = st.st_mtime;
	}
	closedir(d);
	/* current and previous count towards `keep`. */
	int held = (cur[0] != '\0') + (prev[0] != '\0');
	size_t others = keep > held ? (size_t)(keep - held) : 0;
	if (n > others) {
		qsort(v, n, sizeof *v, rec_newest_first);
		for (size_t i = others; i < n; i++) {
			snprintf(p, sizeof p, "%s/%s", dir, v[i].name);
			log_info("pruning old release", "release=%s", v[i].name);
			agent_rmtree(p);
		}
	}
	free(v);
	/* Blobs whose release is unpacked are no longer needed; downloads
	 * abandoned for a day are not coming back. */
	agent_store_path(s, dir, sizeof dir, "blobs");
	if ((d = opendir(dir)) == NULL)
		return;
	time_t day_ago = time(NULL) - 86400;
	while ((de = readdir(d)) != NULL) {
		size_t len = strlen(de->d_name);
		struct stat pst;
		if (len > 8 && strcmp(de->d_name + len - 8, ".partial") == 0 &&
		    (size_t)snprintf(p, sizeof p, "%s/%s", dir, de->d_name) < sizeof p &&
		    lstat(p, &pst) == 0 && pst.st_mtime < day_ago) {
			unlink(p);
			continue;
		}
		if (len != AGENT_HEX_LEN + 7 || strcmp(de->d_name + AGENT_HEX_LEN, ".tar.gz") != 0)
			continue;
		char rel[AGENT_PATH_MAX];
		struct stat st;
		if (agent_store_path(s, rel, sizeof rel, "releases/%.64s", de->d_name) == 0 &&
		    lstat(rel, &st) == 0 &&
		    (size_t)snprintf(p, sizeof p, "%s/%s", dir, de->d_name) < sizeof p)
			unlink(p);
	}
	closedir(d);
}

static int same_task(const struct agent_task *a, const struct agent_task *b)
{
	return a != NULL && b != NULL && a->generation == b->generation &&
	       strcmp(a->task_id, b->task_id) == 0;
}

enum agent_fence agent_fence_classify(struct agent_store *s, const struct agent_task *t,
				      const struct agent_task *running,
				      const struct agent_task *pending)
{
	if (t->generation < s->generation)
		return AGENT_FENCE_STALE;
	if (t->generation > s->generation)
		return AGENT_FENCE_NEW;
	if (strcmp(t->task_id, s->generation_task) != 0)
		return AGENT_FENCE_CONFLICT;
	if (same_task(t, running) || same_task(t, pending))
		return AGENT_FENCE_BUSY;
	int result;
	char msg[AGENT_MSG_MAX];
	if (agent_store_get_result(s, t->task_id, t->generation, &result, msg, sizeof msg) == 0)
		return AGENT_FENCE_REREPORT;
	return AGENT_FENCE_RESUME;
}
