#!/usr/bin/env bash
# tests/faults/agents_lock.sh - fault 2 of issue 11: a stalled database, not
# a dead one. In the middle of a 6-target rolling deploy, a session holds
# ACCESS EXCLUSIVE on orchestrator.agents for 8 s (FAULT_LOCK=S), so every
# heartbeat flush, registration and loss check blocks on it. The deployment
# must succeed, no target run twice, no agent be marked lost, every service
# be SERVING within 10 s of the lock's release, and the audit log verify
# with empty outboxes.
. "$(dirname "$0")/lib.sh"

hold=${FAULT_LOCK:-8}
agents_lock() {
  say "LOCK TABLE orchestrator.agents IN ACCESS EXCLUSIVE MODE for $hold s"
  psql -X -q -v ON_ERROR_STOP=1 "$(pg_admin_url)" >"$T/lock.out" 2>&1 <<SQL &
BEGIN;
LOCK TABLE orchestrator.agents IN ACCESS EXCLUSIVE MODE;
SELECT pg_sleep($hold);
COMMIT;
SQL
  local lk=$! i
  # The lock is held once the session waits in pg_sleep.
  for i in $(seq 1 50); do
    [ "$(sql "select count(*) from pg_locks l join pg_class c on c.oid = l.relation
              where c.relname = 'agents' and l.mode = 'AccessExclusiveLock' and l.granted")" -ge 1 ] && break
    sleep 0.1
  done
  [ "$i" -lt 50 ] || bail "the lock was not taken: $(cat "$T/lock.out")"
  wait "$lk" || bail "the locking session failed: $(cat "$T/lock.out")"
  FAULT_END_MS=$(now_ms); FAULT_WHAT="the lock's release"
  say "lock released"
}

fault_up
push_bundles web
start_agents web 6
id=$(deploy web prod 1.0.0 --batch 6 --wait)
ok "web 1.0.0 on 6 agents in 2 regions before the fault"

rollout_with_fault web 4.0.0 SUCCEEDED agents_lock
check_versions web 4.0.0

check_tasks_once
check_no_agent_lost
check_audit
finish
