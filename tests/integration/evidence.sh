#!/usr/bin/env bash
# tests/integration/evidence.sh - `slipway evidence export|verify` against
# the real stack (run by tests/run, which exports the stack's environment;
# the helpers are tests/security/lib.sh's): bundles exported from real
# deployments (a success with an approval and a signed release, an
# automatic rollback, a break-glass deployment through a freeze) verify
# offline with the audit log's public key; every single-field edit of a
# bundle (each scalar changed, each array element dropped) and truncation
# fail naming the mismatch; a wrong key, a bundle from another log, an
# unknown format version fail; an unknown deployment is NOT_FOUND; the
# auditor's state file catches a log rolled back or forked since it was
# last seen; a period export writes one bundle per deployment and an index;
# an auditor with the read-only role exports too.
. "$(dirname "$0")/../security/lib.sh"

app=evd
td=$(cat "$SLIPWAY_PKI_DIR/trust-domain")
KEY=${SLIPWAY_AUDIT_VERIFIER_KEY:-}
[ -n "$KEY" ] || fail "the stack exports no SLIPWAY_AUDIT_VERIFIER_KEY"
keep_policy
t_start=$(date +%s%3N)

bundles $app --versions "1.0.0 2.0.0 3.0.0"
# The stack's artifact service trusts no builder key: the releases are
# unsigned here (signed provenance is covered by tests/unit/test_evidence.c).
push $app 1.0.0 "$T/bundles/$app-1.0.0.tar.gz"
push $app 2.0.0 "$T/bundles/$app-2.0.0.tar.gz"
push $app 3.0.0 "$T/bundles/$app-3.0.0.tar.gz"
agents $app prod eu/ev1 eu/ev2

policy() { # FREEZE-JSON
  cat >"$T/policy.json" <<JSON
{ "version": 1,
  "bindings": [ { "role": "approver", "principal": "spiffe://$td/user/bob", "scope": { "app": "$app" } },
                { "role": "auditor", "principal": "spiffe://$td/user/aud" } ],
  "approval_policies": [ { "name": "$app-prod", "apps": ["$app"], "environments": ["prod"],
                           "required": 1, "break_glass": { "required": 1 } $1 } ] }
JSON
  slipway policy apply "$T/policy.json" >/dev/null 2>"$T/err" || fail "policy apply: $(cat "$T/err")"
}
approved() { # ID FINAL-STATE
  wait_state "$1" PENDING_APPROVAL 20
  as_user bob slipway approve "$1" --comment "looks good" >/dev/null 2>"$T/err" || fail "bob approves $1: $(cat "$T/err")"
  wait_state "$1" "$2" 120
}
export_ok() { # ID FILE [FLAGS]
  local id=$1 f=$2; shift 2
  slipway evidence export "$id" --out "$f" "$@" >"$T/out" 2>"$T/err" || fail "export $id: $(cat "$T/err")"
}
verify_ok() { # FILE [FLAGS]: prints the JSON report
  local f=$1; shift
  slipway -o json evidence verify "$f" --verifier-key "$KEY" "$@" >"$T/vout" 2>"$T/err" \
    || fail "verify $f: $(cat "$T/vout" "$T/err")"
  cat "$T/vout"
}
# verify_fails WHAT FILE PATTERN [FLAGS]: exits 1 with a FAIL line matching PATTERN
verify_fails() {
  local what=$1 f=$2 pat=$3; shift 3
  local rc=0
  slipway evidence verify "$f" --verifier-key "$KEY" "$@" >"$T/vout" 2>"$T/err" || rc=$?
  [ "$rc" = 1 ] || fail "$what: verify exited $rc, not 1 ($(cat "$T/vout" "$T/err"))"
  grep -qE "^FAIL: .*$pat" "$T/vout" || fail "$what: the failure does not name '$pat': $(cat "$T/vout")"
}

# ---- 1. a success: approved, signed release, both targets
policy ""
a=$(deploy $app prod 1.0.0 --batch 1)
approved "$a" SUCCEEDED
export_ok "$a" "$T/a.json"
r=$(verify_ok "$T/a.json")
[ "$(js 'j.ok && j.approvals === 1 && j.decisions >= 1 && j.timeline >= 8' <<<"$r")" = true ] \
  || fail "success bundle report: $r"
