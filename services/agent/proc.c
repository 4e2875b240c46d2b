/*
 * proc.c - processes the agent supervises: spawned with posix_spawn (safe
 * in a multi-threaded process) into their own process group, so that
 * stopping a release reaches every process it started, and so that the
 * application outlives the agent (no parent-death signal: an agent restart
 * must not take production down). A process the agent did not start itself
 * (adopted after an agent restart) is watched through /proc, with its start
 * time guarding against pid reuse.
 *
 * A process that runs as the application user (user.c) is started with
 * fork instead: posix_spawn cannot change user. The child only makes raw
 * system calls (it is the copy of a multi-threaded process), reports the
 * step that failed through a close-on-exec pipe, and the parent waits for
 * that pipe to close (exec happened) or to say why the child gave up.
 */
#include "agent.h"
#include "err.h"
#include "clock.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int64_t agent_now_ms(void)
{
	return clock_mono_ms();
}

int64_t agent_wall_ms(void)
{
	return clock_wall_ms();
}

static void nap_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/* Reads /proc/<pid>/stat: the state letter and the start time (field 22).
 * The command name (field 2) may hold spaces and parentheses: parse after
 * the last ')'. Returns 0 or -1. */
static int read_stat(pid_t pid, char *state, uint64_t *start)
{
	char path[64], buf[1024];
	snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = '\0';
	char *p = strrchr(buf, ')');
	if (p == NULL || p[1] != ' ')
		return -1;
	p += 2;
	*state = *p;
	/* fields after the name: 3=state ... 22=starttime, i.e. 19 more spaces */
	for (int i = 0; i < 19; i++) {
		p = strchr(p, ' ');
		if (p == NULL)
			return -1;
		p++;
	}
	char *end = NULL;
	unsigned long long v = strtoull(p, &end, 10);
	if (end == p)
		return -1;
	*start = v;
	return 0;
}

uint64_t agent_proc_start_time(pid_t pid)
{
	char st;
	uint64_t t = 0;
	return read_stat(pid, &st, &t) == 0 ? t : 0;
}

/* What a child that gave up writes to its parent. */
struct child_fail {
	int stage;
	int err;
};

_Noreturn static void child_fail(int fd, int stage, int e)
{
	struct child_fail f = { stage, e };
	ssize_t w = write(fd, &f, sizeof f);
	(void)w;
	_exit(127);
}

/* execve of file, searched in path (":"-separated) when it has no '/', as
 * posix_spawnp and execvp do. Returns only on failure, errno set. No
 * allocation: runs in a forked child. */
static void exec_search(const char *file, char *const *argv, char *const *envp, const char *path)
{
	char buf[AGENT_PATH_MAX + 256];
	size_t fl = strlen(file);
	int eacces = 0;
	if (strchr(file, '/') != NULL) {
		execve(file, argv, envp);
		return;
	}
	const char *p = path;
	for (;;) {
		const char *end = strchr(p, ':');
		size_t dl = end ? (size_t)(end - p) : strlen(p);
		if (dl + fl + 2 <= sizeof buf) {
			size_t off = 0;
			if (dl > 0) {
				memcpy(buf, p, dl);
				buf[dl] = '/';
				off = dl + 1;
			}
			memcpy(buf + off, file, fl + 1);
			execve(buf, argv, envp);
			if (errno == EACCES)
				eacces = 1;
			else if (errno != ENOENT && errno != ENOTDIR && errno != ESTALE &&
				 errno != ENODEV && errno != ETIMEDOUT)
				return;
		}
		if (end == NULL)
			break;
		p = end + 1;
	}
	errno = eacces ? EACCES : ENOENT;
}

