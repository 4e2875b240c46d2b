#!/usr/bin/env bash
# tests/faults/policy_down.sh - fault 4 of issue 11 with the policy service
# down for 30 s mid-rollout (see lib_peer_down.sh).
PEER=policy PRE="1.0.0" VERSION=4.0.0
. "$(dirname "$0")/lib_peer_down.sh"
