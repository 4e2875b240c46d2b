#!/usr/bin/env bash
# auditor_read_only.sh - the auditor's workbench, both ways. A principal
# bound to nothing but the built-in auditor role can do an auditor's whole
# job (audit search in every format, report changes, audit
# log/show/proof/verify, deployments, status, agents, releases, secrets
# metadata, evidence export when the CLI has it) and nothing that changes
# state: every write command of every service, and every write RPC called
# directly where the CLI has none, is PERMISSION_DENIED (exit 3) and leaves
# the services' state exactly as it was. Fails if any write succeeds.
. "$(dirname "$0")/lib.sh"

td=$(cat "$SLIPWAY_PKI_DIR/trust-domain")
rpc=$top/build/tests/slipway-rpc
[ -x "$rpc" ] || fail "build/tests/slipway-rpc is missing (make tests)"
app=ro-web
A=ro-auditor
aid="spiffe://$td/user/$A"
commit=4b825dc642cb6eb9a060e54bf8d69288fbee4904

# --- the admin makes something to audit: two releases with provenance, an
# agent, a secret, a deployment that succeeded.
keep_policy
bundles $app --versions "1.0.0 2.0.0"
for v in 1.0.0 2.0.0; do
  push $app $v "$T/bundles/$app-$v.tar.gz" --repo https://git.example.com/shop/ro-web \
    --commit $commit --branch main
done
agents $app prod eu/ro1
printf 'hunter2' | slipway secrets put db-password --scope $app/prod >/dev/null 2>"$T/err" \
  || fail "secrets put: $(cat "$T/err")"
id=$(deploy $app prod 1.0.0 --wait)
wait_state "$id" SUCCEEDED 60
# Then prod needs one approval: bob approves 2.0.0.
node -e "const fs=require('fs'); const d=JSON.parse(fs.readFileSync('$T/policy-before.json','utf8'));
  d.bindings=(d.bindings||[]).concat([{role:'auditor',principal:'$aid'},
    {role:'approver',principal:'spiffe://$td/user/ro-bob',scope:{app:'$app'}}]);
  d.approval_policies=(d.approval_policies||[]).concat([{name:'$app-prod',apps:['$app'],environments:['prod'],required:1}]);
  fs.writeFileSync('$T/policy.json', JSON.stringify(d))" || fail "cannot edit the policy"
slipway policy apply "$T/policy.json" >/dev/null 2>"$T/err" || fail "policy apply: $(cat "$T/err")"
id2=$(deploy $app prod 2.0.0)
wait_state "$id2" PENDING_APPROVAL 30
as_user ro-bob slipway approve "$id2" --comment "reviewed" >/dev/null 2>"$T/err" || fail "bob approves: $(cat "$T/err")"
wait_state "$id2" SUCCEEDED 60
# Then a freeze over today, with break-glass by one approver: the admin
# deploys 1.0.0 through it, bob approves.
from=$(date -u -d '-1 day' +%Y-%m-%dT00:00) to=$(date -u -d '+2 day' +%Y-%m-%dT00:00)
node -e "const fs=require('fs'); const d=JSON.parse(fs.readFileSync('$T/policy.json','utf8'));
  const p=d.approval_policies[d.approval_policies.length-1];
  p.freeze={timezone:'UTC',dates:[{start:'$from',end:'$to'}]}; p.break_glass={required:1};
  fs.writeFileSync('$T/policy-freeze.json', JSON.stringify(d))" || fail "cannot edit the policy"
slipway policy apply "$T/policy-freeze.json" >/dev/null 2>"$T/err" || fail "policy apply (freeze): $(cat "$T/err")"
id3=$(deploy $app prod 1.0.0 --break-glass "incident 42")
wait_state "$id3" PENDING_APPROVAL 30
as_user ro-bob slipway approve "$id3" --comment "break-glass ok" >/dev/null 2>"$T/err" || fail "bob approves the break-glass: $(cat "$T/err")"
wait_state "$id3" SUCCEEDED 60
ok "setup: $app@1.0.0 (commit ${commit:0:12}) deployed to prod as $id, 2.0.0 as $id2 approved by ro-bob, 1.0.0 again through a freeze with break-glass as $id3; $A bound to the auditor role only"

