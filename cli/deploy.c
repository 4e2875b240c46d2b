/*
 * deploy.c - the orchestrator's commands:
 *
 *   slipway deploy APP ENV VERSION [--digest D] [--strategy rolling|canary] [--batch N | --batch-percent P]
 *                  [--max-unavailable N] [--pause DUR] [--on-failure rollback|pause|abort]
 *                  [--canary N | --canary-percent P] [--bake DUR] [--promote auto|manual]
 *                  [--max-failed N] [--retries N] [--progress-deadline DUR] [--hotfix]
 *                  [--break-glass REASON] [--idempotency-key K] [--wait]
 *   slipway status APP ENV
 *   slipway deployments ls [--app A] [--env E] [--state S] [--limit N] [--page-token T] [--all]
 *   slipway deployment show ID
 *   slipway cancel|pause|resume ID [--reason R]
 *   slipway rollback APP ENV [--to VERSION] [--reason R] [--idempotency-key K] [--wait]
 *
 * Both send an idempotency key (a random one unless given) and retry with
 * it while the orchestrator is unavailable.
 *
 * With --wait the command follows the deployment (WatchDeployment): a live
 * view of batches and targets when stderr is a terminal, one line per
 * timeline event otherwise. Exit status: 0 when it succeeded, 1 when it
 * failed, was rolled back or cancelled, 2 on usage errors.
 */
#include "cfg.h"
#include "cli.h"
#include "err.h"

#include "slipway/v1/orchestrator.pb-c.h"

#include <getopt.h>
#include <unistd.h>
#include <strings.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *cli_deployment_state(int s)
{
	switch (s) {
	case SLIPWAY__V1__DEPLOYMENT_STATE__PENDING_APPROVAL: return "PENDING_APPROVAL";
	case SLIPWAY__V1__DEPLOYMENT_STATE__QUEUED: return "QUEUED";
	case SLIPWAY__V1__DEPLOYMENT_STATE__RUNNING: return "RUNNING";
	case SLIPWAY__V1__DEPLOYMENT_STATE__PAUSED: return "PAUSED";
	case SLIPWAY__V1__DEPLOYMENT_STATE__SUCCEEDED: return "SUCCEEDED";
	case SLIPWAY__V1__DEPLOYMENT_STATE__FAILED: return "FAILED";
	case SLIPWAY__V1__DEPLOYMENT_STATE__CANCELLED: return "CANCELLED";
	case SLIPWAY__V1__DEPLOYMENT_STATE__ROLLING_BACK: return "ROLLING_BACK";
	case SLIPWAY__V1__DEPLOYMENT_STATE__ROLLED_BACK: return "ROLLED_BACK";
	default: return "?";
	}
}

static int parse_state(const char *s)
{
	for (int i = 1; i <= 9; i++)
		if (strcasecmp(s, cli_deployment_state(i)) == 0)
			return i;
	return -1;
}

static const char *target_name(int s)
{
	static const char *const n[] = { "?", "pending", "dispatched", "running", "succeeded",
					 "failed", "skipped", "rolled-back" };
	return s >= 0 && s <= 7 ? n[s] : "?";
}

static int terminal(int s)
{
	return s == SLIPWAY__V1__DEPLOYMENT_STATE__SUCCEEDED ||
	       s == SLIPWAY__V1__DEPLOYMENT_STATE__FAILED ||
	       s == SLIPWAY__V1__DEPLOYMENT_STATE__CANCELLED ||
	       s == SLIPWAY__V1__DEPLOYMENT_STATE__ROLLED_BACK;
}

