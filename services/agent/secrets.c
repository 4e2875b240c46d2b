/*
 * secrets.c - handing a deployment's secrets to the release it starts.
 *
 * The agent calls Secrets/Fetch(deployment) over mTLS; the answer is a
 * bundle sealed to this agent's X25519 key and signed by the secrets
 * service (lib/sealed.h). It is opened and checked (pinned signing key,
 * this agent, this deployment, not expired), and each value the manifest
 * asks for goes to a private directory on tmpfs that lives as long as the
 * release is deployed: a file (0400) for `file` secrets, and one 0400 file
 * `.env` holding the `env` secrets, which is read again (into locked
 * memory) each time the process is started or restarted. When applications
 * run as their own user, the files are that user's and the directory the
 * agent's, mode 0710 with the user's group: the application may open its
 * files, nobody else may enter, and nobody but the agent may list the
 * directory or put anything into it (so `.env`, which only the agent reads,
 * cannot be replaced by the application with a link to a file of the
 * agent's). Values never
 * reach a disk, a log line or an error message, and every copy the agent
 * holds is wiped once the process has been started.
 */
#include "agent.h"
#include "err.h"
#include "log.h"
#include "sealed.h"

#include "slipway/v1/secrets.pb-c.h"

#include <sodium.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#define ENV_FILE ".env"
#define ENV_FILE_MAX (4u << 20)
#define MAX_ENV_STRINGS 1024
#define TMPFS_MAGIC_ 0x01021994UL
#define RAMFS_MAGIC_ 0x858458f6UL

static int env_grow(struct agent_env *e)
{
	if (e->n + 2 <= e->cap)
		return 0;
	if (e->cap >= MAX_ENV_STRINGS)
		return SW_ELIMIT;
	size_t nc = e->cap ? e->cap * 2 : 32;
	char **nv = realloc(e->envp, nc * sizeof *nv);
	if (nv == NULL)
		return SW_ENOMEM;
	e->envp = nv;
	e->cap = nc;
	return 0;
}

int agent_env_add(struct agent_env *e, const char *name, const char *value)
{
	int rc = env_grow(e);
	if (rc != 0)
		return rc;
	size_t len = strlen(name) + 1 + strlen(value) + 1;
	char *s = malloc(len);
	if (s == NULL)
		return SW_ENOMEM;
	snprintf(s, len, "%s=%s", name, value);
	e->envp[e->n++] = s;
	e->envp[e->n] = NULL;
	return 0;
}

/* Adds an already formatted "NAME=value" secret string of len bytes (no
 * NUL inside) as sodium memory. Secrets come before ordinary strings. */
static int env_add_secret(struct agent_env *e, const char *kv, size_t len)
{
	if (e->n != e->nsecret)
		return SW_EINTERNAL;
	int rc = env_grow(e);
	if (rc != 0)
		return rc;
	char *s = sodium_malloc(len + 1);
	if (s == NULL)
		return SW_ENOMEM;
	memcpy(s, kv, len);
	s[len] = '\0';
	e->envp[e->n++] = s;
	e->nsecret++;
	e->envp[e->n] = NULL;
	return 0;
}

void agent_env_free(struct agent_env *e)
{
	if (e == NULL || e->envp == NULL)
		return;
	for (size_t i = 0; i < e->n; i++) {
		if (i < e->nsecret) {
			sodium_memzero(e->envp[i], strlen(e->envp[i]));
			sodium_free(e->envp[i]);
		} else {
			sodium_memzero(e->envp[i], strlen(e->envp[i]));
			free(e->envp[i]);
		}
	}
	free(e->envp);
	memset(e, 0, sizeof *e);
}

/* Writes a 0400 file, owned by user when it switches (else the agent's). */
static int write_secret_file(int dfd, const char *name, const uint8_t *p, size_t n,
			     const struct agent_user *user)
{
	int fd = openat(dfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0400);
	if (fd < 0)
		return SW_EIO;
	size_t off = 0;
	int rc = 0;
	if (user != NULL && user->mode == AGENT_USER_SWITCH &&
	    (fchown(fd, user->uid, user->gid) != 0 || fchmod(fd, 0400) != 0))
		rc = SW_EIO;
	while (rc == 0 && off < n) {
		ssize_t w = write(fd, p + off, n - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			rc = SW_EIO;
			break;
		}
		off += (size_t)w;
	}
	if (close(fd) != 0)
		rc = SW_EIO;
	return rc;
}

