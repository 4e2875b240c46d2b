/*
 * policy.h - the policy service's internal model, shared by its files (not
 * a library: nothing outside services/policy/ and its tests includes it).
 *
 * A policy document (JSON, schema in README.md) is validated whole and
 * compiled into a struct pol_policy: roles, groups, bindings, guardrails and
 * approval policies, plus the built-ins (roles of authorization.md, the
 * default service/agent bindings, the bootstrap admins, the auditor
 * guardrail) and indexes that make Authorize a few hash lookups. A compiled
 * policy is immutable and reference counted: readers take a reference, the
 * revision watcher swaps in the next one.
 *
 * Files: doc.c (parse, validate, compile), eval.c (decisions, explain, the
 * escalation guard), weaken.c (which changes weaken a document), tz.c (time zones for freeze windows), approval.c
 * (approval rules), diff.c (revision diffs), store.c (PostgreSQL: revisions,
 * decisions, approvals; the revision watcher and the decision writer),
 * rpc.c (one function per RPC), main.c (start-up and shutdown).
 */
#ifndef SLIPWAY_POLICY_H
#define SLIPWAY_POLICY_H

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* Hard caps on a document (bad input is rejected, never truncated). */
#define POL_MAX_DOC_BYTES (4u << 20)
#define POL_MAX_ROLES 1024
#define POL_MAX_RULES 64          /* per role */
#define POL_MAX_LIST 256          /* entries in one pattern/action/kind list */
#define POL_MAX_GROUPS 1024
#define POL_MAX_MEMBERS 20000     /* per group */
#define POL_MAX_BINDINGS 50000
#define POL_MAX_GUARDS 1024
#define POL_MAX_APPROVALS 256
#define POL_MAX_WINDOWS 256       /* freeze windows per approval policy */
#define POL_MAX_ADMINS 64         /* bootstrap admins */
#define POL_MAX_MATCH 64          /* matches kept for reasons and explain */
#define POL_NAME_MAX 63
#define POL_REASON_LEN 512         /* one reason, as sent */

/* A list of strings that point into the document (or static text). For
 * pattern lists an empty list means "any". */
struct pol_list {
	size_t n;
	const char **v;
};

/* actions x kinds, narrowed by glob patterns on app, environment, name. */
struct pol_rule {
	struct pol_list actions;        /* "*" = every action */
	struct pol_list except_actions; /* guardrails only: actions not forbidden */
	struct pol_list kinds;          /* "*" = every kind */
	struct pol_list apps, envs, names;
};

struct pol_role {
	const char *name;
	const char *description;
	int builtin;
	size_t nrules;
	struct pol_rule *rules;
};

enum pol_subject { POL_SUBJ_PRINCIPAL = 0, POL_SUBJ_PREFIX, POL_SUBJ_GROUP };

struct pol_binding {
	char label[40];                 /* "bindings[12]", "builtin:service" */
	const struct pol_role *role;
	int role_index;
	enum pol_subject skind;
	const char *subject;            /* ID, prefix ending in '/', or group name */
	const char *app, *env;          /* scope; NULL = wider */
	int64_t expires_ms;             /* 0 = never */
};

struct pol_member {
	const char *id;                 /* exact ID, or prefix ending in '/' */
	int prefix;
};

struct pol_group {
	const char *name;
	size_t n;
	struct pol_member *m;
};

struct pol_guard {
	const char *name;
	const char *description;
	int builtin;
	struct pol_rule forbid;
	struct pol_list principals;     /* exact IDs or prefix patterns ending in a slash-star */
	struct pol_list groups;
	struct pol_list roles;          /* principals holding one of these roles */
	const char *app, *env;          /* scope; NULL = any */
};

/* A weekly window in minutes of the week (Monday 00:00 = 0); wraps when
 * end <= start. */
struct pol_weekly {
	int start, end;
};

/* A one-off window in local wall-clock seconds (as if the zone were UTC). */
struct pol_dates {
	int64_t start, end;
};

struct pol_quorum {
	uint32_t required;              /* distinct approvers in total */
	size_t ngroups;
	const char **groups;            /* each needs counts[i] distinct members */
	uint32_t *counts;
};

struct pol_tz;