static json_t *deployment_json(const Slipway__V1__Deployment *d)
{
	json_t *j = json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:I,s:I,s:I,s:s,s:b,s:i,s:i,s:i,s:i,s:i,s:I,s:b,s:i}",
			      "id", d->id, "app", d->app, "environment", d->environment, "version",
			      d->version, "digest", d->digest, "state", cli_deployment_state(d->state),
			      "requester", d->requester, "created_unix_ms", (json_int_t)d->created_unix_ms,
			      "started_unix_ms", (json_int_t)d->started_unix_ms, "finished_unix_ms",
			      (json_int_t)d->finished_unix_ms, "reason", d->reason, "is_rollback",
			      d->is_rollback, "total_batches", (int)d->total_batches, "current_batch",
			      (int)d->current_batch, "targets_total", (int)d->targets_total,
			      "targets_succeeded", (int)d->targets_succeeded, "targets_failed",
			      (int)d->targets_failed, "rollback_duration_ms",
			      (json_int_t)d->rollback_duration_ms, "break_glass", d->break_glass,
			      "queue_position", (int)d->queue_position);
	if (d->priority == SLIPWAY__V1__PRIORITY__PRIORITY_HOTFIX)
		json_object_set_new(j, "priority", json_string("hotfix"));
	const Slipway__V1__Strategy *st = d->strategy;
	const Slipway__V1__RollingStrategy *r = NULL;
	const Slipway__V1__CanaryStrategy *cs = NULL;
	if (st != NULL && st->kind_case == SLIPWAY__V1__STRATEGY__KIND_ROLLING)
		r = st->rolling;
	if (st != NULL && st->kind_case == SLIPWAY__V1__STRATEGY__KIND_CANARY)
		r = (cs = st->canary)->rollout;
	if (r != NULL) {
		json_t *sj = json_pack("{s:s,s:i,s:i,s:i,s:I}", "kind", cs ? "canary" : "rolling",
				       "batch_size", (int)r->batch_size, "batch_percent",
				       (int)r->batch_percent, "max_unavailable", (int)r->max_unavailable,
				       "pause_ms", (json_int_t)r->pause_ms);
		if (cs != NULL)
			json_object_set_new(sj, "canary",
					    json_pack("{s:i,s:i,s:I,s:b}", "canary_size",
						      (int)cs->canary_size, "canary_percent",
						      (int)cs->canary_percent, "bake_ms",
						      (json_int_t)cs->bake_ms, "manual_promotion",
						      cs->manual_promotion));
		json_object_set_new(j, "strategy", sj);
	}
	return j;
}

static json_t *detail_json(const Slipway__V1__DeploymentDetail *d)
{
	json_t *j = deployment_json(d->deployment);
	json_t *t = json_array(), *tl = json_array();
	for (size_t i = 0; i < d->n_targets; i++) {
		const Slipway__V1__TargetStatus *x = d->targets[i];
		json_array_append_new(t, json_pack("{s:s,s:i,s:s,s:i,s:s,s:I}", "agent", x->agent,
						   "batch", (int)x->batch, "state", target_name(x->state),
						   "attempts", (int)x->attempts, "message", x->message,
						   "updated_unix_ms", (json_int_t)x->updated_unix_ms));
	}
	for (size_t i = 0; i < d->n_timeline; i++)
		json_array_append_new(tl, json_pack("{s:I,s:s,s:s}", "time_unix_ms",
						    (json_int_t)d->timeline[i]->time_unix_ms, "event",
						    d->timeline[i]->event, "detail",
						    d->timeline[i]->detail));
	json_object_set_new(j, "targets", t);
	json_object_set_new(j, "timeline", tl);
	return j;
}

static void print_deployment(const Slipway__V1__Deployment *d)
{
	char t[32];
	printf("deployment %s: %s@%s to %s — %s\n", d->id, d->app, d->version, d->environment,
	       cli_deployment_state(d->state));
	printf("  digest     %s\n  requester  %s\n  created    %s\n", d->digest, d->requester,
	       cli_time(d->created_unix_ms, t));
	printf("  batches    %u of %u; targets %u ok, %u failed of %u\n", d->current_batch,
	       d->total_batches, d->targets_succeeded, d->targets_failed, d->targets_total);
	const Slipway__V1__Strategy *st = d->strategy;
	if (st != NULL && st->kind_case == SLIPWAY__V1__STRATEGY__KIND_CANARY && st->canary->rollout) {
		const Slipway__V1__CanaryStrategy *cs = st->canary;
		printf("  strategy   canary of ");
		if (cs->canary_size)
			printf("%u", cs->canary_size);
		else
			printf("%u%%", cs->canary_percent);
		printf(", baking %lld ms, %s promotion; then batches of ", (long long)cs->bake_ms,
		       cs->manual_promotion ? "manual" : "automatic");
		if (cs->rollout->batch_size)
			printf("%u\n", cs->rollout->batch_size);
		else
			printf("%u%%\n", cs->rollout->batch_percent);
	} else if (st != NULL && st->kind_case == SLIPWAY__V1__STRATEGY__KIND_ROLLING) {
		if (st->rolling->batch_size)
			printf("  strategy   rolling, batches of %u\n", st->rolling->batch_size);
		else
			printf("  strategy   rolling, batches of %u%%\n", st->rolling->batch_percent);
	}
	if (d->reason[0])
		printf("  reason     %s\n", d->reason);
	if (d->rollback_duration_ms > 0)
		printf("  rollback   took %lld ms\n", (long long)d->rollback_duration_ms);
	if (d->queue_position > 0)
		printf("  queue      position %u\n", d->queue_position);
}

