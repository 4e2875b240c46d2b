#!/usr/bin/env bash
# it_artifact_cli.sh - `slipway artifact` end to end over the real stack:
# push/pull/ls/show/gc/pin with table and JSON output, pull verification
# (resume re-hashes the local prefix; a damaged download or a damaged stored
# blob fails loudly and leaves no file), the progress bar on a terminal,
# builder keys (keygen, --sign) against a second artifact instance that
# trusts the key, and usage errors (exit 2).
set -uo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
PATH="$top/build/bin:$PATH"
T=$(mktemp -d "${SLIPWAY_TEST_TMP:-/tmp}/it_artifact_cli.XXXXXX")
fails=0
pid2=

fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }
ok() { echo "ok: $*"; }
# jfield KEY FILE: the scalar value of "KEY" in jansson's indented JSON.
jfield() { sed -nE "s/^ *\"$1\": \"?([^\",]*)\"?,?$/\1/p" "$2" | head -1; }

cleanup() {
  if [ -n "$pid2" ]; then kill "$pid2" 2>/dev/null; wait "$pid2" 2>/dev/null; fi
}
trap cleanup EXIT

head -c $((5 * 1024 * 1024 + 321)) /dev/urandom > "$T/a.bin"
want=sha256:$(sha256sum "$T/a.bin" | cut -d' ' -f1)

# ---- push, table and JSON
if slipway artifact push "$T/a.bin" --app cli-app --version 1.0.0 --commit 0a1b2c3d --branch main \
     --repo https://git.example.com/cli --build-id 77 --builder ci >"$T/push.txt" 2>"$T/push.err"; then
  grep -q "^digest *$want$" "$T/push.txt" && grep -q "refs/heads/main" "$T/push.txt" && ok "push (table)" \
    || fail "push output: $(cat "$T/push.txt")"
else fail "push: $(cat "$T/push.err")"; fi
[ -s "$T/push.err" ] && fail "push wrote to stderr without a terminal: $(cat "$T/push.err")"
slipway -o json artifact push "$T/a.bin" --app cli-app --version 1.0.1 >"$T/push.json" || fail "push -o json"
[ "$(jfield digest "$T/push.json")" = "$want" ] && [ "$(jfield deduplicated "$T/push.json")" = true ] \
  && ok "push -o json (deduplicated)" || fail "push json: $(cat "$T/push.json")"

# ---- pull verifies and renames only when the digest matches
slipway artifact pull cli-app@1.0.0 --out "$T/a.out" >"$T/pull.txt" || fail "pull"
cmp -s "$T/a.bin" "$T/a.out" && grep -q "digest verified" "$T/pull.txt" && ok "pull" || fail "pull content"
[ -e "$T/a.out.part" ] && fail "pull left a .part file"
slipway -o json artifact pull "$want" --out "$T/b.out" >"$T/pull.json" || fail "pull by digest"
[ "$(jfield verified "$T/pull.json")" = true ] && cmp -s "$T/a.bin" "$T/b.out" && ok "pull by digest -o json" \
  || fail "pull json: $(cat "$T/pull.json")"

# ---- resume: the prefix on disk is re-hashed with the rest
head -c 2000000 "$T/a.bin" > "$T/r.out.part"
slipway -o json artifact pull cli-app@1.0.0 --out "$T/r.out" --resume >"$T/resume.json" || fail "resume"
[ "$(jfield resumed_from "$T/resume.json")" = 2000000 ] && cmp -s "$T/a.bin" "$T/r.out" && ok "pull --resume" \
  || fail "resume: $(cat "$T/resume.json")"
# A damaged local prefix is caught: loud failure, nothing left behind.
{ head -c 1999999 "$T/a.bin"; printf 'X'; } > "$T/d.out.part"
if slipway artifact pull cli-app@1.0.0 --out "$T/d.out" --resume 2>"$T/d.err"; then
  fail "a damaged resumed download was accepted"
else
  grep -q "DIGEST MISMATCH" "$T/d.err" && [ ! -e "$T/d.out" ] && [ ! -e "$T/d.out.part" ] \
    && ok "damaged prefix detected" || fail "damaged prefix: $(cat "$T/d.err")"
fi

# ---- progress bar with rate and ETA on a terminal (script gives us one)
script -qefc "slipway artifact pull cli-app@1.0.0 --out $T/p.out" "$T/tty.log" >/dev/null 2>&1 || fail "pull on a tty"
grep -q "MB/s" "$T/tty.log" && grep -q "pull cli-app@1.0.0" "$T/tty.log" && ok "progress bar" \
  || fail "no progress bar: $(tr '\r' '\n' < "$T/tty.log" | tail -3)"
