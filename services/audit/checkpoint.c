/*
 * checkpoint.c - the log's signing key and its signed checkpoints.
 *
 * A checkpoint (C2SP tlog-checkpoint in a signed note) commits to the tree
 * size and root. Before signing, the current tree is proved consistent
 * with the newest checkpoint signed before, whether that one is found in
 * the database or in S3 (`checkpoints/latest`): so the service never signs
 * two inconsistent checkpoints, and a database rolled back or truncated
 * behind a published checkpoint is detected. Then the note goes to S3
 * (`checkpoints/<20-digit size>` and `checkpoints/latest`) and only then to
 * the database. When the check fails, appends and signing stop and the
 * health check reports NOT_SERVING until an operator intervenes.
 */
#include "audit.h"
#include "err.h"
#include "log.h"
#include "clock.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- the signing key ---- */

static int read_key_file(const char *path, struct note_signer **out, char *err, size_t errlen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return sw_errf(err, errlen, errno == ENOENT ? SW_ENOTFOUND : SW_EIO, "%s: %s", path,
			       strerror(errno));
	struct stat st;
	char *buf = NULL;
	int rc = 0;
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size <= 0 || st.st_size > 1024) {
		rc = sw_errf(err, errlen, SW_EINVAL, "%s is not a signing key file", path);
		goto out;
	}
	if (st.st_mode & 077) {
		rc = sw_errf(err, errlen, SW_EPERM,
			     "%s is readable by others: the signing key must be mode 0600", path);
		goto out;
	}
	buf = sodium_malloc(1025);
	ssize_t n = buf ? read(fd, buf, 1024) : -1;
	if (n <= 0) {
		rc = sw_errf(err, errlen, SW_EIO, "cannot read %s", path);
		goto out;
	}
	buf[n] = '\0';
	rc = note_signer_parse(buf, out, err, errlen);
out:
	if (buf)
		sodium_free(buf);
	close(fd);
	return rc;
}

static int write_key_file(const char *path, const struct note_signer *s, char *err, size_t errlen)
{
	char *buf = sodium_malloc(512);
	int rc = 0, fd = -1;
	if (buf == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	if (note_signer_format(s, buf, 512) != 0) {
		rc = sw_errf(err, errlen, SW_EINTERNAL, "cannot format the key");
		goto out;
	}
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		rc = sw_errf(err, errlen, SW_EIO, "create %s: %s", path, strerror(errno));
		goto out;
	}
	size_t len = strlen(buf);
	if (write(fd, buf, len) != (ssize_t)len || fsync(fd) != 0)
		rc = sw_errf(err, errlen, SW_EIO, "write %s failed", path);
out:
	if (fd >= 0)
		close(fd);
	sodium_free(buf);
	return rc;
}

int aud_keys_load(struct aud *a, char *err, size_t errlen)
{
	char path[4096];
	if (a->c.signing_key && a->c.signing_key[0])
		snprintf(path, sizeof path, "%s", a->c.signing_key);
	else if (a->c.state_dir && a->c.state_dir[0])
		snprintf(path, sizeof path, "%s/audit-signing.key", a->c.state_dir);
	else
		return sw_errf(err, errlen, SW_EINVAL, "--signing-key or --state-dir is required");
	int rc = read_key_file(path, &a->signer, err, errlen);
	if (rc == SW_ENOTFOUND && a->c.generate_keys) {
		if ((rc = note_signer_generate(a->c.key_name, &a->signer, err, errlen)) != 0)
			return rc;
		if ((rc = write_key_file(path, a->signer, err, errlen)) != 0)
			return rc;
		log_info("generated a new checkpoint signing key", "path=%s name=%s", path,
			 a->c.key_name);
	} else if (rc != 0) {
		return rc;
	}
	note_signer_verifier(a->signer, &a->verifier);
	note_verifier_format(&a->verifier, a->verifier_text, sizeof a->verifier_text);
	/* The public half next to it, for operators to hand to auditors. */
	char pub[4200], text[300], e2[128];
	snprintf(pub, sizeof pub, "%s.pub", path);
	snprintf(text, sizeof text, "%s\n", a->verifier_text);
	if (svc_write_file_atomic(pub, text, e2, sizeof e2) != 0)
		log_warn("cannot write the verifier key file", "path=%s error=%s", pub, e2);
	log_info("checkpoint key loaded", "verifier=%s", a->verifier_text);
	return 0;
}

/* ---- checkpoints ---- */

struct cp {
	uint64_t size;
	uint8_t root[MERKLE_HASH];
	int have;
	char note[NOTE_MAX];
};

