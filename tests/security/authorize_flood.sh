#!/usr/bin/env bash
# authorize_flood.sh - a user with no role at all makes 300 requests in a
# row that the policy service denies (each one an Authorize about that
# user). Every denial used to be written to the decisions table and the
# audit log, so anyone with a certificate could flood the log. Now at most
# --denials-per-minute denials per principal are recorded (a token bucket:
# that many at once, refilled at that rate); the rest are counted and one
# policy.denials_suppressed event per window says how many. Nothing is
# lost from the account: recorded + suppressed = every denial. Decisions
# themselves do not change: every request is still denied.
. "$(dirname "$0")/lib.sh"

td=$(cat "$SLIPWAY_PKI_DIR/trust-domain")
U=flood-$$
uid="spiffe://$td/user/$U"
limit=${SLIPWAY_POLICY_DENIALS_PER_MINUTE:-20} # the service's default (services/policy/README.md)
n=300

deny_once() {
  if as_user "$U" slipway artifact ls flood-app >/dev/null 2>"$T/err"; then
    fail "request $total was allowed"
  fi
  grep -qiE "denied|permission" "$T/err" || fail "request $total failed without a denial: $(cat "$T/err")"
  total=$((total + 1))
}

user "$U"
total=0
t0=$(date +%s)
for i in $(seq 1 $n); do deny_once; done
t1=$(date +%s)
ok "$n requests by $U, all denied ($((t1 - t0)) s)"

recorded() { # denials of $U recorded in the audit log
  slipway -o json audit log --actor "$uid" --action policy.decision --limit 1000000 2>/dev/null \
    | js 'j.filter(e => e.details.allowed === "false").length'
}
summaries() { slipway -o json audit log --actor "$uid" --action policy.denials_suppressed --limit 1000000 2>/dev/null; }

# Wait until every denial is accounted for: the summary is written when
# the principal's window ends (a minute after its first uncounted denial),
# and the relay delivers the outbox asynchronously.
for i in $(seq 1 300); do
  r=$(recorded)
  summaries >"$T/sum.json"
  s=$(js 'j.reduce((a, e) => a + Number(e.details.suppressed), 0)' <"$T/sum.json")
  [ $((r + s)) -eq "$total" ] && [ "$s" -gt 0 ] && break
  [ $((r + s)) -eq "$total" ] && [ "$r" -gt "$limit" ] && break # nothing is suppressed at all
  sleep 0.5
done
echo "# $total denials: $r recorded, $s counted in $(js 'j.length' <"$T/sum.json") summary event(s)"
bound=$((limit + (limit * (t1 - t0) + 59) / 60 + 1))
[ "$r" -le "$bound" ] || fail "$r denials of $U were recorded in $((t1 - t0)) s; at most $bound may be (limit $limit per minute)"
[ "$r" -ge 1 ] || fail "no denial of $U was recorded at all"
ok "at most $bound recorded denials ($r)"
[ "$s" -gt 0 ] || fail "no policy.denials_suppressed event counts the rest"
[ $((r + s)) -eq "$total" ] || fail "recorded $r + suppressed $s != $total denials"
ok "the summary events count every suppressed denial ($s)"
nsum=$(js 'j.length' <"$T/sum.json")
[ "$nsum" -le $(((t1 - t0) / 60 + 1)) ] || fail "$nsum summary events for a flood of $((t1 - t0)) s: one per minute at most"
ok "one summary event per minute at most ($nsum)"
js 'j.every(e => e.details.window_start && e.details.window_end && e.resource === "policy" && e.outcome === "denied")' <"$T/sum.json" | grep -qx true \
  || fail "a summary event lacks its window: $(cat "$T/sum.json")"
ok "each summary names the principal and its window"

done_checks
