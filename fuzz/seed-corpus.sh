#!/usr/bin/env bash
# Writes the seed corpus of every fuzz target into fuzz/corpus/<target>/seed-*, from the
# golden frames (protocol/tests/golden/*.hex) and the public test vectors in ../shared/testdata
# (never copied into the repository). Idempotent: it rewrites the seeds and leaves what the
# fuzzer added to the corpus alone. Needs only bash and coreutils (od, base64).
set -euo pipefail
fuzz="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$fuzz/.." && pwd)"
shared="$root/../shared/testdata"
golden="$root/protocol/tests/golden"
corpus="$fuzz/corpus"

need() {
  [ -f "$1" ] || { echo "error: seed source $1 is missing (../shared must sit beside the repository)" >&2; exit 1; }
}

# --- hex helpers: every value below is a lowercase hex string ------------------------------
hex_of() { need "$1"; od -An -v -tx1 "$1" | tr -d ' \n'; }
# PEM file -> hex of the DER of its first certificate.
pem_hex() {
  need "$1"
  sed -n '/-----BEGIN/,/-----END/{/-----/d;p}' "$1" | base64 -d | od -An -v -tx1 | tr -d ' \n'
}
# A golden .hex file: '#' comments and whitespace removed.
golden_hex() { need "$1"; sed 's/#.*//' "$1" | tr -d ' \t\n'; }
len() { echo $((${#1} / 2)); }
u16() { printf '%04x' "$1"; }
u32() { printf '%08x' "$1"; }
tpm2b() { printf '%04x%s' "$(len "$1")" "$1"; }
# postcard length varint (values below 16384) followed by the bytes.
pc_bytes() {
  local n; n=$(len "$1")
  if [ "$n" -lt 128 ]; then printf '%02x%s' "$n" "$1"
  else printf '%02x%02x%s' $(((n & 0x7f) | 0x80)) $((n >> 7)) "$1"; fi
}
repeat() { local out=""; for ((i = 0; i < $2; i++)); do out+="$1"; done; printf '%s' "$out"; }
# Writes hex string $2 as binary file corpus/$1.
put() {
  mkdir -p "$(dirname "$corpus/$1")"
  printf '%b' "$(sed 's/../\\x&/g' <<<"$2")" >"$corpus/$1"
}

# --- frames --------------------------------------------------------------------------------
# Uplink::Login with methods [TpmEk], the given EK/AK TPM2B_PUBLIC, optional EK cert, chain.
login() { # ek_hex ak_hex [cert_hex] [chain_hex]
  local cert="00"
  [ -n "${3:-}" ] && cert="01$(pc_bytes "$3")"
  # Wire version 2: ... ak_public, svid_key None, key_certify None, 16-byte nonce, signer_hint None.
  printf '02000100%s%s%s%s0000%s00' "$(pc_bytes "$1")" "$cert" "$(pc_bytes "${4:-}")" "$(pc_bytes "$2")" \
    "$(repeat 4e 16)"
}
# Uplink::Answer (wire version 2) with session 00.. and a 32-byte MAC 5e.., no pop.
answer() { printf '0201%s%s00' "$(repeat 00 16)" "$(repeat 5e 32)"; }
# server_handler record: ctl byte, u16 length, frame.
record() { printf '%02x%s%s' "$1" "$(u16 "$(len "$2")")" "$2"; }

mc="$shared/make-credential"
leaf="$shared/real-ek/leaf/stm-st33htphahb4-rsa2048"
ca="$shared/real-ek/ca"
declare -A EK AK
for c in rsa2048 p256 p384; do
  EK[$c]=$(hex_of "$mc/swtpm-bound-$c/ek.tpm2b_public")
  AK[$c]=$(hex_of "$mc/swtpm-bound-$c/ak.tpm2b_public")
done
STM=$(hex_of "$leaf.der")
STM_NV=$(hex_of "$leaf.nv.bin")
STM_05I=$(pem_hex "$ca/STM_RSA_05I.pem")
STM_RT=$(pem_hex "$ca/STM_RSA_RT.pem")

# uplink / downlink: the golden frames and real Logins.
for f in login answer; do put "uplink/seed-golden-$f" "$(golden_hex "$golden/$f.hex")"; done
for f in challenge accepted rejected; do put "downlink/seed-golden-$f" "$(golden_hex "$golden/$f.hex")"; done
for c in rsa2048 p256 p384; do put "uplink/seed-login-$c" "$(login "${EK[$c]}" "${AK[$c]}")"; done
put uplink/seed-login-stm "$(login "${EK[rsa2048]}" "${AK[p256]}" "$STM" "$STM_05I")"

# tpm_public: public areas of the vectors, and SPKIs (the target reads input both ways).
for c in rsa2048 p256 p384; do
  put "tpm_public/seed-ek-$c" "$(hex_of "$mc/$c/ek.tpm2b_public")"
  put "tpm_public/seed-spki-$c" "$(hex_of "$mc/$c/ek.spki.der")"
  put "tpm_public/seed-ak-$c" "${AK[$c]}"
done
put tpm_public/seed-ak "$(hex_of "$mc/ak.tpm2b_public")"

# der and ek_cert: the STM leaf bare, as its padded NV blob, wrapped (5- and 7-byte PC Client
# headers), and with its chain.
for t in der ek_cert; do
  put "$t/seed-stm-der" "$STM"
  put "$t/seed-stm-nv" "$STM_NV"
  put "$t/seed-stm-wrapped" "100100$(u16 "$(len "$STM")")$STM$(repeat ff 8)"
  # The 7-byte PC Client header: 10 01 00 LLLL 10 02 DER, LLLL = DER length + 2.
  put "$t/seed-stm-wrapped-full-cert" "100100$(u16 $(($(len "$STM") + 2)))1002$STM$(repeat ff 8)"
  put "$t/seed-stm-chain" "$STM$STM_05I$STM_RT$(repeat ff 8)"
done
for f in INTEL_I NUVO_1110 IFX_ECC_042; do put "ek_cert/seed-$f" "$(pem_hex "$ca/$f.pem")"; done
# der_reader: whole certificates (every TLV form X.509 uses) and the chain.
put der_reader/seed-stm-der "$STM"
put der_reader/seed-stm-chain "$STM$STM_05I$STM_RT"

# mqtt_packet: a broker's answer to the agent's CONNECT + SUBSCRIBE (CONNACK, SUBACK), a
# QoS 1 PUBLISH carrying the golden Challenge frame, a QoS 0 PUBLISH, PUBACK and PINGRESP
# back to back; and a refusal (CONNACK 5, SUBACK 0x80).
topic="ekattest/v1/c-test/agents/ek-00/down"
topic_hex=$(printf '%s' "$topic" | od -An -v -tx1 | tr -d ' \n')
challenge=$(golden_hex "$golden/challenge.hex")
publish_body="$(u16 "$(len "$topic_hex")")$topic_hex$(u16 7)$challenge"
plen=$(len "$publish_body")
# MQTT remaining length: two bytes (the Challenge frame is under 16,384 bytes).
put mqtt_packet/seed-session "200200009003000101""32$(printf '%02x%02x' $(((plen % 128) | 128)) $((plen / 128)))$publish_body""3008000161""68656c6c6f""40020007""d000"
put mqtt_packet/seed-refused "20020005""9003000180"

# tpm_response: the vectors of agent/src/tpm/commands_tests.rs, and two response streams for
# EK discovery + ActivateCredential + AK (persistent RSA EK; NV certificate).
rsp() { printf '%04x%08x%08x%s' "$1" $((10 + $(len "$3"))) "$2" "$3"; }  # tag rc body
sess() { # handles params nsessions: a response with sessions and password acks
  rsp 0x8002 0 "$1$(u32 "$(len "$2")")$2$(repeat 0000010000 "$3")"
}
sha256_name=0022000b$(repeat 00 32)
ak_name=$(hex_of "$mc/swtpm-bound-rsa2048/ak.name")
t=tpm_response
put $t/seed-read-public "$(rsp 0x8001 0 "${AK[rsa2048]}$sha256_name$sha256_name")"
put $t/seed-nv-public "$(rsp 0x8001 0 000e01c00002000b0000000000000010$(tpm2b 000b))"
put $t/seed-session "$(rsp 0x8001 0 03000000$(tpm2b "$(repeat 07 16)"))"
put $t/seed-nv-read "$(sess "" "$(tpm2b "$(repeat 09 16)")" 1)"
ticket=8021400000010000 # creationTicket: TPM_ST_CREATION, TPM_RH_OWNER, empty digest
put $t/seed-create-primary "$(sess 80000000 "${AK[rsa2048]}00000000${ticket}0002000b" 1)"
put $t/seed-activate "$(sess "" "$(tpm2b aabb)" 2)"
put $t/seed-retry "$(rsp 0x8001 0x922 "")$(rsp 0x8001 0 "")"
handles() { # handle...: one GetCapability(HANDLES) page without moreData
  local body; body="0000000001$(u32 $#)"
  for h in "$@"; do body+=$(u32 "$h"); done
  rsp 0x8001 0 "$body"
}
flush=$(rsp 0x8001 0 "")
put $t/seed-handles "$(handles 0x81010001 0x81010016)"
ak_create=$(sess 80000001 "${AK[rsa2048]}00000000$ticket$(tpm2b "$ak_name")" 1)
activate_tail() { # AK CreatePrimary, policy session, PolicySecret, ActivateCredential, flush,
  # then the AK again for ak::read
  printf '%s' "$ak_create"
  printf '%s' "$(rsp 0x8001 0 03000000"$(tpm2b "$(repeat 07 16)")")"
  printf '%s' "$(sess "" "0000$(u16 0x8021)400000070000" 1)"
  printf '%s%s%s%s' "$(sess "" "$(tpm2b "$(repeat 5e 32)")" 2)" "$flush" "$ak_create" "$flush"
}
put $t/seed-flow-persistent "$(handles)$(handles 0x81010001)$(rsp 0x8001 0 "${EK[rsa2048]}$sha256_name")$(activate_tail)"
nv_read_all() { # data_hex chunk: NV_Read responses for the whole data
  local d=$1 out=""
  while [ -n "$d" ]; do out+=$(sess "" "$(tpm2b "${d:0:$(($2 * 2))}")" 1); d=${d:$(($2 * 2))}; done
  printf '%s' "$out"
}
put $t/seed-flow-nv-cert "$(handles 0x01c00002)$(handles)$(rsp 0x8001 0 "000e01c00002000b000000000000$(u16 "$(len "$STM")")$(tpm2b 000b)")$(rsp 0x8001 0 000000000600000001"$(u32 0x12c)"00000400)$(nv_read_all "$STM" 1024)$(sess 80000000 "${EK[rsa2048]}00000000$ticket$sha256_name" 1)$flush"
put $t/seed-credential-file "$(hex_of "$mc/rsa2048/expected.tpm2tools_credential")"

# policy_config: the seed's three examples (indented as YAML), with its placeholder PEM and
# hash, and with the real STM chain and hash.
stm_pem() { sed 's/^/              /' "$ca/$1.pem"; }
doc_head='section: AgentAttestation
schema: v1
spec:
  policies:
    - name: tpm_ek_policy
      requiredAttestors:
        - type: tpm_ek
          config:'
fake_ca='            caCerts: |
              -----BEGIN CERTIFICATE-----
              MIIBxTCCAW...
              -----END CERTIFICATE-----'
fake_hash='            allowedHashes:
              - "a3f1c82bd4e9f07c..."'
stm_hash='            allowedHashes:
              - "de6a6ba0564fc32ed137b2e2c97b39c741e87a3fbbb80bc9092b75b6dc8a2aab"'
real_ca="            caCerts: |
$(stm_pem STM_RSA_RT)
            intermediateCerts: |
$(stm_pem STM_RSA_05I)"
p=policy_config
mkdir -p "$corpus/$p"
printf '%s\n%s\n' "$doc_head" "$fake_ca" >"$corpus/$p/seed-seed-ca"
printf '%s\n%s\n' "$doc_head" "$fake_hash" >"$corpus/$p/seed-seed-hash"
printf '%s\n%s\n%s\n' "$doc_head" "$fake_ca" "$fake_hash" >"$corpus/$p/seed-seed-combined"
printf '%s\n%s\n' "$doc_head" "$stm_hash" >"$corpus/$p/seed-hash"
printf '%s\n%s\n%s\n            ekProfileCheck: warn\n            allowSha1Signatures: false\n' \
  "$doc_head" "$real_ca" "$stm_hash" >"$corpus/$p/seed-combined"
sed 's|^      requiredAttestors:|      spiffeIdTemplate: /agents/tpm/{{tpm_ek.manufacturer}}/{{ tpm_ek.public_hash }}\n&|' \
  "$corpus/$p/seed-combined" >"$corpus/$p/seed-template"

# server_handler: record streams of Logins and Answers from several agents (see its docs).
s=server_handler
L_RSA=$(login "${EK[rsa2048]}" "${AK[rsa2048]}")
L_P256=$(login "${EK[p256]}" "${AK[p256]}")
L_P384=$(login "${EK[p384]}" "${AK[p384]}")
A=$(answer)
# A Login for a TPM-resident SVID key (svid-key: tpm): the P-256 AK's point as the key (its
# attributes made those of an unrestricted signing key), the matching SPKI, and a
# certification laid out as a TPM writes it (unsigned: the fuzzer goes on from there).
kc_login() { # ek_hex ak_hex (an ECC P-256 TPM2B_PUBLIC with empty authPolicy)
  local ak=$2 key spki attest sig
  key="${ak:0:12}00040472${ak:20}"
  spki="3059301306072a8648ce3d020106082a8648ce3d03010703420004${ak:48:64}${ak:116:64}"
  attest=$(tpm2b "ff5443478017$(tpm2b "000b$(repeat 11 32)")$(tpm2b "$(repeat 22 32)")$(repeat 33 25)$(tpm2b "000b$(repeat 44 32)")$(tpm2b "000b$(repeat 55 32)")")
  sig="0018000b$(tpm2b "$(repeat 66 32)")$(tpm2b "$(repeat 77 32)")"
  printf '02000100%s00%s%s01%s01%s%s%s%s00' "$(pc_bytes "$1")" "$(pc_bytes "")" "$(pc_bytes "$2")" \
    "$(pc_bytes "$spki")" "$(pc_bytes "$key")" "$(pc_bytes "$attest")" "$(pc_bytes "$sig")" "$(repeat 4e 16)"
}
L_KC=$(kc_login "${EK[p256]}" "${AK[p256]}")
put uplink/seed-login-tpm-key "$L_KC"
put $s/seed-tpm-key "$(record 0x00 "$L_KC")$(record 0x0c "$A")"
# agent 0 logs in and answers right; agent 1 answers its own session with a wrong secret.
put $s/seed-right-and-wrong "$(record 0x00 "$L_RSA")$(record 0x0c "$A")$(record 0x01 "$L_P256")$(record 0x15 "$A")"
# four agents against a cap of 3, a cross-agent answer, then a time jump and a re-login.
put $s/seed-busy "$(record 0x00 "$L_RSA")$(record 0x01 "$L_P256")$(record 0x02 "$L_P384")$(record 0x03 "$L_RSA")$(record 0x0f "$A")$(record 0x42 "$L_P384")"
put $s/seed-golden "$(record 0x00 "$(golden_hex "$golden/login.hex")")$(record 0x00 "$(golden_hex "$golden/answer.hex")")"

total=$(du -sb "$corpus" | cut -f1)
echo "seed corpus written to $corpus ($(find "$corpus" -name 'seed-*' | wc -l) seeds; corpus now $total bytes)"
