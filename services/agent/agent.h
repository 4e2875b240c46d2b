/*
 * agent.h - slipway-agent, the execution plane: the internal interfaces
 * between the agent's files.
 *
 *   identity.c   labels, the agent's own SPIFFE ID (from its certificate),
 *                the pinned secrets signing key
 *   manifest.c   the bundle manifest slipway.json (schema in README.md)
 *   unpack.c     safe .tar.gz extraction with libarchive
 *   fetch.c      Artifact/Pull by digest into the root, resumable, verified
 *   store.c      the root directory: lock, fencing generation, task results,
 *                releases, the `current` and `previous` symlinks
 *   proc.c       spawning, watching and stopping process groups
 *   health.c     HTTP, TCP and command probes
 *   secrets.c    Secrets/Fetch, opening the sealed bundle, tmpfs injection
 *   user.c       the user applications run as, and the switch to it
 *   supervise.c  the live process: adoption, restarts with backoff, crash
 *                loops, periodic health, the runtime snapshot
 *   exec.c       the task executor: make this agent run a digest, healthy
 *   control.c    the orchestrator protocol: register, heartbeat, long poll,
 *                fencing, reports
 *   metrics.c    the agent's Prometheus families (heartbeats, tasks, restarts)
 *
 * Everything except control.c and main.c works without an orchestrator, so
 * tests link it as a library and drive the executor directly.
 *
 * Errors follow lib/err.h: 0 or a negative SW_E* code, detail in a
 * caller-owned buffer. Secret values never reach a log line or an error.
 */
#ifndef SLIPWAY_AGENT_H
#define SLIPWAY_AGENT_H

#include "rpc.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define AGENT_HEX_LEN 64           /* lower-case hex of a SHA-256 digest */
#define AGENT_DIGEST_LEN 71        /* "sha256:" + 64 hex */
#define AGENT_MAX_LABELS 32
#define AGENT_LABEL_KEY_MAX 63
#define AGENT_LABEL_VALUE_MAX 127
#define AGENT_ID_MAX 128           /* task ids, deployment ids */
#define AGENT_VERSION_MAX 128      /* release versions */
#define AGENT_APP_MAX 63
#define AGENT_MSG_MAX 256          /* a task report's message */
#define AGENT_PATH_MAX 1024        /* paths the agent builds under its root */
#define AGENT_MAX_ORCH 8           /* orchestrator replicas (--orchestrator-addr a,b) */

/* ------------------------------------------------------------ identity.c */

struct agent_label {
	char key[AGENT_LABEL_KEY_MAX + 1];
	char value[AGENT_LABEL_VALUE_MAX + 1];
};

struct agent_labels {
	struct agent_label v[AGENT_MAX_LABELS];
	size_t n;
};

/* Adds one "key=value" label (a later value for the same key replaces the
 * earlier one). Keys: [a-z0-9][a-z0-9._/-]{0,62}; values:
 * [A-Za-z0-9._:-]{1,127}. Returns 0, SW_EINVAL or SW_ELIMIT. */
int agent_labels_add(struct agent_labels *l, const char *kv, char *err, size_t errlen);

/* Adds a comma-separated list "k=v,k=v" (empty items are skipped). */
int agent_labels_add_list(struct agent_labels *l, const char *list, char *err, size_t errlen);

/* Returns the value of key, or NULL. The pointer lives as long as l. */
const char *agent_labels_get(const struct agent_labels *l, const char *key);

/* Removes every "--label k=v" / "--label=k=v" from argv (compacting it and
 * updating *argc) and adds them to l, so the rest can go to cfg_parse.
 * Returns 0 or SW_EINVAL. Main thread. */
int agent_labels_take_flags(int *argc, char **argv, struct agent_labels *l, char *err,
			    size_t errlen);

/* Reads the PEM certificate at path and copies its single spiffe:// URI
 * SAN into out (a certificate with none or several is refused). */
int agent_cert_spiffe_id(const char *path, char *out, size_t outlen, char *err, size_t errlen);

/* Parses the pinned Ed25519 public key of the secrets service: inline
 * base64 (standard or URL-safe, with or without padding) or 64 hex digits,
 * or the path of a file holding either, or a Slipway public key file
 * ("slipway-key ed25519-public"). Returns 0 or SW_EINVAL / SW_EIO. */
int agent_sign_key_parse(const char *spec, uint8_t pk[32], char *err, size_t errlen);

