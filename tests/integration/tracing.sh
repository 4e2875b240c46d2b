#!/usr/bin/env bash
# tests/integration/tracing.sh - the access log and W3C trace propagation,
# over the real stack (run by tests/run, which exports the stack's
# environment): a deployment run through the CLI under a known trace
# (TRACEPARENT) is followed by `grep trace_id=X` through the logs of the
# orchestrator (the service the CLI called, and its own threads), the
# policy and audit services, the artifact service and the agent; every call
# leaves one access line with method, peer, status, duration, request id and
# trace id; health checks stay out of the info log; an invalid traceparent
# starts a new trace. (Certificate reload: cert_reload.sh.)
set -uo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
S=$SLIPWAY_STACK_DIR
T=$(mktemp -d "${SLIPWAY_TEST_TMP:-/tmp}/tracing.XXXXXX")
export PATH="$top/build/bin:$PATH"
L=$S/logs
checks=0

fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { checks=$((checks + 1)); echo "ok $checks - $*"; }
js() { node -e "const j=JSON.parse(require('fs').readFileSync(0,'utf8')); const r=($1); console.log(typeof r==='object'?JSON.stringify(r):r)"; }

app=trc
scripts/make-bundles --app $app --out "$T/bundles" >/dev/null || fail "make-bundles"
slipway artifact push "$T/bundles/$app-1.0.0.tar.gz" --app $app --version 1.0.0 >/dev/null 2>"$T/err" \
  || fail "push: $(cat "$T/err")"
scripts/stack agent "$S" trc/h1 --label app=$app --label environment=prod >/dev/null || fail "agent"
for i in $(seq 1 100); do
  [ "$(slipway -o json agents ls --app $app | js 'j.filter(a=>a.health==="online").length')" = 1 ] && break
  [ "$i" = 100 ] && fail "the agent did not register"
  sleep 0.1
done

tid=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
span=$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
out=$(TRACEPARENT="00-$tid-$span-01" slipway -o json deploy $app prod 1.0.0 --wait 2>"$T/err") \
  || fail "deploy: $(cat "$T/err")"
id=$(js 'j.id' <<<"$out")
[ "$(slipway -o json deployment show "$id" | js 'j.state')" = SUCCEEDED ] || fail "deployment $id did not succeed"
ok "deployment $id ran under trace $tid"

# The audit relay and the agent's last report may trail the answer a bit.
has_trace() { grep -q "trace_id=$tid" "$L/$1.log"; }
for i in $(seq 1 100); do
  has_trace audit && has_trace agent-trc-h1 && break
  sleep 0.1
done
for f in orchestrator policy audit artifact agent-trc-h1; do
  has_trace "$f" || fail "no trace_id=$tid in $f.log"
done
ok "trace_id=$tid is in the orchestrator, policy, audit, artifact and agent logs"

# The CLI's own call: one access line with every field, the admin as peer.
td=$(cat "$S/pki/trust-domain")
line=$(grep "trace_id=$tid" "$L/orchestrator.log" | grep ' msg=access ' | grep 'method=/slipway.v1.Orchestrator/CreateDeployment ' | head -1)
[ -n "$line" ] || fail "no access line for CreateDeployment under the trace"
for want in " level=info " " req=" " peer=spiffe://$td/user/admin " " status=OK " " duration_ms="; do
  [[ "$line" == *"$want"* ]] || fail "access line lacks '$want': $line"
done
ok "CreateDeployment's access line: $line"

# Work done later on the orchestrator's own threads carries the trace too:
# its calls to the policy service (another request id than the CLI's
# call: the side thread's check before the start), the audit events of its
# outbox, and the tasks' reports from the agent.
req=$(sed -n 's/.* req=\([^ ]*\) .*/\1/p' <<<"$line")
grep "trace_id=$tid" "$L/policy.log" | grep ' msg=access ' | grep "peer=spiffe://$td/service/orchestrator " \
  | grep -v -q " req=$req " || fail "no call from the orchestrator's own threads in policy.log under the trace"
