#!/usr/bin/env bash
# forged_ref.sh - provenance is what the builder signed, not what the pusher
# types. A pusher claims `--branch main` on an unsigned release to pass an
# environment's allowed refs; a user pushes (or signs) a release and then
# approves it herself under another `--builder` name; someone with write
# access to the artifact database rewrites a signed statement. Each must
# be refused: by the policy (refs only from a verified statement, builder
# separation from the authenticated pusher and the signing key's owner),
# by the orchestrator (an unsigned release of an app that requires
# signatures), and by the agent (it verifies the statement itself).
. "$(dirname "$0")/lib.sh"

td=$(cat "$SLIPWAY_PKI_DIR/trust-domain")
app=fr
user mallory
user bob
M="spiffe://$td/user/mallory"

# The artifact service is restarted with trusted keys below; give the stack
# back its own artifact service whatever happens.
restore() {
  if [ -n "${keys_on:-}" ]; then
    scripts/stack stop "$S" artifact >/dev/null 2>&1
    env -u SLIPWAY_ARTIFACT_TRUSTED_KEYS scripts/stack start "$S" artifact >/dev/null 2>&1 \
      || echo "warning: could not restart the artifact service" >&2
  fi
}
trap restore EXIT

cat >"$T/policy.json" <<JSON
{ "version": 1,
  "bindings": [
    { "role": "builder", "principal": "$M", "scope": { "app": "$app" } },
    { "role": "approver", "principal": "$M", "scope": { "app": "$app" } },
    { "role": "approver", "principal": "spiffe://$td/user/bob", "scope": { "app": "$app" } } ],
  "approval_policies": [
    { "name": "fr-prod", "apps": ["$app"], "environments": ["prod"], "required": 1,
      "allowed_refs": ["refs/heads/main"] },
    { "name": "fr-staging", "apps": ["$app"], "environments": ["staging"], "required": 1 } ] }
JSON
slipway policy apply "$T/policy.json" >/dev/null || fail "policy apply"
bundles "$app" --versions "1.0.0 2.0.0"
B1="$T/bundles/$app-1.0.0.tar.gz"
B2="$T/bundles/$app-2.0.0.tar.gz"
agents "$app" prod eu/frp1
agents "$app" staging eu/frs1

# ---- 1. an unsigned release that claims refs/heads/main ----
push "$app" 1 "$B1" --branch main --commit 0123456789abcdef0123456789abcdef01234567
if slipway -o json deploy "$app" prod 1 >"$T/out" 2>"$T/err"; then
  fail "an unsigned release claiming refs/heads/main passed allowed_refs: $(cat "$T/out")"
fi
grep -q "refs/heads/main" "$T/err" && grep -qi "unsigned\|no signed ref\|not signed" "$T/err" \
  || fail "the refusal should say the release has no signed ref: $(cat "$T/err")"
ok "an unsigned release claiming --branch main is refused by allowed_refs"

# ---- 2. the pusher approves her own release under another --builder name ----
as_user mallory push "$app" 2 "$B2" --builder ci-bot
id=$(deploy "$app" staging 2)
wait_state "$id" PENDING_APPROVAL 10
expect_denied "the pusher approving her own release" as_user mallory slipway approve "$id" --comment "lgtm"
grep -qi "self-approval" "$T/err" || fail "the refusal should say self-approval: $(cat "$T/err")"
as_user bob slipway approve "$id" --comment "lgtm" >/dev/null || fail "bob's approval"
wait_state "$id" SUCCEEDED 60
ok "the authenticated pusher may not approve her release, whatever --builder says"

# ---- trusted builder keys: mallory's key is bound to her identity ----
slipway artifact keygen --out "$T/mallory-ci" --name mallory-ci >/dev/null || fail "keygen"
slipway artifact keygen --out "$T/release" --name release >/dev/null || fail "keygen"
{
  echo "key $app mallory-ci $(awk '{print $4}' "$T/mallory-ci.pub") $M"
  echo "key $app release $(awk '{print $4}' "$T/release.pub")"
  echo "require $app"
} >"$T/trusted"
scripts/stack stop "$S" artifact >/dev/null 2>&1
keys_on=1
SLIPWAY_ARTIFACT_TRUSTED_KEYS="$T/trusted" scripts/stack start "$S" artifact >/dev/null \
  || fail "the artifact service did not start with the trusted keys: $(tail -n 5 "$S/logs/artifact.log")"

