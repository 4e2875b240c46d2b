#!/usr/bin/env bash
# tests/security/rollback_unapproved.sh - hole 2: `rollback --to` as an
# approval-free deploy. A deployer (deploy + rollback on the app) pushes a
# release built from a feature branch; `deploy` refuses it (allowed refs,
# approvals) and the deployer tries `slipway rollback APP prod --to 9.9.9`
# instead. A rollback without new approvals may only go back to a digest
# that ran successfully in that environment before; anything else is
# refused and never runs. A rollback to a known-good release still works,
# also during a freeze, and so does an automatic rollback (approvals
# required, a freeze begun after the deployment started).
. "$(dirname "$0")/lib.sh"

app=rbk
td=$(cat "$SLIPWAY_PKI_DIR/trust-domain")
keep_policy

bundles $app --versions "1.0.0 2.0.0 3.0.0 5.0.0 9.9.9"
for v in 1.0.0 2.0.0 3.0.0 5.0.0; do push $app $v "$T/bundles/$app-$v.tar.gz" --branch main; done
push $app 9.9.9 "$T/bundles/$app-9.9.9.tar.gz" --branch feature/yolo
agents $app prod eu/rb1 eu/rb2

# History before the policy: 1.0.0 and 2.0.0 succeed, 3.0.0 fails its
# health check and is rolled back (it ran, but never successfully).
id=$(deploy $app prod 1.0.0 --batch 2 --wait)
[ "$(state "$id")" = SUCCEEDED ] || fail "$app 1.0.0 did not succeed"
id=$(deploy $app prod 2.0.0 --batch 2 --wait)
[ "$(state "$id")" = SUCCEEDED ] || fail "$app 2.0.0 did not succeed"
id=$(deploy $app prod 3.0.0 --batch 2)
wait_state "$id" ROLLED_BACK 90
ok "history: 1.0.0 and 2.0.0 succeeded in $app/prod, 3.0.0 was rolled back"

write_policy() { # ALLOWED-REFS-JSON FREEZE-JSON (either may be empty)
  cat >"$T/policy.json" <<JSON
{ "version": 1,
  "bindings": [ { "role": "deployer", "principal": "spiffe://$td/user/mallory", "scope": { "app": "$app" } },
                { "role": "approver", "principal": "spiffe://$td/user/bob", "scope": { "app": "$app" } } ],
  "approval_policies": [ { "name": "$app-prod", "apps": ["$app"], "environments": ["prod"], "required": 1
                           $1 $2 } ] }
JSON
  slipway policy apply "$T/policy.json" >/dev/null || fail "policy apply"
}
write_policy ', "allowed_refs": ["refs/heads/main"]' ""

# The front door: a feature-branch build is refused by deploy.
expect_denied "mallory deploys the feature-branch build" as_user mallory slipway deploy $app prod 9.9.9
grep -q "refs" "$T/err" || fail "the deploy denial should name the allowed refs: $(cat "$T/err")"
ok "deploy of 9.9.9 (refs/heads/feature/yolo) is denied by allowed refs"

# The side door: rollback --to the same build.
expect_denied "mallory rolls back to 9.9.9" as_user mallory slipway rollback $app prod --to 9.9.9 --reason "hotfix"
grep -q "FAILED_PRECONDITION" "$T/err" || fail "rollback to 9.9.9: want FAILED_PRECONDITION: $(cat "$T/err")"
grep -q "never ran successfully in $app/prod" "$T/err" || fail "rollback to 9.9.9: the reason should say why: $(cat "$T/err")"
grep -q "slipway deploy" "$T/err" || fail "rollback to 9.9.9: the refusal should point at slipway deploy: $(cat "$T/err")"
[ -z "$(sql "select id from orchestrator.deployments where app = '$app' and version = '9.9.9'")" ] \
  || fail "a deployment of 9.9.9 was created"
ok "rollback --to 9.9.9 is refused (FAILED_PRECONDITION, never ran successfully) and creates nothing"

# A release that ran but never succeeded is not known-good either.
expect_denied "mallory rolls back to 3.0.0" as_user mallory slipway rollback $app prod --to 3.0.0
grep -q "never ran successfully" "$T/err" || fail "rollback to 3.0.0: $(cat "$T/err")"
ok "rollback --to a release that failed there (3.0.0) is refused"

for i in $(seq 1 100); do  # the outbox delivers within a moment
  audited "9\\.9\\.9" --action rollback.request --outcome denied && break
  sleep 0.1
done
audited "9\\.9\\.9" --action rollback.request --outcome denied || fail "the refused rollback is not in the audit log"
ok "the refused rollback is audited"

# Returning to a release that succeeded there needs no new approval.
id=$(as_user mallory slipway -o json rollback $app prod --to 1.0.0 --reason "back to 1.0.0" | js 'j.id') \
  || fail "rollback to 1.0.0"
wait_state "$id" SUCCEEDED 60
ok "rollback --to 1.0.0 (ran successfully before) proceeds without approvals"

# Automatic rollback is part of a deployment already allowed: it works with
# approvals required and during a freeze that began after it started. 5.0.0
# passes its health check, then fails it 3 s after it started. (Allowed
# refs go: these releases are unsigned, so no ref of theirs counts; see
# forged_ref.sh.)
write_policy "" ""
c=$(deploy $app prod 5.0.0 --strategy canary --canary 1 --bake 60s)
wait_state "$c" PENDING_APPROVAL 10
as_user bob slipway approve "$c" --comment "ok" >/dev/null || fail "bob approves 5.0.0"
wait_state "$c" RUNNING 30
now=$(date -u +%s)
from=$(date -u -d "@$((now - 3600))" +%Y-%m-%dT%H:%M)
to=$(date -u -d "@$((now + 3600))" +%Y-%m-%dT%H:%M)
write_policy "" ", \"freeze\": { \"dates\": [ { \"start\": \"$from\", \"end\": \"$to\" } ] }"
wait_state "$c" ROLLED_BACK 90
ok "automatic rollback (approvals required, freeze begun meanwhile) returns to the known-good release"

# ... and a manual rollback to known-good works during the freeze (which denies deploy).
expect_denied "mallory deploys 2.0.0 during the freeze" as_user mallory slipway deploy $app prod 2.0.0
grep -qi "freeze" "$T/err" || fail "the deploy during the freeze should name it: $(cat "$T/err")"
id=$(as_user mallory slipway -o json rollback $app prod --to 2.0.0 --reason "freeze, back to 2.0.0" | js 'j.id') \
  || fail "rollback to 2.0.0 during the freeze"
wait_state "$id" SUCCEEDED 60
expect_denied "mallory rolls back to 9.9.9 during the freeze" as_user mallory slipway rollback $app prod --to 9.9.9
ok "during a freeze: rollback to known-good 2.0.0 proceeds, 9.9.9 is still refused"

# 9.9.9 never ran anywhere.
[ -z "$(sql "select 1 from orchestrator.deployments where app = '$app' and version = '9.9.9'")" ] || fail "9.9.9 was deployed"
v=$(slipway -o json agents ls --app $app | js 'j.map(a=>a.version).join(",")')
[[ "$v" != *9.9.9* ]] || fail "an agent runs 9.9.9 ($v)"
d=$(slipway -o json deployment show "$id")
[ "$(js 'j.targets.length===2 && j.targets.every(t=>t.state==="succeeded")' <<<"$d")" = true ] \
  || fail "the rollback to 2.0.0 should have put 2.0.0 on both targets"
ok "9.9.9 never ran; the rollback put 2.0.0 on both targets"
done_checks
