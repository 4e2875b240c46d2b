#!/usr/bin/env bash
# tests/compose/run.sh - the compose suite end to end (`make compose-test`).
#
# Builds the images (compose/Dockerfile, and compose/local/Dockerfile for
# PostgreSQL and the S3 server), brings compose/compose.yaml up with the
# override for machines without an image registry (compose/compose.local.yaml),
# then, with the CLI in a container as the admin user: checks every service
# answers its health check and both agents registered, pushes web 1.0.0,
# 2.0.0 and 3.0.0, deploys 1.0.0 then 2.0.0, rolls back to 1.0.0, deploys
# 3.0.0 (its health check fails: the orchestrator rolls it back on its own),
# checks what answers on each agent's application port and that the
# applications run as slipway-app, not root, restarts an agent's container
# and sees its release started again, signs a checkpoint and
# verifies the audit log with the log's public key. `down -v` removes
# everything at exit, whatever happened. Prints how long each phase took.
#
# It needs root (dockerd, debootstrap) and Docker 20.10 or later with
# docker-compose 1.29 or `docker compose` (scripts/bootstrap --containers
# installs Debian's). A daemon that answers is used as it is; otherwise one
# is started (--bridge=none --iptables=false: host networking only) and
# stopped by its pid at the end. The base image slipway-base:bookworm is
# made once with debootstrap and kept between runs, and so is Docker's
# build cache.
#
# Environment: COMPOSE (the compose command; default docker-compose when
# installed, else `docker compose`), COMPOSE_TEST_PROJECT (slipwaytest),
# TMPDIR. The suite's ports (7701-7712 on 127.0.0.1, compose/README.md)
# must be free.
set -euo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
project=${COMPOSE_TEST_PROJECT:-slipwaytest}
base_image=slipway-base:bookworm
work=$(mktemp -d "${TMPDIR:-/tmp}/slipway-compose.XXXXXX")
chmod 700 "$work"
dockerd_pid=""
up=0
t0=$(date +%s)
phases=()

say() { printf '\033[1m== %s\033[0m\n' "$*"; }
fail() { echo "compose-test: FAILED: $*" >&2; exit 1; }

# phase NAME: closes the previous phase (recording its duration), opens NAME.
phase_name="" phase_t=0
phase() {
  local now; now=$(date +%s)
  [ -n "$phase_name" ] && phases+=("$(printf '%-42s %4ss' "$phase_name" $((now - phase_t)))")
  phase_name=$1 phase_t=$now
  [ -n "$1" ] && say "$1"
  return 0
}

# The compose command: v1 (Debian's docker-compose) or v2 (docker compose).
if [ -n "${COMPOSE:-}" ]; then
  read -r -a compose_cmd <<< "$COMPOSE"
elif command -v docker-compose >/dev/null 2>&1; then
  compose_cmd=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
  compose_cmd=(docker compose)
else
  fail "neither docker-compose nor 'docker compose' (run scripts/bootstrap --containers)"
fi
# Builds run through docker-compose's own client (v1) without BuildKit: the
# classic builder honours `network: host`, which the builds need (apt).
export COMPOSE_DOCKER_CLI_BUILD=0 DOCKER_BUILDKIT=0
export SLIPWAY_COMPOSE_SECRETS="$work/secrets"
C() { "${compose_cmd[@]}" -p "$project" -f compose/compose.yaml -f compose/compose.local.yaml "$@"; }
# D ARGS...: docker, bounded (a daemon that hangs fails the test, not CI).
D() { timeout 60 docker "$@"; }
# svc_id SERVICE: the running container of SERVICE in this project.
svc_id() {
  D ps -q --filter "label=com.docker.compose.project=$project" --filter "label=com.docker.compose.service=$1"
}