static int db_latest(struct aud *a, struct db_conn *c, uint64_t size, struct cp *out, char *err,
		     size_t errlen)
{
	PGresult *r = NULL;
	char sz[24];
	int rc;
	memset(out, 0, sizeof *out);
	if (size == 0)
		rc = db_q(c, "SELECT size, root, note FROM checkpoints ORDER BY size DESC LIMIT 1", 0,
			  NULL, &r, err, errlen);
	else
		rc = db_q(c, "SELECT size, root, note FROM checkpoints WHERE size = $1", 1,
			  (const char *[]){ db_i64(sz, (int64_t)size) }, &r, err, errlen);
	if (rc != 0)
		return rc;
	(void)a;
	if (PQntuples(r) == 1) {
		out->have = 1;
		out->size = (uint64_t)db_int64(r, 0, 0);
		db_bytea(r, 0, 1, out->root, MERKLE_HASH);
		snprintf(out->note, sizeof out->note, "%s", db_text(r, 0, 2));
	}
	PQclear(r);
	return 0;
}

/* Writes text to dir/name through a temporary file: with replace, renamed
 * over it; without, linked (so an existing file is never replaced:
 * SW_EEXIST). 0, SW_EEXIST or SW_EUNAVAIL with err. */
static int write_file(const char *dir, const char *name, const char *text, int replace,
		      char *err, size_t errlen)
{
	char tmp[4200], path[4200];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	snprintf(tmp, sizeof tmp, "%s/.%s.%ld.tmp", dir, name, (long)getpid());
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644), rc = 0;
	size_t len = strlen(text);
	if (fd < 0 || write(fd, text, len) != (ssize_t)len || fsync(fd) != 0) {
		rc = sw_errf(err, errlen, SW_EUNAVAIL, "cannot write %s: %s", tmp, strerror(errno));
	} else if (replace ? rename(tmp, path) != 0 : link(tmp, path) != 0) {
		rc = errno == EEXIST ? SW_EEXIST
				     : sw_errf(err, errlen, SW_EUNAVAIL, "cannot publish %s: %s", path,
					       strerror(errno));
	}
	if (fd >= 0)
		close(fd);
	unlink(tmp);
	return rc;
}

/* Publishes a signed checkpoint in the directory (--checkpoint-dir):
 * <20-digit size> once and never replaced, and latest. A different
 * checkpoint already published at the same size means this log was rolled
 * back behind it: the signature is refused (SW_EDATALOSS). */
static int publish_dir(const char *dir, uint64_t size, const char *note, char *err,
		       size_t errlen)
{
	char name[32], path[4200];
	snprintf(name, sizeof name, "%020llu", (unsigned long long)size);
	int rc = write_file(dir, name, note, 0, err, errlen);
	if (rc == SW_EEXIST) {
		char old[NOTE_MAX];
		snprintf(path, sizeof path, "%s/%s", dir, name);
		FILE *f = fopen(path, "r");
		size_t n = f ? fread(old, 1, sizeof old - 1, f) : 0;
		if (f)
			fclose(f);
		old[n] = '\0';
		if (strcmp(old, note) != 0)
			return sw_errf(err, errlen, SW_EDATALOSS,
				       "%s holds another checkpoint of size %llu: the log was rolled "
				       "back behind a published checkpoint",
				       path, (unsigned long long)size);
		rc = 0;
	}
	if (rc == 0)
		rc = write_file(dir, "latest", note, 1, err, errlen);
	return rc;
}

/* Reads and verifies checkpoints/latest from S3. */
static int s3_latest(struct aud *a, struct cp *out, char *err, size_t errlen)
{
	uint8_t *buf = NULL;
	size_t len = 0;
	memset(out, 0, sizeof *out);
	char key[300];
	snprintf(key, sizeof key, "%slatest", a->c.cp_prefix);
	int rc = s3_get_small(a->s3, key, NOTE_MAX - 1, &buf, &len, err, errlen);
	if (rc == SW_ENOTFOUND)
		return 0;
	if (rc != 0)
		return rc;
	char body[NOTE_MAX], origin[256];
	memcpy(out->note, buf, len);
	out->note[len] = '\0';
	free(buf);
	if (note_verify(&a->verifier, out->note, body, sizeof body, err, errlen) != 0 ||
	    note_checkpoint_parse(body, origin, sizeof origin, &out->size, out->root, err, errlen) != 0)
		return sw_errf(err, errlen, SW_EDATALOSS,
			       "%s on S3 is not a checkpoint signed by this log", key);
	out->have = 1;
	return 0;
}