aud() { as_user "$A" "$@"; }

# --- what the auditor can do.
# The same window for every format (events still arriving are logged after it).
sleep 1
now=$(date +%s%3N)
for fmt in table json csv jsonl; do
  aud slipway -o $fmt audit search --app $app --env prod --since 1h --until "$now" --all >"$T/search.$fmt" 2>"$T/err" \
    || fail "audit search -o $fmt: $(cat "$T/err")"
done
n=$(js "j.length" <"$T/search.json")
[ "$n" -ge 2 ] || fail "audit search --app $app --env prod found $n entries: $(cat "$T/search.json")"
js "j.every(e => e.details.app === '$app' && e.details.environment === 'prod')" <"$T/search.json" | grep -qx true \
  || fail "audit search returned entries of another app or environment"
js "j.some(e => e.action === 'deploy.request' && e.resource === 'deployment/$id')" <"$T/search.json" | grep -qx true \
  || fail "the deployment's request is not among the results: $(cat "$T/search.json")"
for want in orchestrator:deploy.start policy:deployment.approve policy:policy.decision secrets:secret.put; do
  js "j.some(e => e.service === '${want%%:*}' && e.action === '${want#*:}')" <"$T/search.json" | grep -qx true \
    || fail "no ${want#*:} event of the ${want%%:*} service carries app=$app environment=prod"
done
# Releases belong to an app, not an environment.
aud slipway -o json audit search --app $app --service artifact --action artifact.push --all >"$T/s.json" 2>"$T/err" \
  || fail "search --app --service: $(cat "$T/err")"
[ "$(js 'j.length' <"$T/s.json")" -ge 2 ] || fail "the releases' pushes are not found by app: $(cat "$T/s.json")"
[ "$(wc -l <"$T/search.jsonl")" -eq "$n" ] || fail "-o jsonl has not one line per entry"
node -e "require('fs').readFileSync('$T/search.jsonl','utf8').trim().split('\n').forEach(l=>JSON.parse(l))" \
  || fail "-o jsonl: a line is not JSON"
head -1 "$T/search.csv" | grep -q '^seq,logged,time,outcome,service,action,actor,resource,app,environment,request_id,event_id,details' \
  || fail "-o csv header: $(head -1 "$T/search.csv")"
grep -q $'\r$' "$T/search.csv" || fail "-o csv records do not end in CRLF (RFC 4180)"
grep -q '"{""' "$T/search.csv" || fail "-o csv does not quote the details JSON with doubled quotes (RFC 4180)"
grep -q "deployment/$id" "$T/search.table" || fail "the table lacks the deployment"
ok "audit search --app --env (filtered by the service; events of every producer) as table, json, csv (RFC 4180) and jsonl: $n entries"

aud slipway -o json audit search --actor "spiffe://$td/user/admin" --action deploy.request --outcome success \
  --since "$(date -u -d '-1 hour' +%Y-%m-%dT%H:%M:%SZ)" --until 1ms >"$T/s2.json" 2>"$T/err" \
  || fail "search by actor/action/outcome/time: $(cat "$T/err")"
js "j.length > 0 && j.every(e => e.action === 'deploy.request' && e.outcome === 'success')" <"$T/s2.json" | grep -qx true \
  || fail "search by actor/action/outcome: $(cat "$T/s2.json")"
aud slipway audit search --env prod --limit 1 >"$T/out" 2>"$T/err" || fail "search --limit: $(cat "$T/err")"
grep -q "more: --page-token" "$T/out" || fail "a search that stopped early does not say more exist: $(cat "$T/out")"
for bad in "--since yesterday" "--outcome maybe" "--since 1h --until 2h"; do
  # shellcheck disable=SC2086
  if aud slipway audit search $bad >/dev/null 2>"$T/err"; then fail "audit search $bad succeeded"; fi
done
if aud "$rpc" audit Audit/ListEntries filter.app="$(printf 'a%.0s' $(seq 1 200))" >"$T/out" 2>&1; then
  fail "a 200-character app filter was accepted"