struct pol_approval {
	const char *name;
	int index;
	struct pol_list apps, envs;
	struct pol_quorum quorum;
	struct pol_list approver_groups; /* empty: anyone allowed to approve */
	int64_t ttl_ms;                 /* approval expiry; 0 = never */
	int64_t wait_ms;                /* wait timer after the request */
	struct pol_list refs;           /* allowed provenance refs (globs); empty = any */
	struct pol_tz *tz;              /* owned */
	const char *tz_name;
	size_t nweekly;
	struct pol_weekly *weekly;
	size_t ndates;
	struct pol_dates *dates;
	int break_glass;                /* allowed during a freeze */
	struct pol_quorum bg;
	char hash[65];                  /* SHA-256 of this policy's canonical JSON */
};

struct pol_index; /* string -> list of ints (doc.c) */

struct pol_policy {
	atomic_int refs;
	uint64_t revision;
	char *applied_by;
	int64_t applied_ms;
	json_t *doc;                    /* the document (owned); strings point into it */
	char *text;                     /* canonical JSON text (owned) */
	char sha256[65];
	char *trust_domain;
	size_t nadmins;
	char **admins;                  /* bootstrap admins (owned) */
	char *prefix_service, *prefix_agent; /* built-in binding subjects (owned) */
	char *orchestrator;                  /* spiffe://<td>/service/orchestrator (owned) */

	size_t nroles;
	struct pol_role *roles;         /* built-ins first */
	size_t ngroups;
	struct pol_group *groups;
	size_t nbindings;
	struct pol_binding *bindings;   /* built-ins first */
	size_t nguards;
	struct pol_guard *guards;       /* built-ins first */
	size_t napprovals;
	struct pol_approval *approvals;

	struct pol_index *by_principal; /* exact subject -> binding indexes */
	struct pol_index *by_group;     /* group name -> binding indexes */
	struct pol_index *member_of;    /* exact member -> group indexes */
	struct pol_index *role_by_name; /* role name -> role index */
	struct pol_index *group_by_name;
	size_t nprefix_bindings;
	int *prefix_bindings;
	size_t nprefix_members;
	int *prefix_member_group;       /* group index per prefix member */
	const char **prefix_member;
	void *arena;                    /* derived strings (doc.c) */
};

/* ---- doc.c ---- */

struct pol_builtin_opts {
	const char *trust_domain;       /* for the default bindings */
	size_t nadmins;
	const char *const *admins;      /* bootstrap admins: admin, globally */
};

/*
 * Parses, validates and compiles a document. text may be NULL or "" for the
 * empty document (built-ins only). On success returns 0 and *out (revision
 * 0; release with pol_unref). On bad input returns SW_EINVAL with
 * "<json path>: <what is wrong>" in err (the first error; nothing is kept).
 * Any thread.
 */
int pol_compile(const char *text, size_t len, const struct pol_builtin_opts *b,
		struct pol_policy **out, char *err, size_t errlen);

void pol_ref(struct pol_policy *p);
void pol_unref(struct pol_policy *p);

/* Validates a bootstrap admin list entry (a SPIFFE ID of trust_domain). */
int pol_check_principal(const char *id, const char *trust_domain, int allow_prefix, char *err,
			size_t errlen);

/* The binding/group indexes of key in ix (NULL, *n = 0 when none). */
const int *pol_index_get(const struct pol_index *ix, const char *key, size_t *n);

/* Role index by name, or -1. */
int pol_role_find(const struct pol_policy *p, const char *name);
/* Group index by name, or -1. */
int pol_group_find(const struct pol_policy *p, const char *name);
/* 1 when principal is a member of group g. */
int pol_in_group(const struct pol_policy *p, int g, const char *principal);

/* Glob match with '*' (any run) and '?' (one character). */
int pol_glob(const char *pattern, const char *s);
/* 1 when s matches one of the list's patterns; an empty list matches any value. */
int pol_list_glob(const struct pol_list *l, const char *s);

/* 1 when the action changes state (everything but read and explain). */
int pol_action_writes(const char *action);

/* 1 when (kind, action) is in the vocabulary of authorization.md. */
int pol_vocab_ok(const char *kind, const char *action);

