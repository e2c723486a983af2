#!/usr/bin/env bash
# Server attestations per second per core next to its baselines, in ONE run:
#   (a) tpm2-pytss `make_credential` (pip, in a venv this script creates: target/bench-venv),
#   (b) `tpm2_makecredential -T none` (tpm2-tools, one process per call, as operators script),
#   (c) ekattest-server's whole attestation work per core (criterion bench attest_rate),
# all on the same EK public keys (the known-answer vectors' RSA-2048 and P-256 EKs in
# ../shared/testdata/make-credential), then prints two tables: ours vs baselines (goals:
# >= 3x pytss, >= 100x tpm2_makecredential) and MakeCredential alone vs MakeCredential alone.
#
# Usage: bench/makecredential/run.sh            (from anywhere; ~3 minutes once built)
# Env:   SECONDS_PER_BASELINE (default 5): how long pytss runs per EK;
#        TOOLS_CALLS (default 100): tpm2_makecredential processes per EK;
#        CRITERION_ARGS (default "--warm-up-time 2 --measurement-time 5").
# Needs: cargo, python3 (venv), tpm2-tools, openssl, the TSS2 headers (libtss2-dev) and
# pkg-config for building tpm2-pytss. Fails loudly when one is missing.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VECTORS=$(cd "$ROOT/../shared/testdata/make-credential" 2>/dev/null && pwd) || {
    echo "error: test vectors missing: $ROOT/../shared/testdata/make-credential" >&2
    exit 1
}
VENV="$ROOT/target/bench-venv"
SECS=${SECONDS_PER_BASELINE:-5}
CALLS=${TOOLS_CALLS:-100}
CRITERION_ARGS=${CRITERION_ARGS:-"--warm-up-time 2 --measurement-time 5"}
CASES=(rsa2048 p256)

die() { echo "error: $*" >&2; exit 1; }

# --- prerequisites -------------------------------------------------------------------------
command -v tpm2_makecredential >/dev/null ||
    die "tpm2_makecredential is missing: apt-get install -y tpm2-tools"
command -v openssl >/dev/null || die "openssl is missing: apt-get install -y openssl"
if ! pkg-config --exists tss2-esys tss2-mu tss2-rc 2>/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        echo "== installing libtss2-dev pkg-config (tpm2-pytss builds against them)"
        apt-get install -y libtss2-dev pkg-config >/dev/null
    else
        die "tpm2-pytss needs the TSS2 headers: sudo apt-get install -y libtss2-dev pkg-config"
    fi
fi

# --- (a) tpm2-pytss in a venv --------------------------------------------------------------
if ! "$VENV/bin/python" -c 'import tpm2_pytss' 2>/dev/null; then
    echo "== creating $VENV and installing tpm2-pytss (may build from source)"
    python3 -m venv "$VENV" || die "python3 -m venv failed: apt-get install -y python3-venv"
    start=$(date +%s.%N)
    "$VENV/bin/pip" install -q tpm2-pytss || die "pip install tpm2-pytss failed (see above)"
    echo "   pip install tpm2-pytss took $(echo "$(date +%s.%N) - $start" | bc) s"
fi
PYTSS_VERSION=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("tpm2-pytss"))')

# Build the bench first so compilation does not overlap the baselines' timing.
echo "== building the attest_rate bench"
(cd "$ROOT" && cargo bench -p ekattest-server --bench attest_rate --no-run -q 2>&1 | tail -3)

echo "== load before: $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min), $(nproc) cores"
echo "== (a) tpm2-pytss $PYTSS_VERSION make_credential, ${SECS} s per EK"
declare -A PYTSS TOOLS OURS MCRED
while read -r tag case rate _; do
    [ "$tag" = pytss ] && PYTSS[$case]=$rate
done < <("$VENV/bin/python" "$ROOT/bench/makecredential/pytss_bench.py" "$VECTORS" "$SECS" "${CASES[@]}")