/* ------------------------------------------------------------ manifest.c */

enum agent_check_kind { AGENT_CHECK_HTTP = 1, AGENT_CHECK_TCP = 2, AGENT_CHECK_COMMAND = 3 };

struct agent_health {
	enum agent_check_kind kind;
	char *path;             /* HTTP: request path ("/healthz") */
	int port;               /* HTTP/TCP: 0 = the PORT the agent gave the app */
	int expect_status;      /* HTTP: 0 = any 2xx */
	char **argv;            /* COMMAND: NULL-terminated */
	size_t argc;
	long long interval_ms;  /* between attempts */
	long long timeout_ms;   /* per attempt */
	int retries;            /* attempts after the first while deploying */
	long long deadline_ms;  /* the whole deploy-time check */
	long long live_interval_ms; /* between checks of the running release */
};

struct agent_secret_spec {
	char *name;             /* the secret's name in the secrets service */
	char *env;              /* inject as this environment variable, or */
	char *file;             /* as $SLIPWAY_SECRETS_DIR/<file> (tmpfs, 0400) */
};

struct agent_manifest {
	char *app;              /* "" when the manifest does not say */
	char *version;          /* "" when the manifest does not say */
	char **argv;            /* start command, NULL-terminated */
	size_t argc;
	char *workdir;          /* relative to the bundle root, "." default */
	char **env;             /* "KEY=VALUE", NULL-terminated */
	size_t nenv;
	struct agent_health health;
	long long stop_grace_ms;
	struct agent_secret_spec *secrets;
	size_t nsecrets;
};

#define AGENT_MANIFEST_NAME "slipway.json"
#define AGENT_MANIFEST_MAX (64 * 1024)

/* Parses and validates a manifest (see README.md for the schema): unknown
 * keys, bad types, out-of-range numbers, unsafe paths, reserved or
 * duplicate environment names are SW_EINVAL with the field in err. Returns
 * 0 and *out (free with agent_manifest_free). Any thread. */
int agent_manifest_parse(const char *json, size_t len, struct agent_manifest **out, char *err,
			 size_t errlen);

/* Reads <dir>/slipway.json (a regular file, at most AGENT_MANIFEST_MAX
 * bytes, never through a symlink) and parses it. */
int agent_manifest_load(const char *dir, struct agent_manifest **out, char *err, size_t errlen);

/* Rewrites the start and health programs given as paths inside the bundle
 * ("bin/app") into absolute paths under release_dir. */
int agent_manifest_resolve(struct agent_manifest *m, const char *release_dir);

void agent_manifest_free(struct agent_manifest *m);

/* Returns 1 when p is a safe relative path: not empty, not absolute, no
 * empty, "." (except a lone ".") or ".." component, printable ASCII. */
int agent_relpath_ok(const char *p);

/* -------------------------------------------------------------- unpack.c */

struct agent_unpack_limits {
	uint64_t max_bytes;     /* total size of all regular files */
	uint64_t max_entries;   /* entries of any kind */
};

/* Cancellation check for long operations: returns non-zero to stop. */
typedef int (*agent_cancel_fn)(void *arg);

/*
 * Extracts the gzip-compressed tar at archive_path into dest, which must be
 * an existing empty directory. Refuses (SW_EINVAL, with the entry in err)
 * absolute paths, ".." components, symlinks whose target leaves the tree,
 * hard links to anything but a regular file already extracted inside the
 * tree, devices, FIFOs, sockets, setuid/setgid bits and duplicate entries;
 * SW_ELIMIT past the limits. Files are created with openat(O_NOFOLLOW |
 * O_EXCL) one path component at a time, so nothing is ever written through
 * a link. Modes are normalised (0644/0755). On failure dest may hold a
 * partial tree: the caller removes it. Any thread.
 */
int agent_unpack(const char *archive_path, const char *dest, const struct agent_unpack_limits *lim,
		 agent_cancel_fn cancel, void *cancel_arg, char *err, size_t errlen);

/* Removes a directory tree without following symlinks. Missing is fine. */
int agent_rmtree(const char *path);

/* --------------------------------------------------------------- fetch.c */