static void print_detail(const Slipway__V1__DeploymentDetail *d)
{
	char t[32];
	print_deployment(d->deployment);
	printf("\n%-6s %-40s %-12s %-8s %s\n", "BATCH", "TARGET", "STATE", "ATTEMPTS", "MESSAGE");
	for (size_t i = 0; i < d->n_targets; i++) {
		const Slipway__V1__TargetStatus *x = d->targets[i];
		printf("%-6u %-40s %-12s %-8u %s\n", x->batch, x->agent, target_name(x->state),
		       x->attempts, x->message);
	}
	printf("\ntimeline:\n");
	for (size_t i = 0; i < d->n_timeline; i++)
		printf("  %s  %-22s %s\n", cli_time(d->timeline[i]->time_unix_ms, t),
		       d->timeline[i]->event, d->timeline[i]->detail);
}

/* One call to the orchestrator (at addr, or the configured one), tried up
 * to `attempts` times while it answers UNAVAILABLE or DEADLINE_EXCEEDED. */
static int call_n(struct cli *c, const char *method, const ProtobufCMessage *req,
		  ProtobufCMessage **resp, const char *addr, int attempts)
{
	struct rpc_client *cl = NULL;
	char err[1024];
	if (cli_connect(c, "orchestrator", addr, &cl) != 0)
		return CLI_FAIL;
	struct rpc_call_opts o = cli_call_opts(c);
	int rc = 0;
	for (int attempt = 0; attempt < attempts; attempt++) {
		if (attempt > 0)
			usleep((useconds_t)(250000 << attempt));
		rc = rpc_call(cl, &slipway__v1__orchestrator__descriptor, method, req, resp, &o, err,
			      sizeof err);
		if (rc != SW_EUNAVAIL && rc != SW_ETIMEDOUT)
			break;
	}
	rpc_client_free(cl);
	if (rc != 0)
		return cli_fail_rc(rc, "%s", err);
	return CLI_OK;
}

static int call(struct cli *c, const char *method, const ProtobufCMessage *req, ProtobufCMessage **resp,
		const char *addr)
{
	return call_n(c, method, req, resp, addr, 1);
}

/* A request that creates something is sent with an idempotency key (the
 * caller's, or a fresh random one: "cli-" and 32 hex digits) and retried
 * with the same key while the orchestrator is unavailable, so a lost answer
 * never creates it twice. */
static int create_call(struct cli *c, const char *method, const ProtobufCMessage *req,
		       ProtobufCMessage **resp)
{
	return call_n(c, method, req, resp, NULL, 4);
}

static void new_key(char out[40])
{
	char rid[33];
	rpc_new_request_id(rid);
	snprintf(out, 40, "cli-%s", rid);
}

/* Follows a deployment until it ends; returns the exit status. */
static int watch(struct cli *c, const char *id)
{
	struct rpc_client *cl = NULL;
	struct rpc_stream *s = NULL;
	char err[1024];
	if (cli_connect(c, "orchestrator", NULL, &cl) != 0)
		return CLI_FAIL;
	Slipway__V1__WatchDeploymentRequest req = SLIPWAY__V1__WATCH_DEPLOYMENT_REQUEST__INIT;
	req.id = (char *)id;
	struct rpc_call_opts o = cli_call_opts(c);
	if (o.timeout_ms < 3600000)
		o.timeout_ms = 3600000;
	if (rpc_stream_open(cl, &slipway__v1__orchestrator__descriptor, "WatchDeployment", &o, &s, err,
			    sizeof err) != 0 ||
	    rpc_stream_send(s, &req.base) != 0 || rpc_stream_close_send(s) != 0) {
		if (s)
			rpc_stream_finish(s, err, sizeof err);
		rpc_client_free(cl);
		return cli_fail("watch: %s", err);
	}
	int tty = cli_tty() && c->output == CLI_TABLE;
	size_t seen = 0;
	int last_state = 0, lines = 0;
	ProtobufCMessage *m = NULL, *last = NULL;
	while (rpc_stream_recv(s, &m) == 1) {
		Slipway__V1__DeploymentDetail *d = (void *)m;
		char t[32];
		if (c->output == CLI_TABLE) {
			if (tty) {
				/* Redraw: the deployment, one line per batch, new events. */
				for (int i = 0; i < lines; i++)
					fprintf(stderr, "\033[1A\033[2K");
				lines = 0;
			}
			for (; seen < d->n_timeline; seen++)
				fprintf(tty ? stderr : stdout, "%s  %-22s %s\n",
					cli_time(d->timeline[seen]->time_unix_ms, t), d->timeline[seen]->event,
					d->timeline[seen]->detail);
			if (tty) {
				const Slipway__V1__Deployment *dep = d->deployment;
				fprintf(stderr, "== %s %s@%s -> %s: %s (batch %u/%u)\n", dep->id, dep->app,
					dep->version, dep->environment, cli_deployment_state(dep->state),
					dep->current_batch, dep->total_batches);
				lines++;
				for (uint32_t b = 1; b <= dep->total_batches && lines < 40; b++) {
					char row[512];
					size_t off = (size_t)snprintf(row, sizeof row, "   batch %-3u", b);
					for (size_t i = 0; i < d->n_targets && off < sizeof row - 40; i++) {
						if (d->targets[i]->batch != b)
							continue;
						const char *agent = strrchr(d->targets[i]->agent, '/');
						off += (size_t)snprintf(row + off, sizeof row - off, " %s:%s",
									agent ? agent + 1 : d->targets[i]->agent,
									target_name(d->targets[i]->state));
					}
					fprintf(stderr, "%s\n", row);
					lines++;
				}
			}
			fflush(stdout);
		}
		last_state = (int)d->deployment->state;
		if (last)
			protobuf_c_message_free_unpacked(last, NULL);
		last = m;
	}
	int rc = rpc_stream_finish(s, err, sizeof err);
	rpc_client_free(cl);
	if (last != NULL && c->output == CLI_JSON)
		cli_print_json(detail_json((void *)last));
	if (last)
		protobuf_c_message_free_unpacked(last, NULL);
	if (rc != 0 && !terminal(last_state))
		return cli_fail_rc(rc, "watch: %s", err);
	if (c->output == CLI_TABLE)
		printf("deployment %s %s\n", id, cli_deployment_state(last_state));
	return last_state == SLIPWAY__V1__DEPLOYMENT_STATE__SUCCEEDED ? CLI_OK : CLI_FAIL;
}