# cli ARGS...: the slipway CLI as the admin user, in the suite's `cli`
# container (started once, below, and exec'd into: a `run --rm` per command
# costs a container each), bounded to 2 minutes per command.
cli_id=""
cli_env=()
cli() {
  timeout 120 docker exec -i ${cli_env[@]+"${cli_env[@]}"} "$cli_id" slipway "$@"
}
js() { node -e "const j=JSON.parse(require('fs').readFileSync(0,'utf8')); const r=($1); console.log(typeof r==='object'?JSON.stringify(r):r)"; }
versions() { cli -o json agents ls --app web | js 'j.map(a=>a.health+":"+(a.version||"-")).sort().join(",")'; }
# expect_versions V SECONDS: both agents online and running V (heartbeats
# carry what they run, so this may take a heartbeat or two).
expect_versions() {
  local want="online:$1,online:$1" got="" i
  for ((i = 0; i < $2; i++)); do
    got=$(versions) || true
    [ "$got" = "$want" ] && return 0
    sleep 1
  done
  cli agents ls --app web >&2 || true
  fail "want both agents online running web $1, got '$got'"
}

# check_endpoints V: what answers on each agent's application port is web V.
check_endpoints() {
  local eps ep got
  eps=$(cli -o json agents ls --app web | js 'j.map(a=>a.endpoint).filter(e=>e).join(" ")')
  [ "$(wc -w <<<"$eps")" = 2 ] || fail "the agents do not report where web listens: '$eps'"
  for ep in $eps; do
    got=$(curl -sS --max-time 5 "http://$ep/") || fail "web at $ep does not answer"
    echo "  $ep: $got"
    [[ "$got" == *"\"version\":\"$1\""* ]] || fail "web at $ep is not $1: $got"
  done
}