/* The forked child: never returns. */
_Noreturn static void spawn_child(const struct agent_spawn *sp, int logfd, int failfd,
				  const char *path)
{
	static const int def[] = { SIGPIPE, SIGTERM, SIGINT, SIGHUP, SIGCHLD };
	struct sigaction dfl;
	sigset_t none;
	memset(&dfl, 0, sizeof dfl);
	dfl.sa_handler = SIG_DFL;
	for (size_t i = 0; i < sizeof def / sizeof def[0]; i++)
		sigaction(def[i], &dfl, NULL);
	if (setpgid(0, 0) != 0)
		child_fail(failfd, AGENT_STAGE_PGID, errno);
	int nul = open("/dev/null", O_RDONLY);
	if (nul < 0 || dup2(nul, 0) < 0 || dup2(logfd, 1) < 0 || dup2(logfd, 2) < 0)
		child_fail(failfd, AGENT_STAGE_FDS, errno);
	/* Everything else closes at exec (the failure pipe stays usable
	 * until then). */
	if (close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) != 0)
		for (int fd = 3; fd < 4096; fd++)
			fcntl(fd, F_SETFD, FD_CLOEXEC);
	int stage = agent_user_enter(sp->user);
	if (stage != 0)
		child_fail(failfd, stage, errno);
	/* As the application user: its working directory must be its to reach. */
	if (sp->cwd != NULL && chdir(sp->cwd) != 0)
		child_fail(failfd, AGENT_STAGE_CHDIR, errno);
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	exec_search(sp->argv[0], sp->argv, sp->envp, path);
	child_fail(failfd, AGENT_STAGE_EXEC, errno);
}

/* agent_proc_spawn for a process that runs as the application user. */
static int spawn_as_user(const struct agent_spawn *sp, int logfd, struct agent_proc *p,
			 char *err, size_t errlen)
{
	int pfd[2];
	if (pipe2(pfd, O_CLOEXEC) != 0)
		return sw_errf(err, errlen, SW_EIO, "pipe: %s", strerror(errno));
	/* posix_spawnp searches the agent's PATH: so does this. */
	const char *path = getenv("PATH");
	if (path == NULL)
		path = "/bin:/usr/bin";
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	pid_t pid = fork();
	if (pid == 0) {
		close(pfd[0]);
		spawn_child(sp, logfd, pfd[1], path);
	}
	int fe = errno;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	close(pfd[1]);
	if (pid < 0) {
		close(pfd[0]);
		return sw_errf(err, errlen, SW_EIO, "cannot start %.200s: fork: %s", sp->argv[0],
			       strerror(fe));
	}
	setpgid(pid, pid); /* also here: no window where kill(-pid) misses it */
	struct child_fail f;
	ssize_t n;
	while ((n = read(pfd[0], &f, sizeof f)) < 0 && errno == EINTR)
		;
	close(pfd[0]);
	if (n == (ssize_t)sizeof f) {
		int status;
		while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
			;
		return sw_errf(err, errlen,
			       f.stage == AGENT_STAGE_EXEC || f.stage == AGENT_STAGE_CHDIR ? SW_EINVAL
											      : SW_EPERM,
			       "cannot start %.200s as %s: %s: %s", sp->argv[0], sp->user->name,
			       agent_user_stage(f.stage), strerror(f.err));
	}
	p->pid = pid;
	p->is_child = 1;
	p->start_time = agent_proc_start_time(pid);
	return 0;
}