/*
 * Pulls the blob `digest` ("sha256:<hex>") from the artifact service into
 * final_path: bytes go to final_path + ".partial" (an existing partial file
 * is resumed with Pull's offset, also across agent restarts), the SHA-256
 * of the whole file is checked against the digest, and only then is it
 * renamed to final_path. A mismatch deletes the partial file and returns
 * SW_EDATALOSS. At most max_bytes are accepted (SW_ELIMIT). Transport
 * failures are retried from the current offset (waiting for the service to
 * come back) until no byte has arrived for retry_ms, then the last error
 * (SW_EUNAVAIL, ...) is returned. deadline_ms is on the monotonic clock
 * (agent_now_ms) and bounds everything.
 */
int agent_fetch_blob(struct rpc_client *artifact, const char *digest, const char *final_path,
		     uint64_t max_bytes, int64_t deadline_ms, int64_t retry_ms, agent_cancel_fn cancel,
		     void *cancel_arg, char *err, size_t errlen);

/* SHA-256 of a whole file as lower-case hex. */
int agent_sha256_file(const char *path, char hex[AGENT_HEX_LEN + 1], char *err, size_t errlen);

/* Returns 1 when s is "sha256:" + 64 lower-case hex digits; copies the hex
 * part into hex when not NULL. */
int agent_digest_ok(const char *s, char hex[AGENT_HEX_LEN + 1]);

/* --------------------------------------------------------------- store.c */

enum agent_result_code { AGENT_RESULT_SUCCEEDED = 2, AGENT_RESULT_FAILED = 3 };

struct agent_store {
	char root[AGENT_PATH_MAX];
	int lock_fd;
	uint64_t generation;                 /* highest task generation seen */
	char generation_task[AGENT_ID_MAX + 1]; /* the task that carried it */
	unsigned puts;                       /* results written (pruning cadence) */
};

/* Creates the layout under root and sets its modes (README.md, "The root
 * directory": the root and releases/ 0711, keys, state, state/tasks, blobs,
 * run, logs 0700; a directory owned by another user is refused, SW_EPERM)
 * and takes an exclusive lock on root/agent.lock so that two agents never
 * share a root (SW_EPRECOND when another holds it). Loads the persisted
 * generation. Main thread. */
int agent_store_open(const char *root, struct agent_store *s, char *err, size_t errlen);

/* Creates root/data, the application's writable directory, owned by
 * uid:gid, 0700 (an existing one is handed to them: its contents are left
 * as they are). Main thread. */
int agent_store_data_dir(struct agent_store *s, uid_t uid, gid_t gid, char *err, size_t errlen);
void agent_store_close(struct agent_store *s);

