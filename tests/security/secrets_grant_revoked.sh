#!/usr/bin/env bash
# tests/security/secrets_grant_revoked.sh - hole 6 (secrets): the
# orchestrator's right to grant an app's secrets is taken away (a guardrail
# forbids it `grant` on those secrets) and a deployment of the app follows.
# The secrets service refuses each grant (PERMISSION_DENIED); that is an
# answer, not an outage: the deployment must stop, FAILED with a reason
# that says the grant was refused, instead of retrying for ever with its
# targets "waiting for a secrets grant". Nothing of the new release runs.
. "$(dirname "$0")/lib.sh"

app=sgr
td=$(cat "$SLIPWAY_PKI_DIR/trust-domain")
keep_policy

bundles $app --versions "1.0.0 2.0.0" --secret db-password
for v in 1.0.0 2.0.0; do push $app $v "$T/bundles/$app-$v.tar.gz"; done
agents $app prod eu/sg1 eu/sg2
printf '%s' "sgr-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')" \
  | slipway secrets put db-password --scope $app/prod >/dev/null || fail "secrets put"
id=$(deploy $app prod 1.0.0 --batch 2 --wait)
[ "$(state "$id")" = SUCCEEDED ] || fail "$app 1.0.0 (with its secret) did not succeed"
ok "$app 1.0.0 runs with its secret granted"

# The orchestrator may no longer grant $app's secrets.
cat >"$T/policy.json" <<JSON
{ "version": 1,
  "guardrails": [ { "name": "no-$app-grants", "principals": ["spiffe://$td/service/orchestrator"],
                    "scope": { "app": "$app" },
                    "forbid": { "actions": ["grant"], "kinds": ["secret"], "apps": ["$app"],
                                "environments": ["*"], "names": ["*"] } } ] }
JSON
slipway policy apply "$T/policy.json" >/dev/null || fail "policy apply"

b=$(deploy $app prod 2.0.0 --batch 2)
wait_state "$b" FAILED 30
d=$(slipway -o json deployment show "$b")
js 'j.reason' <<<"$d" | grep -q "refused the grant" || fail "the reason should say the grant was refused: $(js 'j.reason' <<<"$d")"
[ "$(js 'j.targets.every(t=>t.state==="skipped")' <<<"$d")" = true ] || fail "no target should have been deployed"
[ -z "$(sql "select 1 from orchestrator.targets where deployment_id = '$b' and generation > 0")" ] \
  || fail "a task of $b was dispatched without its secrets"
[ -z "$(sql "select 1 from orchestrator.grants where deployment_id = '$b' and not done")" ] \
  || fail "grants of $b are still being asked for"
v=$(slipway -o json agents ls --app $app | js 'j.map(a=>a.version).join(",")')
[[ "$v" != *2.0.0* ]] || fail "an agent runs 2.0.0 ($v)"
grep -q "task=$b:" "$S"/logs/agent-eu-sg*.log && fail "an agent received a task of $b"
ok "a refused secrets grant stops the deployment: FAILED, the reason says so, 2.0.0 never runs"

for i in $(seq 1 100); do
  audited "$b" --action deploy.failed && break
  sleep 0.1
done
audited "refused the grant" --action deploy.failed || fail "the failure is not in the audit log"
ok "the stop is audited"
done_checks
