# tests/faults/lib_peer_down.sh - sourced by policy_down.sh and
# artifact_down.sh (fault 4 of issue 11): PEER is stopped for 30 s
# (FAULT_DOWN) while a deployment runs; killed -9 and then started again
# with scripts/stack start (FAULT_SIGNAL=STOP: SIGSTOP, a hung peer, then
# SIGCONT). The running deployment must keep progressing while the peer is
# down (at least one more target done during the outage) and reach
# SUCCEEDED; no target runs twice, no agent is lost, every service is
# SERVING within 10 s of the peer's return (the others not restarted), the
# audit log verifies and the outboxes are empty.
#
# Caller sets PEER, PRE (releases deployed before, in order) and VERSION
# (the release rolled out across the fault).
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

down=${FAULT_DOWN:-30}
sig=${FAULT_SIGNAL:-KILL}
if [ "$sig" = STOP ]; then KEEP_PIDS="audit policy secrets artifact orchestrator"
else KEEP_PIDS=$(echo audit policy secrets artifact orchestrator | tr ' ' '\n' | grep -vx "$PEER" | tr '\n' ' '); fi

done_targets() { show "$DEP" | js 'j.targets.filter(t=>t.state==="succeeded").length'; }
peer_outage() {
  local pp n0 n1 i st=""
  pp=$(svc_pid "$PEER")
  n0=$(done_targets)
  local t_down; t_down=$(now_ms)
  if [ "$sig" = STOP ]; then kill -STOP "$pp"; else scripts/stack kill "$S" "$PEER"; fi
  say "$PEER stopped (SIG$sig) for $down s with $n0 of 6 targets done"
  while [ $(( $(now_ms) - t_down )) -lt $((down * 1000)) ]; do sleep 0.5; done
  n1=$(done_targets); st=$(state "$DEP")
  if [ "$sig" = STOP ]; then kill -CONT "$pp"
  else scripts/stack start "$S" "$PEER" >"$T/start.log" 2>&1 || bail "$PEER did not start again: $(cat "$T/start.log")"; fi
  FAULT_END_MS=$(now_ms); FAULT_WHAT="$PEER's return"
  say "$PEER back; during the outage the deployment went from $n0 to $n1 of 6 targets done (now $st)"
  check "the deployment progressed while $PEER was down ($n0 -> $n1 targets done)" \
    "$([ "$n1" -gt "$n0" ] && echo 0 || echo 1)" "state at the end of the outage: $st" "timeline:" "$(timeline "$DEP")" \
    "$(grep -h 'level=\(warn\|error\)' "$S/logs/orchestrator.log" | tail -5)"
}

fault_up
push_bundles web --versions "1.0.0 2.0.0 4.0.0"
start_agents web 6
for v in $PRE; do deploy web prod "$v" --batch 6 --wait >/dev/null; done
ok "web $(echo $PRE | tr ' ' '>') on 6 agents in 2 regions before the fault"

rollout_with_fault web "$VERSION" SUCCEEDED peer_outage
check_versions web "$VERSION"
check_tasks_once
check_no_agent_lost
check_audit
finish