static int parse_ms(const char *s, int64_t *out)
{
	long long v;
	if (cfg_parse_ms(s, &v) != 0)
		return -1;
	*out = v;
	return 0;
}

static int parse_u32(const char *s, uint32_t *out, long long max)
{
	long long v;
	if (cfg_parse_ll(s, &v) != 0 || v < 0 || v > max)
		return -1;
	*out = (uint32_t)v;
	return 0;
}

int cli_cmd_deploy(struct cli *c, int argc, char **argv);
const struct cli_opt cli_deploy_opts[] = {
	{ "digest", required_argument, 'd', "sha256:HEX", "the artifact's digest" },
	{ "strategy", required_argument, 's', "rolling|canary", "how to roll out (default rolling)" },
	{ "batch", required_argument, 'b', "N", "targets per batch" },
	{ "batch-percent", required_argument, 'P', "P", "targets per batch, as a percentage" },
	{ "max-unavailable", required_argument, 'u', "N", "at most N targets down at once" },
	{ "pause", required_argument, 'p', "DUR", "wait between batches" },
	{ "on-failure", required_argument, 'f', "rollback|pause|abort", "what a failed batch does" },
	{ "max-failed", required_argument, 'm', "N", "failed targets tolerated" },
	{ "max-failed-percent", required_argument, 'M', "P", "failed targets tolerated, as a percentage" },
	{ "retries", required_argument, 'r', "N", "retries per target" },
	{ "retry-backoff", required_argument, 'B', "DUR", "wait between retries" },
	{ "progress-deadline", required_argument, 'D', "DUR", "fail a batch that makes no progress for this long" },
	{ "hotfix", no_argument, 'h', NULL, "a hotfix (the policy may allow it in a freeze)" },
	{ "break-glass", required_argument, 'g', "REASON", "deploy through a freeze, with a reason (audited)" },
	{ "idempotency-key", required_argument, 'k', "K", "a key that makes a retried request safe (default: random)" },
	{ "wait", no_argument, 'w', NULL, "follow it until it ends; exit 1 when it failed or rolled back" },
	{ "canary", required_argument, 'c', "N", "canary targets" },
	{ "canary-percent", required_argument, 'C', "P", "canary targets, as a percentage" },
	{ "bake", required_argument, 'K', "DUR", "how long the canary must stay healthy" },
	{ "promote", required_argument, 'R', "auto|manual", "promote the canary by itself, or on resume" },
	{ NULL, 0, 0, NULL, NULL },
};

