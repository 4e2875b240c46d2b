/*
 * Unit tests for the user applications run as (services/agent/user.c and
 * the switch in proc.c): which user --app-user picks (per environment,
 * defaults, root only by name, never group 0), that a started process is
 * exactly that user (ids, no supplementary groups, no capabilities,
 * no_new_privs) and cannot read a key of the agent's, that a process whose
 * working directory that user cannot reach never runs, the start-up
 * check, the root's modes and the secrets layout. The switch needs root:
 * without it these tests skip (CI runs them as root).
 */
#include "agent.h"
#include "err.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

static char dir[256];

static int setup(void **state)
{
	(void)state;
	snprintf(dir, sizeof dir, "/tmp/test_agent_user.XXXXXX");
	if (mkdtemp(dir) == NULL)
		return -1;
	chmod(dir, 0755);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	agent_rmtree(dir);
	return 0;
}

static void need_root(void)
{
	if (geteuid() != 0) {
		fprintf(stderr, "not root: the user switch cannot be tested here\n");
		skip();
	}
}

/* The user the default resolves to (slipway-app, else nobody). */
static const struct passwd *default_user(void)
{
	const struct passwd *pw = getpwnam(AGENT_APP_USER_DEFAULT);
	return pw != NULL ? pw : getpwnam("nobody");
}

static void test_resolve(void **state)
{
	(void)state;
	need_root();
	struct agent_user u;
	char err[256];
	const struct passwd *def = default_user();
	assert_non_null(def);
	uid_t def_uid = def->pw_uid;
	const struct passwd *nob = getpwnam("nobody");
	assert_non_null(nob);
	uid_t nob_uid = nob->pw_uid;

	assert_int_equal(agent_user_resolve("", "prod", &u, err, sizeof err), 0);
	assert_int_equal(u.mode, AGENT_USER_SWITCH);
	assert_int_equal(u.uid, def_uid);
	assert_int_not_equal(u.uid, 0);
	assert_int_not_equal(u.gid, 0);

	/* Root only when named, and then no switch at all. */
	assert_int_equal(agent_user_resolve("root", "prod", &u, err, sizeof err), 0);
	assert_int_equal(u.mode, AGENT_USER_ROOT);
	assert_int_equal(u.uid, 0);

	/* Per environment: the agent's environment wins over the plain item. */
	assert_int_equal(agent_user_resolve("root,prod=nobody", "prod", &u, err, sizeof err), 0);
	assert_int_equal(u.mode, AGENT_USER_SWITCH);
	assert_int_equal(u.uid, nob_uid);
	assert_int_equal(agent_user_resolve("prod=nobody,root", "prod", &u, err, sizeof err), 0);
	assert_int_equal(u.uid, nob_uid);
	assert_int_equal(agent_user_resolve("prod=nobody,staging=root", "staging", &u, err,
					    sizeof err), 0);
	assert_int_equal(u.mode, AGENT_USER_ROOT);
	assert_int_equal(agent_user_resolve("prod=root", "dev", &u, err, sizeof err), 0);
	assert_int_equal(u.uid, def_uid);
	assert_int_equal(agent_user_resolve("65534:65534", "dev", &u, err, sizeof err), 0);
	assert_int_equal(u.uid, 65534);
	assert_int_equal(u.gid, 65534);

	/* Bad specs change nothing and say why. */
	assert_int_equal(agent_user_resolve("no such", "prod", &u, err, sizeof err), SW_EINVAL);
	assert_int_equal(agent_user_resolve("slipway-no-such-user", "prod", &u, err, sizeof err),
			 SW_EINVAL);
	assert_non_null(strstr(err, "no user slipway-no-such-user"));
	assert_int_equal(agent_user_resolve("nobody:root", "prod", &u, err, sizeof err),
			 SW_EINVAL);
	assert_non_null(strstr(err, "group 0"));
	assert_int_equal(agent_user_resolve("nobody:0", "prod", &u, err, sizeof err), SW_EINVAL);
	assert_int_equal(agent_user_resolve("prod=nobody,prod=root", "prod", &u, err, sizeof err),
			 SW_EINVAL);
	assert_int_equal(agent_user_resolve("nobody,root", "prod", &u, err, sizeof err),
			 SW_EINVAL);
	assert_int_equal(agent_user_resolve("=nobody", "prod", &u, err, sizeof err), SW_EINVAL);
	assert_int_equal(agent_user_resolve("nobody:", "prod", &u, err, sizeof err), SW_EINVAL);
}

/* An agent that cannot switch: applications run as itself (and it warns),
 * asking it for another user is an error. Checked in a child that dropped
 * to nobody. */