int agent_proc_spawn(const struct agent_spawn *sp, struct agent_proc *p, char *err,
		     size_t errlen)
{
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t at;
	sigset_t none, def;
	int rc = 0, logfd = -1;
	pid_t pid = 0;

	memset(p, 0, sizeof *p);
	logfd = open(sp->log_path ? sp->log_path : "/dev/null",
		     O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (logfd < 0)
		return sw_errf(err, errlen, SW_EIO, "open %s: %s", sp->log_path, strerror(errno));
	if (sp->user != NULL && sp->user->mode == AGENT_USER_SWITCH) {
		rc = spawn_as_user(sp, logfd, p, err, errlen);
		close(logfd);
		return rc;
	}
	posix_spawn_file_actions_init(&fa);
	posix_spawnattr_init(&at);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_adddup2(&fa, logfd, 1);
	posix_spawn_file_actions_adddup2(&fa, logfd, 2);
	posix_spawn_file_actions_addclosefrom_np(&fa, 3);
	if (sp->cwd != NULL)
		posix_spawn_file_actions_addchdir_np(&fa, sp->cwd);
	sigemptyset(&none);
	sigemptyset(&def);
	sigaddset(&def, SIGPIPE);
	sigaddset(&def, SIGTERM);
	sigaddset(&def, SIGINT);
	sigaddset(&def, SIGHUP);
	sigaddset(&def, SIGCHLD);
	posix_spawnattr_setsigmask(&at, &none);
	posix_spawnattr_setsigdefault(&at, &def);
	posix_spawnattr_setpgroup(&at, 0);
	posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
					      POSIX_SPAWN_SETSIGDEF);
	int e = posix_spawnp(&pid, sp->argv[0], &fa, &at, sp->argv, sp->envp);
	if (e != 0) {
		rc = sw_errf(err, errlen, SW_EINVAL, "cannot start %.200s: %s", sp->argv[0],
			     strerror(e));
		goto out;
	}
	p->pid = pid;
	p->is_child = 1;
	p->start_time = agent_proc_start_time(pid);
out:
	posix_spawnattr_destroy(&at);
	posix_spawn_file_actions_destroy(&fa);
	close(logfd);
	return rc;
}

int agent_proc_alive(struct agent_proc *p)
{
	if (p->pid <= 0)
		return 0;
	if (p->is_child) {
		int status;
		pid_t r = waitpid(p->pid, &status, WNOHANG);
		if (r == 0)
			return 1;
		if (r == p->pid) {
			p->exit_status = WIFEXITED(status) ? WEXITSTATUS(status)
							   : 128 + WTERMSIG(status);
			return 0;
		}
		if (errno != ECHILD)
			return 1;
		/* Not our child after all (reaped elsewhere): fall through. */
		p->is_child = 0;
	}
	char st;
	uint64_t t;
	if (read_stat(p->pid, &st, &t) != 0 || st == 'Z' || st == 'X' ||
	    (p->start_time != 0 && t != p->start_time)) {
		p->exit_status = -1; /* unknown: not our child */
		return 0;
	}
	return 1;
}

/* Reads the state and the process group of pid from /proc. */
static int read_pgrp(pid_t pid, char *state, pid_t *pgrp)
{
	char path[64], buf[1024];
	snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = '\0';
	char *p = strrchr(buf, ')');
	int ppid = 0, pg = 0;
	if (p == NULL || sscanf(p + 1, " %c %d %d", state, &ppid, &pg) != 3)
		return -1;
	*pgrp = (pid_t)pg;
	return 0;
}

/* Is any live (not zombie) process left in the group? kill(-pgid, 0) is
 * not enough: orphans that init has not reaped yet still answer it. */
static int group_alive(pid_t pgid)
{
	if (kill(-pgid, 0) != 0)
		return 0;
	DIR *d = opendir("/proc");
	if (d == NULL)
		return 1;
	struct dirent *de;
	int alive = 0;
	while (!alive && (de = readdir(d)) != NULL) {
		char *end = NULL;
		long pid = strtol(de->d_name, &end, 10);
		char st;
		pid_t pg;
		if (end == de->d_name || *end != '\0' || pid <= 0)
			continue;
		if (read_pgrp((pid_t)pid, &st, &pg) == 0 && pg == pgid && st != 'Z' && st != 'X')
			alive = 1;
	}
	closedir(d);
	return alive;
}

int agent_proc_stop(struct agent_proc *p, long long grace_ms)
{
	if (p->pid <= 0)
		return 0;
	/* The group first: a release's helpers go with it. */
	if (agent_proc_alive(p) || group_alive(p->pid))
		kill(-p->pid, SIGTERM);
	int64_t until = agent_now_ms() + grace_ms;
	long step = 10;
	while (agent_now_ms() < until) {
		int alive = agent_proc_alive(p);
		if (!alive && !group_alive(p->pid))
			break;
		nap_ms(step);
		step = step < 100 ? step * 2 : 100;
	}
	if (agent_proc_alive(p) || group_alive(p->pid)) {
		kill(-p->pid, SIGKILL);
		for (int i = 0; i < 500 && agent_proc_alive(p); i++)
			nap_ms(10);
	}
	int rc = agent_proc_alive(p) ? SW_ETIMEDOUT : 0;
	if (rc == 0)
		p->pid = 0;
	return rc;
}

