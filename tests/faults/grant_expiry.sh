#!/usr/bin/env bash
# tests/faults/grant_expiry.sh - fault 6 of issue 11: a deployment rolled
# back more than the secrets grants' lifetime after it started still
# delivers secrets (grants are renewed, not reused stale). The orchestrator
# runs with --grant-ttl 20 s (FAULT_TTL); vault 5.0.0 passes its health
# check when deployed and fails it 30 s later (FAULT_FAIL_AFTER), deployed
# as a canary of one baking 60 s. The canary fails after its grant expired,
# and the rollback to 1.0.0 must start it again with its secret: the
# deployment ends ROLLED_BACK, every instance has the secret, and the
# canary's agent got a second grant.
. "$(dirname "$0")/lib.sh"

ttl=${FAULT_TTL:-20s}
fail_after=${FAULT_FAIL_AFTER:-30000}
fault_up
scripts/stack kill "$S" orchestrator
SLIPWAY_ORCHESTRATOR_GRANT_TTL=$ttl scripts/stack start "$S" orchestrator >"$T/start.log" 2>&1 \
  || bail "the orchestrator did not start with --grant-ttl $ttl: $(cat "$T/start.log")"
push_bundles vault --secret db-password --versions "1.0.0 5.0.0" --fail-after "$fail_after"
printf 'vault-%s' "$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')" \
  | slipway secrets put db-password --scope vault/prod >/dev/null || bail "secrets put"
start_agents vault 2
deploy vault prod 1.0.0 --batch 2 --wait >/dev/null
ok "vault 1.0.0 with its secret on 2 agents (grants live $ttl)"

DEP=$(deploy vault prod 5.0.0 --strategy canary --canary 1 --bake 60s --batch 1)
say "deployment $DEP: vault@5.0.0 (fails its health check $fail_after ms after start), canary of 1, bake 60 s"
s=$(wait_state "$DEP" ROLLED_BACK 150)
check_outcome "$DEP" ROLLED_BACK "a rollback past the grants' lifetime"
d=$(show "$DEP")
gap=$(js '(j.timeline.find(e=>e.event==="rolling back")||{time_unix_ms:0}).time_unix_ms - j.started_unix_ms' <<<"$d")
ttl_ms=$(( ${ttl%s} * 1000 ))
check "the rollback started more than the grant lifetime after the deployment ($gap ms > $ttl_ms ms)" \
  "$([ "$gap" -gt "$ttl_ms" ] 2>/dev/null && echo 0 || echo 1)"
check_versions vault 1.0.0
check_secret_present vault "every vault instance has its secret after the rollback"
canary=$(js 'j.targets.filter(t=>t.attempts>0).map(t=>t.agent).join(" ")' <<<"$d")
n=$(sql "select count(*) from secrets.grants where deployment_id = '$DEP'")
check "the rolled-back target got a fresh grant ($n grants for $DEP, canary: $canary)" \
  "$([ "$n" -ge 2 ] 2>/dev/null && echo 0 || echo 1)" \
  "$(sql "select agent || ' expires ' || expires_ms || ' created ' || created_ms from secrets.grants where deployment_id = '$DEP'")"
check_no_agent_lost
check_audit
finish