static void test_resolve_unprivileged(void **state)
{
	(void)state;
	need_root();
	const struct passwd *nob = getpwnam("nobody");
	assert_non_null(nob);
	uid_t nuid = nob->pw_uid;
	gid_t ngid = nob->pw_gid;
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct agent_user u;
		char err[256];
		if (setgroups(0, NULL) != 0 || setgid(ngid) != 0 || setuid(nuid) != 0)
			_exit(10);
		if (agent_user_resolve("", "prod", &u, err, sizeof err) != 0 ||
		    u.mode != AGENT_USER_SELF_UNPRIVILEGED || u.uid != nuid)
			_exit(11);
		if (agent_user_resolve("root", "prod", &u, err, sizeof err) != SW_EPRECOND)
			_exit(12);
		if (agent_user_resolve("daemon", "prod", &u, err, sizeof err) != SW_EPRECOND ||
		    strstr(err, "CAP_SETUID") == NULL)
			_exit(13);
		if (agent_user_resolve("nobody", "prod", &u, err, sizeof err) != 0 ||
		    u.mode != AGENT_USER_SELF_UNPRIVILEGED)
			_exit(14);
		_exit(0);
	}
	int status = 0;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
}

/* Reads a whole small file into buf (NUL-terminated). */
static void slurp(const char *path, char *buf, size_t len)
{
	buf[0] = '\0';
	FILE *f = fopen(path, "r");
	if (f == NULL)
		return;
	size_t n = fread(buf, 1, len - 1, f);
	buf[n] = '\0';
	fclose(f);
}

/* Runs sh -c script as u with cwd; returns the exit status, fills log. */
static int run_as(const struct agent_user *u, const char *cwd, const char *script, char *log,
		  size_t loglen, char *err, size_t errlen)
{
	char logp[300], a0[] = "sh", a1[] = "-c";
	char *argv[] = { a0, a1, (char *)script, NULL };
	char *envp[] = { NULL };
	snprintf(logp, sizeof logp, "%s/child.log", dir);
	unlink(logp);
	struct agent_spawn sp = { .argv = argv, .envp = envp, .cwd = cwd, .log_path = logp,
				  .user = u };
	int status = -2;
	int rc = agent_proc_run(&sp, 10000, &status, err, errlen);
	slurp(logp, log, loglen);
	return rc != 0 ? rc : status;
}

static void test_spawn_switches_and_cannot_read_the_key(void **state)
{
	(void)state;
	need_root();
	struct agent_user u;
	char err[512], log[16384], keydir[300], key[320], script[1024], want[128];
	assert_int_equal(agent_user_resolve("nobody", "prod", &u, err, sizeof err), 0);
	assert_int_equal(u.mode, AGENT_USER_SWITCH);

	/* A key as the agent keeps it: 0600 in a 0700 directory. */
	snprintf(keydir, sizeof keydir, "%s/keys", dir);
	assert_int_equal(mkdir(keydir, 0700), 0);
	snprintf(key, sizeof key, "%s/agent.key", keydir);
	int fd = open(key, O_WRONLY | O_CREAT | O_EXCL, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "KEY", 3), 3);
	close(fd);

	snprintf(script, sizeof script,
		 "grep -E '^(Uid|Gid|Groups|NoNewPrivs|CapEff|CapPrm|CapAmb):' /proc/self/status; "
		 "if head -c 3 %s; then echo; echo READ-OK; else echo DENIED; fi; pwd",
		 key);
	assert_int_equal(run_as(&u, "/", script, log, sizeof log, err, sizeof err), 0);
	snprintf(want, sizeof want, "Uid:\t%u\t%u\t%u\t%u\n", (unsigned)u.uid, (unsigned)u.uid,
		 (unsigned)u.uid, (unsigned)u.uid);
	assert_non_null(strstr(log, want));
	snprintf(want, sizeof want, "Gid:\t%u\t%u\t%u\t%u\n", (unsigned)u.gid, (unsigned)u.gid,
		 (unsigned)u.gid, (unsigned)u.gid);
	assert_non_null(strstr(log, want));
	assert_true(strstr(log, "Groups:\t \n") != NULL || strstr(log, "Groups:\t\n") != NULL);
	assert_non_null(strstr(log, "NoNewPrivs:\t1"));
	assert_non_null(strstr(log, "CapEff:\t0000000000000000"));
	assert_non_null(strstr(log, "CapPrm:\t0000000000000000"));
	assert_non_null(strstr(log, "CapAmb:\t0000000000000000"));
	assert_non_null(strstr(log, "DENIED"));
	assert_null(strstr(log, "READ-OK"));

	/* The same as root (no switch) does read it: the check above can fail. */
	struct agent_user self = { .mode = AGENT_USER_ROOT, .uid = 0, .gid = 0 };
	assert_int_equal(run_as(&self, "/", script, log, sizeof log, err, sizeof err), 0);
	assert_non_null(strstr(log, "READ-OK"));

	/* A working directory the user cannot reach: nothing runs, and the
	 * error says which step failed. */
	char logp[300];
	snprintf(logp, sizeof logp, "%s/child.log", dir);
	assert_int_not_equal(run_as(&u, keydir, "echo RAN", log, sizeof log, err, sizeof err), 0);
	assert_non_null(strstr(err, "entering the working directory"));
	assert_null(strstr(log, "RAN"));

	/* A program it may not execute: the same. */
	char a0[320];
	snprintf(a0, sizeof a0, "%s/prog", keydir);
	fd = open(a0, O_WRONLY | O_CREAT | O_EXCL, 0700);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "#!/bin/sh\necho RAN\n", 19), 19);
	close(fd);
	char *argv[] = { a0, NULL }, *envp[] = { NULL };
	struct agent_spawn sp = { .argv = argv, .envp = envp, .cwd = "/", .log_path = logp,
				  .user = &u };
	struct agent_proc p;
	assert_int_equal(agent_proc_spawn(&sp, &p, err, sizeof err), SW_EINVAL);
	assert_non_null(strstr(err, "exec"));
	assert_non_null(strstr(err, "Permission denied"));

	/* A bare name is searched in PATH, as the user. */
	char *argv2[] = { "true", NULL };
	sp.argv = argv2;
	int status = -2;
	assert_int_equal(agent_proc_run(&sp, 10000, &status, err, sizeof err), 0);
	assert_int_equal(status, 0);
}