int cli_cmd_deploy(struct cli *c, int argc, char **argv)
{
	Slipway__V1__CreateDeploymentRequest req = SLIPWAY__V1__CREATE_DEPLOYMENT_REQUEST__INIT;
	Slipway__V1__Strategy strategy = SLIPWAY__V1__STRATEGY__INIT;
	Slipway__V1__RollingStrategy rolling = SLIPWAY__V1__ROLLING_STRATEGY__INIT;
	Slipway__V1__CanaryStrategy canary = SLIPWAY__V1__CANARY_STRATEGY__INIT;
	int is_canary = 0, canary_opts = 0, have_bake = 0;
	Slipway__V1__FailurePolicy fp = SLIPWAY__V1__FAILURE_POLICY__INIT;
	int wait = 0, o, have_fp = 0;
	const char *digest = NULL;
	optind = 0;
	while ((o = cli_getopt(c, argc, argv)) != -1) {
		switch (o) {
		case 'd': digest = optarg; break;
		case 's':
			if (strcmp(optarg, "canary") == 0)
				is_canary = 1;
			else if (strcmp(optarg, "rolling") != 0)
				return cli_usage("--strategy wants rolling or canary");
			break;
		case 'c': canary_opts = 1; if (parse_u32(optarg, &canary.canary_size, 10000) || !canary.canary_size) return cli_usage("--canary wants 1..10000 targets"); break;
		case 'C': canary_opts = 1; if (parse_u32(optarg, &canary.canary_percent, 100) || !canary.canary_percent) return cli_usage("--canary-percent wants 1..100"); break;
		case 'K': canary_opts = have_bake = 1; if (parse_ms(optarg, &canary.bake_ms)) return cli_usage("--bake wants a duration"); break;
		case 'R':
			canary_opts = 1;
			if (!strcmp(optarg, "manual")) canary.manual_promotion = 1;
			else if (strcmp(optarg, "auto") != 0) return cli_usage("--promote wants auto or manual");
			break;
		case 'b': if (parse_u32(optarg, &rolling.batch_size, 10000)) return cli_usage("--batch wants 1..10000"); break;
		case 'P': if (parse_u32(optarg, &rolling.batch_percent, 100)) return cli_usage("--batch-percent wants 1..100"); break;
		case 'u': if (parse_u32(optarg, &rolling.max_unavailable, 10000)) return cli_usage("--max-unavailable wants a count"); break;
		case 'p': if (parse_ms(optarg, &rolling.pause_ms)) return cli_usage("--pause wants a duration"); break;
		case 'f':
			have_fp = 1;
			if (!strcmp(optarg, "rollback")) fp.action = SLIPWAY__V1__FAILURE_ACTION__FAILURE_ACTION_ROLLBACK;
			else if (!strcmp(optarg, "pause")) fp.action = SLIPWAY__V1__FAILURE_ACTION__FAILURE_ACTION_PAUSE;
			else if (!strcmp(optarg, "abort")) fp.action = SLIPWAY__V1__FAILURE_ACTION__FAILURE_ACTION_ABORT;
			else return cli_usage("--on-failure wants rollback, pause or abort");
			break;
		case 'm': have_fp = 1; if (parse_u32(optarg, &fp.max_failed, 100000)) return cli_usage("--max-failed wants a count"); break;
		case 'M': have_fp = 1; if (parse_u32(optarg, &fp.max_failed_percent, 100)) return cli_usage("--max-failed-percent wants 0..100"); break;
		case 'r': have_fp = 1; if (parse_u32(optarg, &fp.retries, 10)) return cli_usage("--retries wants 0..10"); break;
		case 'B': have_fp = 1; if (parse_ms(optarg, &fp.retry_backoff_ms)) return cli_usage("--retry-backoff wants a duration"); break;
		case 'D': have_fp = 1; if (parse_ms(optarg, &fp.progress_deadline_ms)) return cli_usage("--progress-deadline wants a duration"); break;
		case 'h': req.priority = SLIPWAY__V1__PRIORITY__PRIORITY_HOTFIX; break;
		case 'g': req.break_glass = 1; req.break_glass_reason = optarg; break;
		case 'k': req.idempotency_key = optarg; break;
		case 'w': wait = 1; break;
		default: return CLI_USAGE;
		}
	}
	int npos = argc - optind;
	if (npos != 3 && !(npos == 2 && digest))
		return cli_usage_cmd(c);
	req.app = argv[optind];
	req.environment = argv[optind + 1];
	if (npos == 3) {
		req.release_case = SLIPWAY__V1__CREATE_DEPLOYMENT_REQUEST__RELEASE_VERSION;
		req.version = argv[optind + 2];
	} else {
		req.release_case = SLIPWAY__V1__CREATE_DEPLOYMENT_REQUEST__RELEASE_DIGEST;
		req.digest = (char *)digest;
	}
	if (canary_opts && !is_canary)
		return cli_usage("--canary, --canary-percent, --bake and --promote need --strategy canary");
	if (is_canary) {
		if (!have_bake)
			canary.bake_ms = 60000;
		canary.rollout = &rolling;
		strategy.kind_case = SLIPWAY__V1__STRATEGY__KIND_CANARY;
		strategy.canary = &canary;
	} else {
		strategy.kind_case = SLIPWAY__V1__STRATEGY__KIND_ROLLING;
		strategy.rolling = &rolling;
	}
	req.strategy = &strategy;
	if (have_fp)
		req.failure_policy = &fp;
	char key[40];
	if (req.idempotency_key[0] == '\0') {
		new_key(key);
		req.idempotency_key = key;
	}
	ProtobufCMessage *m = NULL;
	int rc = create_call(c, "CreateDeployment", &req.base, &m);
	if (rc != 0)
		return rc;
	Slipway__V1__Deployment *d = (void *)m;
	char id[64];
	snprintf(id, sizeof id, "%s", d->id);
	int state = (int)d->state;
	if (c->output == CLI_JSON && !wait)
		cli_print_json(deployment_json(d));
	else if (c->output == CLI_TABLE) {
		printf("deployment %s created: %s", d->id, cli_deployment_state(d->state));
		if (d->reason[0])
			printf(" (%s)", d->reason);
		printf("\n");
	}
	protobuf_c_message_free_unpacked(m, NULL);
	if (!wait)
		return state == SLIPWAY__V1__DEPLOYMENT_STATE__FAILED ? CLI_FAIL : CLI_OK;
	return watch(c, id);
}

