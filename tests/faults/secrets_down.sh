#!/usr/bin/env bash
# tests/faults/secrets_down.sh - fault 3 of issue 11: the secrets service
# stopped for 30 s (FAULT_DOWN) while an app with secrets (vault) rolls out
# next to one without (web). Both deployments are created first (a new one
# is refused while secrets is down, by design); once vault's first batch is
# done the secrets service is killed -9 (FAULT_SIGNAL=STOP: SIGSTOP, a hung
# peer, then SIGCONT) and, 30 s later, started again with scripts/stack start.
# web must succeed (its duration with and without the fault is printed, not
# asserted); vault must wait and then succeed; no target runs twice, no
# agent is lost, every service is SERVING within 10 s of the secrets
# service's return (the others not restarted), the audit log verifies and
# the outboxes are empty.
. "$(dirname "$0")/lib.sh"

down=${FAULT_DOWN:-30}
sig=${FAULT_SIGNAL:-KILL}
fault_up
push_bundles web --versions "1.0.0 4.0.0"
push_bundles vault --secret db-password --versions "1.0.0 4.0.0"
printf 'vault-%s' "$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')" \
  | slipway secrets put db-password --scope vault/prod >/dev/null || bail "secrets put"
start_agents web 4
start_agents vault 4
w=$(deploy web prod 1.0.0 --batch 4 --wait)
v=$(deploy vault prod 1.0.0 --batch 4 --wait)
ok "web and vault 1.0.0 on 4 agents each before the fault"

duration() { show "$1" | js 'j.finished_unix_ms - j.started_unix_ms'; }
both_4() { # -> sets W and V, the two deployments of 4.0.0
  W=$(deploy web prod 4.0.0 --batch 2 --pause 3s)
  V=$(deploy vault prod 4.0.0 --batch 2 --pause 3s)
}

# Without the fault: the same two deployments, for the durations.
both_4
sw=$(wait_state "$W" SUCCEEDED 120); sv=$(wait_state "$V" SUCCEEDED 120)
[ "$sw" = SUCCEEDED ] && [ "$sv" = SUCCEEDED ] || bail "without the fault: web $sw, vault $sv"
base_w=$(duration "$W"); base_v=$(duration "$V")
deploy web prod 1.0.0 --batch 4 --wait >/dev/null
deploy vault prod 1.0.0 --batch 4 --wait >/dev/null
say "without the fault: web took $base_w ms, vault $base_v ms"

both_4
wait_succeeded_targets "$V" 2 60 || bail "vault's first batch did not finish: $(timeline "$V")"
if [ "$sig" = STOP ]; then remember_pids audit policy secrets artifact orchestrator
else remember_pids audit policy artifact orchestrator; fi
sp=$(svc_pid secrets)
t_down=$(now_ms)
if [ "$sig" = STOP ]; then kill -STOP "$sp"; else scripts/stack kill "$S" secrets; fi
say "secrets service stopped (SIG$sig) for $down s; vault $(show "$V" | js 'j.targets.filter(t=>t.state==="succeeded").length')/4 and web $(show "$W" | js 'j.targets.filter(t=>t.state==="succeeded").length')/4 targets done"
# web, meanwhile, must finish; note when (for the record, not a check).
w_done=""
for i in $(seq 1 $((down * 5))); do
  [ -z "$w_done" ] && terminal "$(state "$W")" && w_done=$(( ($(now_ms) - t_down) / 1000 ))
  [ $(( $(now_ms) - t_down )) -ge $((down * 1000)) ] && break
  sleep 0.2
done
vs_during=$(show "$V" | js 'j.state+", "+j.targets.filter(t=>t.state==="succeeded").length+"/4 targets done"')
t0=$(now_ms)   # the 10 s count from the restart, whatever stack start waits
if [ "$sig" = STOP ]; then kill -CONT "$sp"
else scripts/stack start "$S" secrets >"$T/start.log" 2>&1 || bail "secrets did not start again: $(cat "$T/start.log")"; fi
if [ -n "$w_done" ]; then wd="done $w_done s into the outage"; else wd="not done during the outage"; fi
say "secrets service back; web was $wd; vault: $vs_during"
check_serving_within_10s "$t0" "the secrets service's return"

sw=$(wait_state "$W" SUCCEEDED 120)
check_outcome "$W" SUCCEEDED "web (no secrets) with secrets down"
sv=$(wait_state "$V" SUCCEEDED 120)
check_outcome "$V" SUCCEEDED "vault (secrets) after the secrets service's return"
say "web took $base_w ms without the fault, $(duration "$W") ms with it; vault $base_v ms without, $(duration "$V") ms with it"
check_attempts "$W"
check_attempts "$V"
check_versions web 4.0.0
check_versions vault 4.0.0
check_secret_present vault "every vault instance received its secret"
check_no_agent_lost
check_audit
finish
