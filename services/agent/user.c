/*
 * user.c - the user applications run as. A release is code the agent was
 * told to run; it must not be able to read what makes the agent the agent
 * (its TLS key, its X25519 seal key) nor its state. So, when the agent may
 * change user (root, or CAP_SETUID and CAP_SETGID), every process it starts
 * for a release - the application and its health commands - switches to an
 * unprivileged user before exec: supplementary groups dropped, real,
 * effective and saved group and user ids set, every capability dropped,
 * no_new_privs set, and all of that checked before exec (a child that is
 * not exactly that user never runs release code). An agent that may not
 * change user runs applications as itself and says so loudly at start.
 *
 * agent_user_enter and what it calls run in a child forked by a
 * multi-threaded process: raw system calls only (no locks, no malloc).
 */
#include "agent.h"
#include "err.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define CAP_CHOWN_BIT 0
#define CAP_SETGID_BIT 6
#define CAP_SETUID_BIT 7

/* Is the agent root, or does it hold CAP_SETUID, CAP_SETGID and CAP_CHOWN
 * (effective: the switch, and handing files to the application user)? */
static int may_switch(void)
{
	if (geteuid() == 0)
		return 1;
	FILE *f = fopen("/proc/self/status", "re");
	if (f == NULL)
		return 0;
	char line[256];
	unsigned long long eff = 0;
	int found = 0;
	while (fgets(line, sizeof line, f) != NULL)
		if (strncmp(line, "CapEff:", 7) == 0 && sscanf(line + 7, "%llx", &eff) == 1)
			found = 1;
	fclose(f);
	unsigned long long need = (1ULL << CAP_SETUID_BIT) | (1ULL << CAP_SETGID_BIT) |
				  (1ULL << CAP_CHOWN_BIT);
	return found && (eff & need) == need;
}

static int name_ok(const char *s, size_t len)
{
	if (len == 0 || len > 32)
		return 0;
	for (size_t i = 0; i < len; i++)
		if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '-' && s[i] != '.')
			return 0;
	return 1;
}

static int all_digits(const char *s)
{
	if (*s == '\0')
		return 0;
	for (; *s; s++)
		if (!isdigit((unsigned char)*s))
			return 0;
	return 1;
}

/* Looks up a user by name or number: *found = 0 when there is none. */
static int lookup_user(const char *name, uid_t *uid, gid_t *gid, int *found, char *err,
		       size_t errlen)
{
	char buf[16384];
	struct passwd pw, *res = NULL;
	int e;
	*found = 0;
	if (all_digits(name)) {
		char *end = NULL;
		unsigned long v = strtoul(name, &end, 10);
		if (*end != '\0' || v >= 0xfffffffful)
			return sw_errf(err, errlen, SW_EINVAL, "--app-user: bad uid '%s'", name);
		e = getpwuid_r((uid_t)v, &pw, buf, sizeof buf, &res);
		*uid = (uid_t)v;
		*gid = res != NULL ? res->pw_gid : (gid_t)-1;
		*found = 1;
		return 0;
	}
	e = getpwnam_r(name, &pw, buf, sizeof buf, &res);
	if (e != 0 && e != ENOENT && e != ESRCH)
		return sw_errf(err, errlen, SW_EIO, "--app-user: looking up user %s: %s", name,
			       strerror(e));
	if (res == NULL)
		return 0;
	*uid = res->pw_uid;
	*gid = res->pw_gid;
	*found = 1;
	return 0;
}

static int lookup_group(const char *name, gid_t *gid, char *err, size_t errlen)
{
	char buf[16384];
	struct group gr, *res = NULL;
	if (all_digits(name)) {
		char *end = NULL;
		unsigned long v = strtoul(name, &end, 10);
		if (*end != '\0' || v >= 0xfffffffful)
			return sw_errf(err, errlen, SW_EINVAL, "--app-user: bad gid '%s'", name);
		*gid = (gid_t)v;
		return 0;
	}
	int e = getgrnam_r(name, &gr, buf, sizeof buf, &res);
	if (res == NULL)
		return sw_errf(err, errlen, SW_EINVAL, "--app-user: no group %s%s%s", name,
			       e != 0 ? ": " : "", e != 0 ? strerror(e) : "");
	*gid = res->gr_gid;
	return 0;
}