/* Overwrites and unlinks every file in dir, then removes it. */
void agent_secrets_remove(const char *dir)
{
	if (dir == NULL || dir[0] == '\0')
		return;
	int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (dfd >= 0) {
		int dfd2 = dup(dfd);
		DIR *d = dfd2 >= 0 ? fdopendir(dfd2) : NULL;
		struct dirent *de;
		while (d != NULL && (de = readdir(d)) != NULL) {
			if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
				continue;
			struct stat st;
			if (fstatat(dfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
			    S_ISREG(st.st_mode)) {
				/* 0400 files: make them writable to overwrite. On
				 * failure the open below fails and the file is only
				 * removed. */
				if (fchmodat(dfd, de->d_name, 0600, 0) != 0)
					log_debug("cannot make a secret file writable", "file=%s",
						  de->d_name);
				int fd = openat(dfd, de->d_name, O_WRONLY | O_NOFOLLOW | O_CLOEXEC);
				if (fd >= 0) {
					char zero[4096] = { 0 };
					for (off_t off = 0; off < st.st_size; off += (off_t)sizeof zero)
						if (write(fd, zero, sizeof zero) < 0)
							break;
					close(fd);
				}
			}
			unlinkat(dfd, de->d_name, 0);
		}
		if (d != NULL)
			closedir(d);
		else if (dfd2 >= 0)
			close(dfd2);
		close(dfd);
	}
	rmdir(dir);
}

int agent_secrets_materialize(struct rpc_client *secrets, const struct agent_keys *k,
			      const char *deployment_id, const struct agent_manifest *m,
			      const char *shm_base, const struct agent_user *user, char *dir_out,
			      size_t dirlen, char *err, size_t errlen)
{
	int rc = 0, dfd = -1;
	ProtobufCMessage *resp = NULL;
	struct sealed_bundle *b = NULL;
	uint8_t *envbuf = NULL;
	size_t envlen = 0, envcap = 0;
	char dir[AGENT_PATH_MAX] = "";

	dir_out[0] = '\0';
	if (secrets == NULL)
		return sw_errf(err, errlen, SW_EPRECOND,
			       "the release needs secrets but the agent has no --secrets-addr");
	if (!k->have_sign_pk)
		return sw_errf(err, errlen, SW_EPRECOND,
			       "the release needs secrets but no --secrets-sign-key is pinned");
	Slipway__V1__FetchRequest req = SLIPWAY__V1__FETCH_REQUEST__INIT;
	req.deployment_id = (char *)deployment_id;
	/* wait-for-ready: a channel reconnects only while a call waits on it */
	struct rpc_call_opts o = { .timeout_ms = 15000, .wait_for_ready = 1 };
	char cerr[256];
	rc = rpc_call(secrets, &slipway__v1__secrets__descriptor, "Fetch", &req.base, &resp, &o,
		      cerr, sizeof cerr);
	if (rc != 0) {
		rc = sw_errf(err, errlen, rc, "fetch secrets: %s", cerr);
		goto out;
	}
	Slipway__V1__FetchResponse *fr = (void *)resp;
	struct sealed_expect x = { .agent = k->self_id, .deployment_id = deployment_id,
				   .sign_pk = k->sign_pk };
	if ((rc = sealed_open(fr->sealed_bundle.data, fr->sealed_bundle.len, k->seal_pk, k->seal_sk,
			      &x, &b, cerr, sizeof cerr)) != 0) {
		rc = sw_errf(err, errlen, rc, "secrets bundle refused: %s", cerr);
		goto out;
	}
	/* Wipe the sealed copy too (it is useless without our key, but cheap). */
	sodium_memzero(fr->sealed_bundle.data, fr->sealed_bundle.len);

	if ((size_t)snprintf(dir, sizeof dir, "%s/slipway-secrets-XXXXXX", shm_base) >= sizeof dir) {
		rc = sw_errf(err, errlen, SW_EINVAL, "shm path too long");
		dir[0] = '\0';
		goto out;
	}
	if (mkdtemp(dir) == NULL) {
		rc = sw_errf(err, errlen, SW_EIO, "create a secrets directory in %s: %s", shm_base,
			     strerror(errno));
		dir[0] = '\0';
		goto out;
	}
	struct statfs fs;
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (dfd < 0 || fstatfs(dfd, &fs) != 0 ||
	    ((unsigned long)fs.f_type != TMPFS_MAGIC_ && (unsigned long)fs.f_type != RAMFS_MAGIC_)) {
		rc = sw_errf(err, errlen, SW_EPRECOND,
			     "%s is not on tmpfs: secret values would reach a disk", shm_base);
		goto out;
	}
	/* The application user may enter (not list, not write); nobody else. */
	if (user != NULL && user->mode == AGENT_USER_SWITCH &&
	    (fchown(dfd, geteuid(), user->gid) != 0 || fchmod(dfd, 0710) != 0)) {
		rc = sw_errf(err, errlen, SW_EIO, "secrets directory for %s: %s", user->name,
			     strerror(errno));
		goto out;
	}
	for (size_t i = 0; i < m->nsecrets; i++) {
		const struct agent_secret_spec *sp = &m->secrets[i];
		struct sealed_item it;
		if (sealed_bundle_find(b, sp->name, &it) != 0) {
			rc = sw_errf(err, errlen, SW_ENOTFOUND,
				     "secret %s is not in this deployment's secrets bundle", sp->name);
			goto out;
		}
		if (sp->file[0] != '\0') {
			if (write_secret_file(dfd, sp->file, it.value, it.len, user) != 0) {
				rc = sw_errf(err, errlen, SW_EIO, "write secret file %s failed",
					     sp->file);
				goto out;
			}
			continue;
		}
		if (memchr(it.value, '\0', it.len) != NULL) {
			rc = sw_errf(err, errlen, SW_EINVAL,
				     "secret %s holds a NUL byte: it cannot go into %s (use a file)",
				     sp->name, sp->env);
			goto out;
		}
		size_t need = envlen + strlen(sp->env) + 1 + it.len + 1;
		if (need > ENV_FILE_MAX) {
			rc = sw_errf(err, errlen, SW_ELIMIT, "environment secrets exceed %u bytes",
				     ENV_FILE_MAX);
			goto out;
		}
		if (need > envcap) {
			size_t nc = need * 2;
			uint8_t *nb = sodium_malloc(nc);
			if (nb == NULL) {
				rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
				goto out;
			}
			if (envbuf != NULL) {
				memcpy(nb, envbuf, envlen);
				sodium_memzero(envbuf, envcap);
				sodium_free(envbuf);
			}
			envbuf = nb;
			envcap = nc;
		}
		size_t nl = strlen(sp->env);
		memcpy(envbuf + envlen, sp->env, nl);
		envbuf[envlen + nl] = '=';
		memcpy(envbuf + envlen + nl + 1, it.value, it.len);
		envbuf[envlen + nl + 1 + it.len] = '\0';
		envlen += nl + 1 + it.len + 1;
	}
	/* .env stays the agent's: it reads it, the application never does. */
	if (envlen > 0 && write_secret_file(dfd, ENV_FILE, envbuf, envlen, NULL) != 0) {
		rc = sw_errf(err, errlen, SW_EIO, "write the environment secrets failed");
		goto out;
	}
	log_info("secrets handed to the release", "deployment=%s count=%zu dir=%s", deployment_id,
		 m->nsecrets, dir);
	snprintf(dir_out, dirlen, "%s", dir);
out:
	if (envbuf != NULL) {
		sodium_memzero(envbuf, envcap);
		sodium_free(envbuf);
	}
	sealed_bundle_free(b);
	if (resp != NULL)
		protobuf_c_message_free_unpacked(resp, NULL);
	if (dfd >= 0)
		close(dfd);
	if (rc != 0 && dir[0] != '\0')
		agent_secrets_remove(dir);
	return rc;
}

int agent_secrets_env(const char *dir, struct agent_env *e, char *err, size_t errlen)
{
	char path[AGENT_PATH_MAX];
	uint8_t *buf = NULL;
	size_t len = 0;
	if (dir == NULL || dir[0] == '\0')
		return SW_ENOTFOUND;
	if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, ENV_FILE) >= sizeof path)
		return sw_errf(err, errlen, SW_EINVAL, "path too long");
	struct stat st;
	if (lstat(dir, &st) != 0)
		return sw_errf(err, errlen, SW_ENOTFOUND,
			       "the secrets of this release are gone (%s): redeploy it", dir);
	if (lstat(path, &st) != 0)
		return 0; /* only file secrets */
	int rc = sealed_secret_file_read(path, ENV_FILE_MAX, &buf, &len, err, errlen);
	if (rc != 0)
		return rc;
	size_t off = 0;
	while (off < len) {
		size_t n = strnlen((const char *)buf + off, len - off);
		if (n == len - off) {
			rc = sw_errf(err, errlen, SW_EINVAL, "%s is corrupt", path);
			break;
		}
		if ((rc = env_add_secret(e, (const char *)buf + off, n)) != 0)
			break;
		off += n + 1;
	}
	sodium_memzero(buf, len);
	sodium_free(buf);
	return rc;
}
