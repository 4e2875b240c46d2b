#!/usr/bin/env bash
# tests/faults/orch_kill_rollback.sh - fault 9 of issue 11: kill -9 of the
# (only) orchestrator in the middle of a rollback. A good release runs on 6
# agents; a bad one (FAULT_BAD, default 5.0.0 as a canary of 2) fails its
# health check and the deployment rolls back; while it is ROLLING_BACK the orchestrator is
# killed -9 and started again (scripts/stack start). The deployment must
# end ROLLED_BACK with every agent on the good release, each rollback task
# run once at one generation, no agent lost, every service SERVING within
# 10 s of the orchestrator's return (the others not restarted), and the
# audit log verify with empty outboxes.
#
# Why not 3.0.0 after 1.0.0: 3.0.0 never becomes healthy, so the agent
# keeps the previous release serving and the rollback task finishes in
# 1 ms ("already running ... and healthy"): nothing to kill inside. 5.0.0
# passes its health check when deployed and fails it 3 s later, so the
# canary targets really run it and their rollback must start the good
# release again; the good release is 4.0.0 (FAULT_GOOD), the demo app's
# slow starter (2 s), which makes the rollback last about 2 s.
# FAULT_BAD=3.0.0 runs the brief's original shape (rolling, batches of 2).
. "$(dirname "$0")/lib.sh"

good=${FAULT_GOOD:-4.0.0}
fault_up
push_bundles web --versions "1.0.0 2.0.0 3.0.0 4.0.0 5.0.0"
start_agents web 6
id=$(deploy web prod "$good" --batch 6 --wait)
ok "web $good on 6 agents in 2 regions before the fault"

bad=${FAULT_BAD:-5.0.0}
if [ "$bad" = 5.0.0 ]; then
  DEP=$(deploy web prod 5.0.0 --strategy canary --canary 2 --bake 60s --batch 2)
  say "deployment $DEP: web@5.0.0 (fails its live health check 3 s after start), canary of 2, bake 60 s"
else
  DEP=$(deploy web prod "$bad" --batch 2)
  say "deployment $DEP: web@$bad, batches of 2"
fi
s=$(wait_state "$DEP" ROLLING_BACK 60)
[ "$s" = ROLLING_BACK ] || bail "the deployment did not roll back (it is $s)"
say "ROLLING_BACK: $(show "$DEP" | js 'j.targets.map(t=>t.agent.replace(/.*agent\//,"")+"="+t.state).join(" ")')"
remember_pids audit policy secrets artifact
scripts/stack kill "$S" orchestrator
say "orchestrator killed -9"
sleep "${FAULT_DOWN:-1}"
t0=$(now_ms)   # the 10 s count from the restart, whatever stack start waits
scripts/stack start "$S" orchestrator >"$T/start.log" 2>&1 || bail "the orchestrator did not start again: $(cat "$T/start.log")"
say "orchestrator started again"
check_serving_within_10s "$t0" "the orchestrator's restart"

s=$(wait_state "$DEP" ROLLED_BACK 120)
check_outcome "$DEP" ROLLED_BACK "after kill -9 mid-rollback"
check_attempts "$DEP"
check_versions web "$good"
n=$(cat "$S"/logs/agent-*.log | grep -c "msg=\"task started\" task=$DEP:rollback:")
check "the rollback reached the agents (rollback tasks started: $n)" "$([ "$n" -ge 1 ] && echo 0 || echo 1)"
check_tasks_once ":rollback:"
check_tasks_once
check_no_agent_lost
check_audit
finish
