#!/usr/bin/env bash
# tests/integration/orchestrator.sh - the orchestrator and real agents over
# the real stack (run by tests/run, which exports the stack's environment):
# rolling success, health failure and automatic rollback, manual rollback,
# every failure policy, retries, approvals gating, the per-environment lock
# and the queue (FIFO, hotfix first), backpressure, two replicas with the
# lease owner killed -9 mid-rollout, a single replica restarted mid-rollout,
# an agent killed mid-task, sealed secrets delivered to the agents, canary
# deployments (manual promotion; a canary that degrades while baking rolls
# back), idempotency keys bound to their request, and bad input.
set -uo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
S=$SLIPWAY_STACK_DIR
T=$(mktemp -d "${SLIPWAY_TEST_TMP:-/tmp}/orchestrator.XXXXXX")
export PATH="$top/build/bin:$PATH"
checks=0
replica2=""

fail() { echo "FAIL: $*" >&2; [ -n "$replica2" ] && kill "$replica2" 2>/dev/null; exit 1; }
ok() { checks=$((checks + 1)); echo "ok $checks - $*"; }
js() { node -e "const j=JSON.parse(require('fs').readFileSync(0,'utf8')); const r=($1); console.log(typeof r==='object'?JSON.stringify(r):r)"; }
sql() { psql -X -At "$SLIPWAY_PGURL" -c "$1"; }

push() { # APP VERSION BUNDLE
  slipway artifact push "$3" --app "$1" --version "$2" >/dev/null 2>"$T/push.err" || fail "push $1@$2: $(cat "$T/push.err")"
}
agents() { # APP REGION/HOST... (environment prod); waits until all registered
  local app=$1 n=0 i; shift
  for rh in "$@"; do
    scripts/stack agent "$S" "$rh" --label app="$app" --label environment=prod ${AGENT_FLAGS:-} >/dev/null \
      || fail "cannot start agent $rh"
    n=$((n + 1))
  done
  for i in $(seq 1 100); do
    [ "$(slipway -o json agents ls --app "$app" | js 'j.filter(a=>a.health==="online").length')" = "$n" ] && return 0
    sleep 0.1
  done
  fail "the $app agents did not register"
}
state() { slipway -o json deployment show "$1" | js 'j.state'; }
wait_state() { # ID STATE SECONDS
  local i s=""
  for i in $(seq 1 $(($3 * 10))); do
    s=$(state "$1")
    [ "$s" = "$2" ] && return 0
    case "$s" in SUCCEEDED|FAILED|CANCELLED|ROLLED_BACK) [ "$s" != "$2" ] && break ;; esac
    sleep 0.1
  done
  slipway deployment show "$1" >&2
  fail "deployment $1 is $s, wanted $2"
}
deploy() { # ARGS... ; prints the id
  local out
  out=$(slipway -o json deploy "$@" 2>"$T/deploy.err") || fail "deploy $*: $(cat "$T/deploy.err")"
  js 'j.id' <<<"$out"
}
running_version() { # APP -> the versions its agents run, sorted, unique
  slipway -o json agents ls --app "$1" | js 'j.map(a=>a.version).sort().filter((v,i,a)=>a.indexOf(v)===i).join(",")'
}
wait_versions() { # APP VERSIONS SECONDS
  local i v=""
  for i in $(seq 1 $(($3 * 10))); do
    v=$(running_version "$1")
    [ "$v" = "$2" ] && return 0
    sleep 0.1
  done
  fail "$1 agents run '$v', wanted '$2'"
}

# Bundles of the demo app for each app used here (the manifest names the
# app: an agent refuses a bundle made for another one).
for a in roll gate lock crash solo; do
  scripts/make-bundles --app "$a" --out "$T/bundles" >/dev/null || fail "make-bundles $a"
  for v in 1.0.0 2.0.0 3.0.0 4.0.0; do push "$a" "$v" "$T/bundles/$a-$v.tar.gz"; done
done
scripts/make-bundles --app can --out "$T/bundles" --versions "1.0.0 2.0.0 3.0.0 5.0.0" >/dev/null || fail "make-bundles can"
for v in 1.0.0 2.0.0 3.0.0 5.0.0; do push can "$v" "$T/bundles/can-$v.tar.gz"; done