const char *agent_env_lookup(const char *env, size_t len, const char *name)
{
	size_t nl = strlen(name);
	const char *p = env, *end = env + len;
	while (p < end) {
		const char *nul = memchr(p, '\0', (size_t)(end - p));
		if (nul == NULL)
			break; /* truncated last entry: ignored */
		if ((size_t)(nul - p) > nl && memcmp(p, name, nl) == 0 && p[nl] == '=')
			return p + nl + 1;
		p = nul + 1;
	}
	return NULL;
}

#define ENV_READ_MAX (256 * 1024)

int agent_proc_find_env(const char *name, const char *value, uid_t app_uid,
			agent_proc_found_fn fn, void *arg)
{
	DIR *d = opendir("/proc");
	if (d == NULL)
		return SW_EIO;
	char *buf = malloc(ENV_READ_MAX);
	if (buf == NULL) {
		closedir(d);
		return SW_ENOMEM;
	}
	uid_t uid = getuid();
	pid_t self = getpid();
	struct dirent *de;
	int n = 0;
	while ((de = readdir(d)) != NULL) {
		char *end = NULL;
		long pid = strtol(de->d_name, &end, 10);
		if (end == de->d_name || *end != '\0' || pid <= 0 || pid == self)
			continue;
		char path[64], st;
		pid_t pg;
		uint64_t start;
		struct stat sb;
		snprintf(path, sizeof path, "/proc/%ld", pid);
		if (stat(path, &sb) != 0 || (sb.st_uid != uid && sb.st_uid != app_uid))
			continue;
		if (read_pgrp((pid_t)pid, &st, &pg) != 0 || st == 'Z' || st == 'X' ||
		    read_stat((pid_t)pid, &st, &start) != 0)
			continue;
		snprintf(path, sizeof path, "/proc/%ld/environ", pid);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		size_t len = 0;
		ssize_t r;
		while (len < ENV_READ_MAX && (r = read(fd, buf + len, ENV_READ_MAX - len)) > 0)
			len += (size_t)r;
		close(fd);
		const char *v = agent_env_lookup(buf, len, name);
		if (v == NULL || strcmp(v, value) != 0)
			continue;
		n++;
		fn((pid_t)pid, pg, start, buf, len, arg);
	}
	free(buf);
	closedir(d);
	return n;
}

int agent_proc_run(const struct agent_spawn *sp, long long timeout_ms, int *status, char *err,
		   size_t errlen)
{
	struct agent_proc p;
	*status = -1;
	int rc = agent_proc_spawn(sp, &p, err, errlen);
	if (rc != 0)
		return rc;
	int64_t until = agent_now_ms() + timeout_ms;
	long step = 2;
	while (agent_proc_alive(&p)) {
		if (agent_now_ms() >= until) {
			kill(-p.pid, SIGKILL);
			while (agent_proc_alive(&p))
				nap_ms(5);
			/* Anything else it left in its group goes too. */
			kill(-p.pid, SIGKILL);
			*status = -1;
			return 0;
		}
		nap_ms(step);
		step = step < 50 ? step * 2 : 50;
	}
	*status = p.exit_status;
	if (group_alive(p.pid))
		kill(-p.pid, SIGKILL);
	return 0;
}

int agent_free_port(int *port, char *err, size_t errlen)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return sw_errf(err, errlen, SW_EIO, "socket: %s", strerror(errno));
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = 0 };
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t len = sizeof a;
	int rc = 0;
	if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
	    getsockname(fd, (struct sockaddr *)&a, &len) != 0)
		rc = sw_errf(err, errlen, SW_EIO, "no free port: %s", strerror(errno));
	else
		*port = ntohs(a.sin_port);
	close(fd);
	return rc;
}