/* Parses a duration "90s", "15m", "24h", "7d", "500ms" into ms. */
int pol_parse_duration(const char *s, int64_t *ms);

/* Parses RFC 3339 "2026-01-31T12:00:00Z" (or with +hh:mm) into ms. */
int pol_parse_time(const char *s, int64_t *ms);

/* ---- eval.c ---- */

struct pol_query {
	const char *principal;
	const char *action;
	const char *kind;
	const char *app;                /* "" when not app-scoped */
	const char *env;
	const char *name;
	int64_t now_ms;                 /* for binding expiry */
};

struct pol_grant {
	const struct pol_binding *b;
	int rule;
};

struct pol_result {
	int allowed;
	size_t ngrants;
	struct pol_grant grants[POL_MAX_MATCH];
	size_t nforbids;
	const struct pol_guard *forbids[POL_MAX_MATCH];
	size_t nexpired;                /* matching bindings that had expired */
	const struct pol_binding *expired[8];
	size_t ngroups;                 /* groups of the principal */
	int groups[POL_MAX_MATCH];
};

/*
 * Decides q against p. With all = 0 it stops at the first grant (the hot
 * path); with all = 1 it collects every matching grant and guardrail
 * (Explain). Never allocates; any thread; p must stay referenced.
 */
void pol_eval(const struct pol_policy *p, const struct pol_query *q, int all,
	      struct pol_result *r);

/* Writes the reasons of r, one per entry, into out[max][len]; returns the
 * number written. */
size_t pol_reasons(const struct pol_policy *p, const struct pol_query *q,
		   const struct pol_result *r, char (*out)[POL_REASON_LEN], size_t max);

/* Describes a grant or guardrail as one line ("bindings[3]: role deployer
 * to group sre at app web"). */
void pol_describe_grant(const struct pol_grant *g, char *out, size_t len);
void pol_describe_guard(const struct pol_guard *g, char *out, size_t len);

/* 1 when the decision on (kind, action), or a denial, must be recorded
 * and audited. */
int pol_must_audit(const char *kind, const char *action, int allowed);

/*
 * The escalation guard of ApplyPolicy in one call: pol_weaken(cur, next)
 * then pol_escalation_judge (weaken.h): each change from cur to next that
 * weakens the policy needs escalate where it applies (a grant may instead
 * be covered by what `actor` holds in cur there). Returns 0, SW_EPERM with
 * every refused change in err, or SW_ENOMEM. Any thread.
 */
int pol_escalation_check(const struct pol_policy *cur, const struct pol_policy *next,
			 const char *actor, int64_t now_ms, char *err, size_t errlen);

/* Resource as text for logs and audit: "deployment/web/prod". */
void pol_resource_text(const char *kind, const char *app, const char *env, const char *name,
		       char *out, size_t len);

/* ---- tz.c ---- */

/* Loads zone `name` ("UTC", "Europe/Berlin") from dir (NULL =
 * /usr/share/zoneinfo, or $TZDIR). Returns 0 and *out (free with
 * pol_tz_free) or SW_EINVAL/SW_ENOTFOUND with err. */
int pol_tz_load(const char *name, const char *dir, struct pol_tz **out, char *err,
		size_t errlen);
void pol_tz_free(struct pol_tz *tz);
/* UTC offset in seconds at instant t (seconds since the epoch). */
int32_t pol_tz_offset(const struct pol_tz *tz, int64_t t);
/* Parses a POSIX TZ rule string ("CET-1CEST,M3.5.0,M10.5.0/3") into a zone
 * (used for the TZif footer; exposed for tests). */
int pol_tz_posix(const char *s, struct pol_tz **out, char *err, size_t errlen);

/* ---- diff.c ---- */

/* Writes a structural diff of two documents (one change per line:
 * "+ path value", "- path value", "~ path: old -> new") into a new string
 * (free()), capped at max bytes. Returns 0, or SW_ELIMIT past the cap. */
int pol_diff(json_t *from, json_t *to, size_t max, char **out);

/* ---- limit.c: recorded denials per principal ---- */

#define POL_PRINCIPAL_MAX 255     /* SPIFFE_ID_MAX */

struct pol_limiter;