script -qefc "slipway artifact push $T/a.bin --app cli-app --version 1.0.2" "$T/tty2.log" >/dev/null 2>&1 || fail "push on a tty"
grep -q "push cli-app@1.0.2 \[" "$T/tty2.log" && ok "push progress bar" || fail "no push progress bar"

# ---- ls and show
slipway artifact ls cli-app >"$T/ls.txt" || fail "ls"
[ "$(sed -n 2p "$T/ls.txt" | awk '{print $1}')" = 1.0.2 ] && grep -q "^1.0.0 " "$T/ls.txt" && ok "ls (newest first)" \
  || fail "ls: $(cat "$T/ls.txt")"
slipway -o json artifact ls cli-app --limit 1 >"$T/ls.json" || fail "ls json"
grep -q '"next_page_token": "r' "$T/ls.json" && ok "ls -o json paginated" || fail "ls json: $(cat "$T/ls.json")"
slipway -o json artifact ls >"$T/apps.json" && grep -q '"cli-app"' "$T/apps.json" && ok "ls apps" || fail "ls apps"
slipway artifact show cli-app@1.0.0 >"$T/show.txt" && grep -q "0a1b2c3d" "$T/show.txt" && ok "show release" \
  || fail "show: $(cat "$T/show.txt")"
slipway -o json artifact show "$want" >"$T/show.json" && grep -q '"version": "1.0.1"' "$T/show.json" \
  && ok "show digest lists its releases" || fail "show digest: $(cat "$T/show.json")"

# ---- immutability through the CLI
head -c 1000 /dev/urandom > "$T/other.bin"
if slipway artifact push "$T/other.bin" --app cli-app --version 1.0.0 2>"$T/imm.err"; then
  fail "re-pointing a release was accepted"
else grep -q "ALREADY_EXISTS" "$T/imm.err" && ok "releases are immutable" || fail "immutable: $(cat "$T/imm.err")"; fi

# ---- pins and gc (dry run: nothing collectable here is old enough)
slipway artifact pin cli-app prod --current "$want" >/dev/null && ok "pin" || fail "pin"
slipway -o json artifact gc --dry-run --retention 1h >"$T/gc.json" && [ "$(jfield dry_run "$T/gc.json")" = true ] \
  && ok "gc --dry-run -o json" || fail "gc: $(cat "$T/gc.json")"

# ---- a damaged stored blob: the service refuses it, the CLI fails loudly
S3_ACCESS_KEY_ID=$SLIPWAY_S3_ACCESS_KEY S3_SECRET_ACCESS_KEY=$SLIPWAY_S3_SECRET_KEY S3_HOSTNAME=$SLIPWAY_S3_HOST \
  s3 -u -r 0 put "$SLIPWAY_S3_BUCKET/blobs/sha256/${want#sha256:}" filename="$T/other.bin" >/dev/null 2>"$T/s3.err"
[ -s "$T/s3.err" ] && fail "tampering with s3 failed: $(cat "$T/s3.err")"
if slipway artifact pull cli-app@1.0.0 --out "$T/t.out" 2>"$T/t.err"; then
  fail "a damaged blob was pulled"
else
  grep -qE "DAMAGED|DIGEST MISMATCH" "$T/t.err" && [ ! -e "$T/t.out" ] && [ ! -e "$T/t.out.part" ] \
    && ok "damaged stored blob fails loudly" || fail "tamper: $(cat "$T/t.err")"
fi
# The real bytes repair it.
slipway artifact push "$T/a.bin" --app cli-app --version 1.0.0 >/dev/null && \
  slipway artifact pull cli-app@1.0.0 --out "$T/fixed.out" >/dev/null && cmp -s "$T/a.bin" "$T/fixed.out" \
  && ok "re-push repairs the blob" || fail "repair"