int cli_cmd_status(struct cli *c, int argc, char **argv);
int cli_cmd_status(struct cli *c, int argc, char **argv)
{
	if (argc != 3)
		return cli_usage_cmd(c);
	Slipway__V1__GetStatusRequest req = SLIPWAY__V1__GET_STATUS_REQUEST__INIT;
	req.app = argv[1];
	req.environment = argv[2];
	ProtobufCMessage *m = NULL;
	int rc = call(c, "GetStatus", &req.base, &m, NULL);
	if (rc != 0)
		return rc;
	Slipway__V1__EnvironmentStatus *s = (void *)m;
	if (c->output == CLI_JSON) {
		json_t *j = json_pack("{s:s,s:s,s:s,s:s,s:s,s:i,s:i}", "app", s->app, "environment",
				      s->environment, "current_version", s->current ? s->current->version : "",
				      "current_digest", s->current ? s->current->digest : "",
				      "last_good_version", s->last_good ? s->last_good->version : "",
				      "targets", (int)s->targets, "targets_healthy", (int)s->targets_healthy);
		if (s->active)
			json_object_set_new(j, "active", deployment_json(s->active));
		json_t *w = json_array(), *dr = json_array();
		for (size_t i = 0; i < s->n_waiting; i++)
			json_array_append_new(w, deployment_json(s->waiting[i]));
		for (size_t i = 0; i < s->n_drifted; i++)
			json_array_append_new(dr, json_string(s->drifted[i]));
		json_object_set_new(j, "waiting", w);
		json_object_set_new(j, "drifted", dr);
		cli_print_json(j);
	} else {
		printf("%s/%s\n", s->app, s->environment);
		printf("  current     %s\n", s->current ? s->current->version : "(none)");
		printf("  last good   %s\n", s->last_good ? s->last_good->version : "(none)");
		printf("  targets     %u, %u on the current release\n", s->targets, s->targets_healthy);
		if (s->active)
			printf("  active      %s %s@%s %s (batch %u/%u)\n", s->active->id, s->active->app,
			       s->active->version, cli_deployment_state(s->active->state), s->active->current_batch,
			       s->active->total_batches);
		for (size_t i = 0; i < s->n_waiting; i++)
			printf("  waiting     %s %s@%s %s: %s\n", s->waiting[i]->id, s->waiting[i]->app,
			       s->waiting[i]->version, cli_deployment_state(s->waiting[i]->state),
			       s->waiting[i]->reason);
		for (size_t i = 0; i < s->n_drifted; i++)
			printf("  drifted     %s\n", s->drifted[i]);
	}
	protobuf_c_message_free_unpacked(m, NULL);
	return CLI_OK;
}

static const struct cli_opt ls_opts[] = {
	{ "app", required_argument, 'a', "APP", "only this app" },
	{ "env", required_argument, 'e', "ENV", "only this environment" },
	{ "state", required_argument, 's', "STATE", "only deployments in this state" },
	{ "limit", required_argument, 'n', "N", "page size (1..500)" },
	{ "page-token", required_argument, 'T', "TOKEN", "continue from the token a previous page printed" },
	{ "all", no_argument, 'A', NULL, "every page, not just the first" },
	{ NULL, 0, 0, NULL, NULL },
};