static void fail_integrity(struct aud *a, const char *why)
{
	if (!atomic_exchange(&a->integrity_failed, 1))
		log_error("AUDIT LOG INTEGRITY CHECK FAILED: appends and signing stopped", "reason=%s",
			  why);
	snprintf(a->integrity_why, sizeof a->integrity_why, "%s", why);
}

/* Proves the tree at `size` (root) consistent with a checkpoint. */
static int consistent(struct aud *a, const struct cp *ref, uint64_t size,
		      const uint8_t root[MERKLE_HASH], char *err, size_t errlen)
{
	struct merkle_plan p;
	uint8_t proof[MERKLE_MAX_PROOF][MERKLE_HASH];
	size_t n = 0;
	int rc;
	if (ref->size > size)
		return sw_errf(err, errlen, SW_EDATALOSS,
			       "the log has %llu entries but a checkpoint was signed at size %llu "
			       "(truncated or rolled back)",
			       (unsigned long long)size, (unsigned long long)ref->size);
	if ((rc = merkle_plan_consistency(ref->size, size, &p)) != 0 ||
	    (rc = aud_fill_plan(a, &p, err, errlen)) != 0 ||
	    (rc = merkle_consistency(ref->size, size, &p, proof, &n)) != 0) {
		if (rc == SW_EDATALOSS)
			return rc;
		char why[256];
		snprintf(why, sizeof why, "%s", err);
		return sw_errf(err, errlen, rc, "consistency proof: %s", why);
	}
	if (merkle_verify_consistency(ref->size, size, ref->root, root, proof, n) != 0)
		return sw_errf(err, errlen, SW_EDATALOSS,
			       "the log at size %llu is not consistent with the checkpoint at size %llu",
			       (unsigned long long)size, (unsigned long long)ref->size);
	return 0;
}

/* The integrity check and, when sign is set, the signing. Holds the
 * cross-replica checkpoint lock. */
static int check_and_sign(struct aud *a, int sign, Slipway__V1__Checkpoint **out, char *err,
			  size_t errlen)
{
	struct db_conn *c = NULL;
	struct cp *dbc = calloc(1, sizeof *dbc), *s3c = calloc(1, sizeof *s3c);
	int rc, locked = 0;
	uint64_t size = 0;
	uint8_t root[MERKLE_HASH];
	char body[NOTE_MAX], note[NOTE_MAX];

	if (dbc == NULL || s3c == NULL) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		goto out;
	}
	pthread_mutex_lock(&a->cp_mu);
	if ((rc = db_acquire(a->db, &c, 5000, err, errlen)) != 0)
		goto unlock;
	if ((rc = db_q(c, "SELECT pg_advisory_lock(hashtext('slipway.audit.checkpoint'))", 0, NULL,
		       NULL, err, errlen)) != 0)
		goto unlock;
	locked = 1;
	if ((rc = aud_size(a, &size, err, errlen)) != 0 || (rc = db_latest(a, c, 0, dbc, err, errlen)) != 0 ||
	    (rc = s3_latest(a, s3c, err, errlen)) != 0)
		goto unlock;
	if ((rc = aud_root(a, size, root, err, errlen)) != 0) {
		if (rc == SW_EDATALOSS)
			fail_integrity(a, err);
		goto unlock;
	}
	/* Both references must hold: a newer one on S3 means the database lost
	 * entries; a disagreeing one means someone rewrote history. */
	for (int i = 0; i < 2; i++) {
		const struct cp *ref = i == 0 ? dbc : s3c;
		if (!ref->have)
			continue;
		if ((rc = consistent(a, ref, size, root, err, errlen)) != 0) {
			if (rc == SW_EDATALOSS)
				fail_integrity(a, err);
			goto unlock;
		}
	}
	if (!sign)
		goto unlock;
	if (atomic_load(&a->integrity_failed)) {
		rc = sw_errf(err, errlen, SW_EPRECOND, "integrity check failed earlier: %s",
			     a->integrity_why);
		goto unlock;
	}
	const struct cp *latest = (s3c->have && (!dbc->have || s3c->size > dbc->size)) ? s3c : dbc;
	if (size > 0 && (!latest->have || latest->size < size)) {
		if ((rc = note_checkpoint_body(a->c.origin, size, root, body, sizeof body)) != 0 ||
		    (rc = note_sign(a->signer, body, note, sizeof note)) != 0) {
			rc = sw_errf(err, errlen, SW_EINTERNAL, "cannot sign the checkpoint");
			goto unlock;
		}
		char key[300], latest_key[300];
		snprintf(key, sizeof key, "%s%020llu", a->c.cp_prefix, (unsigned long long)size);
		snprintf(latest_key, sizeof latest_key, "%slatest", a->c.cp_prefix);
		if ((rc = s3_put(a->s3, key, note, strlen(note), err, errlen)) != 0 ||
		    (rc = s3_put(a->s3, latest_key, note, strlen(note), err, errlen)) != 0 ||
		    (a->c.cp_dir != NULL && a->c.cp_dir[0] != '\0' &&
		     (rc = publish_dir(a->c.cp_dir, size, note, err, errlen)) != 0)) {
			if (rc == SW_EDATALOSS)
				fail_integrity(a, err);
			goto unlock;
		}
		char sz[24], ts[24];
		const char *v[4] = { db_i64(sz, (int64_t)size), (const char *)root, note,
				     db_i64(ts, clock_wall_ms()) };
		int l[4] = { 0, MERKLE_HASH, 0, 0 }, f[4] = { 0, 1, 0, 0 };
		if ((rc = db_exec(c,
				  "INSERT INTO checkpoints (size, root, note, signed_ms)"
				  " VALUES ($1, $2, $3, $4) ON CONFLICT (size) DO NOTHING",
				  4, v, l, f, 0, NULL, err, errlen)) != 0)
			goto unlock;
		log_info("checkpoint signed", "size=%llu", (unsigned long long)size);
	} else if (latest == s3c && s3c->have && (!dbc->have || dbc->size < s3c->size)) {
		/* Published but missing from the database (its insert was lost):
		 * put it back, it is consistent with the entries. */
		char sz[24], ts[24];
		const char *v[4] = { db_i64(sz, (int64_t)s3c->size), (const char *)s3c->root, s3c->note,
				     db_i64(ts, clock_wall_ms()) };
		int l[4] = { 0, MERKLE_HASH, 0, 0 }, f[4] = { 0, 1, 0, 0 };
		if ((rc = db_exec(c,
				  "INSERT INTO checkpoints (size, root, note, signed_ms)"
				  " VALUES ($1, $2, $3, $4) ON CONFLICT (size) DO NOTHING",
				  4, v, l, f, 0, NULL, err, errlen)) != 0)
			goto unlock;
	}