[ "$(js 'j.timeline.filter(t => t.event === "target succeeded").length + "," + j.deployment.last_event + "," + j.approvals[0].digest.startsWith("sha256:") + "," + (j.policy.document.length > 0)' <"$T/a.json")" = "2,succeeded,true,true" ] \
  || fail "success bundle contents: $(js '[j.timeline.map(t=>t.event), j.deployment.last_event]' <"$T/a.json")"
ok "a successful, approved deployment's bundle verifies offline (approval, decisions, policy revision and document, $(js 'j.entries' <<<"$r") entries)"
# The timeline in the bundle is the one the orchestrator shows.
slipway -o json deployment show "$a" | js 'JSON.stringify(j.timeline.map(t => [t.event, t.detail]))' >"$T/tl.orch"
js 'JSON.stringify(j.timeline.map(t => [t.event, t.detail]))' <"$T/a.json" >"$T/tl.bundle"
cmp -s "$T/tl.orch" "$T/tl.bundle" || fail "timelines differ: $(cat "$T/tl.orch") vs $(cat "$T/tl.bundle")"
ok "the bundle's timeline is the orchestrator's, line by line"
# An auditor (the built-in read-only role, which may not sign a checkpoint)
# exports the same evidence.
as_user aud slipway evidence export "$a" --out "$T/a-aud.json" >/dev/null 2>"$T/err" || fail "the auditor's export: $(cat "$T/err")"
verify_ok "$T/a-aud.json" >/dev/null
ok "an auditor exports a bundle with the read-only role, and it verifies"

# ---- 2. an automatic rollback (3.0.0 fails its health check)
b=$(deploy $app prod 3.0.0 --batch 1)
approved "$b" ROLLED_BACK
export_ok "$b" "$T/b.json"
r=$(verify_ok "$T/b.json")
[ "$(js 'j.timeline.some(t => t.event === "rolling back") && j.timeline.some(t => t.event === "target rolled back") && j.deployment.entry_counts["deploy.target"] >= 1' <"$T/b.json")" = true ] \
  || fail "rollback bundle: $(js 'j.timeline.map(t=>t.event)' <"$T/b.json")"
ok "an automatically rolled-back deployment's bundle verifies, the rollback in its timeline"

# ---- 3. break-glass through a freeze
policy ', "freeze": { "timezone": "UTC", "dates": [ { "start": "2020-01-01T00:00", "end": "2099-01-01T00:00" } ] }'
c=$(deploy $app prod 2.0.0 --batch 1 --break-glass "incident 42: checkout down")
approved "$c" SUCCEEDED
export_ok "$c" "$T/c.json"
verify_ok "$T/c.json" >/dev/null
[ "$(js 'j.deployment.break_glass && j.deployment.post_review && j.deployment.break_glass_reason.startsWith("incident 42") && j.approvals[0].break_glass' <"$T/c.json")" = true ] \
  || fail "break-glass bundle: $(js 'j.deployment' <"$T/c.json")"
ok "a break-glass deployment's bundle verifies and shows the break-glass, its reason and the post-review flag"
policy ""

