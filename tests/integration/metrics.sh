#!/usr/bin/env bash
# tests/integration/metrics.sh - a real Prometheus server (Debian's
# `prometheus`, installed by scripts/bootstrap) scrapes the running stack:
# every service's and an agent's --metrics-listen endpoint (scripts/stack
# writes their addresses to run/NAME.metrics). One deployment runs; then
# Prometheus' HTTP API must show every target up, every metric family the
# docs promise (docs/operations.md, "Metrics"), and the counters the
# deployment moves (deployments created, Deploy RPCs, bytes pushed and
# pulled, tasks run) above what they were before it. Also: the endpoint
# answers 404 off /metrics and 405 to other methods, a service refuses a
# non-loopback --metrics-listen without --metrics-allow-remote, made-up
# method names never become label values, and the alert rules and the
# dashboard's queries in compose/ evaluate and name only exported families.
# No timing thresholds: every wait is "until it shows, or give up".
set -uo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
S=$SLIPWAY_STACK_DIR
T=$(mktemp -d "${SLIPWAY_TEST_TMP:-/tmp}/metrics.XXXXXX")
export PATH="$top/build/bin:$PATH"
checks=0
prom_pid=""

cleanup() { [ -n "$prom_pid" ] && kill "$prom_pid" 2>/dev/null && wait "$prom_pid" 2>/dev/null; }
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; [ -s "$T/prometheus.log" ] && tail -n 20 "$T/prometheus.log" >&2; exit 1; }
ok() { checks=$((checks + 1)); echo "ok $checks - $*"; }
js() { node -e "const j=JSON.parse(require('fs').readFileSync(0,'utf8')); const r=($1); console.log(typeof r==='object'?JSON.stringify(r):r)"; }
free_port() { node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }

command -v prometheus >/dev/null || fail "prometheus is not installed (run scripts/bootstrap)"

# ---- the endpoint itself, before Prometheus
svcs=(artifact orchestrator policy audit secrets)
for s in "${svcs[@]}"; do
  [ -s "$S/run/$s.metrics" ] || fail "the stack gave $s no metrics address (run/$s.metrics)"