# ---- rolling, health failure, rollback ----
agents roll eu/r1 eu/r2 us/r3 us/r4
id=$(deploy roll prod 1.0.0 --batch 2 --wait)
[ "$(state "$id")" = SUCCEEDED ] || fail "roll 1.0.0 did not succeed"
d=$(slipway -o json deployment show "$id")
[ "$(js 'j.total_batches' <<<"$d")" = 2 ] || fail "4 targets in 2 regions in batches of 2 should be 2 batches"
[ "$(js 'j.targets.filter(t=>t.state==="succeeded").length' <<<"$d")" = 4 ] || fail "not every target succeeded"
[ "$(js 'new Set(j.targets.filter(t=>t.agent.includes("/eu/")).map(t=>t.batch)).size' <<<"$d")" = 1 ] || fail "a batch spans regions"
wait_versions roll 1.0.0 10
ok "rolling deployment over 4 targets in 2 region batches"

id=$(deploy roll prod 2.0.0 --batch 1 --wait)
wait_versions roll 2.0.0 10
ok "second release rolled out"

id=$(deploy roll prod 3.0.0 --batch 1)
wait_state "$id" ROLLED_BACK 60
d=$(slipway -o json deployment show "$id")
[ "$(js 'j.rollback_duration_ms > 0' <<<"$d")" = true ] || fail "rollback duration not recorded"
js 'j.timeline.map(e=>e.event).join("|")' <<<"$d" | grep -q "rolling back" || fail "no rollback in the timeline"
[ "$(js 'j.targets.filter(t=>t.state==="skipped").length' <<<"$d")" = 3 ] || fail "untouched targets should be skipped"
wait_versions roll 2.0.0 10
st=$(slipway -o json status roll prod)
[ "$(js 'j.current_version' <<<"$st")" = 2.0.0 ] || fail "status should say 2.0.0 after the rollback"
ok "health failure rolled back automatically to the last known-good release"

id=$(slipway -o json rollback roll prod --to 1.0.0 --reason "test" | js 'j.id')
wait_state "$id" SUCCEEDED 60
wait_versions roll 1.0.0 10
[ "$(slipway -o json status roll prod | js 'j.last_good_version')" = 1.0.0 ] || fail "manual rollback did not become the known-good release"
ok "manual rollback to a chosen version"

id=$(deploy roll prod 3.0.0 --batch 1 --on-failure pause)
wait_state "$id" PAUSED 60
slipway cancel "$id" --reason "seen enough" >/dev/null || fail "cancel a paused deployment"
wait_state "$id" CANCELLED 5
ok "failure policy pause stops, then cancel"

id=$(deploy roll prod 3.0.0 --batch 2 --on-failure abort --retries 1 --retry-backoff 100ms)
wait_state "$id" FAILED 90
d=$(slipway -o json deployment show "$id")
[ "$(js 'j.targets.filter(t=>t.state==="failed").every(t=>t.attempts===2)' <<<"$d")" = true ] || fail "retries: each failed target should have 2 attempts"
[ "$(js 'j.targets.filter(t=>t.batch===2).every(t=>t.state==="skipped")' <<<"$d")" = true ] || fail "abort should not start batch 2"
ok "failure policy abort with per-target retries"

id=$(deploy roll prod 2.0.0 --batch 4 --wait)
wait_versions roll 2.0.0 10
ok "a healthy release after a failed one"

# ---- canary: bake, manual promotion; a canary that degrades rolls back ----
agents can eu/k1 eu/k2 us/k3 us/k4
id=$(deploy can prod 1.0.0 --batch 4 --wait)
wait_versions can 1.0.0 10
id=$(deploy can prod 2.0.0 --strategy canary --canary 1 --bake 1s --promote manual --batch 2)
wait_state "$id" PAUSED 60
d=$(slipway -o json deployment show "$id")
[ "$(js 'j.total_batches' <<<"$d")" = 3 ] || fail "canary of 1, then the rest in batches of 2 per region: 3 batches"
[ "$(js 'j.targets.filter(t=>t.state==="succeeded").length' <<<"$d")" = 1 ] || fail "only the canary should be deployed before promotion"
[ "$(js 'j.strategy.canary.manual_promotion' <<<"$d")" = true ] || fail "the strategy should read back as a canary"
js 'j.reason' <<<"$d" | grep -q "waiting for promotion" || fail "a paused canary should say it waits for promotion: $(js 'j.reason' <<<"$d")"
wait_versions can "1.0.0,2.0.0" 10
slipway resume "$id" --reason "canary looks good" >/dev/null || fail "resume (promote) the canary"
wait_state "$id" SUCCEEDED 60
wait_versions can 2.0.0 10
d=$(slipway -o json deployment show "$id")
js 'j.timeline.map(e=>e.event).join("|")' <<<"$d" | grep -q "canary baking|.*canary waiting for promotion|.*canary promoted" \
  || fail "the timeline should show bake, wait and promotion: $(js 'j.timeline.map(e=>e.event).join("|")' <<<"$d")"