/* Denials of one principal that were answered but not recorded. */
struct pol_denial_summary {
	char principal[POL_PRINCIPAL_MAX + 1];
	uint64_t suppressed;            /* how many */
	int64_t from_ms, to_ms;         /* the first of them; when summarized */
	uint32_t per_minute;            /* the limit then */
};

/* A limiter of per_minute recorded denials per principal (0 = no limit)
 * over at most max principals. Returns 0 and *out (pol_limiter_free), or
 * SW_ENOMEM. */
int pol_limiter_new(uint32_t per_minute, size_t max, struct pol_limiter **out);
void pol_limiter_free(struct pol_limiter *l);

/*
 * Whether a denial about principal at now must be recorded (1) or only
 * counted (0). When it returns 1 and the window of denials of principal
 * that were counted has ended (a minute after the first of them), *sum
 * holds their summary and *has_sum is 1: record it with this denial.
 * l NULL: always 1. Any thread (O(1), never blocks on I/O).
 */
int pol_limiter_admit(struct pol_limiter *l, const char *principal, int64_t now,
		      struct pol_denial_summary *sum, int *has_sum);

/* Writes into out (at most max) the summaries that are due at now: a
 * minute after a principal's first counted denial (with all: every open
 * count, at shutdown), and those of evicted principals. Returns how many.
 * Any thread. */
size_t pol_limiter_due(struct pol_limiter *l, int64_t now, int all,
		       struct pol_denial_summary *out, size_t max);

/* ---- the running service (store.c, rpc.c, approval.c, main.c) ---- */

struct db;
struct db_conn;
struct outbox_relay;
struct pol_writer;

struct pol_service {
	struct pol_builtin_opts bopts;
	const char *pg_url;
	const char *pg_sslmode;
	struct db *db;
	struct outbox_relay *relay;      /* NULL without --audit-addr */
	int max_watchers;

	pthread_mutex_t mu;
	pthread_cond_t cv;               /* a new revision, or draining */
	struct pol_policy *cur;          /* current compiled policy (a reference) */
	int draining;
	int nwatchers;                   /* open WatchRevision streams */
	struct pol_rwatch *rwatchers;    /* their list (watch.c) */

	pthread_t watcher;               /* revision watcher (store.c) */
	int watcher_started;
	int wake[2];                     /* pipe: wakes the watcher to stop */
	atomic_int stop;

	struct pol_writer *writer;       /* decision writer (store.c) */
	struct pol_limiter *limiter;     /* recorded Authorize denials per principal; NULL: all */
};

/* A decision to record (strings borrowed for the call). */
struct pol_decision {
	char id[33];
	const char *principal, *action, *kind, *app, *env, *name;
	int allowed;
	size_t nreasons;
	const char *const *reasons;
	uint64_t revision;
	const char *caller;              /* who asked (the RPC peer) */
	const char *request_id;
	const char *note;                /* extra detail, e.g. "explain" (may be NULL) */
	const char *event_action;        /* audit action; NULL = "policy.decision" */
	size_t nextra;                   /* extra audit details */
	const char *ekeys[12];
	const char *evals[12];
	/* Denials of a principal that were counted, not recorded: audited
	 * (policy.denials_suppressed) with this decision. NULL: none. */
	const struct pol_denial_summary *summary;
};

/* ---- store.c ---- */

int pol_store_migrate(struct db *db, char *err, size_t errlen);

/* Loads revision rev (0 = latest; none stored = the empty document) and
 * compiles it. Returns 0 and *out, or an SW_E* code. Worker threads. */
int pol_store_load(struct pol_service *s, uint64_t rev, struct pol_policy **out, char *err,
		   size_t errlen);

/* The current policy, referenced (pol_unref when done). Any thread. */
struct pol_policy *pol_current(struct pol_service *s);

/* Installs p (takes the reference) if it is newer than the current one,
 * and wakes the revision streams. Any thread. */
void pol_install(struct pol_service *s, struct pol_policy *p);

/* ---- WatchRevision (watch.c): deferred streams, no thread while open ---- */
struct pol_rwatch;
struct rpc_ctx;

