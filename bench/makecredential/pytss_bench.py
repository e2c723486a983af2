"""tpm2-pytss make_credential per second, on the known-answer vectors' EK public keys.

Usage: pytss_bench.py VECTORS_DIR SECONDS CASE...   (CASE: rsa2048, p256)

For each CASE: loads CASE/ek.tpm2b_public (TPM2B_PUBLIC.unmarshal, once, outside the timed
loop: pytss' most favourable setting), the AK Name (ak.name) and the 32-byte secret
(secret.bin), checks one call produces a credential of the expected shape, then calls
tpm2_pytss.utils.make_credential for SECONDS seconds on one thread and prints one line:

    pytss CASE CALLS_PER_SECOND CALLS SECONDS

It never prints anything else on stdout (run.sh parses it); errors go to stderr with a
non-zero exit status.
"""

import os
import sys
import time

from tpm2_pytss.types import TPM2B_NAME, TPM2B_PUBLIC
from tpm2_pytss.utils import make_credential


def read(path):
    with open(path, "rb") as f:
        return f.read()


def main():
    if len(sys.argv) < 4:
        sys.exit("usage: pytss_bench.py VECTORS_DIR SECONDS CASE...")
    vectors, seconds, cases = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
    name = TPM2B_NAME(read(os.path.join(vectors, "ak.name")))
    secret = read(os.path.join(vectors, "secret.bin"))
    for case in cases:
        public, _ = TPM2B_PUBLIC.unmarshal(read(os.path.join(vectors, case, "ek.tpm2b_public")))
        blob, enc = make_credential(public, secret, name)
        # credentialBlob: UINT16 hmac size + 32-byte HMAC + encrypted (UINT16 + 32-byte secret)
        if len(bytes(blob)) != 2 + 32 + 2 + 32:
            sys.exit(f"{case}: unexpected credentialBlob of {len(bytes(blob))} bytes")
        calls = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            for _ in range(10):
                make_credential(public, secret, name)
            calls += 10
            now = time.perf_counter()
            if now >= deadline:
                break
        elapsed = now - start
        print(f"pytss {case} {calls / elapsed:.1f} {calls} {elapsed:.3f}", flush=True)


if __name__ == "__main__":
    main()