/* Picks the item of spec for environment: "ENV=USER[:GROUP]" items for
 * that environment win over a plain "USER[:GROUP]" item. Copies it into
 * out ("" when none applies). */
static int pick(const char *spec, const char *environment, char *out, size_t outlen, char *err,
		size_t errlen)
{
	const char *p = spec;
	int have_plain = 0, have_env = 0;
	out[0] = '\0';
	while (*p != '\0') {
		size_t len = strcspn(p, ",");
		const char *item = p, *eq = memchr(p, '=', len);
		size_t ilen = len;
		p += len;
		if (*p == ',')
			p++;
		if (len == 0)
			continue;
		const char *who = item;
		size_t wlen = ilen;
		int for_env = 0;
		if (eq != NULL) {
			size_t elen = (size_t)(eq - item);
			if (!name_ok(item, elen))
				return sw_errf(err, errlen, SW_EINVAL,
					       "--app-user: bad environment in '%.*s'", (int)ilen, item);
			who = eq + 1;
			wlen = ilen - elen - 1;
			if (environment == NULL || strlen(environment) != elen ||
			    memcmp(environment, item, elen) != 0)
				for_env = -1; /* another environment's: checked, not used */
			else
				for_env = 1;
		}
		const char *colon = memchr(who, ':', wlen);
		size_t ulen = colon ? (size_t)(colon - who) : wlen;
		if (!name_ok(who, ulen) || (colon != NULL && !name_ok(colon + 1, wlen - ulen - 1)))
			return sw_errf(err, errlen, SW_EINVAL,
				       "--app-user: '%.*s' is not USER[:GROUP] or ENV=USER[:GROUP]",
				       (int)ilen, item);
		if (for_env < 0)
			continue;
		if ((for_env && have_env) || (!for_env && have_plain))
			return sw_errf(err, errlen, SW_EINVAL,
				       "--app-user: two users for the same environment");
		if (for_env)
			have_env = 1;
		else
			have_plain = 1;
		if (for_env || !have_env) {
			if (wlen >= outlen)
				return sw_errf(err, errlen, SW_EINVAL, "--app-user: too long");
			memcpy(out, who, wlen);
			out[wlen] = '\0';
		}
	}
	return 0;
}