ok "canary: one target first, paused for promotion, promoted by resume, then the rest"

id=$(deploy can prod 5.0.0 --strategy canary --canary 1 --bake 60s --batch 2)
wait_state "$id" ROLLED_BACK 90
d=$(slipway -o json deployment show "$id")
js 'j.timeline.filter(e=>e.event==="canary target failed").map(e=>e.detail).join("|")' <<<"$d" | grep -q "k1: health check failing" \
  || fail "the timeline should say why the canary failed: $(js 'j.timeline.map(e=>e.event+": "+e.detail).join("|")' <<<"$d")"
[ "$(js 'j.targets.filter(t=>t.state==="skipped").length' <<<"$d")" = 3 ] || fail "targets past the canary should be skipped"
wait_versions can 2.0.0 30
ok "canary: a release that degrades while baking fails the canary and rolls back"

id=$(deploy can prod 3.0.0 --strategy canary --canary 1 --bake 1s --batch 2 --max-failed 1)
wait_state "$id" ROLLED_BACK 90
slipway -o json deployment show "$id" | js 'j.timeline.map(e=>e.event+": "+e.detail).join("|")' | grep -q "no canary target is healthy" \
  || fail "a canary whose every target failed must not be promoted, even within the tolerated failures"
wait_versions can 2.0.0 30
ok "canary: a canary with no healthy target is never promoted, whatever the tolerance"

# ---- approvals gate the deployment ----
td=$(cat "$SLIPWAY_PKI_DIR/trust-domain")
slipway pki issue --dir "$SLIPWAY_PKI_DIR" --user bob --out "$T/bob" >/dev/null
cat > "$T/policy.json" <<JSON
{ "version": 1,
  "bindings": [ { "role": "approver", "principal": "spiffe://$td/user/bob", "scope": { "app": "gate" } },
                { "role": "approver", "principal": "spiffe://$td/user/admin", "scope": { "app": "gate" } } ],
  "approval_policies": [ { "name": "gate-prod", "apps": ["gate"], "environments": ["prod"], "required": 1 } ] }
JSON
slipway policy apply "$T/policy.json" >/dev/null || fail "policy apply"
agents gate eu/g1 eu/g2
id=$(deploy gate prod 1.0.0)
wait_state "$id" PENDING_APPROVAL 10
slipway status gate prod | grep -q "waiting for approval" || fail "status should say why it waits"
if slipway approve "$id" --comment "mine" >"$T/self.out" 2>&1; then fail "self-approval was accepted"; fi
grep -q PERMISSION_DENIED "$T/self.out" || fail "self-approval: $(cat "$T/self.out")"
SLIPWAY_CERT=$T/bob.crt SLIPWAY_KEY=$T/bob.key slipway approve "$id" --comment "lgtm" >/dev/null || fail "bob's approval"
wait_state "$id" SUCCEEDED 60
slipway -o json deployment show "$id" | js 'j.timeline.map(e=>e.event).join("|")' | grep -q approved || fail "approval not in the timeline"
ok "deployment waits for an approval bound to its digest, then runs"

# ---- one active deployment per environment; the queue ----
AGENT_FLAGS="" agents lock eu/l1 eu/l2
a=$(deploy lock prod 4.0.0 --batch 1)            # slow: ~2 s per target
b=$(deploy lock prod 1.0.0 --batch 2)
c=$(deploy lock prod 2.0.0 --batch 2 --hotfix)
wait_state "$a" RUNNING 10
sb=$(state "$b")
[ "$sb" = QUEUED ] || { slipway deployment show "$a" >&2; fail "a second deployment must wait while one is active (it is '$sb')"; }
slipway status lock prod | grep "$b" | grep -q "queued behind $a" || fail "status should say what it waits behind"
wait_state "$a" SUCCEEDED 60
wait_state "$c" SUCCEEDED 60
wait_state "$b" SUCCEEDED 60
sb=$(sql "select started_ms from orchestrator.deployments where id = '$b'")
sc=$(sql "select started_ms from orchestrator.deployments where id = '$c'")
[ "$sc" -lt "$sb" ] || fail "the hotfix should start before the earlier normal deployment"
[ -z "$(sql "select 1 from orchestrator.deployments d1, orchestrator.deployments d2 where d1.app = 'lock' and d2.app = 'lock' and d1.id < d2.id and d1.started_ms < d2.finished_ms and d2.started_ms < d1.finished_ms")" ] \
  || fail "two deployments of lock/prod overlapped"
