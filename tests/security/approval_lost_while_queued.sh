#!/usr/bin/env bash
# tests/security/approval_lost_while_queued.sh - hole 6: policy checked
# once. Two approved deployments wait in the queue behind a paused one;
# meanwhile the approval policy changes (which voids the approvals given
# under the old one) and the requester of the second loses her deployer
# binding. When each would start, the orchestrator asks the policy again:
# the first goes back to waiting for approval (and runs once approved
# again), the second never starts and ends FAILED naming the lost right.
. "$(dirname "$0")/lib.sh"

app=apq
td=$(cat "$SLIPWAY_PKI_DIR/trust-domain")
keep_policy

bundles $app --versions "1.0.0 2.0.0"
for v in 1.0.0 2.0.0; do push $app $v "$T/bundles/$app-$v.tar.gz"; done
agents $app prod eu/aq1 eu/aq2
echo '{ "version": 1 }' >"$T/none.json"
slipway policy apply "$T/none.json" >/dev/null || fail "policy apply (none)"
id=$(deploy $app prod 1.0.0 --batch 2 --wait)
[ "$(state "$id")" = SUCCEEDED ] || fail "$app 1.0.0 did not succeed"
a=$(deploy $app prod 2.0.0 --strategy canary --canary 1 --bake 0s --promote manual --on-failure abort)
wait_state "$a" PAUSED 60

policy() { # APPS-JSON CAROL-BINDING-JSON
  cat >"$T/policy.json" <<JSON
{ "version": 1,
  "bindings": [ { "role": "approver", "principal": "spiffe://$td/user/bob", "scope": { "app": "$app" } } $2 ],
  "approval_policies": [ { "name": "$app-prod", "apps": $1, "environments": ["prod"], "required": 1 } ] }
JSON
  slipway policy apply "$T/policy.json" >/dev/null || fail "policy apply"
}
policy "[\"$app\"]" ", { \"role\": \"deployer\", \"principal\": \"spiffe://$td/user/carol\", \"scope\": { \"app\": \"$app\" } }"

b=$(deploy $app prod 1.0.0 --batch 2)
c=$(as_user carol slipway -o json deploy $app prod 1.0.0 --batch 2 | js 'j.id') || fail "carol's deploy"
for d in "$b" "$c"; do
  wait_state "$d" PENDING_APPROVAL 10
  as_user bob slipway approve "$d" --comment "ok" >/dev/null || fail "bob approves $d"
  wait_state "$d" QUEUED 10
done
ok "b (admin) and c (carol) approved by bob, queued behind the paused $a"

# The approval policy changes (approvals given under the old one no longer
# count) and carol is no longer a deployer.
policy "[\"$app\", \"$app-canary\"]" ""

slipway cancel "$a" >/dev/null || fail "cancel a"
wait_state "$b" PENDING_APPROVAL 30
slipway -o json deployment show "$b" | js 'j.timeline.map(e=>e.event+": "+e.detail).join("\n")' \
  | grep -q "waiting for approval: approvals no longer satisfy the policy" \
  || fail "b's timeline should say its approvals no longer count"
[ "$(slipway -o json deployment show "$b" | js 'j.started_unix_ms')" = 0 ] || fail "b was started"
ok "b's approvals were voided while it waited: it did not start, it waits for approval again"

wait_state "$c" FAILED 30
r=$(slipway -o json deployment show "$c" | js 'j.reason')
grep -q "may not deploy" <<<"$r" || fail "c's reason should say carol may no longer deploy: $r"
[ "$(slipway -o json deployment show "$c" | js 'j.started_unix_ms')" = 0 ] || fail "c was started"
ok "c's requester lost her binding while it waited: FAILED, never started, reason says so"

as_user bob slipway approve "$b" --comment "still ok" >/dev/null || fail "bob approves b again"
wait_state "$b" SUCCEEDED 60
ok "approved again under the new policy, b runs"

for i in $(seq 1 100); do
  audited "$b" --action deploy.unapproved --outcome denied && audited "$c" --action deploy.denied --outcome denied && break
  sleep 0.1
done
audited "$b" --action deploy.unapproved --outcome denied || fail "b's lost approval is not in the audit log"
audited "$c" --action deploy.denied --outcome denied || fail "c's denial is not in the audit log"
ok "both are audited"
done_checks
