use super::*;

const DOC: &[u8] = b"section: AgentAttestation\nschema: v1\nspec:\n  policies:\n  - name: p\n    \
requiredAttestors:\n    - type: tpm_ek\n      config:\n        allowedHashes: [\"0000000000000000000000000000000000000000000000000000000000000000\"]\n";

fn key() -> SigningKey {
    SigningKey::generate().unwrap().0
}

fn signers(key: &SigningKey) -> Signers {
    let mut s = Signers::new();
    s.add_pem(key.public_pem().as_bytes()).unwrap();
    s
}

#[test]
fn utc_matches_gnu_date() {
    // `date -u -d @N +%FT%TZ`
    assert_eq!(utc(0), "1970-01-01T00:00:00Z");
    assert_eq!(utc(1_718_000_000), "2024-06-10T06:13:20Z");
    assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(utc(4_102_444_799), "2099-12-31T23:59:59Z");
}

#[test]
fn signed_document_decodes_verifies_and_re_encodes_byte_for_byte() {
    let k = key();
    let signed = k.sign(DOC, "c-1", 1_718_000_000).unwrap();
    let text = std::str::from_utf8(&signed).unwrap();
    assert!(text.starts_with(std::str::from_utf8(DOC).unwrap()));
    assert!(text.contains("# cluster: c-1\n# issued: 1718000000 2024-06-10T06:13:20Z\n"));
    let env = Envelope::decode(&signed).unwrap();
    assert_eq!(env.document, DOC);
    assert_eq!(env.cluster, "c-1");
    assert_eq!(env.issued, 1_718_000_000);
    assert_eq!(env.signer, k.fingerprint());
    assert_eq!(env.encode(), signed);
    signers(&k).verify(&env, "c-1").unwrap();
    // The envelope is still a valid document (the trailer is YAML comments).
    crate::config::Document::parse(&signed).unwrap();
}

#[test]
fn a_document_without_final_newline_gets_one_inside_the_signature() {
    let k = key();
    let doc = DOC.strip_suffix(b"\n").unwrap();
    let signed = k.sign(doc, "c-1", 5).unwrap();
    let env = Envelope::decode(&signed).unwrap();
    assert_eq!(env.document, DOC);
    signers(&k).verify(&env, "c-1").unwrap();
}

#[test]
fn unsigned_document_is_refused_as_unsigned() {
    let e = Envelope::decode(DOC).unwrap_err();
    assert_eq!(e, EnvelopeError::Unsigned);
    assert_eq!(e.reason(), "unsigned");
    assert!(e.to_string().contains("ekattestctl config sign"), "{e}");
    assert_eq!(Envelope::decode(b"").unwrap_err(), EnvelopeError::Unsigned);
}

#[test]
fn other_cluster_is_refused_before_the_signature() {
    let k = key();
    let signed = k.sign(DOC, "cluster-a", 10).unwrap();
    let env = Envelope::decode(&signed).unwrap();
    let e = signers(&k).verify(&env, "cluster-b").unwrap_err();
    assert_eq!(e.reason(), "wrong_cluster");
    assert!(e.to_string().contains("\"cluster-a\""), "{e}");
    assert!(e.to_string().contains("--id cluster-b"), "{e}");
}

#[test]
fn any_change_to_document_cluster_or_time_breaks_the_signature() {
    let k = key();
    let s = signers(&k);
    let signed = String::from_utf8(k.sign(DOC, "c-1", 1_718_000_000).unwrap()).unwrap();
    for (from, to) in [
        ("name: p", "name: q"),
        ("# cluster: c-1", "# cluster: c-2"),
        (
            "# issued: 1718000000 2024-06-10T06:13:20Z",
            "# issued: 1718000001 2024-06-10T06:13:21Z",
        ),
    ] {
        let changed = signed.replacen(from, to, 1);
        let env = Envelope::decode(changed.as_bytes()).unwrap();
        let cluster = env.cluster.to_owned();
        let e = s.verify(&env, &cluster).unwrap_err();
        assert_eq!(e.reason(), "bad_signature", "{from} -> {to}: {e}");
    }
}