static int cmd_ls(struct cli *c, int argc, char **argv)
{
	Slipway__V1__ListDeploymentsRequest req = SLIPWAY__V1__LIST_DEPLOYMENTS_REQUEST__INIT;
	char token[256] = "", t[32];
	int o, all = 0, rc;
	optind = 0;
	while ((o = cli_getopt(c, argc, argv)) != -1) {
		switch (o) {
		case 'a': req.app = optarg; break;
		case 'e': req.environment = optarg; break;
		case 's': {
			int st = parse_state(optarg);
			if (st < 0)
				return cli_usage("--state wants a deployment state (e.g. RUNNING)");
			req.state = st;
			break;
		}
		case 'n': if (parse_u32(optarg, &req.page_size, 500)) return cli_usage("--limit wants 1..500"); break;
		case 'T':
			if (strlen(optarg) >= sizeof token)
				return cli_usage("--page-token is too long");
			snprintf(token, sizeof token, "%s", optarg);
			break;
		case 'A': all = 1; break;
		default: return CLI_USAGE;
		}
	}
	if (optind != argc)
		return cli_usage_cmd(c);
	json_t *arr = json_array();
	struct cli_table tab;
	cli_table_init(&tab, "llllll", "ID", "APP", "ENV", "VERSION", "STATE", "CREATED");
	do {
		ProtobufCMessage *m = NULL;
		req.page_token = token;
		if ((rc = call(c, "ListDeployments", &req.base, &m, NULL)) != 0)
			goto out;
		Slipway__V1__ListDeploymentsResponse *r = (void *)m;
		for (size_t i = 0; i < r->n_deployments; i++) {
			const Slipway__V1__Deployment *d = r->deployments[i];
			if (c->output == CLI_JSON)
				json_array_append_new(arr, deployment_json(d));
			else
				cli_table_row(&tab, d->id, d->app, d->environment, d->version,
					      cli_deployment_state(d->state), cli_time(d->created_unix_ms, t));
		}
		if (strlen(r->next_page_token) >= sizeof token) {
			protobuf_c_message_free_unpacked(m, NULL);
			rc = cli_fail("the orchestrator's page token is too long");
			goto out;
		}
		snprintf(token, sizeof token, "%s", r->next_page_token);
		protobuf_c_message_free_unpacked(m, NULL);
	} while (all && token[0] != '\0');
	if (c->output == CLI_JSON) {
		cli_print_json(arr); /* the same array as before; the note goes to stderr */
		arr = NULL;
		if (token[0] != '\0')
			fprintf(stderr, "slipway: more deployments: --page-token %s, or --all\n", token);
	} else {
		cli_table_print(&tab, stdout);
		if (token[0] != '\0')
			printf("(more: --page-token %s, or --all)\n", token);
	}
	rc = CLI_OK;
out:
	json_decref(arr);
	cli_table_free(&tab);
	return rc;
}

extern const struct cli_cmd cli_deployments_cmds[], cli_deployment_cmds[];
const struct cli_cmd cli_deployments_cmds[] = {
	{ "ls", cmd_ls, "list deployments, newest first",
	  "[--app APP] [--env ENV] [--state STATE] [--limit N] [--page-token T] [--all]", ls_opts,
	  "slipway deployments ls --app web\nslipway deployments ls --state running", NULL, NULL },
	{ NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL },
};

int cli_cmd_deployments(struct cli *c, int argc, char **argv);
int cli_cmd_deployments(struct cli *c, int argc, char **argv)
{
	return cli_dispatch(c, "deployments", cli_deployments_cmds, argc, argv);
}

static int cmd_show(struct cli *c, int argc, char **argv)
{
	if (argc != 2)
		return cli_usage_cmd(c);
	Slipway__V1__GetDeploymentRequest req = SLIPWAY__V1__GET_DEPLOYMENT_REQUEST__INIT;
	req.id = argv[1];
	ProtobufCMessage *m = NULL;
	int rc = call(c, "GetDeployment", &req.base, &m, NULL);
	if (rc != 0)
		return rc;
	if (c->output == CLI_JSON)
		cli_print_json(detail_json((void *)m));
	else
		print_detail((void *)m);
	protobuf_c_message_free_unpacked(m, NULL);
	return CLI_OK;
}

static int cmd_watch(struct cli *c, int argc, char **argv)
{
	if (argc != 2)
		return cli_usage_cmd(c);
	return watch(c, argv[1]);
}