# ---- 3. a release signed with mallory's key: mallory may not approve it ----
push "$app" 4 "$B2" --branch main --builder ci-bot --sign "$T/mallory-ci.key"
slipway -o json artifact show "$app@4" >"$T/show.json" || fail "artifact show"
[ "$(js 'j.provenance.verified' <"$T/show.json")" = true ] \
  && [ "$(js 'j.provenance.signer' <"$T/show.json")" = "$M" ] \
  && [ "$(js 'j.provenance.pusher' <"$T/show.json")" = "spiffe://$td/user/admin" ] \
  || fail "the release should record the verified statement, its signer and the pusher: $(cat "$T/show.json")"
id=$(deploy "$app" prod 4)
wait_state "$id" PENDING_APPROVAL 10
expect_denied "the signing key's owner approving" as_user mallory slipway approve "$id" --comment "lgtm"
grep -qi "built the release" "$T/err" || fail "the refusal should say she built it: $(cat "$T/err")"
as_user bob slipway approve "$id" --comment "lgtm" >/dev/null || fail "bob's approval"
wait_state "$id" SUCCEEDED 60
ok "a signed release (ref main) passes allowed_refs; the key's owner may not approve it"

# ---- 4. an app that requires signatures: deploy and the agent check ----
scripts/stack agent "$S" eu/frd1 --label app="$app" --label environment=dev \
  --trusted-builder-keys "$T/trusted" >/dev/null || fail "cannot start the dev agent"
for i in $(seq 1 100); do
  [ "$(slipway -o json agents ls --app "$app" | js "j.filter(a=>a.health==='online'&&a.labels.environment==='dev').length")" = 1 ] && break
  sleep 0.1
done
if slipway -o json deploy "$app" dev 1 >"$T/out" 2>"$T/err"; then
  fail "an unsigned release of an app that requires signatures was deployed: $(cat "$T/out")"
fi
grep -qi "sign" "$T/err" || fail "the refusal should name the missing signature: $(cat "$T/err")"
ok "an unsigned release of an app that requires signatures is refused at deploy"

push "$app" 5 "$B2" --branch main --sign "$T/release.key"
id=$(deploy "$app" dev 5)
wait_state "$id" SUCCEEDED 60
ok "the agent verified a signed release and ran it"

push "$app" 3 "$B1" --branch main --sign "$T/release.key"
n=$(sql "WITH u AS (UPDATE artifact.releases SET statement = convert_to(replace(convert_from(statement,
  'UTF8'), 'refs/heads/main', 'refs/heads/evil'), 'UTF8') WHERE app = '$app' AND version = '3'
  AND statement IS NOT NULL RETURNING 1) SELECT count(*) FROM u")
[ "$n" = 1 ] || fail "could not tamper with the stored statement ($n)"
id=$(deploy "$app" dev 3)
wait_state "$id" ROLLED_BACK 60   # the target failed; back on version 5
slipway -o json deployment show "$id" >"$T/dep.json"
js 'JSON.stringify(j)' <"$T/dep.json" | grep -q "provenance signature refused" \
  || fail "the agent's failure should name the signature: $(cat "$T/dep.json")"
for i in $(seq 1 100); do
  v=$(slipway -o json agents ls --app "$app" | js "j.filter(a=>a.labels.environment==='dev').map(a=>a.version+'/'+a.healthy).join()")
  [ "$v" = 5/true ] && break
  sleep 0.1
done
[ "$v" = 5/true ] || fail "the dev agent should still run version 5, healthy (it runs $v)"
ok "the agent refuses a release whose stored statement no longer verifies"

done_checks