#[test]
fn a_key_that_is_not_pinned_is_named() {
    let k = key();
    let other = key();
    let signed = k.sign(DOC, "c-1", 10).unwrap();
    let env = Envelope::decode(&signed).unwrap();
    let e = signers(&other).verify(&env, "c-1").unwrap_err();
    assert_eq!(e.reason(), "unknown_signer");
    assert!(e.to_string().contains(&hex::encode(k.fingerprint())), "{e}");
    // A trailer that names a pinned key but carries another key's signature.
    let forged = String::from_utf8(signed).unwrap().replace(
        &hex::encode(k.fingerprint()),
        &hex::encode(other.fingerprint()),
    );
    let env = Envelope::decode(forged.as_bytes()).unwrap();
    let e = signers(&other).verify(&env, "c-1").unwrap_err();
    assert_eq!(e.reason(), "bad_signature");
}

#[test]
fn malformed_trailers_are_refused_with_the_line() {
    let k = key();
    let signed = String::from_utf8(k.sign(DOC, "c-1", 1_718_000_000).unwrap()).unwrap();
    let cases: Vec<(String, usize)> = vec![
        (format!("{signed}extra\n"), 6),
        (signed.strip_suffix('\n').unwrap().to_owned(), 6),
        (signed.replace("# cluster: c-1", "# cluster: c/1"), 2),
        (signed.replace("# cluster: c-1", "# cluster: "), 2),
        (
            signed.replace("# issued: 1718000000 ", "# issued: 01718000000 "),
            3,
        ),
        (
            signed.replace("2024-06-10T06:13:20Z", "2024-06-10T06:13:21Z"),
            3,
        ),
        (
            signed.replace(
                "# issued: 1718000000 2024-06-10T06:13:20Z",
                "# issued: 99999999999999999999 x",
            ),
            3,
        ),
        (signed.replace("# signer: sha256:", "# signer: sha1:"), 4),
        (signed.replace("# signature: ", "# signature: zz"), 5),
        (signed.replace("# signature: ", "# Signature: "), 5),
        (signed.replace(END, "# -----END-----\n"), 6),
        (signed.replace("# cluster: c-1\n", ""), 5),
    ];
    for (text, line) in cases {
        match Envelope::decode(text.as_bytes()) {
            Err(EnvelopeError::Malformed { line: l, .. }) => assert_eq!(l, line, "{text}"),
            other => panic!("{text}: {other:?}"),
        }
    }
}

#[test]
fn oversized_input_is_refused_before_any_search() {
    let big = vec![b'a'; ENVELOPE_MAX + 1];
    assert!(matches!(
        Envelope::decode(&big),
        Err(EnvelopeError::TooLong { .. })
    ));
}

#[test]
fn a_trailer_far_from_the_end_is_not_found() {
    let k = key();
    let mut signed = k.sign(DOC, "c-1", 1).unwrap();
    signed.extend(std::iter::repeat_n(b'#', TRAILER_MAX));
    assert_eq!(Envelope::decode(&signed), Err(EnvelopeError::Unsigned));
}

#[test]
fn signers_accept_only_p256_public_keys() {
    let mut s = Signers::new();
    assert!(matches!(s.add_pem(b"nothing"), Err(KeyError::Format(_))));
    let k = key();
    let pem_text = k.public_pem();
    let fp = s.add_pem(pem_text.as_bytes()).unwrap();
    assert_eq!(fp, k.fingerprint());
    s.add_pem(pem_text.as_bytes()).unwrap();
    assert_eq!(s.len(), 1);
    // A private key file is not a public key.
    let (_, private) = SigningKey::generate().unwrap();
    assert!(s.add_pem(private.as_bytes()).is_err());
}

#[test]
fn signing_key_reads_its_own_pem() {
    let (k, pem_text) = SigningKey::generate().unwrap();
    let again = SigningKey::from_pem(pem_text.as_bytes()).unwrap();
    assert_eq!(again.fingerprint(), k.fingerprint());
    assert!(!format!("{again:?}").contains("PRIVATE"));
    assert!(SigningKey::from_pem(k.public_pem().as_bytes()).is_err());
}