int agent_user_resolve(const char *spec, const char *environment, struct agent_user *u,
		       char *err, size_t errlen)
{
	char item[80], uname[40] = "", gname[40] = "";
	uid_t uid = 0;
	gid_t gid = 0;
	int found = 0, rc;

	memset(u, 0, sizeof *u);
	u->uid = geteuid();
	u->gid = getegid();
	if ((rc = pick(spec ? spec : "", environment, item, sizeof item, err, errlen)) != 0)
		return rc;
	int can = may_switch();
	if (item[0] == '\0') {
		if (!can) {
			/* Nothing to switch to: applications run as the agent. */
			u->mode = AGENT_USER_SELF_UNPRIVILEGED;
			snprintf(u->name, sizeof u->name, "uid %u (the agent's own)", (unsigned)u->uid);
			return 0;
		}
		static const char *const defaults[] = { AGENT_APP_USER_DEFAULT, "nobody" };
		for (size_t i = 0; i < 2 && !found; i++) {
			if ((rc = lookup_user(defaults[i], &uid, &gid, &found, err, errlen)) != 0)
				return rc;
			if (found)
				snprintf(uname, sizeof uname, "%s", defaults[i]);
		}
		if (!found)
			return sw_errf(err, errlen, SW_EPRECOND,
				       "no user to run applications as: create the user %s or "
				       "pass --app-user USER",
				       AGENT_APP_USER_DEFAULT);
		if (uid == 0 || gid == 0)
			return sw_errf(err, errlen, SW_EPRECOND,
				       "the default application user %s is root (uid %u gid %u): pass "
				       "--app-user USER",
				       uname, (unsigned)uid, (unsigned)gid);
	} else {
		char *colon = strchr(item, ':');
		if (colon != NULL) {
			*colon = '\0';
			snprintf(gname, sizeof gname, "%s", colon + 1);
		}
		snprintf(uname, sizeof uname, "%s", item);
		if ((rc = lookup_user(uname, &uid, &gid, &found, err, errlen)) != 0)
			return rc;
		if (!found)
			return sw_errf(err, errlen, SW_EINVAL, "--app-user: no user %s", uname);
		if (gname[0] != '\0' && (rc = lookup_group(gname, &gid, err, errlen)) != 0)
			return rc;
		if (gid == (gid_t)-1)
			return sw_errf(err, errlen, SW_EINVAL,
				       "--app-user: uid %s has no passwd entry: give its group "
				       "(UID:GID)",
				       uname);
		if (uid == 0) {
			/* Asked for explicitly: the applications run as the agent. */
			u->mode = AGENT_USER_ROOT;
			snprintf(u->name, sizeof u->name, "%s", uname);
			if (geteuid() != 0)
				return sw_errf(err, errlen, SW_EPRECOND,
					       "--app-user %s: the agent is not root", uname);
			return 0;
		}
		if (gid == 0)
			return sw_errf(err, errlen, SW_EINVAL,
				       "--app-user: group 0 (root) is refused for user %s", uname);
	}
	if (uid == geteuid() && gid == getegid() && !can) {
		u->mode = AGENT_USER_SELF_UNPRIVILEGED;
		snprintf(u->name, sizeof u->name, "%s", uname);
		return 0;
	}
	if (!can)
		return sw_errf(err, errlen, SW_EPRECOND,
			       "--app-user %s: the agent is not root and lacks CAP_SETUID, "
			       "CAP_SETGID and CAP_CHOWN, so it cannot run applications as another "
			       "user",
			       uname);
	u->mode = AGENT_USER_SWITCH;
	u->uid = uid;
	u->gid = gid;
	snprintf(u->name, sizeof u->name, "%s", uname);
	return 0;
}

const char *agent_user_stage(int stage)
{
	switch (stage) {
	case AGENT_STAGE_SETGROUPS: return "dropping the supplementary groups";
	case AGENT_STAGE_SETGID: return "setting the group ids";
	case AGENT_STAGE_SETUID: return "setting the user ids";
	case AGENT_STAGE_CAPS: return "dropping the capabilities";
	case AGENT_STAGE_NNP: return "setting no_new_privs";
	case AGENT_STAGE_VERIFY: return "checking the switch";
	case AGENT_STAGE_PGID: return "creating the process group";
	case AGENT_STAGE_FDS: return "setting up stdin/stdout/stderr";
	case AGENT_STAGE_CHDIR: return "entering the working directory";
	case AGENT_STAGE_EXEC: return "exec";
	default: return "starting";
	}
}

