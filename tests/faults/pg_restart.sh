#!/usr/bin/env bash
# tests/faults/pg_restart.sh - fault 1 of issue 11: PostgreSQL stopped hard
# (pg_ctl -m immediate) for 20 s in the middle of a 6-target rolling deploy,
# then started again. FAULT_REPEAT=N runs N deployments, each with its own
# outage (default 1); FAULT_DOWN=S changes the outage (default 20 s).
# The deployment must succeed, no target run twice, no agent be marked
# lost, every service be SERVING within 10 s of PostgreSQL's return
# without a restart, and the audit log verify with empty outboxes.
. "$(dirname "$0")/lib.sh"

down=${FAULT_DOWN:-20}
pg_outage() {
  say "pg_ctl -m immediate stop; PostgreSQL down for $down s"
  pg_stop_immediate || bail "pg_ctl stop failed: $(tail -3 "$T/pg_ctl.log")"
  sleep "$down"
  pg_start || bail "PostgreSQL did not start again: $(tail -5 "$S/pg/server.log")"
  FAULT_END_MS=$(now_ms); FAULT_WHAT="PostgreSQL's return"
  say "PostgreSQL started again"
}

fault_up
push_bundles web
start_agents web 6
id=$(deploy web prod 1.0.0 --batch 6 --wait)
ok "web 1.0.0 on 6 agents in 2 regions before the fault"

v=1.0.0
for r in $(seq 1 "${FAULT_REPEAT:-1}"); do
  # Alternate between the slow-starting 4.0.0 and 2.0.0 so every round deploys.
  if [ "$v" = 4.0.0 ]; then v=2.0.0; else v=4.0.0; fi
  say "round $r of ${FAULT_REPEAT:-1}"
  rollout_with_fault web "$v" SUCCEEDED pg_outage
  check_versions web "$v" "round $r"
done

check_tasks_once
check_no_agent_lost
check_audit
finish