# ---- 4. every single-field edit fails, naming the mismatch
node - "$T/a.json" "$T/mut" "$KEY" >"$T/mut.out" 2>&1 <<'NODE' || fail "mutation test: $(tail -20 "$T/mut.out")"
const fs = require('fs'), cp = require('child_process');
const [file, dir, key] = process.argv.slice(2);
fs.mkdirSync(dir, { recursive: true });
const orig = JSON.parse(fs.readFileSync(file, 'utf8'));
const muts = [];
// Paths are arrays of keys and indexes (keys may hold dots: "release.create").
function walk(v, path) {
  if (Array.isArray(v)) {
    v.forEach((x, i) => walk(x, path.concat([i])));
    v.forEach((x, i) => muts.push({ path: path.concat([i]), drop: true }));
  } else if (v && typeof v === 'object') {
    for (const k of Object.keys(v)) walk(v[k], path.concat([k]));
  } else {
    muts.push({ path, drop: false });
  }
}
function change(x) {
  if (typeof x === 'string') return x.length ? (x[0] === 'a' ? 'b' : 'a') + x.slice(1) : 'a';
  if (typeof x === 'number') return x + 1;
  if (typeof x === 'boolean') return !x;
  return 0; // null
}
function apply(root, m) {
  let o = root;
  for (const t of m.path.slice(0, -1)) o = o[t];
  const last = m.path[m.path.length - 1];
  if (m.drop) o.splice(last, 1); else o[last] = change(o[last]);
}
function name(m) { return m.path.map(t => typeof t === 'number' ? '[' + t + ']' : '.' + t).join('') + (m.drop ? ' dropped' : ''); }
walk(orig, []);
let bad = [], n = 0;
const text = fs.readFileSync(file, 'utf8');
const cases = muts.map(m => ({ what: name(m), body: () => { const r = JSON.parse(text); apply(r, m); return JSON.stringify(r); } }));
for (const f of [0.1, 0.5, 0.9, 0.999]) cases.push({ what: 'truncated at ' + f, body: () => text.slice(0, Math.floor(text.length * f)) });
for (const c of cases) {
  const p = dir + '/m.json';
  fs.writeFileSync(p, c.body());
  const r = cp.spawnSync('slipway', ['evidence', 'verify', p, '--verifier-key', key], { encoding: 'utf8' });
  n++;
  if (r.status !== 1 || !/^FAIL: \S+: \S/.test(r.stdout)) bad.push(c.what + ' -> exit ' + r.status + ': ' + (r.stdout + r.stderr).trim());
}
console.log(n + ' mutations');
if (bad.length) { console.log(bad.length + ' not detected:\n' + bad.slice(0, 30).join('\n')); process.exit(1); }
NODE
ok "every single-field edit of a bundle is detected, with the mismatch named ($(head -1 "$T/mut.out"))"
# A few named on purpose.
edit() { node -e "const fs=require('fs'); const j=JSON.parse(fs.readFileSync('$T/a.json','utf8')); $1; fs.writeFileSync('$2', JSON.stringify(j))"; }
edit 'j.timeline[0].detail += " (edited)"' "$T/e1.json"
verify_fails "an edited timeline line" "$T/e1.json" 'timeline\[0\]\.detail: differs from what the log says'
edit 'j.approvals[0].comment = "approved under duress"' "$T/e2.json"
verify_fails "an edited approval" "$T/e2.json" 'approvals\[0\]\.comment'
edit 'const e = j.log.entries.find(e => e.action === "deployment.approve"); e.details = e.details.map(([k, v]) => [k, k === "digest" ? "sha256:" + "0".repeat(64) : v])' "$T/e3.json"
verify_fails "an approval bound to another digest" "$T/e3.json" 'inclusion proof'
edit 'j.log.entries.splice(j.log.entries.findIndex(e => e.action === "timeline.target_succeeded"), 1)' "$T/e4.json"
verify_fails "a dropped target result" "$T/e4.json" '(timeline|entry_counts|entries)'
ok "edits of a timeline line, an approval, an approval's digest and a dropped target result are named"

# ---- 5. bad input
head -c 5000 "$T/a.json" >"$T/trunc.json"
verify_fails "a truncated bundle" "$T/trunc.json" 'invalid JSON'
edit 'j.format = "slipway-evidence/v2"' "$T/v2.json"
verify_fails "an unknown format version" "$T/v2.json" 'unknown format version'
# Another log's key, and a checkpoint signed by another log.
node - "$T" <<'NODE' || fail "cannot make another log's key"
const crypto = require('crypto'), fs = require('fs');
const dir = process.argv[2];
const { publicKey, privateKey } = crypto.generateKeyPairSync('ed25519');
const pub = publicKey.export({ format: 'der', type: 'spki' }).slice(-32);
const name = 'other-log';
const id = crypto.createHash('sha256').update(Buffer.concat([Buffer.from(name + '\n'), Buffer.from([1]), pub])).digest().slice(0, 4);
fs.writeFileSync(dir + '/other.key', name + '+' + id.toString('hex') + '+' + Buffer.concat([Buffer.from([1]), pub]).toString('base64'));
const j = JSON.parse(fs.readFileSync(dir + '/a.json', 'utf8'));
const body = j.log.checkpoint.slice(0, j.log.checkpoint.indexOf('\n\n') + 1);
const sig = crypto.sign(null, Buffer.from(body), privateKey);
const note = body + '\n\u2014 ' + name + ' ' + Buffer.concat([id, sig]).toString('base64') + '\n';
j.log.checkpoint = note; j.log.newest_checkpoint = note; j.log.consistency = [];
fs.writeFileSync(dir + '/other.json', JSON.stringify(j));
NODE
verify_fails "a wrong key" "$T/a.json" 'does not verify with the given key' --verifier-key "$(cat "$T/other.key")"
verify_fails "a checkpoint from another log" "$T/other.json" 'does not verify with the given key'
ok "a truncated bundle, an unknown format version, a wrong key and another log's checkpoint fail, named"
rc=0
slipway evidence export d20990101-000000-000000000000 --out "$T/none.json" >"$T/out" 2>"$T/err" || rc=$?
[ "$rc" = 3 ] && grep -qiE "not.found" "$T/err" && [ ! -e "$T/none.json" ] \
  || fail "unknown deployment: exit $rc: $(cat "$T/err")"