ok "per-environment lock, FIFO queue, hotfix jumps the queue"

# ---- backpressure ----
scripts/stack stop "$S" orchestrator
SLIPWAY_ORCHESTRATOR_MAX_QUEUED=2 scripts/stack start "$S" orchestrator || fail "restart with a small queue"
cat > "$T/policy2.json" <<JSON
{ "version": 1,
  "bindings": [ { "role": "approver", "principal": "spiffe://$td/user/bob", "scope": { "app": "gate" } } ],
  "approval_policies": [ { "name": "gate-prod", "apps": ["gate"], "environments": ["prod"], "required": 2 } ] }
JSON
slipway policy apply "$T/policy2.json" >/dev/null || fail "policy apply 2"
q1=$(deploy gate prod 2.0.0)
q2=$(deploy gate prod 3.0.0)
if slipway deploy gate prod 1.0.0 >"$T/bp.out" 2>&1; then fail "a full queue accepted a deployment"; fi
grep -q RESOURCE_EXHAUSTED "$T/bp.out" || fail "backpressure: $(cat "$T/bp.out")"
slipway cancel "$q1" >/dev/null && slipway cancel "$q2" >/dev/null || fail "cancel queued"
scripts/stack stop "$S" orchestrator
scripts/stack start "$S" orchestrator || fail "restart the orchestrator"
ok "a full queue answers RESOURCE_EXHAUSTED"

# ---- two replicas: kill -9 the lease owner mid-rollout ----
p1=$(cat "$S/run/orchestrator.port")
setsid "$S/run/orchestrator.sh" --listen 127.0.0.1:0 --port-file "$T/orch2.port" --replica r2 --metrics-listen 127.0.0.1:0 \
  >>"$S/logs/orchestrator-r2.log" 2>&1 </dev/null &
replica2=$!
for i in $(seq 1 100); do [ -s "$T/orch2.port" ] && break; sleep 0.1; done
p2=$(cat "$T/orch2.port")
AGENT_FLAGS="--orchestrator-addr ipv4:127.0.0.1:$p1,127.0.0.1:$p2" agents crash eu/c1 eu/c2 eu/c3 eu/c4
id=$(deploy crash prod 1.0.0 --batch 4 --wait)
id=$(deploy crash prod 4.0.0 --batch 1)         # ~2 s per batch, 4 batches
for i in $(seq 1 100); do
  [ "$(sql "select current_batch from orchestrator.deployments where id = '$id'")" -ge 2 ] && break
  sleep 0.1
done
owner=$(sql "select lease_owner from orchestrator.deployments where id = '$id'")
# The CLI, like the agents, is given both replicas and uses whichever answers.
one_addr=$SLIPWAY_ORCHESTRATOR_ADDR
export SLIPWAY_ORCHESTRATOR_ADDR="ipv4:127.0.0.1:$p1,127.0.0.1:$p2"
if [ "$owner" = r2 ]; then kill -9 "$replica2"; survivor=main; else scripts/stack kill "$S" orchestrator; survivor=r2; fi
wait_state "$id" SUCCEEDED 90
d=$(slipway -o json deployment show "$id")
[ "$(js 'j.targets.every(t=>t.state==="succeeded" && t.attempts===1)' <<<"$d")" = true ] || fail "a target was deployed twice or not at all after the takeover"
js 'j.timeline.map(e=>e.event).join("|")' <<<"$d" | grep -q "taken over" || fail "no takeover in the timeline"
[ "$survivor" = main ] || { scripts/stack start "$S" orchestrator || fail "restart the killed replica"; }
kill "$replica2" 2>/dev/null; wait "$replica2" 2>/dev/null; replica2=""
export SLIPWAY_ORCHESTRATOR_ADDR=$one_addr
ok "two replicas: the survivor finished the rollout after kill -9 of the lease owner"