fi
grep -q '^INVALID_ARGUMENT' "$T/out" || fail "a bad filter is not INVALID_ARGUMENT: $(cat "$T/out")"
if aud "$rpc" audit Audit/ListEntries filter.from_unix_ms=2000 filter.to_unix_ms=1000 >"$T/out" 2>&1; then
  fail "a reversed time range was accepted"
fi
grep -q '^INVALID_ARGUMENT' "$T/out" || fail "a reversed range is not INVALID_ARGUMENT: $(cat "$T/out")"
ok "search by actor, action, outcome and RFC 3339/relative times; says when more exist; bad filters are refused (INVALID_ARGUMENT from the service)"

for fmt in table json csv jsonl; do
  aud slipway -o $fmt report changes --env prod --app $app --since 1h >"$T/report.$fmt" 2>"$T/err" \
    || fail "report changes -o $fmt: $(cat "$T/err")"
done
js "j.length === 3 && j[2].id === '$id' && j[1].id === '$id2' && j[0].id === '$id3' && j.every(r => r.commit === '$commit'
    && r.outcome === 'SUCCEEDED' && r.requester === 'spiffe://$td/user/admin' && r.digest.startsWith('sha256:'))
    && j[2].approvers.length === 0 && !j[2].break_glass && !j[1].break_glass
    && j[1].approvers.map(a => a.principal).join() === 'spiffe://$td/user/ro-bob' && j[1].approvers[0].digest === j[1].digest
    && j[0].break_glass === true && j[0].break_glass_by === 'spiffe://$td/user/admin' && j[0].break_glass_reason === 'incident 42'
    && Number.isInteger(j[0].break_glass_audit_seq)
    && j[0].approvers.map(a => a.principal).join() === 'spiffe://$td/user/ro-bob'" \
  <"$T/report.json" | grep -qx true || fail "report changes: $(cat "$T/report.json")"
grep -q "$commit" "$T/report.csv" && grep -q "${commit:0:12}" "$T/report.table" && grep -q "user/ro-bob" "$T/report.csv" \
  && grep -q "user/ro-bob" "$T/report.table" && grep -q "incident 42" "$T/report.csv" \
  && grep -q "yes (spiffe://$td/user/admin)" "$T/report.table" && [ "$(wc -l <"$T/report.jsonl")" -eq 3 ] \
  || fail "report changes csv/table/jsonl: $(cat "$T/report.csv" "$T/report.table")"
ok "report changes --env prod: the three deployments with digest, source commit, requester, approvers (bound to the digest), outcome, break-glass (who, why), in all four formats"

seq_=$(js "j.find(e => e.resource === 'deployment/$id').seq" <"$T/search.json")
aud slipway audit log --limit 5 >/dev/null 2>"$T/err" || fail "audit log: $(cat "$T/err")"
aud slipway audit show "$seq_" >/dev/null 2>"$T/err" || fail "audit show: $(cat "$T/err")"
aud slipway audit proof "$seq_" >/dev/null 2>"$T/err" || fail "audit proof: $(cat "$T/err")"
aud slipway audit verify --state "$T/auditor.state" >"$T/out" 2>&1 || fail "audit verify: $(cat "$T/out")"
aud slipway deployments ls --app $app >/dev/null 2>"$T/err" || fail "deployments ls: $(cat "$T/err")"
aud slipway deployment show "$id" >/dev/null 2>"$T/err" || fail "deployment show: $(cat "$T/err")"
aud slipway status $app prod >/dev/null 2>"$T/err" || fail "status: $(cat "$T/err")"
aud slipway agents ls --app $app >/dev/null 2>"$T/err" || fail "agents ls: $(cat "$T/err")"
aud slipway artifact ls $app >/dev/null 2>"$T/err" || fail "artifact ls: $(cat "$T/err")"
aud slipway policy get >/dev/null 2>"$T/err" || fail "policy get: $(cat "$T/err")"
aud slipway policy approvals "$id" >/dev/null 2>"$T/err" || fail "policy approvals: $(cat "$T/err")"
aud slipway secrets ls --scope $app/prod >/dev/null 2>"$T/err" || fail "secrets ls: $(cat "$T/err")"
ok "audit log/show/proof/verify, deployments ls/show, status, agents ls, artifact ls, policy get/approvals, secrets ls"

