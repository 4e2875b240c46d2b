#!/usr/bin/env bash
# stream_flood: a user certificate opens many Health/Watch and Artifact/Push
# streams at once and sends nothing on them, to hold every handler thread
# of the artifact service (resource exhaustion, hole 8 of the trust model).
#
# Must hold: (a) the streams past the caller's limits are refused at once
# with RESOURCE_EXHAUSTED naming the flag; (b) meanwhile another principal
# (the admin) is served: its health check, a push and a watch of its own
# succeed; (c) a push that goes silent is ended by the server after
# --stream-idle-timeout (DEADLINE_EXCEEDED), leaving no release behind.
# (c) runs on a second artifact instance started here with a short idle
# timeout, so the shared stack keeps its defaults.
. "$(dirname "$0")/lib.sh"

flood=$top/build/tests/slipway-flood
[ -x "$flood" ] || fail "build/tests/slipway-flood is missing (make tests)"
user mallory
as_mallory() { SLIPWAY_CERT="$T/mallory.crt" SLIPWAY_KEY="$T/mallory.key" "$@"; }

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
}
trap cleanup EXIT

nwatch=40 npush=24
total=$((nwatch + npush))

# --- the flood: held open until the writer of the fifo (a sleep) goes
mkfifo "$T/ctl"
as_mallory "$flood" --addr "$SLIPWAY_ARTIFACT_ADDR" --watch $nwatch --push $npush --hold \
  --timeout-ms 120000 --watch-timeout-ms 15000 <"$T/ctl" >"$T/flood.out" 2>"$T/flood.err" &
pids+=($!)
sleep 600 >"$T/ctl" &
holder=$!
pids+=($holder)
for _ in $(seq 1 900); do grep -qs '^ready$' "$T/flood.out" && break; sleep 0.1; done
grep -q '^ready$' "$T/flood.out" || fail "the flood client never got its watches answered: $(cat "$T/flood.err")"

# (b) the admin is still served while the flood holds what it could get.
timeout 30 slipway health >"$T/health.out" 2>&1 || fail "admin health check failed under the flood: $(cat "$T/health.out")"
ok "the admin's health check is served while mallory floods the artifact service"
bundles floodapp
timeout 60 slipway artifact push "$T/bundles/floodapp-1.0.0.tar.gz" --app floodapp --version 1.0.0 \
  >/dev/null 2>"$T/push.err" || fail "admin push failed under the flood: $(cat "$T/push.err")"
ok "the admin's push is served while mallory floods the artifact service"
timeout 30 "$flood" --addr "$SLIPWAY_ARTIFACT_ADDR" --watch 1 --timeout-ms 20000 >"$T/admin-watch.out" 2>&1
grep -q '^watch 0 open$' "$T/admin-watch.out" || fail "the admin's Health/Watch was not served: $(cat "$T/admin-watch.out")"
ok "the admin's own Health/Watch stream is served under the flood"

# (a) let go: the pushes half-close and report how the server answered.
kill "$holder"
# The per-caller stream limit the artifact service runs with (its default).
per_peer=$(slipway-artifact --help | sed -n '/--max-streams-per-peer/{n;s/.*\[default: \([0-9]*\)\].*/\1/p}')
[ -n "$per_peer" ] || fail "slipway-artifact --help names no --max-streams-per-peer default"
for _ in $(seq 1 600); do grep -q '^done$' "$T/flood.out" && break; sleep 0.1; done
grep -q '^done$' "$T/flood.out" || fail "the flood client did not finish: $(tail -5 "$T/flood.out")"
refused=$(grep -cE '^(watch [0-9]+ refused|push [0-9]+ end) RESOURCE_EXHAUSTED' "$T/flood.out")
named=$(grep -E '^(watch [0-9]+ refused|push [0-9]+ end) RESOURCE_EXHAUSTED' "$T/flood.out" | grep -cE ', --max-[a-z-]+\)')
open_watch=$(grep -cE '^watch [0-9]+ open$' "$T/flood.out")
served_push=$(grep -cE '^push [0-9]+ end INVALID_ARGUMENT .*empty push' "$T/flood.out")
other=$((total - refused - open_watch - served_push))
[ "$refused" -ge $((total - per_peer)) ] \
  || fail "only $refused of $total streams refused with RESOURCE_EXHAUSTED (limit per caller $per_peer): $(sort "$T/flood.out" | uniq -c | head -20)"
ok "$refused of $total streams past mallory's limits were refused with RESOURCE_EXHAUSTED"
[ "$named" = "$refused" ] || fail "a refusal does not name its limit flag: $(grep RESOURCE_EXHAUSTED "$T/flood.out" | head -3)"
ok "every refusal names the flag that sets the limit"
[ $((open_watch + served_push)) -le "$per_peer" ] && [ $((open_watch + served_push)) -ge 1 ] \
  || fail "$open_watch watches and $served_push pushes were served (limit per caller $per_peer)"
[ "$other" = 0 ] || fail "$other streams ended otherwise: $(grep -vE 'RESOURCE_EXHAUSTED|open$|empty push|ready|done' "$T/flood.out" | head -5)"
ok "mallory got at most $per_peer streams ($open_watch watches, $served_push pushes)"

# (c) a second artifact instance with a 2 s idle timeout.
"$S/run/artifact.sh" --listen 127.0.0.1:0 --port-file "$T/art2.port" --stream-idle-timeout 2s --metrics-listen 127.0.0.1:0 \
  >"$T/art2.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 300); do [ -s "$T/art2.port" ] && break; sleep 0.1; done
[ -s "$T/art2.port" ] || fail "the second artifact instance did not start: $(tail -5 "$T/art2.log")"
addr2=127.0.0.1:$(cat "$T/art2.port")

as_mallory timeout 100 "$flood" --addr "$addr2" --push 3 --timeout-ms 90000 >"$T/idle.out" 2>&1
n=$(grep -cE '^push [0-9]+ end DEADLINE_EXCEEDED .*\(--stream-idle-timeout\)' "$T/idle.out")
[ "$n" = 3 ] || fail "silent pushes were not ended by the idle timeout: $(cat "$T/idle.out")"
ok "silent Push streams are closed by the server after --stream-idle-timeout"

timeout 100 "$flood" --addr "$addr2" --partial idleapp@1.0.0 --timeout-ms 90000 >"$T/partial.out" 2>&1
grep -qE '^partial 0 end DEADLINE_EXCEEDED .*\(--stream-idle-timeout\)' "$T/partial.out" \
  || fail "a push that stopped half-way was not ended by the idle timeout: $(cat "$T/partial.out")"
if slipway artifact show idleapp@1.0.0 >"$T/show.out" 2>&1; then
  fail "the abandoned push left a release: $(cat "$T/show.out")"
fi
grep -qiE "not.found" "$T/show.out" || fail "artifact show: $(cat "$T/show.out")"
ok "a push abandoned half-way is ended and leaves no release"

# The instance freed what the silent streams held: it still serves streams.
timeout 30 "$flood" --addr "$addr2" --watch 1 --timeout-ms 20000 >"$T/watch2.out" 2>&1
grep -q '^watch 0 open$' "$T/watch2.out" || fail "the instance stopped serving: $(cat "$T/watch2.out")"
ok "the service still serves after the idle streams were ended"
done_checks