unlock:
	if (locked) {
		char ignored[64];
		db_q(c, "SELECT pg_advisory_unlock(hashtext('slipway.audit.checkpoint'))", 0, NULL, NULL,
		     ignored, sizeof ignored);
	}
	if (c != NULL)
		db_release(a->db, c);
	pthread_mutex_unlock(&a->cp_mu);
	if (rc == 0 && out != NULL)
		rc = aud_checkpoint_get(a, 0, out, err, errlen);
out:
	free(dbc);
	free(s3c);
	return rc;
}

int aud_checkpoint_sign(struct aud *a, Slipway__V1__Checkpoint **out, char *err, size_t errlen)
{
	int rc = check_and_sign(a, 1, out, err, errlen);
	if (rc == 0 && out != NULL && *out != NULL) {
		pthread_mutex_lock(&a->cache_mu);
		a->latest_cp_size = (*out)->size;
		a->latest_cp_at_ms = clock_wall_ms();
		pthread_mutex_unlock(&a->cache_mu);
	}
	return rc;
}

int aud_latest_size(struct aud *a, uint64_t *size, char *err, size_t errlen)
{
	int64_t t = clock_wall_ms();
	pthread_mutex_lock(&a->cache_mu);
	int fresh = a->latest_cp_at_ms != 0 && t - a->latest_cp_at_ms < 1000;
	*size = a->latest_cp_size;
	pthread_mutex_unlock(&a->cache_mu);
	if (fresh)
		return *size ? 0 : sw_errf(err, errlen, SW_ENOTFOUND, "no checkpoint has been signed yet");
	Slipway__V1__Checkpoint *cp = NULL;
	int rc = aud_checkpoint_get(a, 0, &cp, err, errlen);
	*size = rc == 0 ? cp->size : 0;
	aud_checkpoint_free(cp);
	if (rc == 0 || rc == SW_ENOTFOUND) {
		pthread_mutex_lock(&a->cache_mu);
		a->latest_cp_size = *size;
		a->latest_cp_at_ms = t;
		pthread_mutex_unlock(&a->cache_mu);
	}
	return rc;
}

