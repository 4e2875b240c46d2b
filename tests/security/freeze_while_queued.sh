#!/usr/bin/env bash
# tests/security/freeze_while_queued.sh - hole 6: policy checked once. A
# deployment allowed when it was requested waits (queued behind another
# one, or paused); meanwhile a freeze window begins. When it would start
# (the one ahead ends) or is resumed, the orchestrator must ask the policy
# again: the queued one never starts and ends FAILED with a reason naming
# the freeze (timeline and audit log); the paused one is not resumed.
. "$(dirname "$0")/lib.sh"

app=frz
keep_policy

bundles $app --versions "1.0.0 2.0.0"
for v in 1.0.0 2.0.0; do push $app $v "$T/bundles/$app-$v.tar.gz" --branch main; done
agents $app prod eu/fz1 eu/fz2

# An approval policy without a freeze: nothing to approve, deploys are allowed.
cat >"$T/open.json" <<JSON
{ "version": 1,
  "approval_policies": [ { "name": "$app-prod", "apps": ["$app"], "environments": ["prod"], "required": 0 } ] }
JSON
slipway policy apply "$T/open.json" >/dev/null || fail "policy apply (open)"
id=$(deploy $app prod 1.0.0 --batch 2 --wait)
[ "$(state "$id")" = SUCCEEDED ] || fail "$app 1.0.0 did not succeed"

# a: a canary that waits for manual promotion (PAUSED, holding the
# environment); b: queued behind it. Both were allowed when requested.
a=$(deploy $app prod 2.0.0 --strategy canary --canary 1 --bake 0s --promote manual --on-failure abort)
wait_state "$a" PAUSED 60
b=$(deploy $app prod 1.0.0 --batch 2)
[ "$(state "$b")" = QUEUED ] || fail "b should be queued behind a (it is $(state "$b"))"
ok "a paused (waiting for promotion), b queued behind it, both allowed"

# A freeze begins.
now=$(date -u +%s)
from=$(date -u -d "@$((now - 3600))" +%Y-%m-%dT%H:%M)
to=$(date -u -d "@$((now + 3600))" +%Y-%m-%dT%H:%M)
cat >"$T/frozen.json" <<JSON
{ "version": 1,
  "approval_policies": [ { "name": "$app-prod", "apps": ["$app"], "environments": ["prod"], "required": 0,
                           "freeze": { "dates": [ { "start": "$from", "end": "$to" } ] } } ] }
JSON
slipway policy apply "$T/frozen.json" >/dev/null || fail "policy apply (freeze)"

# Resuming a is asked of the policy again: refused, a stays paused.
if slipway resume "$a" >"$T/out" 2>"$T/err"; then fail "resume during the freeze succeeded"; fi
grep -qi "freeze" "$T/err" || fail "the refused resume should name the freeze: $(cat "$T/err")"
[ "$(state "$a")" = PAUSED ] || fail "a should still be paused (it is $(state "$a"))"
slipway -o json deployment show "$a" | js 'j.timeline.map(e=>e.event+": "+e.detail).join("\n")' | grep -qi "resume refused.*freeze" \
  || fail "a's timeline should say the resume was refused by the freeze"
ok "resume during a freeze is refused, naming it; the deployment stays paused"

# a ends; b would start now: it is evaluated again and never starts.
slipway cancel "$a" --reason "freeze" >/dev/null || fail "cancel a"
wait_state "$a" CANCELLED 10
wait_state "$b" FAILED 30
d=$(slipway -o json deployment show "$b")
js 'j.reason' <<<"$d" | grep -qi "freeze" || fail "b's reason should name the freeze: $(js 'j.reason' <<<"$d")"
[ "$(js 'j.started_unix_ms' <<<"$d")" = 0 ] || fail "b was started"
[ "$(js 'j.targets.every(t=>t.state==="skipped")' <<<"$d")" = true ] || fail "b's targets should all be skipped"
js 'j.timeline.map(e=>e.event+": "+e.detail).join("\n")' <<<"$d" | grep -qi "denied.*freeze" \
  || fail "b's timeline should say it was denied by the freeze"
[ -z "$(sql "select 1 from orchestrator.targets where deployment_id = '$b' and generation > 0")" ] \
  || fail "a task of b was dispatched"
ok "the queued deployment does not start when the one ahead ends: FAILED, reason names the freeze"

for i in $(seq 1 100); do
  audited "$b" --action deploy.denied --outcome denied && break
  sleep 0.1
done
audited "$b" --action deploy.denied --outcome denied || fail "b's denial is not in the audit log"
ok "the denial at start is audited"
done_checks