static void test_startup_check(void **state)
{
	(void)state;
	need_root();
	struct agent_user u;
	char err[512], open_dir[300], shut[300], key[320], pub[320];
	assert_int_equal(agent_user_resolve("nobody", "prod", &u, err, sizeof err), 0);
	snprintf(open_dir, sizeof open_dir, "%s/open", dir);
	snprintf(shut, sizeof shut, "%s/shut", dir);
	assert_int_equal(mkdir(open_dir, 0755), 0);
	assert_int_equal(mkdir(shut, 0700), 0);
	snprintf(key, sizeof key, "%s/key", shut);
	snprintf(pub, sizeof pub, "%s/key", open_dir);
	int fd = open(key, O_WRONLY | O_CREAT, 0600);
	close(fd);
	fd = open(pub, O_WRONLY | O_CREAT, 0644);
	close(fd);

	const char *good[] = { key };
	assert_int_equal(agent_user_check(&u, good, 1, open_dir, err, sizeof err), 0);
	const char *bad[] = { key, pub };
	assert_int_equal(agent_user_check(&u, bad, 2, open_dir, err, sizeof err), SW_EPERM);
	assert_non_null(strstr(err, pub));
	assert_int_equal(agent_user_check(&u, good, 1, shut, err, sizeof err), SW_EPRECOND);
	assert_non_null(strstr(err, "cannot reach"));
}

/* The root's layout: what the application user may enter, what it may not. */
static void test_root_modes(void **state)
{
	(void)state;
	char root[300], p[400], err[256];
	struct agent_store s;
	struct stat st;
	snprintf(root, sizeof root, "%s/root", dir);
	/* An old layout: everything 0700, the root included. */
	assert_int_equal(mkdir(root, 0700), 0);
	snprintf(p, sizeof p, "%s/releases", root);
	assert_int_equal(mkdir(p, 0700), 0);
	assert_int_equal(agent_store_open(root, &s, err, sizeof err), 0);
	static const struct {
		const char *name;
		mode_t mode;
	} want[] = { { "", 0711 },        { "keys", 0700 }, { "state", 0700 }, { "blobs", 0700 },
		     { "releases", 0711 }, { "run", 0700 },  { "logs", 0700 } };
	for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
		snprintf(p, sizeof p, "%s/%s", root, want[i].name);
		assert_int_equal(lstat(p, &st), 0);
		assert_int_equal(st.st_mode & 07777, want[i].mode);
		assert_int_equal(st.st_uid, geteuid());
	}
	if (geteuid() == 0) {
		assert_int_equal(agent_store_data_dir(&s, 65534, 65534, err, sizeof err), 0);
		snprintf(p, sizeof p, "%s/data", root);
		assert_int_equal(lstat(p, &st), 0);
		assert_int_equal(st.st_mode & 07777, 0700);
		assert_int_equal(st.st_uid, 65534);
	}
	agent_store_close(&s);
	/* A directory of the agent's owned by someone else is refused. */
	if (geteuid() == 0) {
		snprintf(p, sizeof p, "%s/run", root);
		assert_int_equal(chown(p, 65534, 65534), 0);
		assert_int_equal(agent_store_open(root, &s, err, sizeof err), SW_EPERM);
		assert_non_null(strstr(err, "not by the agent"));
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_resolve),
		cmocka_unit_test(test_resolve_unprivileged),
		cmocka_unit_test(test_spawn_switches_and_cannot_read_the_key),
		cmocka_unit_test(test_startup_check),
		cmocka_unit_test(test_root_modes),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