if slipway evidence --help >/dev/null 2>&1; then
  aud slipway evidence export "$id" --out "$T/evidence.bundle" >/dev/null 2>"$T/err" \
    || fail "evidence export: $(cat "$T/err")"
  aud slipway evidence verify "$T/evidence.bundle" --verifier-key "$SLIPWAY_AUDIT_VERIFIER_KEY" >/dev/null 2>"$T/err" \
    || fail "evidence verify: $(cat "$T/err")"
  ok "evidence export and verify"
else
  echo "# skip: this CLI has no evidence command yet"
fi

# --- what the auditor cannot do. snapshot: the state of every service
# (not the logs that record the refusals: audit entries, decisions,
# outboxes, the agents' heartbeats).
snapq=""
for t in orchestrator.deployments orchestrator.targets orchestrator.timeline orchestrator.environments \
         policy.revisions policy.approvals policy.approval_requests policy.enrollments \
         artifact.releases artifact.pins secrets.secrets secrets.versions secrets.grants \
         secrets.master_keys; do
  [ "$(sql "SELECT to_regclass('$t') IS NOT NULL")" = t ] || fail "no table $t (update the snapshot)"
  snapq="$snapq UNION ALL SELECT '$t', md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) FROM $t x"
done
snapshot() { sql "SELECT string_agg(t || '=' || s, ' ' ORDER BY t) FROM (${snapq# UNION ALL}) AS y(t, s)"; }
before=$(snapshot)
[ -n "$before" ] || fail "cannot read the services' tables"
denied=0
changed() { [ "$(snapshot)" = "$before" ] || fail "$1 changed state"; }
# refused WHAT CMD...: a CLI write, exit 3 and a denial, nothing changed.
refused() {
  local what=$1 rc; shift
  as_user "$A" "$@" >"$T/out" 2>"$T/err" </dev/null; rc=$?
  [ $rc -ne 0 ] || fail "$what: the auditor's write succeeded: $(cat "$T/out")"
  [ $rc -eq 3 ] || fail "$what: exit $rc, not 3 (denied): $(cat "$T/err")"
  grep -qiE "denied|permission" "$T/err" || fail "$what: not a denial: $(cat "$T/err")"
  changed "$what"
  denied=$((denied + 1))
}
# refused_rpc SERVICE METHOD FIELD=VALUE...: a direct call, PERMISSION_DENIED.
refused_rpc() {
  local rc
  as_user "$A" "$rpc" "$@" >"$T/out" 2>&1; rc=$?
  [ $rc -ne 0 ] || fail "$2: the auditor's call succeeded"
  grep -q '^PERMISSION_DENIED' "$T/out" || fail "$2: not PERMISSION_DENIED: $(cat "$T/out")"
  changed "$2"
  denied=$((denied + 1))
}
digest=$(js 'j.digest' <<<"$(slipway -o json deployment show "$id" | js 'j.deployment || j')")
printf 'x' >"$T/one"
slipway policy get >"$T/doc.json" 2>/dev/null

refused "deploy" slipway deploy $app prod 2.0.0
refused "deploy --break-glass" slipway deploy $app prod 2.0.0 --break-glass "audit"
refused "rollback" slipway rollback $app prod --to 1.0.0
refused "approve" slipway approve "$id" --comment ok
refused "reject" slipway reject "$id" --comment no
refused "cancel" slipway cancel "$id"
refused "pause" slipway pause "$id"
refused "resume" slipway resume "$id"
refused "policy apply" slipway policy apply "$T/doc.json"
refused "policy apply (a freeze)" slipway policy apply "$T/policy-before.json"
refused "artifact push (release push)" slipway artifact push "$T/bundles/$app-2.0.0.tar.gz" --app $app --version 9.9.9
refused "artifact gc" slipway artifact gc
refused "artifact pin" slipway artifact pin $app prod --current "$digest"
refused "agents enroll" slipway agents enroll "spiffe://$td/agent/eu/ro9" --app $app --env prod
refused "agents unenroll" slipway agents unenroll "spiffe://$td/agent/eu/ro1"
refused "secrets put (set)" bash -c "printf x | slipway secrets put db-password --scope $app/prod"
refused "secrets set-current" slipway secrets set-current db-password --scope $app/prod --version 1
refused "secrets disable" slipway secrets disable db-password --scope $app/prod --version 1
refused "secrets enable" slipway secrets enable db-password --scope $app/prod --version 1
refused "secrets destroy" slipway secrets destroy db-password --scope $app/prod --version 1 --yes
refused "secrets rotate-master" slipway secrets rotate-master
slipway secrets keygen --out "$T/ro-agent" >/dev/null 2>&1 || fail "secrets keygen"
refused "secrets grant" slipway secrets grant --deployment "$id" --agent "spiffe://$td/agent/eu/ro1" \
  --agent-pub "$T/ro-agent.pub" --scope $app/prod db-password