# ---- one replica restarted (kill -9) mid-rollout ----
agents solo eu/s1 eu/s2 eu/s3
id=$(deploy solo prod 1.0.0 --batch 3 --wait)
id=$(deploy solo prod 4.0.0 --batch 1)
for i in $(seq 1 100); do
  [ "$(sql "select current_batch from orchestrator.deployments where id = '$id'")" -ge 2 ] && break
  sleep 0.1
done
scripts/stack kill "$S" orchestrator
sleep 1
scripts/stack start "$S" orchestrator || fail "restart after kill -9"
wait_state "$id" SUCCEEDED 90
d=$(slipway -o json deployment show "$id")
[ "$(js 'j.targets.every(t=>t.state==="succeeded" && t.attempts===1)' <<<"$d")" = true ] || fail "a step was lost or repeated across the restart"
wait_versions solo 4.0.0 10
ok "a single replica killed -9 mid-rollout finished after its restart"

# ---- an agent killed -9 mid-task ----
id=$(deploy solo prod 1.0.0 --batch 3)
id=$(deploy solo prod 4.0.0 --batch 3)
for i in $(seq 1 100); do
  [ "$(sql "select count(*) from orchestrator.targets where deployment_id = '$id' and state = 3")" -ge 1 ] && break
  sleep 0.1
done
victim=$(sql "select agent_id from orchestrator.targets where deployment_id = '$id' and state = 3 limit 1")
[ -n "$victim" ] || fail "no target was running a task"
name="agent-$(echo "$victim" | sed -E 's|.*/agent/([^/]+)/([^/]+)$|\1-\2|')"
scripts/stack kill "$S" "$name"
scripts/stack start "$S" "$name" >/dev/null || fail "restart $name"
wait_state "$id" SUCCEEDED 90
d=$(slipway -o json deployment show "$id")
js 'j.timeline.map(e=>e.event).join("|")' <<<"$d" | grep -q "task re-sent" || fail "the killed agent's task was not re-sent"
[ "$(js 'j.targets.every(t=>t.state==="succeeded" && t.attempts===1)' <<<"$d")" = true ] || fail "the killed agent's task failed or ran as a retry"
ok "an agent killed -9 mid-task finished the task after its restart"

# ---- sealed secrets reach exactly the agents that run the release ----
scripts/make-bundles --app vault --secret db-password --out "$T/bundles" --versions 1.0.0 >/dev/null \
  || fail "make-bundles vault"
push vault 1.0.0 "$T/bundles/vault-1.0.0.tar.gz"
agents vault eu/v1 us/v2
# Without the secret stored, the release cannot start: the targets fail with a reason.
id=$(deploy vault prod 1.0.0 --batch 2 --on-failure abort)
wait_state "$id" FAILED 60
slipway -o json deployment show "$id" | js 'j.targets.map(t=>t.message).join("|")' | grep -q "secret" \
  || fail "a release missing its secret should fail with a reason that says so"
value="vault-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
printf '%s' "$value" | slipway secrets put db-password --scope vault/prod >/dev/null || fail "secrets put"
id=$(deploy vault prod 1.0.0 --batch 2 --wait)
wait_versions vault 1.0.0 10
eps=$(slipway -o json agents ls --app vault | js 'j.map(a=>a.endpoint).filter(e=>e).join(" ")')
[ "$(wc -w <<<"$eps")" = 2 ] || fail "the agents do not report where vault listens: '$eps'"
for ep in $eps; do
  got=$(node -e "fetch('http://$ep/').then(r=>r.json()).then(j=>console.log(j.secret))") || fail "vault at $ep does not answer"
  [ "$got" = present ] || fail "the instance at $ep did not receive its secret"
done
[ "$(sql "select count(*) from audit.entries where action = 'secret.grant' and resource = 'secret-grant/$id'")" -ge 2 ] \
  || fail "each target's grant should be in the audit log"
for i in $(seq 1 50); do
  [ "$(sql "select count(*) from audit.entries where action = 'secret.fetch' and resource = 'secret-grant/$id'")" -ge 2 ] && break
  sleep 0.1
done
[ "$i" -lt 50 ] || fail "each agent's fetch should be in the audit log"
! grep -rqF "$value" "$S/logs" "$S/agents" --include='*.log' --include='*.json' || fail "the secret's value appears in a log"
ok "sealed secrets: refused without the secret, delivered to each target with it, granted and fetched on record, never logged"