# ---- builder keys: keygen, a service that requires them, --sign
slipway artifact keygen --out "$T/ci" --name ci-2026 >"$T/keygen.txt" || fail "keygen"
[ "$(stat -c %a "$T/ci.key")" = 600 ] && grep -q "^key \* ci-2026 " "$T/ci.pub" && ok "keygen" || fail "keygen files"
slipway artifact keygen --out "$T/ci" 2>/dev/null && fail "keygen overwrote a key"
{ sed 's/^key \* /key signed-app /' "$T/ci.pub"; echo "require signed-app"; } > "$T/trusted"
slipway pki issue --dir "$SLIPWAY_PKI_DIR" --service artifact --out "$T/svc" >/dev/null
SLIPWAY_ARTIFACT_PG_URL="postgresql:///slipway?host=$SLIPWAY_STACK_DIR/pg&port=5432&user=slipway_artifact" \
SLIPWAY_ARTIFACT_S3_HOST=$SLIPWAY_S3_HOST SLIPWAY_ARTIFACT_S3_BUCKET=$SLIPWAY_S3_BUCKET \
SLIPWAY_ARTIFACT_S3_ACCESS_KEY=$SLIPWAY_S3_ACCESS_KEY SLIPWAY_ARTIFACT_S3_SECRET_KEY=$SLIPWAY_S3_SECRET_KEY \
  slipway-artifact --ca "$SLIPWAY_CA" --cert "$T/svc.crt" --key "$T/svc.key" --port-file "$T/a2.port" \
    --state-dir "$T/a2" --trusted-keys "$T/trusted" ${SLIPWAY_AUDIT_ADDR:+--audit-addr $SLIPWAY_AUDIT_ADDR} \
    ${SLIPWAY_POLICY_ADDR:+--policy-addr $SLIPWAY_POLICY_ADDR} >"$T/artifact2.log" 2>&1 &
pid2=$!
for _ in $(seq 1 100); do [ -s "$T/a2.port" ] && break; sleep 0.1; done
a2=127.0.0.1:$(cat "$T/a2.port" 2>/dev/null)
if slipway artifact push "$T/a.bin" --app signed-app --version 1 --addr "$a2" 2>"$T/unsigned.err"; then
  fail "an unsigned push was accepted"
else grep -q "PERMISSION_DENIED" "$T/unsigned.err" && ok "unsigned push refused" || fail "unsigned: $(cat "$T/unsigned.err")"; fi
slipway -o json artifact push "$T/a.bin" --app signed-app --version 1 --addr "$a2" --sign "$T/ci.key" >"$T/signed.json" \
  && [ "$(jfield signature_verified "$T/signed.json")" = true ] && [ "$(jfield signing_key "$T/signed.json")" = ci-2026 ] \
  && ok "signed push verified" || fail "signed push: $(cat "$T/signed.json")"
chmod 644 "$T/ci.key"
slipway artifact push "$T/a.bin" --app signed-app --version 2 --addr "$a2" --sign "$T/ci.key" 2>"$T/perm.err" \
  && fail "a world-readable signing key was used"
grep -q "owner only" "$T/perm.err" && ok "signing key permissions checked" || fail "key perms: $(cat "$T/perm.err")"

# ---- authorization through the policy service: a builder for one app only
td=$(cat "$SLIPWAY_PKI_DIR/trust-domain")
slipway pki issue --dir "$SLIPWAY_PKI_DIR" --user ci-bot --out "$T/ci-bot" >/dev/null
slipway policy get >"$T/policy-before.json" 2>/dev/null || echo '{"version": 1}' >"$T/policy-before.json"
cat >"$T/policy.json" <<EOF
{"version": 1, "description": "it_artifact_cli: a builder for ci-app",
 "bindings": [{"role": "builder", "principal": "spiffe://$td/user/ci-bot", "scope": {"app": "ci-app"}}]}
EOF
if slipway policy apply "$T/policy.json" >/dev/null; then
  as_bot() { SLIPWAY_CERT=$T/ci-bot.crt SLIPWAY_KEY=$T/ci-bot.key slipway "$@"; }
  as_bot artifact push "$T/a.bin" --app ci-app --version 1 >/dev/null && ok "builder may push its app" || fail "builder push"
  as_bot artifact pull ci-app@1 --out "$T/bot.out" >/dev/null && ok "builder may read" || fail "builder pull"
  as_bot artifact push "$T/a.bin" --app cli-app --version 9 2>"$T/deny.err" && fail "builder pushed another app"
  grep -q PERMISSION_DENIED "$T/deny.err" && ok "builder may not push another app" || fail "deny: $(cat "$T/deny.err")"
  as_bot artifact gc --dry-run 2>"$T/deny2.err" && fail "builder ran gc"
  grep -q PERMISSION_DENIED "$T/deny2.err" && ok "builder may not gc" || fail "gc deny: $(cat "$T/deny2.err")"
  slipway policy apply "$T/policy-before.json" >/dev/null || fail "restoring the policy"
else
  fail "policy apply"
fi

# ---- usage errors exit 2
slipway artifact push 2>/dev/null; [ $? -eq 2 ] && ok "usage: push" || fail "push usage exit"
slipway artifact pull not-a-target 2>/dev/null; [ $? -eq 2 ] && ok "usage: pull" || fail "pull usage exit"
slipway artifact nonsense 2>/dev/null; [ $? -eq 2 ] && ok "usage: unknown command" || fail "unknown command exit"

echo "$fails failure(s)"
[ "$fails" -eq 0 ]