int agent_user_enter(const struct agent_user *u)
{
	struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3, .pid = 0 };
	struct __user_cap_data_struct caps[2];
	long r, e, s;

	if (u == NULL || u->mode != AGENT_USER_SWITCH)
		return 0;
	/* Raw system calls: they change this thread's credentials only, which
	 * in a forked child is the whole process (the libc wrappers would try
	 * to signal threads the child does not have). */
	if (syscall(SYS_setgroups, 0, NULL) != 0)
		return AGENT_STAGE_SETGROUPS;
	if (syscall(SYS_setresgid, u->gid, u->gid, u->gid) != 0)
		return AGENT_STAGE_SETGID;
	if (syscall(SYS_setresuid, u->uid, u->uid, u->uid) != 0)
		return AGENT_STAGE_SETUID;
	/* Leaving root clears the capabilities; an agent that is not root but
	 * holds CAP_SETUID keeps them: drop every one, whatever the case. */
	memset(caps, 0, sizeof caps);
	if (syscall(SYS_capset, &hdr, caps) != 0)
		return AGENT_STAGE_CAPS;
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
		return AGENT_STAGE_NNP;

	/* Check, rather than trust, that the switch happened. */
	uid_t ru, eu, su;
	gid_t rg, eg, sg;
	if (syscall(SYS_getresuid, &ru, &eu, &su) != 0 || syscall(SYS_getresgid, &rg, &eg, &sg) != 0)
		return AGENT_STAGE_VERIFY;
	r = ru != u->uid || eu != u->uid || su != u->uid;
	e = rg != u->gid || eg != u->gid || sg != u->gid;
	s = syscall(SYS_getgroups, 0, NULL);
	if (r || e || s != 0) {
		errno = EPERM;
		return AGENT_STAGE_VERIFY;
	}
	memset(caps, 0xff, sizeof caps);
	if (syscall(SYS_capget, &hdr, caps) != 0)
		return AGENT_STAGE_VERIFY;
	if (caps[0].effective | caps[0].permitted | caps[0].inheritable | caps[1].effective |
	    caps[1].permitted | caps[1].inheritable) {
		errno = EPERM;
		return AGENT_STAGE_VERIFY;
	}
	if (syscall(SYS_setresuid, 0, 0, 0) == 0 || syscall(SYS_setresgid, 0, 0, 0) == 0 ||
	    prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1) {
		errno = EPERM;
		return AGENT_STAGE_VERIFY;
	}
	return 0;
}

/* Exit codes of the check child. */
#define CHECK_OK 0
#define CHECK_READABLE 10   /* + index of the path */
#define CHECK_UNREACHABLE 60
#define CHECK_SWITCH 61

int agent_user_check(const struct agent_user *u, const char *const *secret_paths, size_t n,
		     const char *reach, char *err, size_t errlen)
{
	if (u->mode != AGENT_USER_SWITCH)
		return 0;
	if (n > 40)
		return sw_errf(err, errlen, SW_EINVAL, "too many paths to check");
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	pid_t pid = fork();
	if (pid == 0) {
		if (agent_user_enter(u) != 0)
			_exit(CHECK_SWITCH);
		for (size_t i = 0; i < n; i++) {
			int fd = open(secret_paths[i], O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
			if (fd >= 0)
				_exit(CHECK_READABLE + (int)i);
		}
		/* Entering it, not just naming it (which O_PATH would allow). */
		_exit(access(reach, X_OK) == 0 ? CHECK_OK : CHECK_UNREACHABLE);
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (pid < 0)
		return sw_errf(err, errlen, SW_EIO, "fork: %s", strerror(errno));
	int status = 0;
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return sw_errf(err, errlen, SW_EIO, "waitpid: %s", strerror(errno));
	int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
	if (code == CHECK_OK)
		return 0;
	if (code >= CHECK_READABLE && code < CHECK_READABLE + (int)n)
		return sw_errf(err, errlen, SW_EPERM,
			       "the application user %s can read %s: it must be readable by the "
			       "agent only (0600, owned by the agent, in a directory the "
			       "application user cannot enter)",
			       u->name, secret_paths[code - CHECK_READABLE]);
	if (code == CHECK_UNREACHABLE)
		return sw_errf(err, errlen, SW_EPRECOND,
			       "the application user %s cannot reach %s: every directory above "
			       "--root must be searchable by it (o+x)",
			       u->name, reach);
	return sw_errf(err, errlen, SW_EPERM, "cannot switch to the application user %s",
		       u->name);
}