int aud_integrity_check(struct aud *a, char *err, size_t errlen)
{
	return check_and_sign(a, 0, NULL, err, errlen);
}

int aud_checkpoint_get(struct aud *a, uint64_t size, Slipway__V1__Checkpoint **out, char *err,
		       size_t errlen)
{
	struct db_conn *c = NULL;
	PGresult *r = NULL;
	char sz[24];
	int rc;
	*out = NULL;
	if ((rc = db_acquire(a->db, &c, 5000, err, errlen)) != 0)
		return rc;
	if (size == 0)
		rc = db_q(c,
			  "SELECT size, root, note, signed_ms FROM checkpoints ORDER BY size DESC LIMIT 1",
			  0, NULL, &r, err, errlen);
	else
		rc = db_q(c, "SELECT size, root, note, signed_ms FROM checkpoints WHERE size = $1", 1,
			  (const char *[]){ db_i64(sz, (int64_t)size) }, &r, err, errlen);
	db_release(a->db, c);
	if (rc != 0)
		return rc;
	if (PQntuples(r) != 1) {
		PQclear(r);
		return size == 0 ? sw_errf(err, errlen, SW_ENOTFOUND, "no checkpoint has been signed yet")
				 : sw_errf(err, errlen, SW_ENOTFOUND, "no checkpoint at size %llu",
					   (unsigned long long)size);
	}
	Slipway__V1__Checkpoint *cp = malloc(sizeof *cp);
	uint8_t *root = malloc(MERKLE_HASH);
	char *note = strdup(db_text(r, 0, 2));
	char *origin = strdup(a->c.origin);
	if (!cp || !root || !note || !origin) {
		free(cp);
		free(root);
		free(note);
		free(origin);
		PQclear(r);
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	}
	slipway__v1__checkpoint__init(cp);
	cp->size = (uint64_t)db_int64(r, 0, 0);
	db_bytea(r, 0, 1, root, MERKLE_HASH);
	cp->root_hash.data = root;
	cp->root_hash.len = MERKLE_HASH;
	cp->note = note;
	cp->origin = origin;
	cp->signed_unix_ms = db_int64(r, 0, 3);
	PQclear(r);
	*out = cp;
	return 0;
}

void aud_checkpoint_free(Slipway__V1__Checkpoint *c)
{
	if (c == NULL)
		return;
	free(c->root_hash.data);
	free(c->note);
	free(c->origin);
	free(c);
}

/* ---- the timer ---- */

static void *cp_main(void *arg)
{
	struct aud *a = arg;
	char err[512];
	for (;;) {
		struct timespec dl;
		clock_gettime(CLOCK_REALTIME, &dl);
		dl.tv_sec += (time_t)(a->c.checkpoint_ms / 1000);
		dl.tv_nsec += (long)(a->c.checkpoint_ms % 1000) * 1000000L;
		if (dl.tv_nsec >= 1000000000L) {
			dl.tv_sec++;
			dl.tv_nsec -= 1000000000L;
		}
		pthread_mutex_lock(&a->mu);
		int stop = a->stopping;
		if (!stop)
			pthread_cond_timedwait(&a->cp_cv, &a->mu, &dl);
		stop = a->stopping;
		pthread_mutex_unlock(&a->mu);
		if (stop)
			return NULL;
		if (atomic_load(&a->integrity_failed))
			continue;
		int rc = check_and_sign(a, 1, NULL, err, sizeof err);
		if (rc != 0 && rc != SW_EDATALOSS)
			log_warn("scheduled checkpoint failed", "error=%s", err);
	}
}

int aud_checkpoint_start(struct aud *a, char *err, size_t errlen)
{
	pthread_mutex_init(&a->cp_mu, NULL);
	pthread_mutex_init(&a->cache_mu, NULL);
	pthread_cond_init(&a->cp_cv, NULL);
	if (aud_integrity_check(a, err, errlen) == SW_EDATALOSS)
		log_error("starting with a failed integrity check", "reason=%s", err);
	if (pthread_create(&a->cp_thread, NULL, cp_main, a) != 0)
		return sw_errf(err, errlen, SW_EINTERNAL, "cannot start the checkpoint timer");
	return 0;
}

void aud_checkpoint_stop(struct aud *a)
{
	pthread_mutex_lock(&a->mu);
	a->stopping = 1;
	pthread_cond_signal(&a->cp_cv);
	pthread_mutex_unlock(&a->mu);
	pthread_join(a->cp_thread, NULL);
	pthread_mutex_destroy(&a->cp_mu);
	pthread_cond_destroy(&a->cp_cv);
}
