# tests/faults/lib_peer_down.sh - sourced by policy_down.sh and
# shellcheck shell=bash
# artifact_down.sh (fault 4 of issue 11): PEER is stopped for 30 s
# (FAULT_DOWN) while a deployment runs; killed -9 and then started again
# with scripts/stack start (FAULT_SIGNAL=STOP: SIGSTOP, a hung peer, then
# SIGCONT). The running deployment must keep progressing while the peer is
# down (more targets done during the outage) and reach SUCCEEDED before
# the peer returns (it needs about 10 s of a 30 s outage: an ordering
# check with a wide margin, not a timing threshold; an engine whose rounds
# each wait out a call to the dead peer crawls and misses it); no target
# runs twice, no agent is lost, every service is
# SERVING within 10 s of the peer's return (the others not restarted), the
# audit log verifies and the outboxes are empty.
#
# By default the release rolled out across the fault (1.0.0, after 2.0.0)
# is one every agent already holds unpacked, so the agents need no pull and
# what is tested is the orchestrator: no engine round waits on the dead
# peer. FAULT_PULL=1 rolls out 4.0.0, new to the agents, instead: then the
# agents' pulls (served by the artifact service, authorized by the policy
# service) must ride out the outage too.
#
# While the peer is down, progress is read from the agents' logs: with the
# policy service down the CLI cannot read a deployment (reads are
# authorized by it, and fail closed).
#
# Caller sets PEER.
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [ -n "${FAULT_PULL:-}" ]; then PRE="1.0.0" VERSION=4.0.0; else PRE="1.0.0 2.0.0" VERSION=1.0.0; fi

down=${FAULT_DOWN:-30}
sig=${FAULT_SIGNAL:-KILL}
if [ "$sig" = STOP ]; then KEEP_PIDS="audit policy secrets artifact orchestrator"
else KEEP_PIDS=$(echo audit policy secrets artifact orchestrator | tr ' ' '\n' | grep -vx "$PEER" | tr '\n' ' '); fi

# Targets whose task for this deployment succeeded, by the agents' logs.
done_targets() { cat "$S"/logs/agent-*.log | grep -c "msg=\"task succeeded\" task=$DEP:deploy:"; }
peer_outage() {
  local pp n0 n1 i st=""
  pp=$(svc_pid "$PEER")
  n0=$(done_targets)
  local t_down; t_down=$(now_ms)
  if [ "$sig" = STOP ]; then kill -STOP "$pp"; else scripts/stack kill "$S" "$PEER"; fi
  say "$PEER stopped (SIG$sig) for $down s with $n0 of 6 targets done"
  while [ $(( $(now_ms) - t_down )) -lt $((down * 1000)) ]; do sleep 0.5; done
  n1=$(done_targets); st=$(sql "select state from orchestrator.deployments where id = '$DEP'")
  FAULT_END_MS=$(now_ms); FAULT_WHAT="$PEER's return"   # before stack start's own wait
  if [ "$sig" = STOP ]; then kill -CONT "$pp"
  else scripts/stack start "$S" "$PEER" >"$T/start.log" 2>&1 || bail "$PEER did not start again: $(cat "$T/start.log")"; fi
  say "$PEER back; during the outage the deployment went from $n0 to $n1 of 6 targets done (orchestrator.deployments.state $st)"
  check "the deployment progressed while $PEER was down ($n0 -> $n1 targets done)" \
    "$([ "$n1" -gt "$n0" ] && echo 0 || echo 1)" "timeline:" "$(timeline "$DEP")" \
    "$(grep -h 'level=\(warn\|error\)' "$S/logs/orchestrator.log" | tail -5)"
  # Read from the table: with policy down the CLI cannot read deployments.
  # The state is stored as the proto's DeploymentState value (5: SUCCEEDED).
  check "the deployment reached SUCCEEDED while $PEER was down" \
    "$([ "$st" = 5 ] && echo 0 || echo 1)" "orchestrator.deployments.state at the end of the outage: $st (5 is SUCCEEDED)" \
    "timeline:" "$(timeline "$DEP")" "orchestrator.log:" "$(grep -h 'level=\(warn\|error\)' "$S/logs/orchestrator.log" | tail -8)"
}

fault_up
push_bundles web --versions "1.0.0 2.0.0 4.0.0"
start_agents web 6
for v in $PRE; do deploy web prod "$v" --batch 6 --wait >/dev/null; done
ok "web $(echo $PRE | tr ' ' '>') on 6 agents in 2 regions before the fault"

# The fault starts once the first target is done: the deployment is running.
rollout_with_fault web "$VERSION" SUCCEEDED peer_outage 1
# For the record (not a check): did it finish while the peer was down?
fin=$(show "$DEP" | js 'j.finished_unix_ms')
last=$(grep -h "msg=\"task succeeded\" task=$DEP:deploy:" "$S"/logs/agent-*.log | sed -E 's/^ts=([^ ]*) .*/\1/' | sort | tail -1)
last_ms=$(node -e "console.log(Date.parse('$last'))")
say "last target done $(( (last_ms - FAULT_END_MS) / 1000 )) s, deployment finished $(( (fin - FAULT_END_MS) / 1000 )) s relative to $PEER's return (negative: during the outage)"
check_versions web "$VERSION"
check_tasks_once
check_no_agent_lost
check_audit
finish