cleanup() {
  local rc=$?
  set +e
  if [ $rc -ne 0 ] && [ $up = 1 ]; then
    echo "---- compose ps" >&2; C ps >&2
    echo "---- compose logs (last 40 lines each)" >&2; C logs --no-color --tail 40 >&2
  fi
  [ -n "$cli_id" ] && D rm -f "$cli_id" >/dev/null 2>&1
  if [ $up = 1 ]; then
    phase "tear down (down -v)"
    timeout 120 "${compose_cmd[@]}" -p "$project" -f compose/compose.yaml -f compose/compose.local.yaml \
      down -v --remove-orphans >"$work/down.log" 2>&1 || { cat "$work/down.log" >&2; rc=1; }
  fi
  if [ -n "$dockerd_pid" ]; then
    phase "stop dockerd (pid $dockerd_pid)"
    kill -TERM "$dockerd_pid" 2>/dev/null
    for _ in $(seq 1 300); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$dockerd_pid" 2>/dev/null && kill -KILL "$dockerd_pid" 2>/dev/null
  fi
  phase ""
  if [ ${#phases[@]} -gt 0 ]; then
    echo "compose-test: time per phase"
    printf '  %s\n' "${phases[@]}"
  fi
  echo "compose-test: $([ $rc -eq 0 ] && echo ok || echo FAILED) in $(($(date +%s) - t0))s"
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- Docker
phase "docker daemon"
[ "$(id -u)" = 0 ] || fail "run as root (it may start dockerd and run debootstrap)"
if ! timeout 20 docker info >/dev/null 2>&1; then
  command -v dockerd >/dev/null 2>&1 || fail "no dockerd (run scripts/bootstrap --containers)"
  # Host networking only: no bridge, no firewall rules (the containers
  # listen on 127.0.0.1 like the local stack).
  dockerd --bridge=none --iptables=false >"$work/dockerd.log" 2>&1 &
  dockerd_pid=$!
  for i in $(seq 1 60); do
    timeout 5 docker info >/dev/null 2>&1 && break
    kill -0 "$dockerd_pid" 2>/dev/null || { cat "$work/dockerd.log" >&2; fail "dockerd exited"; }
    [ "$i" = 60 ] && { tail -n 20 "$work/dockerd.log" >&2; fail "dockerd does not answer after 60 s"; }
    sleep 1
  done
  echo "started dockerd (pid $dockerd_pid)"
fi
D version --format 'docker server {{.Server.Version}}' 2>/dev/null || true
"${compose_cmd[@]}" version 2>/dev/null | head -n 1 || true

# ---- The suite's ports must be free (host networking: a clash is a failure).
busy=$(ss -Htln 2>/dev/null | awk '{print $4}' | grep -E '^127\.0\.0\.1:(77(0[1-6]|1[0-2])|1946[1-8])$' || true)
[ -z "$busy" ] || fail "ports in use: $(tr '\n' ' ' <<<"$busy")(another compose suite? docker-compose -p NAME down -v)"

# ---- The base image: Debian 12 from Debian's packages, made once.
phase "base image ($base_image)"
if D image inspect "$base_image" >/dev/null 2>&1; then
  echo "$base_image exists (kept between runs)"
else
  command -v debootstrap >/dev/null 2>&1 || fail "no debootstrap (run scripts/bootstrap --containers)"
  timeout 900 debootstrap --variant=minbase bookworm "$work/rootfs" http://deb.debian.org/debian \
    >"$work/debootstrap.log" 2>&1 || { tail -n 20 "$work/debootstrap.log" >&2; fail "debootstrap"; }
  # The suites of debian:bookworm-slim: updates and security too.
  rm -f "$work/rootfs/etc/apt/sources.list"
  cat > "$work/rootfs/etc/apt/sources.list.d/debian.sources" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
  tar -C "$work/rootfs" -c . | timeout 300 docker import -c 'CMD ["/bin/bash"]' - "$base_image" >/dev/null
  rm -rf "$work/rootfs"
  echo "imported $base_image"
fi

# ---- Secrets: the host's files, mode 0600 (compose/make-secrets does the same).
mkdir -m 700 "$work/secrets"
compose/make-secrets "$work/secrets" >/dev/null

# ---- Build. What an earlier run of this project left is removed first.
phase "build images"
timeout 120 "${compose_cmd[@]}" -p "$project" -f compose/compose.yaml -f compose/compose.local.yaml \
  down -v --remove-orphans >/dev/null 2>&1 || true
timeout 1800 "${compose_cmd[@]}" -p "$project" -f compose/compose.yaml -f compose/compose.local.yaml \
  build >"$work/build.log" 2>&1 || { tail -n 40 "$work/build.log" >&2; fail "build"; }
D image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^slipway(-local)?:' || true

# ---- Up: compose waits for each health check and one-shot step in order
# (init, then audit, policy, secrets and artifact, the orchestrators,
# enroll, the agents).
phase "up (init, services, enroll, agents)"
up=1
timeout 300 "${compose_cmd[@]}" -p "$project" -f compose/compose.yaml -f compose/compose.local.yaml \
  up -d >"$work/up.log" 2>&1 || { cat "$work/up.log" >&2; fail "up"; }
# Every container of the project as SERVICE STATUS EXIT HEALTH, in one call.
states=""
read_states() {
  local ids
  mapfile -t ids < <(D ps -aq --filter "label=com.docker.compose.project=$project")
  [ ${#ids[@]} -gt 0 ] || fail "no container of project $project"
  states=$(D inspect -f '{{index .Config.Labels "com.docker.compose.service"}} {{.State.Status}} {{.State.ExitCode}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "${ids[@]}")
}
state_of() { awk -v s="$1" '$1 == s {print $2, $3, $4}' <<<"$states"; }
# Nothing waits for the agents' health checks (nothing depends on them):
# give them 30 s.
for i in $(seq 1 30); do
  read_states
  [ "$(state_of agent-1)" = "running 0 healthy" ] && [ "$(state_of agent-2)" = "running 0 healthy" ] && break
  sleep 1
done
for s in postgres s3 audit policy secrets artifact orchestrator-1 orchestrator-2 agent-1 agent-2; do
  [ "$(state_of "$s")" = "running 0 healthy" ] || fail "$s is '$(state_of "$s")', want running and healthy"
done
for s in init enroll; do
  [ "$(state_of "$s")" = "exited 0 " ] || fail "$s is '$(state_of "$s")', want completed (exit 0)"
done
echo "every service healthy; init and enroll completed"

phase "health and agents (CLI in a container)"
# The cli service (profile cli) with its entrypoint replaced by a sleep.
cli_id=$(timeout 60 "${compose_cmd[@]}" -p "$project" -f compose/compose.yaml -f compose/compose.local.yaml \
  run -d -T --entrypoint sleep cli infinity 2>"$work/cli-run.log") || { cat "$work/cli-run.log" >&2; fail "cannot start the cli container"; }
cli_id=$(tail -n 1 <<<"$cli_id")
cli health || fail "slipway health"
for i in $(seq 1 30); do
  [ "$(cli -o json agents ls --app web | js 'j.filter(a=>a.health==="online").length')" = 2 ] && break
  [ "$i" = 30 ] && { cli agents ls >&2 || true; fail "the two agents are not online after 30 s"; }
  sleep 1
done
cli agents ls --app web

# Every service and both agents serve Prometheus metrics on loopback
# (compose/prometheus/prometheus.yml scrapes these addresses).
for port in 19461 19462 19463 19464 19465 19466 19467 19468; do
  curl -sS --max-time 5 "http://127.0.0.1:$port/metrics" | grep -q '^slipway_build_info{' \
    || fail "no metrics at 127.0.0.1:$port/metrics"
done
echo "metrics served on 127.0.0.1:19461-19468"

phase "push web 1.0.0, 2.0.0, 3.0.0"
for v in 1.0.0 2.0.0 3.0.0; do
  cli artifact push "/usr/share/slipway/demo/web-$v.tar.gz" --app web --version "$v" >/dev/null \
    || fail "push web $v"
done
cli artifact ls web

phase "deploy 1.0.0, 2.0.0; roll back to 1.0.0"
cli deploy web prod 1.0.0 --wait >/dev/null || fail "web 1.0.0 did not deploy"
expect_versions 1.0.0 20
cli deploy web prod 2.0.0 --wait >/dev/null || fail "web 2.0.0 did not deploy"
expect_versions 2.0.0 20
cli rollback web prod --to 1.0.0 --reason "compose-test" --wait || fail "the rollback to 1.0.0 failed"
expect_versions 1.0.0 20
# What answers on each agent's application port is 1.0.0 again, and the
# applications run as slipway-app (uid 10002), not as the agent's root.
check_endpoints 1.0.0
for s in agent-1 agent-2; do
  id=$(svc_id "$s")
  uids=$(D top "$id" -eo pid,uid,comm | awk '$3 == "demo-app" {print $2}' | sort -u | tr '\n' ' ')
  [ "$uids" = "10002 " ] || fail "$s runs web as uid(s) '$uids', want 10002 (slipway-app)"
done
echo "web runs as slipway-app (uid 10002) in both agents' containers"

phase "deploy 3.0.0 (fails its health check)"
id3=$(cli -o json deploy web prod 3.0.0 | js 'j.id') || fail "cannot deploy web 3.0.0"
if cli deployment watch "$id3" >/dev/null; then fail "web 3.0.0 should not have succeeded"; fi
state=$(cli -o json deployment show "$id3" | js 'j.state') || true
[ "$state" = ROLLED_BACK ] || fail "web 3.0.0 ($id3) is '$state', want ROLLED_BACK"
expect_versions 1.0.0 20
echo "web 3.0.0 rolled back on its own; both agents run 1.0.0"

phase "restart agent-1's container"
# Its application stops with the container; the new agent starts the
# current release again (docs/operations.md, Containers).
id=$(svc_id agent-1)
timeout 90 docker restart "$id" >/dev/null || fail "cannot restart agent-1"
for i in $(seq 1 30); do
  D top "$id" -eo pid,uid,comm | awk '$3 == "demo-app" && $2 == 10002 {f = 1} END {exit !f}' && break
  [ "$i" = 30 ] && fail "agent-1 did not start web again within 30 s of its restart"
  sleep 1
done
expect_versions 1.0.0 30
check_endpoints 1.0.0
echo "agent-1 is back and runs web 1.0.0 again"

phase "audit log: sign a checkpoint, verify"
# The log's public key, as an auditor is handed it (docs/operations.md).
id=$(svc_id audit)
key=$(D exec "$id" cat /var/lib/slipway/state/audit-signing.key.pub) || fail "no audit public key"
[ -n "$key" ] || fail "empty audit public key"
cli_env=(-e "SLIPWAY_AUDIT_VERIFIER_KEY=$key")
cli audit checkpoint --sign >/dev/null || fail "audit checkpoint --sign"
cli audit log --service orchestrator --limit 8
out=$(cli audit verify) || { echo "$out" >&2; fail "the audit log does not verify"; }
echo "$out"
[[ "$out" == OK:* ]] || fail "audit verify said: $out"
cli_env=()