ok "export of an unknown deployment is NOT_FOUND (exit 3) and writes nothing"

# ---- 6. the auditor's state file across time
# state_edit IN OUT JS: OUT is the state file IN whose newest checkpoint
# (kept as "checkpoint" and as the last of "checkpoints",
# docs/operations.md) had JS applied to it as c: what the auditor would
# have seen had the log been at another size or root.
state_edit() {
  node -e "const fs=require('fs'); const s=JSON.parse(fs.readFileSync('$1','utf8'));
    const cps=s.checkpoints||[]; const ed=(c)=>{ $3; };
    if (s.checkpoint) ed(s.checkpoint); if (cps.length) ed(cps[cps.length-1]);
    fs.writeFileSync('$2', JSON.stringify(s))"
}
slipway audit verify --state "$T/state" >/dev/null 2>"$T/err" || fail "audit verify --state: $(cat "$T/err")"
slipway audit checkpoint --sign >/dev/null 2>&1 || true
export_ok "$a" "$T/a2.json" --state "$T/state"
verify_ok "$T/a2.json" --state "$T/state" >"$T/r"
[ "$(js 'j.state_checked' <"$T/r")" = true ] || fail "state not checked: $(cat "$T/r")"
size=$(js 'j.checkpoint.size' <"$T/state")
[ "$size" = "$(js 'j.newest_size' <"$T/r")" ] || fail "the state was not advanced to the bundle's newest checkpoint"
ok "a bundle exported with --state extends the auditor's last checkpoint, which advances"
# The log rolled back since: the state knows a later checkpoint than the bundle's newest.
state_edit "$T/state" "$T/state.ahead" 'c.size += 1000'
verify_fails "a log rolled back since the state" "$T/a2.json" 'rolled back' --state "$T/state.ahead"
# Forked: same size, another root.
state_edit "$T/state" "$T/state.fork" "c.root = 'ab'.repeat(32)"
verify_fails "a forked log" "$T/a2.json" 'forked' --state "$T/state.fork"
# A bundle without a proof from the state's checkpoint.
slipway audit checkpoint --sign >/dev/null 2>&1 || true
sleep 0.5
export_ok "$b" "$T/b2.json"
cp "$T/state" "$T/state.old"
state_edit "$T/state" "$T/state.old" 'c.size -= 1'
verify_fails "no consistency proof from the state's checkpoint" "$T/b2.json" '(state_consistency|rolled back|forked)' --state "$T/state.old"
ok "a log rolled back or forked since the state's checkpoint is detected offline"

# ---- 7. a period: one bundle per deployment plus an index
slipway evidence export --app $app --env prod --since "$t_start" --out "$T/period" >"$T/out" 2>"$T/err" \
  || fail "period export: $(cat "$T/err")"
[ "$(js 'j.deployments.length' <"$T/period/index.json")" -ge 3 ] || fail "index: $(cat "$T/period/index.json")"
for f in $(js 'j.deployments.map(d => d.file).join(" ")' <"$T/period/index.json"); do
  verify_ok "$T/period/$f" >/dev/null
  [ "$(sha256sum "$T/period/$f" | cut -d' ' -f1)" = "$(js "j.deployments.find(d => d.file === '$f').sha256" <"$T/period/index.json")" ] \
    || fail "index sha256 of $f"
done
ok "a period export writes one verifying bundle per deployment and an index with their hashes"
done_checks