echo "== (b) tpm2_makecredential -T none, $CALLS processes per EK"
TOOLS_VERSION=$(tpm2_makecredential -v 2>&1 | sed -n 's/.*version="\([^"]*\)".*/\1/p' | head -1)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
AK_NAME=$(od -An -v -tx1 "$VECTORS/ak.name" | tr -d ' \n')
for case in "${CASES[@]}"; do
    tpm2_makecredential -T none -u "$VECTORS/$case/ek.tpm2b_public" -s "$VECTORS/secret.bin" \
        -n "$AK_NAME" -o "$WORK/check.cred" 2>/dev/null || die "tpm2_makecredential failed on $case"
    [ -s "$WORK/check.cred" ] || die "tpm2_makecredential wrote no credential for $case"
    start=$(date +%s.%N)
    for _ in $(seq "$CALLS"); do
        tpm2_makecredential -T none -u "$VECTORS/$case/ek.tpm2b_public" \
            -s "$VECTORS/secret.bin" -n "$AK_NAME" -o "$WORK/out.cred" 2>/dev/null
    done
    TOOLS[$case]=$(echo "scale=1; $CALLS / ($(date +%s.%N) - $start)" | bc)
done

echo "== (c) ekattest-server attest_rate (criterion, one thread)"
# shellcheck disable=SC2086
(cd "$ROOT" && cargo bench -p ekattest-server --bench attest_rate -q -- $CRITERION_ARGS) |
    grep -E '^(attest_rate|make_credential_only)/|thrpt' || true
rate() { # criterion's mean time per iteration (ns) -> per second
    local est="$ROOT/target/criterion/$1/$2/new/estimates.json"
    [ -f "$est" ] || die "criterion wrote no $est"
    python3 -c 'import json,sys; print("%.1f" % (1e9 / json.load(open(sys.argv[1]))["mean"]["point_estimate"]))' "$est"
}
for case in "${CASES[@]}"; do
    OURS[$case]=$(rate attest_rate "${case}_allowlist")
    OURS[${case}_cert]=$(rate attest_rate "${case}_ek_cert")
    MCRED[$case]=$(rate make_credential_only "$case")
done
echo "== load after: $(cut -d' ' -f1-3 /proc/loadavg)"

ratio() { echo "scale=1; $1 / $2" | bc; }
echo
echo "Table 1: full server attestation per core vs MakeCredential-only baselines (per second)"
echo "  ours = Login (EK check, MakeCredential) + Answer (secret, PoP, X.509-SVID, signed Result)"
printf '%-8s %14s %14s %12s %14s %10s %12s\n' EK "ours allowlist" "ours EK cert" "pytss" "tpm2_makecred" "vs pytss" "vs tpm2-tools"
for case in "${CASES[@]}"; do
    printf '%-8s %14s %14s %12s %14s %9sx %11sx\n' "$case" "${OURS[$case]}" "${OURS[${case}_cert]}" \
        "${PYTSS[$case]}" "${TOOLS[$case]}" "$(ratio "${OURS[${case}_cert]}" "${PYTSS[$case]}")" \
        "$(ratio "${OURS[${case}_cert]}" "${TOOLS[$case]}")"
done
echo "  (ratios use the EK-certificate column, the heavier of ours; goals >= 3x and >= 100x)"
echo
echo "Table 2: MakeCredential alone (decode TPM2B_PUBLIC + MakeCredential), per second"
printf '%-8s %14s %12s %14s %10s %12s\n' EK ekattest pytss tpm2_makecred "vs pytss" "vs tpm2-tools"
for case in "${CASES[@]}"; do
    printf '%-8s %14s %12s %14s %9sx %11sx\n' "$case" "${MCRED[$case]}" "${PYTSS[$case]}" \
        "${TOOLS[$case]}" "$(ratio "${MCRED[$case]}" "${PYTSS[$case]}")" \
        "$(ratio "${MCRED[$case]}" "${TOOLS[$case]}")"
done
echo
echo "tpm2-pytss $PYTSS_VERSION, tpm2-tools ${TOOLS_VERSION:-?}, $(nproc) cores, $(uname -m)"
