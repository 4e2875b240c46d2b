#!/usr/bin/env bash
# tests/faults/artifact_down.sh - fault 4 of issue 11 with the artifact service
# down for 30 s mid-rollout (see lib_peer_down.sh; FAULT_PULL=1,
# FAULT_SIGNAL=STOP, FAULT_DOWN=S).
PEER=artifact
. "$(dirname "$0")/lib_peer_down.sh"
