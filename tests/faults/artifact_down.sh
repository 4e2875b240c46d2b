#!/usr/bin/env bash
# tests/faults/artifact_down.sh - fault 4 of issue 11 with the artifact
# service down for 30 s mid-rollout (see lib_peer_down.sh). The release
# rolled out across the fault (1.0.0, after 2.0.0) is one every agent
# already holds unpacked, so the agents need no pull: what is tested is that
# the orchestrator (release pins, GC pins) does not wait on the dead peer.
# FAULT_PULL=1 rolls out 4.0.0, new to the agents, instead: then the agents
# must ride out the outage while pulling too.
PEER=artifact PRE="1.0.0 2.0.0" VERSION=1.0.0
[ -n "${FAULT_PULL:-}" ] && VERSION=4.0.0
. "$(dirname "$0")/lib_peer_down.sh"
