#!/usr/bin/env bash
# hardening: what a local attacker (another process of the same user, a
# reader of the process list, a reader of the stack's files) finds. The
# binaries are PIE with full RELRO, stack protector and fortified libc
# calls; the processes that hold keys are not dumpable, so another process
# of the same user can neither attach to them nor read their memory or
# environment (which holds the S3 secret key); no secret is on any
# command line, and no flag accepts one; the stack's env file is 0600.
. "$(dirname "$0")/lib.sh"

# 1. Binaries.
for b in build/bin/*; do
  [ -x "$b" ] && [ -f "$b" ] || continue
  n=$(basename "$b")
  # Whole outputs first: grep -q on a pipe would stop readelf early, and
  # pipefail would count that as a failure.
  hdr=$(readelf -h "$b"); seg=$(readelf -l "$b"); dyn=$(readelf -d "$b"); syms=$(readelf --dyn-syms -W "$b")
  grep -q 'Type:.*DYN' <<<"$hdr" || fail "$n is not position independent (PIE)"
  grep -q GNU_RELRO <<<"$seg" || fail "$n has no RELRO segment"
  grep -qE 'BIND_NOW|FLAGS_1.*NOW' <<<"$dyn" || fail "$n is not linked with -z now (partial RELRO)"
  grep -q '__stack_chk_fail' <<<"$syms" || fail "$n has no stack protector"
  # SANITIZE=1 builds leave _FORTIFY_SOURCE out (ASan checks instead).
  grep -q libasan <<<"$dyn" && continue
  [ "$(grep -E '__[a-z_]+_chk' <<<"$syms" | grep -vc '__stack_chk')" -gt 0 ] \
    || fail "$n uses no fortified libc call (_FORTIFY_SOURCE)"
done
ok "every binary is PIE, full RELRO, with stack protector and _FORTIFY_SOURCE"

# 2. Not dumpable. The reliable signal: the kernel gives the /proc/PID
# files of a non-dumpable process to root (task_dump_owner), so a service
# run as an ordinary user has its /proc/PID/environ (where the S3 secret
# key is) owned by root, out of reach of that user's other processes
# (and of ptrace). A control first: an ordinary process of that user owns
# its own, so the check can fail. The services share their start-up
# (svc_configure), so slipway-testsvc, on the same skeleton, stands for
# them; the agent has its own main and is checked itself.
nobody=65534
# An array, not a function: a function in the background would run in a
# subshell, and $! would be that shell, not the process.
as_nobody=(setpriv --reuid=$nobody --regid=$nobody --clear-groups --)
owner() { stat -c %u "/proc/$1/environ"; }
chmod 711 "$T"
mkdir -p "$T/nb/root"
slipway pki issue --dir "$SLIPWAY_PKI_DIR" --agent hard/nb1 --out "$T/nb/agent" >/dev/null || fail "issue agent"
slipway pki issue --dir "$SLIPWAY_PKI_DIR" --service testsvc --out "$T/nb/svc" >/dev/null || fail "issue svc"
cp "$SLIPWAY_CA" "$T/nb/ca.crt"
chown -R $nobody:$nobody "$T/nb"
chmod 700 "$T/nb" "$T/nb/root"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done' EXIT
"${as_nobody[@]}" sleep 300 & pids+=($!)
for i in $(seq 1 50); do [ "$(stat -c %u /proc/$!/environ 2>/dev/null)" = $nobody ] && break; sleep 0.1; done
[ "$(owner $!)" = $nobody ] || fail "control: an ordinary process does not own its /proc files ($(owner $!))"
tsvc=${SLIPWAY_TESTSVC:-build/tests/slipway-testsvc}
"${as_nobody[@]}" "$tsvc" --listen 127.0.0.1:0 --port-file "$T/nb/ts.port" --ca "$T/nb/ca.crt" \
  --cert "$T/nb/svc.crt" --key "$T/nb/svc.key" >"$T/testsvc.log" 2>&1 </dev/null & pids+=($!)
ts=$!
for i in $(seq 1 100); do [ -s "$T/nb/ts.port" ] && break; sleep 0.1; done
[ -s "$T/nb/ts.port" ] || fail "testsvc did not start as an ordinary user: $(tail -3 "$T/testsvc.log")"
[ "$(owner $ts)" = 0 ] || fail "a service is dumpable: its /proc/PID/environ belongs to uid $(owner $ts), not root"
SLIPWAY_AGENT_ORCHESTRATOR_ADDR="$SLIPWAY_ORCHESTRATOR_ADDR" SLIPWAY_AGENT_ARTIFACT_ADDR="$SLIPWAY_ARTIFACT_ADDR" \
  "${as_nobody[@]}" "$top/build/bin/slipway-agent" --root "$T/nb/root" --ca "$T/nb/ca.crt" --cert "$T/nb/agent.crt" \
  --key "$T/nb/agent.key" --hostname nb1 --label app=hard --label environment=prod --label region=hard \
  >"$T/agent.log" 2>&1 </dev/null & pids+=($!)
ag=$!
for i in $(seq 1 100); do grep -q 'msg="agent running"' "$T/agent.log" && break; sleep 0.1; done
grep -q 'msg="agent running"' "$T/agent.log" || fail "the agent did not start as an ordinary user: $(tail -3 "$T/agent.log")"
[ "$(owner $ag)" = 0 ] || fail "the agent is dumpable: its /proc/PID/environ belongs to uid $(owner $ag), not root"
ok "services and the agent are not dumpable"

# 3. No secret on a command line, and no flag that takes one.
for pid in $(pgrep -f "$S" || true); do
  args=$(ps -o args= -p "$pid" 2>/dev/null) || continue
  if grep -qF -- "$SLIPWAY_S3_SECRET_KEY" <<<"$args"; then fail "the S3 secret key is on a command line: $args"; fi
  if grep -qE -- '--[a-z0-9-]*(secret|password)[a-z-]* ' <<<"$args"; then fail "a secret flag on a command line: $args"; fi
done
for s in artifact audit; do
  U=$(echo $s | tr a-z A-Z)
  if "build/bin/slipway-$s" --s3-secret-key hunter2 --check-config >"$T/out" 2>"$T/err"; then
    fail "slipway-$s takes the S3 secret key as a flag"
  fi
  grep -q "SLIPWAY_${U}_S3_SECRET_KEY" "$T/err" || fail "slipway-$s: the refusal names no alternative: $(cat "$T/err")"
  grep -q hunter2 "$T/err" "$T/out" && fail "slipway-$s echoes the secret"
done
if build/bin/slipway-policy --pg-url 'postgresql://u:hunter2@127.0.0.1:1/slipway' --check-config \
  --ca "$SLIPWAY_CA" --cert "$S/pki/policy.crt" --key "$S/pki/policy.key" >"$T/out" 2>"$T/err"; then
  fail "slipway-policy takes a password in --pg-url"
fi
grep -q PGPASSFILE "$T/err" || fail "slipway-policy: the refusal names no alternative: $(cat "$T/err")"
grep -q hunter2 "$T/err" "$T/out" && fail "slipway-policy echoes the password"
ok "no secret on any command line; secret flags are refused with the alternative named"

# 4. TLS to PostgreSQL and S3 can be required.
for s in artifact orchestrator policy audit secrets; do
  h=$("build/bin/slipway-$s" --help)
  grep -q -- '--pg-sslmode' <<<"$h" || fail "slipway-$s has no --pg-sslmode"
done
for s in artifact audit; do
  h=$("build/bin/slipway-$s" --help)
  grep -q -- '--s3-https' <<<"$h" || fail "slipway-$s has no --s3-https"
done
ok "every service with a database has --pg-sslmode; S3 users have --s3-https"

# 5. The stack's env file (it holds the S3 secret key) is private.
m=$(stat -L -c %a "$S/env")
[ "$m" = 600 ] || fail "the stack's env file is mode $m, not 600"
ok "the stack's env file is 0600"

done_checks
