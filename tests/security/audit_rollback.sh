#!/usr/bin/env bash
# audit_rollback.sh - someone with the audit service's database (and its
# configuration) rolls the log back between two audits: deletes the newest
# entries, tree nodes and checkpoints in PostgreSQL as superuser (the
# append-only triggers disabled first), points the service at a fresh S3
# prefix so that nothing it reads remembers the old head, restarts it and
# lets it sign again, at the same size, a different history.
#
# What must happen: an auditor with no memory of the log cannot tell (the
# re-signed log is self-consistent: this is why the memory matters); an
# auditor whose state file holds a checkpoint from before, two auditors'
# files merged with `slipway audit state merge`, or one who reads the
# checkpoints the service published to a directory (--checkpoint-dir /
# `slipway audit verify --published DIR`) is told the log was rolled back.
# Merging refuses files that pin another key or were edited.
#
# The log rolled back is a second audit service of this test's own (its own
# database, S3 prefix, key and published directory), so the stack's log is
# left alone.
. "$(dirname "$0")/lib.sh"

td=$(cat "$SLIPWAY_PKI_DIR/trust-domain")
rpc=$top/build/tests/slipway-rpc
[ -x "$rpc" ] || fail "build/tests/slipway-rpc is missing (make tests)"
db="audrb_$$_$RANDOM"
pgsu="${SLIPWAY_PGURL/\/slipway\?//$db?}"        # this database, as the stack's superuser
url="postgresql:///$db?host=$S/pg&port=5432&user=slipway_audit"
pub=$T/published
mkdir -p "$pub" "$T/state"
port=$(node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
addr=127.0.0.1:$port

psql -X -q -v ON_ERROR_STOP=1 "$SLIPWAY_PGURL" -c "CREATE DATABASE $db" \
  -c "GRANT CREATE ON DATABASE $db TO slipway_audit" >/dev/null || fail "cannot create database $db"
stop_audit() {
  [ -s "$T/audit.pid" ] || return 0
  kill "$(cat "$T/audit.pid")" 2>/dev/null
  for _ in $(seq 1 100); do kill -0 "$(cat "$T/audit.pid")" 2>/dev/null || break; sleep 0.1; done
  rm -f "$T/audit.pid"
}
cleanup() {
  stop_audit
  slipway policy apply "$T/policy-before.json" >/dev/null 2>&1
  psql -X -q "$SLIPWAY_PGURL" -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1
}
slipway policy get >"$T/policy-before.json" 2>/dev/null || fail "policy get"
trap cleanup EXIT

start_audit() { # S3-PREFIX [FLAGS...]
  rm -f "$T/audit.port"
  SLIPWAY_AUDIT_S3_SECRET_KEY=$SLIPWAY_S3_SECRET_KEY setsid "$top/build/bin/slipway-audit" \
    --listen "$addr" --port-file "$T/audit.port" --ca "$SLIPWAY_CA" \
    --cert "$S/pki/audit.crt" --key "$S/pki/audit.key" --pg-url "$url" \
    --s3-host "$SLIPWAY_S3_HOST" --s3-bucket "$SLIPWAY_S3_BUCKET" \
    --s3-access-key "$SLIPWAY_S3_ACCESS_KEY" --checkpoint-prefix "$1" \
    --policy-addr "$SLIPWAY_POLICY_ADDR" --state-dir "$T/state" --generate-keys \
    --origin "rollback.test/audit" --checkpoint-interval 1h "${@:2}" \
    >>"$T/audit.log" 2>&1 </dev/null &
  echo $! >"$T/audit.pid"
  for _ in $(seq 1 100); do
    SLIPWAY_AUDIT_ADDR=$addr slipway health audit >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  tail -5 "$T/audit.log" >&2
  fail "our audit service did not start"
}
# Every command below talks to our log, with our log's key (never the
# stack's, from the environment); auditors hold
# no S3 credentials (so only what they keep or read published counts).
export SLIPWAY_AUDIT_ADDR=$addr
s3env=(-u SLIPWAY_S3_HOST -u SLIPWAY_S3_BUCKET -u SLIPWAY_S3_ACCESS_KEY -u SLIPWAY_S3_SECRET_KEY
       -u SLIPWAY_AUDIT_VERIFIER_KEY)
append() { # ID...: events appended by "the audit service" (our instance's own identity)
  for id in "$@"; do
    SLIPWAY_CERT=$S/pki/audit.crt SLIPWAY_KEY=$S/pki/audit.key "$rpc" audit Audit/Append \
      event.event_id="$id" event.service=audit event.actor="spiffe://$td/user/rb-dev" \
      event.action=test.change event.resource="test/$id" event.outcome=1 \
      event.time_unix_ms="$(date +%s)000" >"$T/append.out" 2>&1 \
      || fail "append $id: $(cat "$T/append.out")"
  done
}
sign() { env "${s3env[@]}" slipway audit checkpoint --sign --verifier-key "$key" >/dev/null 2>"$T/err" || fail "sign: $(cat "$T/err")"; }
# as_auditor NAME CMD...: a user bound to nothing but the built-in auditor role.
as_auditor() { local u=$1; shift; as_user "$u" env "${s3env[@]}" "$@"; }

start_audit "rb-$$-a/" --checkpoint-dir "$pub"
key=$(cat "$T/state/audit-signing.key.pub")
ok "a second audit service with its own database, S3 prefix, key and published directory"

# Two auditors, bound to the built-in auditor role only.
node -e "const fs=require('fs'); const d=JSON.parse(fs.readFileSync('$T/policy-before.json','utf8'));
  d.bindings=(d.bindings||[]).concat([{role:'auditor',principal:'spiffe://$td/user/rb-alice'},
                                      {role:'auditor',principal:'spiffe://$td/user/rb-bob'},
                                      {role:'auditor',principal:'spiffe://$td/user/rb-carol'}]);
  fs.writeFileSync('$T/policy.json', JSON.stringify(d))" || fail "cannot edit the policy"
slipway policy apply "$T/policy.json" >/dev/null 2>"$T/err" || fail "policy apply: $(cat "$T/err")"

append rb-1 rb-2 rb-3 rb-4 rb-5
sign
as_auditor rb-alice slipway audit verify --verifier-key "$key" --state "$T/alice.state" >"$T/out" 2>&1 \
  || fail "alice's first audit: $(cat "$T/out")"
grep -q '^OK: 5 entries' "$T/out" || fail "alice: $(cat "$T/out")"
ok "alice audits the log at size 5 and keeps the checkpoint in her state file"

append rb-6 rb-7 rb-8
sign
as_auditor rb-bob slipway audit verify --verifier-key "$key" --state "$T/bob.state" >"$T/out" 2>&1 \
  || fail "bob's audit: $(cat "$T/out")"
grep -q '^OK: 8 entries' "$T/out" || fail "bob: $(cat "$T/out")"
[ -s "$pub/00000000000000000008" ] && [ -s "$pub/00000000000000000005" ] && [ -s "$pub/latest" ] \
  || fail "the published directory lacks the checkpoints: $(ls "$pub")"
ok "bob audits it at size 8; the service published both checkpoints to the directory"

# Merging the two auditors' files.
as_auditor rb-alice slipway audit state merge "$T/alice.state" "$T/bob.state" --out "$T/team.state" \
  >"$T/out" 2>&1 || fail "merge: $(cat "$T/out")"
slipway -o json audit state show "$T/team.state" >"$T/show.json" 2>"$T/err" || fail "state show: $(cat "$T/err")"
[ "$(js 'j.checkpoints.map(c=>c.size).join(",")' <"$T/show.json")" = "5,8" ] \
  || fail "the merged file does not hold both checkpoints: $(cat "$T/show.json")"
[ "$(js 'j.verifier_fingerprint' <"$T/show.json")" = "$(printf %s "$key" | sha256sum | cut -d' ' -f1)" ] \
  || fail "the fingerprint is not the SHA-256 of the key line: $(cat "$T/show.json")"
ok "state merge combines alice's and bob's checkpoints (sizes 5 and 8), key and fingerprint pinned"

# A file pinning another key, or an edited one, does not merge.
node -e "const fs=require('fs'); const d=JSON.parse(fs.readFileSync('$T/bob.state','utf8'));
  d.verifier_key=process.env.SLIPWAY_AUDIT_VERIFIER_KEY; delete d.verifier_fingerprint;
  fs.writeFileSync('$T/other-key.state', JSON.stringify(d));
  const e=JSON.parse(fs.readFileSync('$T/bob.state','utf8'));
  e.checkpoints[e.checkpoints.length-1].root='00'.repeat(32); e.checkpoint.root='00'.repeat(32);
  fs.writeFileSync('$T/edited.state', JSON.stringify(e))" || fail "cannot build bad state files"
if slipway audit state merge "$T/alice.state" "$T/other-key.state" --out "$T/x.state" >"$T/out" 2>&1; then
  fail "a file pinning another key merged"
fi
grep -q "different keys" "$T/out" || fail "other key: $(cat "$T/out")"
if slipway audit state merge "$T/alice.state" "$T/edited.state" --out "$T/x.state" >"$T/out" 2>&1; then
  fail "an edited file merged"
fi
grep -qi "disagree with its signed note\|edited" "$T/out" || fail "edited: $(cat "$T/out")"
[ ! -e "$T/x.state" ] || fail "a refused merge wrote its output"
ok "merge refuses a file pinning another key and one whose checkpoint was edited, writing nothing"

# The attack: roll the database back to size 6 and let the service sign
# again at size 8, over two other entries.
stop_audit
psql -X -q -v ON_ERROR_STOP=1 "$pgsu" >"$T/out" 2>&1 <<'SQL' || fail "the rollback SQL failed: $(cat "$T/out")"
BEGIN;
ALTER TABLE audit.entries DISABLE TRIGGER USER;
ALTER TABLE audit.tree_nodes DISABLE TRIGGER USER;
ALTER TABLE audit.checkpoints DISABLE TRIGGER USER;
DELETE FROM audit.entries WHERE seq >= 6;
DELETE FROM audit.tree_nodes WHERE (idx + 1) * (1::bigint << level) > 6;
DELETE FROM audit.checkpoints WHERE size > 6;
UPDATE audit.head SET size = 6, last_hash = (SELECT entry_hash FROM audit.entries WHERE seq = 5);
ALTER TABLE audit.entries ENABLE TRIGGER USER;
ALTER TABLE audit.tree_nodes ENABLE TRIGGER USER;
ALTER TABLE audit.checkpoints ENABLE TRIGGER USER;
COMMIT;
SQL
start_audit "rb-$$-b/"
append rb-x7 rb-x8
sign
[ "$(env "${s3env[@]}" slipway -o json audit checkpoint --verifier-key "$key" | js 'j.size')" = 8 ] \
  || fail "the service did not re-sign at size 8"
ok "the attacker rolled the database back to 6 entries and the service signed a new size-8 checkpoint"

as_auditor rb-carol slipway audit verify --verifier-key "$key" --state "$T/carol.state" >"$T/out" 2>&1 \
  || fail "a fresh auditor's verify failed: $(cat "$T/out")"
ok "an auditor with no state cannot tell (the re-signed log is consistent with itself)"

# Alice saw only size 5, which the rolled-back log still extends: nothing
# to detect for her alone. Bob saw size 8; the team file holds his.
as_auditor rb-alice slipway audit verify --state "$T/alice.state" >"$T/out" 2>&1 \
  || fail "alice's size-5 checkpoint is still extended by the log, yet: $(cat "$T/out")"
for who in bob:bob.state alice:team.state; do
  u=${who%%:*} f=${who#*:}
  if as_auditor "rb-$u" slipway audit verify --state "$T/$f" >"$T/out" 2>&1; then
    fail "verify with $f passed over the rollback: $(cat "$T/out")"
  fi
  grep -q "rolled back" "$T/out" || fail "verify with $f does not name the rollback: $(cat "$T/out")"
done
ok "with bob's or the merged state file (not alice's alone: size 5 is still extended), verify fails naming the rollback"

rm -f "$T/carol2.state"
if as_auditor rb-carol slipway audit verify --verifier-key "$key" --state "$T/carol2.state" \
    --published "$pub" >"$T/out" 2>&1; then
  fail "verify --published passed over the rollback: $(cat "$T/out")"
fi
grep -q "rolled back" "$T/out" && grep -q "published" "$T/out" \
  || fail "verify --published does not name the rollback and where it saw the checkpoint: $(cat "$T/out")"
ok "a fresh auditor with --published DIR is told too: $(grep -m1 -o 'FAIL.*' "$T/out" | cut -c1-160)"

done_checks
