#!/usr/bin/env bash
# escalation.sh - a user who may only apply and read policy tries to weaken
# the protections of prod with `slipway policy apply`: remove the approval
# policy, its allowed refs or its freeze, lower its quorum, widen who may
# approve, allow break-glass, drop a guardrail, or leave the group a
# guardrail names. Each must be PERMISSION_DENIED naming the weakening
# change, leave the policy exactly as it was, and be in the audit log; a
# tightening change by the same user is accepted; `slipway policy diff`
# marks weakening changes and says they need escalate.
. "$(dirname "$0")/lib.sh"

td=$(cat "$SLIPWAY_PKI_DIR/trust-domain")
M=esc-mallory
mid="spiffe://$td/user/$M"

# Put back whatever policy the stack had when this test ends.
slipway policy get >"$T/original.json" 2>/dev/null || fail "cannot read the current policy"
restore() { slipway policy apply "$T/original.json" >/dev/null 2>&1 || echo "warning: could not restore the policy" >&2; }
trap restore EXIT

cat >"$T/base.json" <<JSON
{"groups": {"sre": ["spiffe://$td/user/esc-alice", "spiffe://$td/user/esc-bob"],
            "contractors": ["$mid"]},
 "roles": [{"name": "policy-editor",
            "rules": [{"actions": ["apply", "read"], "kinds": ["policy"]}]}],
 "bindings": [{"role": "policy-editor", "principal": "$mid"},
              {"role": "deployer", "group": "sre", "scope": {"app": "esc-web"}},
              {"role": "approver", "group": "sre", "scope": {"app": "esc-web"}}],
 "guardrails": [{"name": "no-contractor-prod", "groups": ["contractors"],
                 "forbid": {"actions": ["deploy", "approve"], "kinds": ["deployment"],
                            "environments": ["prod"]}}],
 "approval_policies": [{"name": "prod", "environments": ["prod"], "apps": ["esc-*"],
                        "required": 2, "groups": {"sre": 1}, "approver_groups": ["sre"],
                        "allowed_refs": ["refs/heads/main", "refs/tags/v*"], "wait": "10m",
                        "freeze": {"timezone": "UTC",
                                   "weekly": [{"start": "fri 16:00", "end": "mon 08:00"}],
                                   "dates": [{"start": "2030-12-23T00:00", "end": "2031-01-02T00:00"}]},
                        "break_glass": false}]}
JSON
slipway policy apply "$T/base.json" >/dev/null 2>"$T/err" || fail "admin apply: $(cat "$T/err")"
ok "the admin binds $M to a role with only apply and read on policy"

# The attacker works from the document as the service returns it.
as_user "$M" slipway -o json policy get >"$T/cur.json" 2>"$T/err" || fail "$M cannot read policy: $(cat "$T/err")"
js 'j.document' <"$T/cur.json" >"$T/doc.json"
edit() { # OUT JS-STATEMENTS (on d, the document)
  node -e "const fs=require('fs'); const d=JSON.parse(fs.readFileSync('$T/doc.json','utf8')); const p=d.approval_policies[0]; $2; fs.writeFileSync('$1', JSON.stringify(d))" \
    || fail "cannot build $1"
}
escalate_refusals() { # audited refusals of the escalation guard for $M
  slipway -o json audit log --actor "$mid" --action policy.decision --limit 1000 2>/dev/null \
    | js 'j.filter(e => e.details.action === "escalate" && e.details.allowed === "false").length'
}

# attack NAME WANT-IN-MESSAGE JS: applies the edited document as $M.
attack() {
  local name=$1 want=$2 edit_js=$3 before rev n0 n i
  edit "$T/$name.json" "$edit_js"
  slipway policy get >"$T/before.json" 2>/dev/null || fail "policy get"
  rev=$(slipway policy revision)
  n0=$(escalate_refusals)
  expect_denied "$name" as_user "$M" slipway policy apply "$T/$name.json"
  grep -qF -- "$want" "$T/err" || fail "$name: the refusal does not name '$want': $(cat "$T/err")"
  grep -q "escalate" "$T/err" || fail "$name: the refusal does not say it needs escalate: $(cat "$T/err")"
  ok "$name: PERMISSION_DENIED naming $want"
  [ "$(slipway policy revision)" = "$rev" ] || fail "$name: the revision moved"
  slipway policy get >"$T/after.json" 2>/dev/null || fail "policy get"
  cmp -s "$T/before.json" "$T/after.json" || fail "$name: the policy changed"
  ok "$name: the policy is unchanged (revision $rev)"
  for i in $(seq 1 100); do
    n=$(escalate_refusals)
    [ "$n" -gt "$n0" ] && break
    sleep 0.1
  done
  [ "$n" -gt "$n0" ] || fail "$name: the refusal is not in the audit log"
  ok "$name: the refusal is audited"
}