# ---- bad input: clear status, nothing created ----
before=$(sql "select count(*) from orchestrator.deployments")
expect_fail() { # WANT ARGS...
  local want=$1; shift
  if "$@" >"$T/bad.out" 2>&1; then fail "accepted: $*"; fi
  grep -q "$want" "$T/bad.out" || fail "$*: wanted $want, got: $(cat "$T/bad.out")"
}
expect_fail "NOT_FOUND: no release nope@1.0.0" slipway deploy nope prod 1.0.0
expect_fail "NOT_FOUND: no release roll@9.9.9" slipway deploy roll prod 9.9.9
expect_fail "FAILED_PRECONDITION: no agents serve roll/staging" slipway deploy roll staging 1.0.0
expect_fail "INVALID_ARGUMENT: app" slipway deploy 'Bad_App' prod 1.0.0
expect_fail "INVALID_ARGUMENT: failure_policy.progress_deadline_ms" slipway deploy roll prod 1.0.0 --progress-deadline 10ms
expect_fail "batch-percent wants 1..100" slipway deploy roll prod 1.0.0 --batch-percent 150
expect_fail "INVALID_ARGUMENT: strategy.canary: give canary_size or canary_percent, not both" slipway deploy can prod 1.0.0 --strategy canary --canary 1 --canary-percent 10
expect_fail "INVALID_ARGUMENT: strategy.canary.bake_ms" slipway deploy can prod 1.0.0 --strategy canary --bake 48h
expect_fail "need --strategy canary" slipway deploy can prod 1.0.0 --canary 1
expect_fail "NOT_FOUND: no deployment" slipway cancel d-nope
expect_fail "FAILED_PRECONDITION" slipway resume "$id"
[ "$(sql "select count(*) from orchestrator.deployments")" = "$before" ] || fail "bad input created a deployment"
ok "bad input: clear statuses, nothing created"

# ---- idempotency keys: a retry returns the first, other parameters are refused ----
before=$(sql "select count(*) from orchestrator.deployments")
id1=$(deploy roll prod 1.0.0 --batch 4 --idempotency-key retry-1)
id2=$(deploy roll prod 1.0.0 --batch 4 --idempotency-key retry-1)
[ "$id1" = "$id2" ] || fail "a retry with the same key made a second deployment ($id1, $id2)"
expect_fail "ALREADY_EXISTS: idempotency key 'retry-1' was first used for deployment $id1 with different parameters" \
  slipway deploy roll prod 2.0.0 --batch 4 --idempotency-key retry-1
rb1=$(slipway -o json rollback roll prod --to 2.0.0 --idempotency-key rb-1 | js 'j.id')
rb2=$(slipway -o json rollback roll prod --to 2.0.0 --idempotency-key rb-1 | js 'j.id')
[ -n "$rb1" ] && [ "$rb1" = "$rb2" ] || fail "a rollback retried with the same key made a second one ($rb1, $rb2)"
expect_fail "ALREADY_EXISTS" slipway rollback roll prod --to 1.0.0 --idempotency-key rb-1
[ "$(sql "select count(*) from orchestrator.deployments")" = "$((before + 2))" ] || fail "retries created deployments"
wait_state "$id1" SUCCEEDED 60
wait_state "$rb1" SUCCEEDED 60
ok "idempotency keys: a retry returns the first deployment or rollback, other parameters are ALREADY_EXISTS"

# ---- a bundle with a malicious path fails its task with a reason ----
mkdir -p "$T/evil"
sed 's/"app": "roll"/"app": "evil"/' <(tar -xzOf "$T/bundles/roll-1.0.0.tar.gz" ./slipway.json) > "$T/evil/slipway.json"
echo x > "$T/evil/payload"
tar -C "$T/evil" --transform 's,^\./payload,../escaped,' -czf "$T/evil.tar.gz" ./slipway.json ./payload 2>/dev/null
push evil 1.0.0 "$T/evil.tar.gz"
agents evil eu/e1
id=$(deploy evil prod 1.0.0)
wait_state "$id" FAILED 60
slipway -o json deployment show "$id" | js 'j.targets[0].message' | grep -qi "path\|\.\." || fail "the failed task should name the bad path"
[ ! -e "$S/agents/eu-e1/escaped" ] && [ ! -e "$S/agents/escaped" ] || fail "the bundle wrote outside its release directory"
ok "a malicious bundle path fails the task and writes nothing outside"

echo "orchestrator: $checks checks passed"