/* The WatchRevision handler: sends the revision in force and defers the
 * stream (returns RPC_DEFERRED; the call's status is then set here when it
 * ends), or refuses it with SW_EUNAVAIL (draining), SW_ELIMIT
 * (--max-watchers) or SW_ENOMEM and the reason in err for rpc.c to send.
 * Never blocks (takes s->mu): runs inline. */
int pol_watch_revision(struct rpc_ctx *ctx, struct pol_service *s, char *err, size_t errlen);

/* Sends the revision in force to every watcher; returns those whose client
 * is gone, unlinked, to end with pol_watch_finish once s->mu is released.
 * Under s->mu. */
struct pol_rwatch *pol_watch_notify_locked(struct pol_service *s);
void pol_watch_finish(struct pol_rwatch *list);

/* Ends every watch (shutdown: the clients reconnect elsewhere). Any
 * thread, not under s->mu. */
void pol_watch_end_all(struct pol_service *s);

/* Loads the latest revision now if it is newer (before decisions that must
 * not use a stale policy, such as the escalation guard). */
int pol_refresh(struct pol_service *s, char *err, size_t errlen);

/* Starts/stops the revision watcher (LISTEN/NOTIFY plus a poll). */
int pol_watcher_start(struct pol_service *s, char *err, size_t errlen);
void pol_watcher_stop(struct pol_service *s);

/* Records d (decisions table) and audits it (outbox) on c, inside the
 * caller's transaction; and d->summary, if any. */
int pol_record(struct db_conn *c, const struct pol_decision *d, char *err, size_t errlen);

/* Audits a summary of suppressed denials (policy.denials_suppressed: actor
 * the principal, details suppressed, window_start, window_end,
 * limit_per_minute) on c, inside the caller's transaction. */
int pol_record_summary(struct db_conn *c, const struct pol_denial_summary *s, char *err,
		       size_t errlen);

/* Records d in its own transaction and kicks the relay. */
int pol_record_now(struct pol_service *s, const struct pol_decision *d, char *err,
		   size_t errlen);

/*
 * Authorizes caller (the RPC peer) for one of this service's own RPCs
 * against the current policy, recording the check when it must be (every
 * policy action, and denials) with request_id. Returns 0, SW_EPERM
 * ("permission denied: ..."), or SW_EUNAVAIL when an allow could not be
 * recorded; the message goes into err. Strings are borrowed. Worker
 * threads (it writes to the database).
 */
int pol_check_caller(struct pol_service *s, const char *caller, const char *request_id,
		     const char *action, const char *kind, const char *app, const char *env,
		     const char *name, char *err, size_t errlen);

/* The decision writer: group-commits the decisions of deferred Authorize
 * calls and tells their owners when each is on record. */
int pol_writer_start(struct pol_service *s, char *err, size_t errlen);
void pol_writer_stop(struct pol_service *s);
/* Called on the writer thread once d is recorded (or could not be): with
 * the code given to pol_writer_submit and msg NULL, or, when an allow could
 * not be recorded, with SW_EUNAVAIL and a message (borrowed for the call).
 * rpc.c turns it into the deferred call's status. */
typedef void (*pol_writer_done_fn)(void *arg, int code, const char *msg);
/* Queues d (whose strings must live until done runs: the call's arena) to
 * be recorded; done(arg, ...) runs exactly once afterwards when this
 * returns 0. Returns 0, SW_ENOMEM, or SW_ELIMIT when the queue is full
 * (done is then never called). Any thread. */
int pol_writer_submit(struct pol_service *s, const struct pol_decision *d, int code,
		      pol_writer_done_fn done, void *arg);

/* Applies a compiled document as the next revision (see README). Sets
 * *rev and *changed. */
int pol_store_apply(struct pol_service *s, struct pol_policy *next, uint64_t base_rev,
		    uint64_t expected, const char *actor, uint64_t *rev, int *changed, char *err,
		    size_t errlen);

void pol_kick(struct pol_service *s);

/* ---- rpc.c ---- */

struct rpc_server;

/* Registers the slipway.v1.Policy handlers with s as their data. */
int pol_rpc_register(struct pol_service *s, struct rpc_server *srv, char *err, size_t errlen);
/* enroll.c: the Enrollments service (agent enrollments). */
int pol_enroll_register(struct pol_service *s, struct rpc_server *srv, char *err, size_t errlen);

#endif