grep "trace_id=$tid" "$L/audit.log" | grep ' msg=access ' | grep -q 'method=/slipway.v1.Audit/AppendBatch ' \
  || fail "no AppendBatch access line in audit.log under the trace"
grep "trace_id=$tid" "$L/orchestrator.log" | grep ' msg=access ' | grep -q "method=/slipway.v1.AgentControl/ReportTask .*peer=spiffe://$td/agent/trc/h1 " \
  || fail "no ReportTask access line from the agent under the trace"
ok "policy, audit and the agent's reports carry the deployment's trace"

# Every access line has the fields, and no request body or secret leaks.
n=$(grep -h ' msg=access ' "$L"/*.log | wc -l)
bad=$(grep -h ' msg=access ' "$L"/*.log | grep -v -E ' req=[^ ]+ trace_id=[0-9a-f]{32} msg=access method=/[^ ]+ peer=[^ ]+ status=[A-Z_]+ duration_ms=[0-9.]+' | head -3)
[ "$n" -gt 0 ] && [ -z "$bad" ] || fail "access lines without their fields ($n lines): $bad"
grep -h ' msg=access ' "$L"/*.log | grep -q -i "SECRET_KEY\|PRIVATE KEY" && fail "an access line holds key material"
ok "$n access lines, each with req, trace_id, method, peer, status and duration"

# Health checks (the stack polls them) are at debug only.
grep -h ' msg=access ' "$L"/*.log | grep -q 'method=/grpc.health.v1.Health/' && fail "health checks in the info access log"
slipway health policy >/dev/null || fail "health"
grep -h ' msg=access ' "$L/policy.log" | grep -q 'method=/grpc.health.v1.Health/' && fail "health check logged at info"
ok "health checks are not in the info access log"

# A well-formed TRACEPARENT is continued; a malformed one (an all-zero
# parent id) is ignored: the command works, under a new trace.
gets() { grep -c "trace_id=$1 msg=access method=/slipway.v1.Orchestrator/GetDeployment " "$L/orchestrator.log" || true; }
tid2=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
TRACEPARENT="00-$tid2-$span-01" slipway -o json deployment show "$id" >/dev/null || fail "deployment show"
[ "$(gets "$tid2")" = 1 ] || fail "a valid traceparent was not continued"
tid3=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
TRACEPARENT="00-$tid3-0000000000000000-01" slipway -o json deployment show "$id" >/dev/null 2>"$T/err" \
  || fail "a bad TRACEPARENT broke the CLI: $(cat "$T/err")"
[ "$(gets "$tid3")" = 0 ] || fail "an invalid traceparent was used"
[ "$(gets "[0-9a-f]\{32\}")" -ge 2 ] || fail "the call under a bad traceparent has no trace"
ok "a valid traceparent is continued, an invalid one starts a new trace"

# --no-access-log (here through the environment): successful calls leave
# no info line, failed ones still do.
scripts/stack stop "$S" audit >/dev/null || fail "stop audit"
SLIPWAY_AUDIT_NO_ACCESS_LOG=true scripts/stack start "$S" audit >/dev/null || fail "start audit with --no-access-log"
tid4=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
TRACEPARENT="00-$tid4-$span-01" slipway audit log --limit 1 >/dev/null 2>"$T/err" || fail "audit log: $(cat "$T/err")"
tid5=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
TRACEPARENT="00-$tid5-$span-01" slipway audit show 999999999 >/dev/null 2>&1 && fail "audit show of a missing entry succeeded"
grep -q "trace_id=$tid4 msg=access " "$L/audit.log" && fail "--no-access-log: a successful call was logged at info"
grep "trace_id=$tid5 msg=access " "$L/audit.log" | grep -q -v " status=OK " \
  || fail "--no-access-log: the failed call was not logged"
scripts/stack stop "$S" audit >/dev/null || fail "stop audit"
scripts/stack start "$S" audit >/dev/null || fail "start audit"
ok "--no-access-log keeps failures at info and successful calls out of it"

scripts/stack stop "$S" trc/h1 >/dev/null 2>&1 || true
echo "tracing: $checks checks passed"
