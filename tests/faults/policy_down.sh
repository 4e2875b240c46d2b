#!/usr/bin/env bash
# tests/faults/policy_down.sh - fault 4 of issue 11 with the policy service
# down for 30 s mid-rollout (see lib_peer_down.sh; FAULT_PULL=1,
# FAULT_SIGNAL=STOP, FAULT_DOWN=S).
PEER=policy
. "$(dirname "$0")/lib_peer_down.sh"