/* Formats root + "/" + fmt into out. Returns 0 or SW_EINVAL (too long). */
int agent_store_path(const struct agent_store *s, char *out, size_t outlen, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* Persists (generation, task_id) with fsync before it is used: written to a
 * temporary file, fsync'd, renamed, directory fsync'd. Refuses to go
 * backwards (SW_EINVAL). */
int agent_store_set_generation(struct agent_store *s, uint64_t gen, const char *task_id,
			       char *err, size_t errlen);

/* Records the final result of a task (durably) and finds it again. find
 * returns SW_ENOTFOUND when (task_id, gen) has no record. */
int agent_store_put_result(struct agent_store *s, const char *task_id, uint64_t gen, int result,
			   const char *msg, char *err, size_t errlen);
int agent_store_get_result(struct agent_store *s, const char *task_id, uint64_t gen, int *result,
			   char *msg, size_t msglen);

/* The fencing rules for a delivered task (see README.md, "Protocol"). */
enum agent_fence {
	AGENT_FENCE_STALE = 1,     /* below the highest generation seen: ignore */
	AGENT_FENCE_CONFLICT,      /* same generation, another task id: ignore */
	AGENT_FENCE_BUSY,          /* already running or waiting to run: ignore */
	AGENT_FENCE_REREPORT,      /* finished before: report the recorded result */
	AGENT_FENCE_RESUME,        /* accepted before, never finished: run it */
	AGENT_FENCE_NEW,           /* a new highest generation: persist, then run */
};

struct agent_task;

/* Classifies task t against the persisted generation, the finished-task
 * records and the tasks held in memory (running and pending may be NULL).
 * Does not change anything. */
enum agent_fence agent_fence_classify(struct agent_store *s, const struct agent_task *t,
				      const struct agent_task *running,
				      const struct agent_task *pending);

/* Reads where `current` (or `previous`) points: the release's hex into
 * hex. SW_ENOTFOUND when there is none. */
int agent_store_link(const struct agent_store *s, const char *name, char hex[AGENT_HEX_LEN + 1]);

/* Points `current` at releases/<hex> atomically (symlink + rename + fsync
 * of root) and `previous` at what current pointed to before (when it
 * differs). */
int agent_store_switch(struct agent_store *s, const char *hex, char *err, size_t errlen);

/* Deletes releases beyond the `keep` most recent ones, never the current
 * or previous one, and stale temporary directories and blobs. */
void agent_store_prune(struct agent_store *s, int keep);

/* Writes text to path atomically with fsync (mode 0600). */
int agent_write_file_sync(const char *path, const char *text, size_t len, char *err,
			  size_t errlen);

/* ---------------------------------------------------------------- user.c */

#define AGENT_APP_USER_DEFAULT "slipway-app" /* else "nobody" */

enum agent_user_mode {
	AGENT_USER_SWITCH = 1,             /* children switch to uid/gid before exec */
	AGENT_USER_SELF_UNPRIVILEGED = 2,  /* the agent cannot switch: apps run as it */
	AGENT_USER_ROOT = 3,               /* --app-user root: apps run as the (root) agent */
};

struct agent_user {
	enum agent_user_mode mode;
	uid_t uid;              /* the user applications run as */
	gid_t gid;              /* and their only group */
	char name[64];          /* for logs and errors */
};

/*
 * Picks the user applications run as. spec (--app-user) is a comma-separated
 * list of USER[:GROUP] items and ENV=USER[:GROUP] items; the item for this
 * agent's environment label wins over the plain one. USER and GROUP are
 * names or numbers; GROUP defaults to the user's primary group. Without an
 * item: AGENT_APP_USER_DEFAULT if that user exists, else "nobody". An agent
 * that is root (or holds CAP_SETUID and CAP_SETGID) switches to that user
 * (mode SWITCH); root itself only when asked by name (mode ROOT), never by
 * default, and never group 0. An agent that cannot switch (not root,
 * without CAP_SETUID, CAP_SETGID and CAP_CHOWN) runs
 * applications as itself (mode SELF_UNPRIVILEGED) unless spec names
 * another user, which is an error (SW_EPRECOND). Returns 0 or SW_EINVAL /
 * SW_EPRECOND / SW_EIO with err. Main thread (getpwnam_r).
 */
int agent_user_resolve(const char *spec, const char *environment, struct agent_user *u,
		       char *err, size_t errlen);

/* Steps of starting a process as the application user (what failed). */
enum agent_user_stage {
	AGENT_STAGE_SETGROUPS = 1,
	AGENT_STAGE_SETGID,
	AGENT_STAGE_SETUID,
	AGENT_STAGE_CAPS,
	AGENT_STAGE_NNP,
	AGENT_STAGE_VERIFY,
	AGENT_STAGE_PGID,
	AGENT_STAGE_FDS,
	AGENT_STAGE_CHDIR,
	AGENT_STAGE_EXEC,
};

/* What a stage is, for error messages. */
const char *agent_user_stage(int stage);

/*
 * In a child forked by the agent, before exec: becomes u (no supplementary
 * groups, real/effective/saved ids, no capabilities, no_new_privs) and
 * checks that it did, including that root cannot be regained. Returns 0, or
 * the failed stage (AGENT_STAGE_*) with errno set; the caller must then
 * _exit without running anything. A no-op unless u->mode is SWITCH.
 * Async-signal-safe (raw system calls only).
 */
int agent_user_enter(const struct agent_user *u);

/*
 * Start-up check, in a child that became u: none of secret_paths (the
 * agent's keys) may open for reading (SW_EPERM names the one that does),
 * and the directory reach (the releases) must be reachable (SW_EPRECOND).
 * A no-op unless u->mode is SWITCH. Any thread.
 */
int agent_user_check(const struct agent_user *u, const char *const *secret_paths, size_t n,
		     const char *reach, char *err, size_t errlen);

/* ---------------------------------------------------------------- proc.c */

struct agent_proc {
	pid_t pid;              /* 0 = none; also its process group id */
	uint64_t start_time;    /* /proc/<pid>/stat start time: guards pid reuse */
	int is_child;           /* 1 = our child (waitpid), 0 = adopted */
	int port;
	int exit_status;        /* after it ended: exit code, or 128 + signal */
};

struct agent_spawn {
	char *const *argv;      /* argv[0]: absolute path or a name searched in PATH */
	char *const *envp;
	const char *cwd;
	const char *log_path;   /* stdout and stderr are appended here */
	const struct agent_user *user; /* NULL or not SWITCH: runs as the agent */
};

/* Starts argv in its own process group (setpgid), with the signal mask and
 * the dispositions reset, stdin from /dev/null and every other descriptor
 * closed; as sp->user when it says SWITCH (agent_user_enter, then the
 * working directory, so that it must be reachable by that user): a child
 * that could not become it fails the call with the step that failed and
 * never runs argv. Fills p (pid, start time, is_child = 1). Any thread. */
int agent_proc_spawn(const struct agent_spawn *sp, struct agent_proc *p, char *err,
		     size_t errlen);

/* Returns 1 while p runs, 0 once it has ended (a child is reaped and
 * p->exit_status set). An adopted process is checked through /proc (its
 * start time must match and it must not be a zombie). */
int agent_proc_alive(struct agent_proc *p);

/* Stops p's process group: SIGTERM, then SIGKILL after grace_ms. Waits for
 * the end (a child is reaped). Returns 0, or SW_ETIMEDOUT if it survived
 * even SIGKILL for a while. */
int agent_proc_stop(struct agent_proc *p, long long grace_ms);

/* The start time of pid from /proc (clock ticks since boot), or 0. */
uint64_t agent_proc_start_time(pid_t pid);

/* Runs argv (own process group) and waits up to timeout_ms; on timeout the
 * group is killed. *status gets the exit code (or 128 + signal, or -1 on
 * timeout). */
int agent_proc_run(const struct agent_spawn *sp, long long timeout_ms, int *status, char *err,
		   size_t errlen);

/* Called by agent_proc_find_env for each process found: its pid, its
 * process group, its start time and its initial environment (env, len
 * bytes of NUL-terminated "NAME=value" entries, valid during the call). */
typedef void (*agent_proc_found_fn)(pid_t pid, pid_t pgid, uint64_t start_time, const char *env,
				    size_t len, void *arg);

/* Finds the live processes of this user or of app_uid (the user
 * applications run as; not zombies, not the caller) whose initial
 * environment (/proc/<pid>/environ) sets name to exactly value, and calls
 * fn for each. Returns how many, or SW_EIO / SW_ENOMEM. Any thread. */
int agent_proc_find_env(const char *name, const char *value, uid_t app_uid,
			agent_proc_found_fn fn, void *arg);

/* The value of name in a NUL-separated environment block, or NULL. */
const char *agent_env_lookup(const char *env, size_t len, const char *name);

/* Picks a free TCP port on 127.0.0.1 (bind to port 0). */
int agent_free_port(int *port, char *err, size_t errlen);

/* Milliseconds on the monotonic clock / since the Unix epoch. */
int64_t agent_now_ms(void);
int64_t agent_wall_ms(void);

/* -------------------------------------------------------------- health.c */

/* One probe of h against 127.0.0.1:port (HTTP/TCP) or by running the
 * command in cwd with envp, as user (release code: the application user).
 * Returns 1 healthy, 0 not, with a short reason in detail. */
int agent_health_probe(const struct agent_health *h, int port, const char *cwd,
		       char *const *envp, const char *log_path, const struct agent_user *user,
		       char *detail, size_t detlen);

/* ------------------------------------------------------------- secrets.c */

struct agent_keys {
	uint8_t seal_pk[32];    /* X25519 public key: registered */
	uint8_t *seal_sk;       /* X25519 secret key, sodium_malloc */
	uint8_t sign_pk[32];    /* pinned Ed25519 key of the secrets service */
	int have_sign_pk;
	char self_id[256];      /* this agent's SPIFFE ID */
};

/*
 * Fetches the sealed bundle for deployment_id (Secrets/Fetch), opens and
 * checks it (signature by the pinned key, meant for this agent and this
 * deployment, not expired), and hands each secret the manifest asks for to
 * the release: into a new private directory on tmpfs (/dev/shm) whose path
 * goes to dir_out: files as <dir>/<file> (0400), environment values in
 * <dir>/.env (0400, the agent's: it reads them again at each start) for
 * agent_secrets_env. When user switches, the directory is the agent's with
 * mode 0710 and the user's group (the user may enter it, nobody else, and
 * nobody may list it or add to it) and the files are the user's; otherwise
 * everything is the agent's and the directory 0700. Every copy in agent
 * memory is wiped. A secret the manifest names but the bundle lacks fails
 * the call (SW_ENOTFOUND). On failure nothing is left on disk.
 */
int agent_secrets_materialize(struct rpc_client *secrets, const struct agent_keys *k,
			      const char *deployment_id, const struct agent_manifest *m,
			      const char *shm_base, const struct agent_user *user, char *dir_out,
			      size_t dirlen, char *err, size_t errlen);

/* An environment for a child: envp[0..nsecret) are secret values in
 * sodium memory, the rest ordinary strings; all are wiped on free. */
struct agent_env {
	char **envp;            /* NULL-terminated */
	size_t n;
	size_t nsecret;
	size_t cap;
};

/* Appends "NAME=value" strings to e (the secret ones only before any
 * ordinary one). Returns 0 or SW_ENOMEM / SW_ELIMIT. */
int agent_env_add(struct agent_env *e, const char *name, const char *value);
/* Loads the environment secrets stored in dir/.env into e (secure memory).
 * A missing dir or file gives SW_ENOTFOUND. */
int agent_secrets_env(const char *dir, struct agent_env *e, char *err, size_t errlen);
void agent_env_free(struct agent_env *e);

/* Removes a secrets directory made by agent_secrets_materialize (overwrites
 * each file before unlinking). NULL or "" is a no-op. */
void agent_secrets_remove(const char *dir);

/* ------------------------------------------------------------ the agent */

struct agent_config {
	const char *root;
	const char *ca, *cert, *key;
	const char *orchestrator_addr; /* "host:port" or replicas "a,b,..." */
	const char *artifact_addr;
	const char *secrets_addr;     /* "" = no secrets service */
	const char *seal_key;         /* "" = <root>/seal.key */
	const char *secrets_sign_key; /* see agent_sign_key_parse */
	const char *hostname;         /* "" = gethostname() */
	const char *shm_dir;          /* tmpfs for secrets, default /dev/shm */
	const char *app_user;         /* --app-user (agent_user_resolve); NULL/"" = default */
	struct agent_labels labels;
	long long poll_wait_ms;
	long long heartbeat_ms;       /* until the orchestrator says otherwise */
	long long keep_releases;
	long long max_blob_bytes;
	long long max_unpacked_bytes;
	long long max_entries;
	long long restart_backoff_ms;
	long long restart_backoff_max_ms;
	long long crashloop_restarts;
	long long crashloop_window_ms;
	long long shutdown_grace_ms;
	long long task_timeout_ms;    /* when a task carries no deadline */
	long long pull_retry_ms;      /* give up a pull after this long without progress */
	const char *trusted_builder_keys; /* "" = releases' provenance is not checked */
};

enum agent_pstate {
	AGENT_PROC_NONE = 1,
	AGENT_PROC_STARTING = 2,
	AGENT_PROC_RUNNING = 3,
	AGENT_PROC_CRASHLOOP = 4,
	AGENT_PROC_STOPPED = 5,
};

/* What the agent runs, as reported in heartbeats and task reports. */
struct agent_runtime {
	char app[AGENT_APP_MAX + 1];
	char version[AGENT_VERSION_MAX + 1];
	char digest[AGENT_DIGEST_LEN + 1];
	enum agent_pstate process;
	int healthy;
	char health_detail[AGENT_MSG_MAX];
	uint32_t restarts;
	int64_t health_checked_unix_ms;
	int port;
};

/* The release the agent runs (or runs no more): guarded by agent.mu. */
struct agent_live {
	int have;                     /* a release is deployed */
	char hex[AGENT_HEX_LEN + 1];
	char version[AGENT_VERSION_MAX + 1];
	struct agent_manifest *m;
	struct agent_proc proc;       /* pid 0 while down */
	char secrets_dir[AGENT_PATH_MAX];
	enum agent_pstate state;
	int healthy;
	char health_detail[AGENT_MSG_MAX];
	int64_t health_at_ms;         /* wall clock */
	int64_t next_health_ms;       /* monotonic */
	uint32_t restarts;
	int64_t restart_at[64];       /* monotonic times of recent restarts (ring) */
	unsigned nrestart_at;
	int64_t next_restart_ms;      /* monotonic; 0 = none scheduled */
	long long backoff_ms;
	int64_t up_since_ms;
	/* the process a deploy replaces, while it is being stopped (recorded
	 * in run/app.json so that a restarted agent stops it) */
	struct agent_proc retiring;
	char retiring_hex[AGENT_HEX_LEN + 1];
	char retiring_sd[AGENT_PATH_MAX];
};

struct agent {
	const struct agent_config *cfg;
	struct agent_store store;
	struct agent_keys keys;
	struct agent_user user;       /* who applications run as */
	char hostname[256];
	struct rpc_client *artifact;
	struct rpc_client *secrets;
	struct rpc_client *orch[AGENT_MAX_ORCH]; /* one per orchestrator replica */
	char orch_addr[AGENT_MAX_ORCH][256];
	size_t norch;

	pthread_mutex_t mu;           /* guards live */
	pthread_mutex_t probe_mu;     /* held while a probe uses live.m unlocked */
	pthread_cond_t cond;          /* signalled on stop */
	struct agent_live live;
	pthread_mutex_t exec_mu;      /* one task at a time */
	atomic_int stopping;
	pthread_t sup_thread;
	int sup_started;

	struct agent_control *control; /* control.c state, NULL when unused */
	struct prov_keys *builder_keys; /* --trusted-builder-keys, NULL when none */
};

/*
 * Opens the root (lock, layout, generation), loads or creates the seal key,
 * parses the pinned signing key, reads the certificate's SPIFFE ID, and
 * creates the artifact and secrets clients (the orchestrator clients, one
 * per comma-separated address, only when cfg->orchestrator_addr is set). Borrows cfg for the agent's life.
 * Returns 0 and *out (free with agent_free). Main thread.
 */
int agent_new(const struct agent_config *cfg, struct agent **out, char *err, size_t errlen);

/*
 * Test hook, compiled in always: when the environment variable
 * SLIPWAY_AGENT_CRASH_AT equals `point`, the agent logs it and raises
 * SIGKILL on itself right there, so that tests can stop it exactly inside
 * a crash window (README.md, "Failure modes"). Points: after-spawn,
 * after-switch, after-record, before-result, after-restart-spawn. The
 * variable is only read from the agent's environment (never from a flag
 * or a task) and is not passed on to applications. Any thread.
 */
void agent_crash_point(const char *point);

/* Frees the agent: clients, keys, the lock. The supervised application is
 * left running (an agent restart must not take production down). */
void agent_free(struct agent *a);

/* ----------------------------------------------------------- supervise.c */

/* Loads the manifest of releases/<hex> with its programs resolved. */
int agent_load_release(struct agent *a, const char *hex, struct agent_manifest **m, char *err,
		       size_t errlen);

/* The environment variable that marks every application process the agent
 * starts, with the agent's root (realpath) as its value. */
#define AGENT_MARK_ENV "SLIPWAY_AGENT_ROOT"

/* Reconciles what runs with `current` after a start (the previous agent
 * may have died anywhere, also with kill -9): collects the processes of
 * this root from run/app.json, run/candidate.json and a /proc scan for
 * AGENT_MARK_ENV, keeps (adopts) at most one, alive and running the
 * current release, stops every other one with its secrets, and starts the
 * current release when none was kept. Main thread, before agent_sup_start. */
int agent_adopt(struct agent *a, char *err, size_t errlen);

/* Starts / stops the supervisor thread (restarts, periodic health). Stop
 * does not stop the application. */
int agent_sup_start(struct agent *a, char *err, size_t errlen);
void agent_sup_stop(struct agent *a);

/* Copies what the agent runs now. Any thread. */
void agent_runtime(struct agent *a, struct agent_runtime *rt);

/* Stops the application and forgets it (tests, and `current` gone). */
void agent_stop_app(struct agent *a);

/* Builds the environment for a process of release hex: the environment
 * secrets from secrets_dir (when with_secrets), then PATH/LANG/TZ and the
 * sanitizer options inherited from the agent, PORT, SLIPWAY_APP,
 * SLIPWAY_VERSION, SLIPWAY_DIGEST, SLIPWAY_RELEASE_DIR, SLIPWAY_DATA_DIR
 * (also HOME when the application runs as its own user),
 * SLIPWAY_SECRETS_DIR and the manifest's env. Free with agent_env_free. */
int agent_build_env(struct agent *a, const struct agent_manifest *m, const char *hex,
		    const char *version, int port, const char *secrets_dir, int with_secrets,
		    struct agent_env *out, char *err, size_t errlen);

/* Starts release hex with manifest m on port into *p. Used for new
 * candidates and restarts. */
int agent_start_release(struct agent *a, const struct agent_manifest *m, const char *hex,
			const char *version, int port, const char *secrets_dir,
			struct agent_proc *p, char *err, size_t errlen);

/* Replaces the live release by a healthy candidate and stops the previous
 * process. Takes ownership of m. Persists run/app.json. */
void agent_promote(struct agent *a, const char *hex, const char *version,
		   struct agent_manifest *m, const struct agent_proc *p, const char *secrets_dir,
		   const char *health_detail);

/* run/candidate.json: the new process being health-checked, so that an
 * agent killed meanwhile stops it on its next start (agent_adopt). */
int agent_candidate_record(struct agent *a, const struct agent_proc *p, const char *hex,
			   const char *version, const char *secrets_dir);
void agent_candidate_clear(struct agent *a);

/* Persists run/app.json and run/app.pid for the live process (a.mu held). */
void agent_save_live_locked(struct agent *a);

/* ---------------------------------------------------------------- exec.c */

enum agent_task_kind { AGENT_TASK_DEPLOY = 1, AGENT_TASK_ROLLBACK = 2 };

struct agent_task {
	char task_id[AGENT_ID_MAX + 1];
	uint64_t generation;
	int kind;
	char deployment_id[AGENT_ID_MAX + 1];
	char app[AGENT_APP_MAX + 1];
	char environment[AGENT_LABEL_VALUE_MAX + 1];
	char version[AGENT_VERSION_MAX + 1];
	char digest[AGENT_DIGEST_LEN + 1];
	uint32_t attempt;
	int64_t deadline_unix_ms;     /* 0 = the agent's default */
	int has_secrets;
	char trace_id[33];            /* its deployment's W3C trace id, or "" */
	char invalid[64];             /* why the delivered task is unusable ("" = fine) */
	/* set by the control plane while the task runs */
	atomic_int superseded;
};

struct agent_result {
	int result;                   /* AGENT_RESULT_* */
	char message[AGENT_MSG_MAX];
	int64_t duration_ms;
};

/* Returns non-zero when the running task must stop at the next safe point
 * (agent stopping, task superseded or a newer one waiting). */
typedef int (*agent_task_cancel_fn)(struct agent *a, const struct agent_task *t, void *arg);

/*
 * Executes a task: makes this agent run t->digest, healthy (see README.md,
 * "What a task does"). Fills *res with SUCCEEDED or FAILED and a short
 * reason. Returns 0 when res is final, or SW_ECANCELLED when the task was
 * abandoned at a safe point (cancel said so): then the old release still
 * serves and nothing is to be reported. Worker thread; one task at a time.
 */
int agent_exec(struct agent *a, const struct agent_task *t, agent_task_cancel_fn cancel,
	       void *cancel_arg, struct agent_result *res);

/* ------------------------------------------------------------- control.c */

/* Starts the control plane threads (registration and heartbeats, the long
 * poll, the task worker). Main thread, after agent_sup_start. */
int agent_control_start(struct agent *a, char *err, size_t errlen);

/* Stops polling, lets the current task reach a safe point (up to the
 * shutdown grace), and joins the threads. Returns 0, or SW_ETIMEDOUT when
 * the task did not stop in time (the threads still run: the caller must
 * exit without freeing the agent). Main thread. */
int agent_control_stop(struct agent *a);

/* ---------------------------------------------------------- provenance.c */

struct prov_keys;

/* Loads --trusted-builder-keys into a->builder_keys (none when unset).
 * Returns 0 or SW_EINVAL with why. Main thread, from agent_new. */
int agent_provenance_init(struct agent *a, char *err, size_t errlen);
void agent_provenance_free(struct agent *a);
/*
 * Before a task runs its release: when the app requires signatures (the
 * trusted builder keys say so), fetches the release's provenance statement
 * and signature from the artifact service and verifies them with the
 * agent's own keys (lib/provenance.h). Returns 0 (verified, or nothing to
 * check), SW_EPERM with the reason in msg, or a transport error. deadline_ms
 * is on the monotonic clock. Task thread.
 */
int agent_verify_provenance(struct agent *a, const struct agent_task *t, int64_t deadline_ms,
			    char *msg, size_t len);

/* ---- metrics.c: the agent's Prometheus families (lib/metrics.h); any thread */

/* Creates every family's series (value 0), so a scrape shows them at once. */
void agent_metrics_init(void);
/* One heartbeat sent (ok) or failed. */
void agent_metrics_heartbeat(int ok);
/* One task run to an end. */
void agent_metrics_task(int succeeded, int64_t duration_ms);
/* One restart of the supervised application. */
void agent_metrics_restart(void);

#endif