done
m=$(cat "$S/run/audit.metrics")
curl -sf "http://$m/metrics" >"$T/audit.txt" || fail "GET http://$m/metrics failed"
grep -q '^# TYPE slipway_rpc_server_handled_total counter$' "$T/audit.txt" || fail "no RPC counter in the audit text"
grep -q '^slipway_build_info{service="audit",version="[^"]*"} 1$' "$T/audit.txt" || fail "no build info in the audit text"
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://$m/")" = 404 ] || fail "GET / should be 404"
[ "$(curl -s -o /dev/null -w '%{http_code}' -X POST -d x "http://$m/metrics")" = 405 ] || fail "POST /metrics should be 405"
[ "$(curl -s -o /dev/null -w '%{http_code}' -X PUT -d x "http://$m/metrics")" = 405 ] || fail "PUT /metrics should be 405"
ok "GET /metrics answers the exposition text; other paths 404, other methods 405"

# A non-loopback address is refused unless --metrics-allow-remote.
if timeout 60 "$S/run/policy.sh" --listen 127.0.0.1:0 --port-file "$T/pol2.port" \
    --metrics-listen 0.0.0.0:0 >"$T/pol2.log" 2>&1 </dev/null; then
  fail "policy started with --metrics-listen 0.0.0.0:0 and no --metrics-allow-remote"
fi
grep -q -- "--metrics-allow-remote" "$T/pol2.log" || fail "the refusal does not name the flag: $(tail -3 "$T/pol2.log")"
ok "a non-loopback --metrics-listen is refused without --metrics-allow-remote"

# Label values come from the server's own method table, never from the
# caller: 40 made-up method names (quotes and all) all count as
# service="unknown", method="unknown", so a caller cannot grow the
# metrics (or smuggle text into them).
printf '\x00\x00\x00\x00\x00' >"$T/empty.grpc" # one empty gRPC message
a=$(cat "$S/run/audit.port")
for i in $(seq 1 40); do
  curl -s --http2 --cacert "$SLIPWAY_CA" --cert "$SLIPWAY_CERT" --key "$SLIPWAY_KEY" \
    -H 'content-type: application/grpc' -H 'te: trailers' --data-binary @"$T/empty.grpc" \
    -o /dev/null "https://127.0.0.1:$a/made.up.Service$i/Evil%22x$i" || true # gRPC status in trailers
done
curl -sf "http://$m/metrics" >"$T/audit2.txt" || fail "GET /metrics failed"
! grep -q 'made\.up\|Evil' "$T/audit2.txt" || fail "a caller's method name became a label value"
n=$(sed -n 's/^slipway_rpc_server_handled_total{service="unknown",method="unknown",code="UNIMPLEMENTED"} //p' "$T/audit2.txt")
[ "${n:-0}" -ge 40 ] || fail "the made-up calls were not counted as unknown/UNIMPLEMENTED (got '${n:-}')"
ok "made-up method names count as service=\"unknown\", method=\"unknown\": callers cannot add label values"

# ---- an agent and its release
scripts/make-bundles --app mtr --out "$T/bundles" >/dev/null || fail "make-bundles"
slipway artifact push "$T/bundles/mtr-1.0.0.tar.gz" --app mtr --version 1.0.0 >/dev/null 2>"$T/push.err" \
  || fail "push: $(cat "$T/push.err")"
scripts/stack agent "$S" mx/m1 --label app=mtr --label environment=prod >/dev/null || fail "cannot start the agent"
[ -s "$S/run/agent-mx-m1.metrics" ] || fail "the stack gave the agent no metrics address"
for i in $(seq 1 100); do
  [ "$(slipway -o json agents ls --app mtr | js 'j.filter(a=>a.health==="online").length')" = 1 ] && break
  sleep 0.1
done

# ---- Prometheus, scraping everything every second
pport=$(free_port)
{
  echo "global:"
  echo "  scrape_interval: 1s"
  echo "  scrape_timeout: 1s"
  echo "  evaluation_interval: 1s"
  echo "rule_files: ['$top/compose/prometheus/alerts.yml']"
  echo "scrape_configs:"
  for s in "${svcs[@]}" agent-mx-m1; do
    echo "  - job_name: '$s'"
    echo "    static_configs:"
    echo "      - targets: ['$(cat "$S/run/$s.metrics")']"
  done
} >"$T/prometheus.yml"
prometheus --config.file="$T/prometheus.yml" --storage.tsdb.path="$T/data" \
  --web.listen-address="127.0.0.1:$pport" --log.level=warn >"$T/prometheus.log" 2>&1 </dev/null &
prom_pid=$!
P="http://127.0.0.1:$pport"
for i in $(seq 1 300); do curl -sf "$P/-/ready" >/dev/null 2>&1 && break; sleep 0.1; done
curl -sf "$P/-/ready" >/dev/null || fail "Prometheus did not become ready"

q() { curl -sf --get "$P/api/v1/query" --data-urlencode "query=$1"; } # PROMQL -> JSON
qv() { q "$1" | js 'j.data.result.length ? Number(j.data.result[0].value[1]) : "none"'; } # scalar or "none"
wait_true() { # DESCRIPTION JS-ON-NOTHING... ; re-runs "$2" (a shell command) until it prints true
  local i
  for i in $(seq 1 600); do [ "$(eval "$2")" = true ] && return 0; sleep 0.1; done
  fail "$1"
}

up_all() { curl -sf "$P/api/v1/targets" | js 'j.data.activeTargets.length === 6 && j.data.activeTargets.every(t => t.health === "up")'; }
wait_true "not every target is up: $(curl -sf "$P/api/v1/targets" | js 'j.data.activeTargets.map(t=>t.labels.job+"="+t.health+" "+t.lastError).join("; ")' 2>/dev/null)" up_all
ok "Prometheus scrapes all six targets (five services, one agent): every one up"

# The counters before the deployment (absent = 0).
c0() { local v; v=$(qv "sum($1)"); [ "$v" = none ] && v=0; echo "$v"; }
wait_true "the RPC counters never reached Prometheus" '[ "$(qv "sum(slipway_rpc_server_handled_total)")" != none ] && echo true'
created0=$(c0 'slipway_orchestrator_deployments_created_total{kind="deploy"}')
rpc0=$(c0 'slipway_rpc_server_handled_total{service="slipway.v1.Orchestrator",method="CreateDeployment",code="OK"}')
sent0=$(c0 'slipway_artifact_sent_bytes_total')
tasks0=$(c0 'slipway_agent_tasks_total{result="succeeded"}')

# ---- one deployment
out=$(slipway -o json deploy mtr prod 1.0.0 --wait 2>"$T/deploy.err") || fail "deploy: $(cat "$T/deploy.err")"
[ "$(js 'j.state' <<<"$out")" = SUCCEEDED ] || fail "the deployment did not succeed: $out"

moved() { # PROMQL BEFORE
  [ "$(qv "sum($1)")" != none ] && node -e "process.exit(Number('$(qv "sum($1)")') > Number('$2') ? 0 : 1)" && echo true
}
wait_true "slipway_orchestrator_deployments_created_total did not move" "moved 'slipway_orchestrator_deployments_created_total{kind=\"deploy\"}' $created0"
wait_true "CreateDeployment OK calls did not move" "moved 'slipway_rpc_server_handled_total{service=\"slipway.v1.Orchestrator\",method=\"CreateDeployment\",code=\"OK\"}' $rpc0"
wait_true "the artifact service's sent bytes did not move" "moved slipway_artifact_sent_bytes_total $sent0"
wait_true "the agent's succeeded tasks did not move" "moved 'slipway_agent_tasks_total{result=\"succeeded\"}' $tasks0"
wait_true "no deployment shows as succeeded" "moved 'slipway_orchestrator_deployments{state=\"succeeded\"}' 0"
wait_true "the agent does not show as online" "moved 'slipway_orchestrator_agents{health=\"online\"}' 0"
wait_true "the audit log's size does not show" "moved slipway_audit_log_entries 0"
ok "the deployment moved the counters: deployments created, CreateDeployment OK, bytes pulled, tasks run, agents online, log size"

# ---- every family, as Prometheus sees it
families=(
  slipway_build_info process_start_time_seconds
  slipway_rpc_server_handled_total slipway_rpc_server_handling_seconds_bucket
  slipway_rpc_server_handling_seconds_sum slipway_rpc_server_handling_seconds_count
  slipway_rpc_client_handled_total slipway_rpc_client_handling_seconds_bucket
  slipway_db_pool_connections slipway_db_pool_connections_in_use
  slipway_db_pool_wait_seconds_bucket slipway_db_query_duration_seconds_bucket
  slipway_outbox_backlog_events slipway_outbox_oldest_age_seconds slipway_outbox_delivered_total
  slipway_audit_log_entries slipway_audit_checkpoint_age_seconds
  slipway_audit_checkpoint_size_entries slipway_audit_checkpoint_timestamp_seconds
  slipway_orchestrator_deployments slipway_orchestrator_deployment_queue_depth
  slipway_orchestrator_deployment_queue_limit slipway_orchestrator_deployments_created_total
  slipway_orchestrator_agents slipway_orchestrator_agent_heartbeat_lag_seconds
  slipway_artifact_received_bytes_total slipway_artifact_sent_bytes_total
  slipway_secrets_fetches_total
  slipway_agent_heartbeats_total slipway_agent_tasks_total
  slipway_agent_task_duration_seconds_bucket slipway_agent_app_restarts_total
)
names=$(q 'count by (__name__) ({__name__=~"slipway_.+|process_start_time_seconds"})' | js 'j.data.result.map(r=>r.metric.__name__).join(" ")')
missing=()
for f in "${families[@]}"; do [[ " $names " == *" $f "* ]] || missing+=("$f"); done
[ ${#missing[@]} -eq 0 ] || fail "families missing from Prometheus: ${missing[*]}"
ok "all ${#families[@]} metric families are in Prometheus"

# Each target says who it is; the pool, outbox and RPC families come from
# every service that has them.
[ "$(q 'slipway_build_info' | js 'j.data.result.map(r=>r.metric.service).sort().join(",")')" = "agent,artifact,audit,orchestrator,policy,secrets" ] \
  || fail "slipway_build_info does not name each of the six processes"
[ "$(q 'count(count by (job) (slipway_rpc_server_handled_total))' | js 'j.data.result[0].value[1]')" = 5 ] \
  || fail "not every service reports its RPCs"
[ "$(q 'count(count by (job) (slipway_db_pool_connections))' | js 'j.data.result[0].value[1]')" = 5 ] \
  || fail "not every service reports its database pool"
[ "$(q 'count(count by (job) (slipway_outbox_backlog_events))' | js 'j.data.result[0].value[1]')" = 4 ] \
  || fail "not every service with an outbox reports it (artifact, orchestrator, policy, secrets)"
# A histogram's +Inf bucket is its count.
[ "$(q 'sum(slipway_rpc_server_handling_seconds_bucket{le="+Inf"}) - sum(slipway_rpc_server_handling_seconds_count)' | js 'j.data.result[0].value[1]')" = 0 ] \
  || fail "the RPC histogram's +Inf bucket differs from its count"
ok "every process identifies itself; RPC, pool and outbox families come from each service that has them"

# The shipped alert rules and dashboard queries evaluate against these
# families (a renamed metric or a typo in PromQL shows here).
promtool check config "$top/compose/prometheus/prometheus.yml" >"$T/promtool.out" 2>&1 \
  || fail "compose/prometheus/prometheus.yml: $(cat "$T/promtool.out")"
rules_ok() { curl -sf "$P/api/v1/rules" | js 'j.data.groups.length === 1 && j.data.groups[0].rules.length > 0 && j.data.groups[0].rules.every(r => r.health === "ok")'; }
wait_true "an alert rule does not evaluate: $(curl -sf "$P/api/v1/rules" | js 'j.data.groups.flatMap(g=>g.rules).filter(r=>r.health!=="ok").map(r=>r.name+": "+r.lastError).join("; ")' 2>/dev/null)" rules_ok
n=0
while IFS= read -r expr; do
  n=$((n + 1))
  expr=${expr//\$__rate_interval/1m}
  expr=${expr//\$job/.*}
  [ "$(q "$expr" | js 'j.status')" = success ] || fail "dashboard query does not evaluate: $expr"
done < <(js 'j.panels.flatMap(p=>(p.targets||[]).map(t=>t.expr)).join("\n")' <"$top/compose/grafana/slipway-dashboard.json")
[ $n -gt 10 ] || fail "the dashboard has only $n queries"
# Every slipway_* name the rules and the dashboard use is one Prometheus has.
for f in $(grep -ohE 'slipway_[a-z_]+' "$top/compose/prometheus/alerts.yml" "$top/compose/grafana/slipway-dashboard.json" | sort -u); do
  case "$f" in slipway_overview|slipway_compose) continue ;; esac
  [[ " $names " == *" $f "* ]] || fail "compose/ refers to $f, which no target exports"
done
ok "the compose alert rules evaluate in Prometheus, and all $n dashboard queries too"

echo "metrics: $checks checks passed"