attack remove-approval-policy '$.approval_policies[name=prod]' 'd.approval_policies = []'
attack remove-allowed-refs '$.approval_policies[name=prod].allowed_refs' 'delete p.allowed_refs'
attack widen-allowed-refs '$.approval_policies[name=prod].allowed_refs' 'p.allowed_refs.push("refs/heads/*")'
attack remove-freeze '$.approval_policies[name=prod].freeze' 'delete p.freeze'
attack shorten-freeze '$.approval_policies[name=prod].freeze.weekly' 'p.freeze.weekly[0].end = "fri 17:00"'
attack lower-quorum '$.approval_policies[name=prod].required' 'p.required = 1'
attack widen-approvers '$.approval_policies[name=prod].approver_groups' 'p.approver_groups.push("contractors")'
attack allow-break-glass '$.approval_policies[name=prod].break_glass' 'p.break_glass = {"required": 1}'
attack narrow-scope '$.approval_policies[name=prod].apps' 'p.apps = ["esc-api"]'
attack remove-guardrail '$.guardrails[name=no-contractor-prod]' 'd.guardrails = []'
attack leave-guarded-group '$.groups.contractors' 'd.groups.contractors = []'

# A change that only tightens is the applier's to make.
edit "$T/tighten.json" 'p.required = 3; p.freeze.dates.push({"start": "2031-04-01T00:00", "end": "2031-04-02T00:00"}); p.allowed_refs = ["refs/heads/main"]'
rev=$(slipway policy revision)
as_user "$M" slipway policy apply "$T/tighten.json" >"$T/out" 2>"$T/err" || fail "a tightening change was refused: $(cat "$T/err")"
[ "$(slipway policy revision)" = "$((rev + 1))" ] || fail "the tightening change made no revision"
ok "$M may tighten prod (quorum 3, another freeze, fewer refs)"

# diff shows what a proposed document would weaken, before anyone applies it.
as_user "$M" slipway -o json policy get >"$T/cur.json" 2>/dev/null || fail "policy get"
js 'j.document' <"$T/cur.json" >"$T/doc.json"
edit "$T/weak.json" 'delete p.allowed_refs; p.wait = "1m"'
as_user "$M" slipway policy diff --file "$T/weak.json" >"$T/out" 2>"$T/err" || fail "policy diff --file: $(cat "$T/err")"
grep -q 'WEAKENS.*\$\.approval_policies\[name=prod\]\.allowed_refs' "$T/out" || fail "diff does not mark the removed allowed refs: $(cat "$T/out")"
grep -q 'WEAKENS.*\$\.approval_policies\[name=prod\]\.wait' "$T/out" || fail "diff does not mark the shorter wait: $(cat "$T/out")"
grep -q 'escalate' "$T/out" || fail "diff does not say weakening needs escalate: $(cat "$T/out")"
ok "policy diff --file marks each weakening change and says it needs escalate"
as_user "$M" slipway -o json policy diff --file "$T/weak.json" >"$T/out" 2>"$T/err" || fail "policy diff --file -o json: $(cat "$T/err")"
[ "$(js 'j.weakening.length' <"$T/out")" = 2 ] || fail "diff json: want 2 weakening changes: $(cat "$T/out")"
ok "policy diff -o json lists them"
edit "$T/tight.json" 'p.required = 4'
as_user "$M" slipway policy diff --file "$T/tight.json" >"$T/out" 2>"$T/err" || fail "policy diff --file: $(cat "$T/err")"
grep -q 'WEAKENS' "$T/out" && fail "diff marks a tightening change as weakening: $(cat "$T/out")"
ok "a tightening change is not marked"

# The admin holds escalate: the same weakening applies, and the diff of
# the revisions marks it.
slipway policy apply "$T/weak.json" >/dev/null 2>"$T/err" || fail "the admin could not apply: $(cat "$T/err")"
slipway policy diff >"$T/out" 2>"$T/err" || fail "policy diff: $(cat "$T/err")"
grep -q 'WEAKENS.*\$\.approval_policies\[name=prod\]\.allowed_refs' "$T/out" || fail "revision diff does not mark the weakening: $(cat "$T/out")"
ok "the admin (escalate) may weaken, and the revision diff marks it"

done_checks