const struct cli_cmd cli_deployment_cmds[] = {
	{ "show", cmd_show, "a deployment with its targets and timeline", "ID", NULL,
	  "slipway deployment show d-0123\nslipway -o json deployment show d-0123", NULL, NULL },
	{ "watch", cmd_watch, "follow a deployment until it ends (exit 1 when it failed)", "ID",
	  NULL, "slipway deployment watch d-0123", NULL, NULL },
	{ NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL },
};

int cli_cmd_deployment(struct cli *c, int argc, char **argv);
int cli_cmd_deployment(struct cli *c, int argc, char **argv)
{
	return cli_dispatch(c, "deployment", cli_deployment_cmds, argc, argv);
}

const struct cli_opt cli_action_opts[] = {
	{ "reason", required_argument, 'r', "TEXT", "why (recorded in the audit log)" },
	{ NULL, 0, 0, NULL, NULL },
};

static int action(struct cli *c, int argc, char **argv, const char *method)
{
	Slipway__V1__DeploymentActionRequest req = SLIPWAY__V1__DEPLOYMENT_ACTION_REQUEST__INIT;
	int o;
	optind = 0;
	while ((o = cli_getopt(c, argc, argv)) != -1) {
		if (o == 'r')
			req.reason = optarg;
		else
			return CLI_USAGE;
	}
	if (optind != argc - 1)
		return cli_usage_cmd(c);
	req.id = argv[optind];
	ProtobufCMessage *m = NULL;
	int rc = call(c, method, &req.base, &m, NULL);
	if (rc != 0)
		return rc;
	Slipway__V1__Deployment *d = (void *)m;
	if (c->output == CLI_JSON)
		cli_print_json(deployment_json(d));
	else
		printf("deployment %s: %s\n", d->id, cli_deployment_state(d->state));
	protobuf_c_message_free_unpacked(m, NULL);
	return CLI_OK;
}

int cli_cmd_cancel(struct cli *c, int argc, char **argv);
int cli_cmd_cancel(struct cli *c, int argc, char **argv)
{
	return action(c, argc, argv, "CancelDeployment");
}

int cli_cmd_pause(struct cli *c, int argc, char **argv);
int cli_cmd_pause(struct cli *c, int argc, char **argv)
{
	return action(c, argc, argv, "PauseDeployment");
}

int cli_cmd_resume(struct cli *c, int argc, char **argv);
int cli_cmd_resume(struct cli *c, int argc, char **argv)
{
	return action(c, argc, argv, "ResumeDeployment");
}

int cli_cmd_rollback(struct cli *c, int argc, char **argv);
const struct cli_opt cli_rollback_opts[] = {
	{ "to", required_argument, 't', "VERSION", "roll back to this version (one that succeeded here before)" },
	{ "reason", required_argument, 'r', "TEXT", "why (recorded in the audit log)" },
	{ "wait", no_argument, 'w', NULL, "follow it until it ends; exit 1 when it failed or rolled back" },
	{ "idempotency-key", required_argument, 'k', "K", "a key that makes a retried request safe (default: random)" },
	{ NULL, 0, 0, NULL, NULL },
};

int cli_cmd_rollback(struct cli *c, int argc, char **argv)
{
	Slipway__V1__RollbackRequest req = SLIPWAY__V1__ROLLBACK_REQUEST__INIT;
	int o, wait = 0;
	optind = 0;
	while ((o = cli_getopt(c, argc, argv)) != -1) {
		switch (o) {
		case 't': req.to_version = optarg; break;
		case 'r': req.reason = optarg; break;
		case 'w': wait = 1; break;
		case 'k': req.idempotency_key = optarg; break;
		default: return CLI_USAGE;
		}
	}
	if (argc - optind != 2)
		return cli_usage_cmd(c);
	req.app = argv[optind];
	req.environment = argv[optind + 1];
	char key[40];
	if (req.idempotency_key[0] == '\0') {
		new_key(key);
		req.idempotency_key = key;
	}
	ProtobufCMessage *m = NULL;
	int rc = create_call(c, "Rollback", &req.base, &m);
	if (rc != 0)
		return rc;
	Slipway__V1__Deployment *d = (void *)m;
	char id[64];
	snprintf(id, sizeof id, "%s", d->id);
	if (c->output == CLI_JSON && !wait)
		cli_print_json(deployment_json(d));
	else if (c->output == CLI_TABLE)
		printf("rollback %s to %s@%s: %s\n", d->id, d->app, d->version, cli_deployment_state(d->state));
	protobuf_c_message_free_unpacked(m, NULL);
	return wait ? watch(c, id) : CLI_OK;
}