refused "audit checkpoint --sign" slipway audit checkpoint --sign
ok "$denied CLI writes refused with PERMISSION_DENIED (exit 3), nothing changed after each"

n0=$denied
refused_rpc orchestrator Orchestrator/CreateDeployment app=$app environment=prod version=2.0.0
refused_rpc orchestrator Orchestrator/CancelDeployment id="$id"
refused_rpc orchestrator Orchestrator/PauseDeployment id="$id"
refused_rpc orchestrator Orchestrator/ResumeDeployment id="$id"
refused_rpc orchestrator Orchestrator/Rollback app=$app environment=prod to_version=1.0.0
refused_rpc orchestrator AgentControl/RegisterAgent
refused_rpc orchestrator AgentControl/Heartbeat
refused_rpc orchestrator AgentControl/PollTasks
refused_rpc orchestrator AgentControl/ReportTask
refused_rpc policy Policy/Approve deployment_id="$id" digest="$digest"
refused_rpc policy Policy/Reject deployment_id="$id" digest="$digest" comment=no
refused_rpc policy Policy/ApplyPolicy document="$(cat "$T/doc.json")"
refused_rpc policy Enrollments/EnrollAgent agent_id="spiffe://$td/agent/eu/ro9" app=$app environment=prod
refused_rpc policy Enrollments/UnenrollAgent agent_id="spiffe://$td/agent/eu/ro1"
refused_rpc policy Enrollments/PinSealingKey agent_id="spiffe://$td/agent/eu/ro1" seal_public_key=0123456789abcdef0123456789abcdef
refused_rpc artifact Artifact/SetPins app=$app environment=prod current_digest="$digest"
refused_rpc artifact Artifact/GarbageCollect
refused_rpc secrets Secrets/PutSecret name=db-password scope.app=$app scope.environment=prod sealed_value="$(printf "s%.0s" $(seq 1 64))"
refused_rpc secrets Secrets/SetCurrentVersion secret.name=db-password secret.scope.app=$app secret.scope.environment=prod secret.version=1
refused_rpc secrets Secrets/DisableVersion secret.name=db-password secret.scope.app=$app secret.scope.environment=prod secret.version=1
refused_rpc secrets Secrets/EnableVersion secret.name=db-password secret.scope.app=$app secret.scope.environment=prod secret.version=1
refused_rpc secrets Secrets/DestroyVersion secret.name=db-password secret.scope.app=$app secret.scope.environment=prod secret.version=1
refused_rpc secrets Secrets/RotateMaster
refused_rpc secrets Secrets/Fetch deployment_id="$id"
refused_rpc audit Audit/Append event.event_id=ro-forged event.service=audit event.action=forged
refused_rpc audit Audit/AppendBatch
refused_rpc audit Audit/SignCheckpoint
[ "$(sql "SELECT count(*) FROM audit.entries WHERE event_id = 'ro-forged'")" = 0 ] || fail "the forged event was logged"
ok "$((denied - n0)) write RPCs called directly are PERMISSION_DENIED, nothing changed after each"

# The snapshot can fail: the admin's own write shows in it.
printf 'hunter3' | slipway secrets put db-password --scope $app/prod >/dev/null 2>"$T/err" \
  || fail "admin secrets put: $(cat "$T/err")"
[ "$(snapshot)" != "$before" ] || fail "the snapshot does not see a write"
ok "the same snapshot sees the admin's write (the check above can fail)"

done_checks
