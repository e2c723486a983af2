//! Policy document parsing, policy matching and SPIFFE ID templates, on the seed's examples
//! and the real STM certificate chain in ../shared/testdata/real-ek.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ekattest_server::config::{ConfigError, Document, MAX_DOCUMENT_BYTES, Method};
use ekattest_server::ek::{self, Check, Evidence, ProfileMode};
use ekattest_server::policy::{PolicyError, SpiffeIdTemplate};
use ekattest_testkit::testdata;

const STM_HASH: &str = "de6a6ba0564fc32ed137b2e2c97b39c741e87a3fbbb80bc9092b75b6dc8a2aab";

fn read_str(rel: &str) -> String {
    String::from_utf8(testdata::real_ek(rel)).unwrap()
}

/// Indents a multi-line value for a YAML block scalar under `config:`.
fn block(text: &str) -> String {
    text.lines()
        .map(|l| format!("              {l}\n"))
        .collect()
}

/// A one-policy document with the given tpm_ek config lines (already indented 10 spaces).
fn doc(config: &str) -> String {
    format!(
        "section: AgentAttestation\nschema: v1\nspec:\n  policies:\n    - name: tpm_ek_policy\n      \
         requiredAttestors:\n        - type: tpm_ek\n          config:\n{config}"
    )
}

fn ca(pem: &str) -> String {
    format!("            caCerts: |\n{}", block(pem))
}

fn intermediates(pem: &str) -> String {
    format!("            intermediateCerts: |\n{}", block(pem))
}

fn hashes(list: &[&str]) -> String {
    let mut s = "            allowedHashes:\n".to_owned();
    for h in list {
        s.push_str(&format!("              - \"{h}\"\n"));
    }
    s
}

fn stm_doc() -> String {
    doc(&(ca(&read_str("ca/STM_RSA_RT.pem")) + &intermediates(&read_str("ca/STM_RSA_05I.pem"))))
}

fn err(text: &str) -> String {
    match Document::parse(text.as_bytes()) {
        Ok(_) => panic!("document was accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

fn at(year: u64) -> SystemTime {
    // Mid-year is good enough for validity warnings.
    UNIX_EPOCH + Duration::from_secs((year - 1970) * 31_556_952 + 15_778_476)
}

#[test]
fn seed_ca_example_with_the_stm_chain_loads() {
    let d = Document::parse(stm_doc().as_bytes()).unwrap();
    let [p] = d.policies() else {
        panic!("one policy")
    };
    assert_eq!(p.name, "tpm_ek_policy");
    assert_eq!(p.attestors.len(), 1);
    assert_eq!(p.attestors[0].method(), Method::TpmEk);
    let t = p.tpm_ek().unwrap();
    assert_eq!((t.ca_certs, t.intermediate_certs), (1, 1));
    assert!(t.ek.trust.is_some());
    assert!(t.ek.allowed_hashes.is_empty());
    assert_eq!(t.ek.profile, ProfileMode::Enforce);
    assert!(!t.ek.chain.allow_sha1);
    assert!(p.spiffe_id_is_default);
    assert_eq!(p.spiffe_id.as_str(), "/agents/tpm/{{tpm_ek.public_hash}}");
}

#[test]
fn seed_hash_and_combined_examples_load() {
    let upper = STM_HASH.to_uppercase();
    let d = Document::parse(doc(&hashes(&[&upper])).as_bytes()).unwrap();
    let t = d.policies()[0].tpm_ek().unwrap();
    assert!(t.ek.trust.is_none());
    let mut want = [0u8; 32];
    hex::decode_to_slice(STM_HASH, &mut want).unwrap();
    assert!(
        t.ek.allowed_hashes.contains(&want),
        "uppercase hash stored as bytes"
    );

    let combined = doc(&(ca(&read_str("ca/STM_RSA_RT.pem")) + &hashes(&[STM_HASH])));
    let d = Document::parse(combined.as_bytes()).unwrap();
    let t = d.policies()[0].tpm_ek().unwrap();
    assert!(t.ek.trust.is_some());
    assert_eq!(t.ek.allowed_hashes.len(), 1);
}

#[test]
fn seed_literal_examples_give_the_seed_errors() {
    // The seed's examples verbatim (their PEM and hash are shortened with "...").
    let pem = "-----BEGIN CERTIFICATE-----\nMIIBxTCCAW...\n-----END CERTIFICATE-----\n";
    let e = err(&doc(&ca(pem)));
    assert!(
        e.contains("caCerts: could not parse any PEM certificates"),
        "{e}"
    );
    assert!(
        e.starts_with("spec.policies[0].requiredAttestors[0].config.caCerts:"),
        "{e}"
    );

    let e = err(&doc(&hashes(&["a3f1c82bd4e9f07c..."])));
    assert!(
        e.starts_with(
            "spec.policies[0].requiredAttestors[0].config.allowedHashes[0]: not 64 hex digits"
        ),
        "{e}"
    );
}

#[test]
fn garbled_intermediates_give_the_seed_error() {
    let text =
        doc(&(ca(&read_str("ca/STM_RSA_RT.pem")) + &intermediates("not a certificate at all")));
    let e = err(&text);
    assert!(
        e.contains("intermediateCerts: could not parse any PEM certificates"),
        "{e}"
    );
    assert!(e.contains("no -----BEGIN CERTIFICATE----- block"), "{e}");
}

#[test]
fn pem_without_certificate_blocks_is_the_seed_error_naming_the_label() {
    let key = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n";
    let e = err(&doc(&ca(key)));
    assert!(
        e.contains("caCerts: could not parse any PEM certificates"),
        "{e}"
    );
    assert!(e.contains("\"PUBLIC KEY\", expected CERTIFICATE"), "{e}");
}

#[test]
fn one_bad_block_next_to_good_ones_is_an_error_not_skipped() {
    let good = read_str("ca/STM_RSA_RT.pem");
    let truncated: String = good.lines().take(5).map(|l| format!("{l}\n")).collect();
    let e = err(&doc(&ca(&format!("{good}{truncated}"))));
    assert!(e.contains("caCerts: PEM block 2 of 2"), "{e}");
    assert!(e.contains("no matching -----END line"), "{e}");

    let corrupt = good.replacen("MII", "M*I", 1);
    let e = err(&doc(&ca(&format!("{good}{corrupt}"))));
    assert!(e.contains("caCerts: PEM block 2 of 2"), "{e}");
    assert!(e.contains("not valid base64"), "{e}");
}

#[test]
fn base64_that_is_not_a_certificate_is_rejected() {
    // Valid base64 of bytes that are not DER: the EK layer's parser must refuse it.
    let junk = "-----BEGIN CERTIFICATE-----\nSGVsbG8sIHRoaXMgaXMgbm90IGEgY2VydGlmaWNhdGUu\n-----END CERTIFICATE-----\n";
    let e = err(&doc(&ca(junk)));
    assert!(
        e.contains("caCerts: could not parse any PEM certificates"),
        "{e}"
    );
    assert!(e.contains("cannot be parsed"), "{e}");
}

#[test]
fn expired_ca_is_accepted_with_a_warning_naming_not_after() {
    // IFX TPM EK Intermediate CA 01: notAfter Oct 20 13:47:43 2025 GMT.
    let text = doc(&ca(&read_str("ca/IFX_RSA_01I.pem")));
    let d = Document::parse_at(text.as_bytes(), at(2026)).unwrap();
    let [w] = d.warnings() else {
        panic!("one warning: {:?}", d.warnings())
    };
    assert!(
        w.starts_with("spec.policies[0].requiredAttestors[0].config.caCerts: certificate 1 of 1 is outside its validity period"),
        "{w}"
    );
    assert!(w.contains("to Oct 20 13:47:43 2025"), "{w}");
    assert!(w.contains("IFX TPM EK Intermediate CA 01"), "{w}");
    assert!(w.contains("fail chain validation"), "{w}");

    let d = Document::parse_at(text.as_bytes(), at(2024)).unwrap();
    assert!(d.warnings().is_empty(), "{:?}", d.warnings());
    let d = Document::parse_at(text.as_bytes(), at(2001)).unwrap();
    assert_eq!(d.warnings().len(), 1, "not valid yet: {:?}", d.warnings());
}

#[test]
fn all_real_vendor_cas_load_in_one_bundle() {
    let dir = testdata::existing("real-ek/ca");
    let mut bundle = String::new();
    let mut n = 0;
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{} missing: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "pem"))
        .collect();
    names.sort();
    for p in &names {
        bundle.push_str(&std::fs::read_to_string(p).unwrap());
        n += 1;
    }
    assert_eq!(n, 51, "the README promises 51 CA certificates");
    let d = Document::parse(doc(&ca(&bundle)).as_bytes()).unwrap();
    assert_eq!(d.policies()[0].tpm_ek().unwrap().ca_certs, 51);
}

#[test]
fn unknown_fields_are_named_with_their_path() {
    let base = stm_doc();
    let cases = [
        (
            base.replace("schema: v1\n", "schema: v1\nextra: 1\n"),
            "unknown field `extra`",
        ),
        (
            base.replace("  policies:\n", "  policy: []\n  policies:\n"),
            "spec: unknown field `policy`",
        ),
        (
            base.replace(
                "      requiredAttestors:",
                "      requiredAttestor: []\n      requiredAttestors:",
            ),
            "spec.policies[0]: unknown field `requiredAttestor`",
        ),
        (
            base.replace(
                "          config:\n",
                "          confg: {}\n          config:\n",
            ),
            "spec.policies[0].requiredAttestors[0]: unknown field `confg`",
        ),
        (
            base.replace(
                "            caCerts: |",
                "            caCert: x\n            caCerts: |",
            ),
            "spec.policies[0].requiredAttestors[0].config: unknown field `caCert`",
        ),
    ];
    for (text, want) in cases {
        let e = err(&text);
        assert!(e.contains(want), "want {want:?} in {e}");
    }
}

#[test]
fn bad_hashes_name_their_index() {
    let good = STM_HASH;
    for bad in [
        &good[..63],
        &format!("{good}0"),
        &good.replace('a', "x"),
        "",
        "0x1234",
    ] {
        let e = err(&doc(&hashes(&[good, good, bad])));
        assert!(
            e.starts_with(
                "spec.policies[0].requiredAttestors[0].config.allowedHashes[2]: not 64 hex digits"
            ),
            "{bad:?}: {e}"
        );
    }
}

#[test]
fn duplicate_hashes_are_tolerated_with_a_warning() {
    let d =
        Document::parse(doc(&hashes(&[STM_HASH, &STM_HASH.to_uppercase()])).as_bytes()).unwrap();
    assert_eq!(d.policies()[0].tpm_ek().unwrap().ek.allowed_hashes.len(), 1);
    assert_eq!(d.warnings().len(), 1);
    assert!(
        d.warnings()[0].contains("allowedHashes[1]: duplicates"),
        "{:?}",
        d.warnings()
    );
}

#[test]
fn neither_ca_certs_nor_allowed_hashes_is_an_error() {
    for config in [
        "            {}\n",
        "            allowedHashes: []\n",
        "            ekProfileCheck: warn\n",
    ] {
        let text = if config.contains("{}") {
            doc("").replace("          config:\n", "          config: {}\n")
        } else {
            doc(config)
        };
        let e = err(&text);
        assert!(
            e.contains("at least one of caCerts or allowedHashes must be present"),
            "{e}"
        );
        assert!(
            e.starts_with("spec.policies[0].requiredAttestors[0].config:"),
            "{e}"
        );
    }
    let no_config = doc("").replace("          config:\n", "");
    assert!(err(&no_config).contains("at least one of caCerts or allowedHashes"));
}

#[test]
fn intermediates_without_ca_certs_are_a_warning() {
    let text = doc(&(hashes(&[STM_HASH]) + &intermediates(&read_str("ca/STM_RSA_05I.pem"))));
    let d = Document::parse(text.as_bytes()).unwrap();
    assert!(
        d.warnings()
            .iter()
            .any(|w| w.contains("intermediateCerts: ignored without caCerts"))
    );
}

#[test]
fn unknown_attestor_type_is_named_with_the_supported_list() {
    let text = stm_doc().replace("type: tpm_ek", "type: x509pop");
    let e = err(&text);
    assert!(
        e.contains("spec.policies[0].requiredAttestors[0].type"),
        "{e}"
    );
    assert!(
        e.contains("unknown attestor type \"x509pop\"; supported types: tpm_ek"),
        "{e}"
    );
}

#[test]
fn header_and_structure_rules() {
    let base = doc(&hashes(&[STM_HASH]));
    let cases = [
        (base.replace("section: AgentAttestation", "section: AgentConfig"), "section: expected \"AgentAttestation\""),
        (base.replace("schema: v1", "schema: v2"), "schema: expected \"v1\", found \"v2\""),
        ("section: AgentAttestation\nschema: v1\nspec:\n  policies: []\n".to_owned(), "spec.policies: at least one policy"),
        (base.replace("    - name: tpm_ek_policy", "    - name: \"\""), "spec.policies[0].name: must not be empty"),
        ("section: AgentAttestation\nschema: v1\nspec:\n  policies:\n    - name: p\n      requiredAttestors: []\n".to_owned(), "spec.policies[0].requiredAttestors: at least one attestor"),
        (base.replace("schema: v1", "schema: v1\n---\nsection: x"), "more than one document"),
        ("section: [\n".to_owned(), "line 2"),
    ];
    for (text, want) in cases {
        let e = err(&text);
        assert!(e.contains(want), "want {want:?} in {e}");
    }
}

#[test]
fn duplicate_policy_names_and_attestor_types_are_errors() {
    let one = doc(&hashes(&[STM_HASH]));
    let policy = one.split_once("  policies:\n").unwrap().1;
    let two = format!("{one}{policy}");
    assert!(err(&two).contains("spec.policies[1].name: duplicate policy name"));

    let attestor = "        - type: tpm_ek\n          config:\n              allowedHashes: [\""
        .to_owned()
        + STM_HASH
        + "\"]\n";
    let e = err(&format!("{one}{attestor}"));
    assert!(
        e.contains("spec.policies[0].requiredAttestors[1].type: attestor type listed twice"),
        "{e}"
    );
}

#[test]
fn extensions_parse_and_bad_values_are_named() {
    let text = doc(&(hashes(&[STM_HASH]) + "            ekProfileCheck: warn\n            allowSha1Signatures: true\n"))
        .replace("    - name: tpm_ek_policy\n", "    - name: tpm_ek_policy\n      spiffeIdTemplate: /agents/tpm/{{tpm_ek.manufacturer}}/{{tpm_ek.public_hash}}\n");
    let d = Document::parse(text.as_bytes()).unwrap();
    let p = &d.policies()[0];
    let t = p.tpm_ek().unwrap();
    assert_eq!(t.ek.profile, ProfileMode::Warn);
    assert!(t.ek.chain.allow_sha1);
    assert!(!p.spiffe_id_is_default);

    let e = err(&doc(
        &(hashes(&[STM_HASH]) + "            ekProfileCheck: lenient\n")
    ));
    assert!(
        e.contains(
            "config.ekProfileCheck: unknown variant `lenient`, expected `enforce` or `warn`"
        ),
        "{e}"
    );
    let e = err(&doc(
        &(hashes(&[STM_HASH]) + "            allowSha1Signatures: maybe\n")
    ));
    assert!(
        e.contains("config.allowSha1Signatures: invalid type"),
        "{e}"
    );
}

#[test]
fn accept_expired_ek_defaults_off_and_parses() {
    let d = Document::parse(doc(&hashes(&[STM_HASH])).as_bytes()).unwrap();
    assert!(!d.policies()[0].tpm_ek().unwrap().ek.chain.accept_expired_ek);
    let d = Document::parse(
        doc(&(hashes(&[STM_HASH]) + "            acceptExpiredEk: true\n")).as_bytes(),
    )
    .unwrap();
    let t = d.policies()[0].tpm_ek().unwrap();
    assert!(t.ek.chain.accept_expired_ek);
    assert!(
        !t.ek.chain.allow_sha1,
        "one option does not turn on another"
    );
    let e = err(&doc(
        &(hashes(&[STM_HASH]) + "            acceptExpiredEk: sometimes\n")
    ));
    assert!(e.contains("config.acceptExpiredEk: invalid type"), "{e}");
    // The field's spelling is checked like every other (no silent typo).
    let e = err(&doc(
        &(hashes(&[STM_HASH]) + "            accept-expired-ek: true\n")
    ));
    assert!(e.contains("accept-expired-ek"), "{e}");
}

#[test]
fn template_errors_name_the_placeholder_and_field() {
    let text = doc(&hashes(&[STM_HASH])).replace(
        "    - name: tpm_ek_policy\n",
        "    - name: tpm_ek_policy\n      spiffeIdTemplate: /agents/{{tpm_ek.vendor}}\n",
    );
    let e = err(&text);
    assert!(
        e.starts_with(
            "spec.policies[0].spiffeIdTemplate: unknown attribute in placeholder {{tpm_ek.vendor}}"
        ),
        "{e}"
    );
    for (t, want) in [
        ("spiffe://td/agents", "must be a path starting with '/'"),
        ("/agents//x", "segment 2 is empty"),
        ("/agents/a:b", "character ':'"),
        ("/agents/{{tpm_ek.model", "not closed"),
    ] {
        let e = SpiffeIdTemplate::parse(t).unwrap_err().to_string();
        assert!(e.contains(want), "{t}: want {want:?} in {e}");
    }
}

#[test]
fn policy_matching_takes_the_first_policy_in_document_order() {
    let first = doc(&hashes(&[STM_HASH]));
    let second = first
        .split_once("  policies:\n")
        .unwrap()
        .1
        .replace("tpm_ek_policy", "second");
    let d = Document::parse(format!("{first}{second}").as_bytes()).unwrap();
    assert_eq!(d.select(&[Method::TpmEk]).unwrap().name, "tpm_ek_policy");
    assert_eq!(
        d.select(&[Method::TpmEk, Method::TpmEk]).unwrap().name,
        "tpm_ek_policy"
    );
    let e = d.select(&[]).unwrap_err();
    assert_eq!(e, PolicyError::NoPolicy { provided: vec![] });
    assert_eq!(
        e.to_string(),
        "no cluster policy authorizes the provided attestors"
    );
}

fn stm_attributes() -> ek::Attributes {
    ek::Attributes {
        public_hash: STM_HASH.to_owned(),
        serial_number: Some("4cbd0fe61ee762edb28d50b268fc3586ff3d5e82".to_owned()),
        manufacturer: Some("id:53544D20".to_owned()),
        model: Some("ST33HTPHAHB4".to_owned()),
        version: Some("73.4".to_owned()),
    }
}

#[test]
fn seed_template_renders_with_the_manufacturer_mapped_into_the_path_alphabet() {
    let t = SpiffeIdTemplate::parse("/agents/tpm/{{tpm_ek.manufacturer}}/{{tpm_ek.public_hash}}")
        .unwrap();
    let a = stm_attributes();
    assert_eq!(
        t.render(&a, None).unwrap(),
        format!("/agents/tpm/id_53544D20/{STM_HASH}")
    );
    assert_eq!(
        t.render(&a, Some("example.org")).unwrap(),
        format!("spiffe://example.org/agents/tpm/id_53544D20/{STM_HASH}")
    );
    assert!(matches!(
        t.render(&a, Some("Example.org")),
        Err(PolicyError::InvalidTrustDomain(_))
    ));

    // A '/' in a value cannot add a segment.
    let m = SpiffeIdTemplate::parse("/m/{{tpm_ek.model}}").unwrap();
    let mut odd = stm_attributes();
    odd.model = Some("SLB 9670/../x".to_owned());
    assert_eq!(m.render(&odd, None).unwrap(), "/m/SLB_9670_.._x");
}

#[test]
fn missing_attribute_is_a_rejection_not_an_empty_segment() {
    let t = SpiffeIdTemplate::parse("/agents/tpm/{{tpm_ek.manufacturer}}/{{tpm_ek.public_hash}}")
        .unwrap();
    let raw_key = ek::Attributes {
        public_hash: STM_HASH.to_owned(),
        ..Default::default()
    };
    let e = t.render(&raw_key, None).unwrap_err();
    assert_eq!(
        e.to_string(),
        "SPIFFE ID template names an attribute the agent does not have: tpm_ek.manufacturer"
    );
    // The default template works for raw-key TPMs.
    let d = SpiffeIdTemplate::default();
    assert_eq!(
        d.render(&raw_key, None).unwrap(),
        format!("/agents/tpm/{STM_HASH}")
    );
}

#[test]
fn stm_leaf_verifies_through_the_configured_chain() {
    let d = Document::parse(stm_doc().as_bytes()).unwrap();
    let p = d.select(&[Method::TpmEk]).unwrap();
    let leaf = testdata::real_ek("leaf/stm-st33htphahb4-rsa2048.der");
    let ev = Evidence {
        ek_cert: Some(&leaf),
        ek_chain: &[],
        ek_public: None,
    };
    let v = ek::validate(&p.tpm_ek().unwrap().ek, &ev, SystemTime::now()).unwrap();
    assert_eq!(v.passed, Check::Chain);
    assert_eq!(v.attributes, stm_attributes());
    let t = SpiffeIdTemplate::parse("/agents/tpm/{{tpm_ek.manufacturer}}/{{tpm_ek.public_hash}}")
        .unwrap();
    assert_eq!(
        t.render(&v.attributes, None).unwrap(),
        format!("/agents/tpm/id_53544D20/{STM_HASH}")
    );
}

#[test]
fn oversized_and_non_utf8_documents_are_refused_before_parsing() {
    let mut big = doc(&hashes(&[STM_HASH])).into_bytes();
    big.resize(MAX_DOCUMENT_BYTES + 1, b'\n');
    assert!(matches!(
        Document::parse(&big),
        Err(ConfigError::TooLarge { .. })
    ));
    let e = Document::parse(b"section: \xff\n").unwrap_err();
    assert!(matches!(e, ConfigError::NotUtf8 { offset: 9 }), "{e}");
}

#[test]
fn yaml_alias_bomb_fails_fast_without_exhausting_memory() {
    // One policy with 4,000 hashes (about 290 KB), referenced 2,000 times: 8 million hash
    // strings (over 500 MB) if the aliases were expanded into the typed document.
    let mut text = String::from(
        "section: AgentAttestation\nschema: v1\nx-anchor: &p\n  name: p\n  requiredAttestors:\n    - type: tpm_ek\n      config:\n        allowedHashes:\n",
    );
    for i in 0..4000u32 {
        text.push_str(&format!("          - \"{:064x}\"\n", i));
    }
    text.push_str("spec:\n  policies: [");
    text.push_str(&vec!["*p"; 2000].join(", "));
    text.push_str("]\n");
    assert!(text.len() < MAX_DOCUMENT_BYTES);
    let start = std::time::Instant::now();
    let e = Document::parse(text.as_bytes()).unwrap_err();
    assert!(matches!(e, ConfigError::TooComplex), "{e}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn mutated_documents_never_panic() {
    // Deterministic byte mutations of a valid document: every result is Ok or Err, and the
    // time stays bounded.
    let base = stm_doc().into_bytes();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut ok, mut rejected) = (0, 0);
    for _ in 0..1500 {
        let mut doc = base.clone();
        for _ in 0..1 + next() % 4 {
            let i = (next() % doc.len() as u64) as usize;
            match next() % 4 {
                0 => doc[i] = (next() % 256) as u8,
                1 => {
                    doc.remove(i);
                }
                2 => doc.insert(i, b"*&{}[]:-!|>\n "[(next() % 13) as usize]),
                _ => doc.truncate(i),
            }
        }
        match Document::parse(&doc) {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(!e.to_string().is_empty());
                rejected += 1;
            }
        }
    }
    assert!(ok > 0 && rejected > 0, "ok {ok}, rejected {rejected}");
}

#[test]
fn version_flag_prints_name_version_and_git_commit() {
    let line = ekattest_testkit::version::check_version_flag(
        std::path::Path::new(env!("CARGO_BIN_EXE_ekattest-server")),
        "ekattest-server",
        env!("CARGO_PKG_VERSION"),
    )
    .unwrap();
    eprintln!("{line}");
    let line = ekattest_testkit::version::check_version_flag(
        std::path::Path::new(env!("CARGO_BIN_EXE_ekattestctl")),
        "ekattestctl",
        env!("CARGO_PKG_VERSION"),
    )
    .unwrap();
    eprintln!("{line}");
}

/// `deploy/kubernetes` renders with `kubectl kustomize` (Debian's kubernetes-client, or any
/// kubectl) into the objects the README describes, and the generated server config and
/// policy agree with the pod's mounts and ports (issue 16, item 4).
#[test]
fn the_kubernetes_base_renders_and_its_configs_match_the_mounts() {
    let base = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/kubernetes");
    let out = std::process::Command::new("kubectl")
        .args(["kustomize", base])
        .output()
        .unwrap_or_else(|e| panic!("kubectl is required (apt-get install kubernetes-client): {e}"));
    assert!(
        out.status.success(),
        "kubectl kustomize {base}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let objects: Vec<serde_norway::Value> = serde_norway::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let find = |kind: &str, prefix: &str| -> &serde_norway::Value {
        objects
            .iter()
            .find(|o| {
                o["kind"] == kind
                    && o["metadata"]["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with(prefix))
            })
            .unwrap_or_else(|| panic!("no {kind} {prefix}* in\n{text}"))
    };
    let all = |o: &serde_norway::Value| o["metadata"]["namespace"] == "ekattest";
    assert!(objects.iter().filter(|o| o["kind"] != "Namespace").all(all));

    // The agent: the TPM as a character device, a read-only root, a writable data-dir.
    let ds = find("DaemonSet", "ekattest-agent");
    let pod = &ds["spec"]["template"]["spec"];
    let volumes = pod["volumes"].as_sequence().unwrap();
    let volume = |name: &str| volumes.iter().find(|v| v["name"] == name).unwrap();
    assert_eq!(volume("tpmrm0")["hostPath"]["path"], "/dev/tpmrm0");
    assert_eq!(volume("tpmrm0")["hostPath"]["type"], "CharDevice");
    let agent = &pod["containers"][0];
    assert_eq!(agent["securityContext"]["readOnlyRootFilesystem"], true);
    let mounts = agent["volumeMounts"].as_sequence().unwrap();
    let mount = |path: &str| {
        mounts
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("nothing mounted at {path}"))
    };
    assert_eq!(mount("/dev/tpmrm0")["name"], "tpmrm0");
    let data = mount("/var/lib/ekattest");
    assert_ne!(data["readOnly"], true, "data-dir must be writable");
    assert!(volume(data["name"].as_str().unwrap())["emptyDir"].is_mapping());
    let agent_cm = find("ConfigMap", "ekattest-agent-config");
    let agent_yaml: serde_norway::Value =
        serde_norway::from_str(agent_cm["data"]["agent.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(agent_yaml["data-dir"], "/var/lib/ekattest");
    for key in ["trust-bundle", "tpm"] {
        mount(agent_yaml[key].as_str().unwrap());
    }
    mount(agent_yaml["tls"]["ca"].as_str().unwrap());

    // The server: probes on the metrics port, which the config binds on every interface;
    // every file the config names is mounted; the policy is valid.
    let deploy = find("Deployment", "ekattest-server");
    let server = &deploy["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(server["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(server["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(server["ports"][0]["containerPort"], 9464);
    assert_eq!(server["securityContext"]["readOnlyRootFilesystem"], true);
    let server_cm = find("ConfigMap", "ekattest-server-config");
    let server_yaml: serde_norway::Value =
        serde_norway::from_str(server_cm["data"]["server.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(server_yaml["metrics-address"], "0.0.0.0:9464");
    let smounts = server["volumeMounts"].as_sequence().unwrap();
    let covered = |path: &str| {
        smounts.iter().any(|m| {
            m["mountPath"]
                .as_str()
                .is_some_and(|p| path == p || path.starts_with(&format!("{p}/")))
        })
    };
    for path in [
        server_yaml["ca-cert"].as_str().unwrap(),
        server_yaml["ca-key"].as_str().unwrap(),
        server_yaml["password-file"].as_str().unwrap(),
        server_yaml["tls"]["ca"].as_str().unwrap(),
        server_yaml["policy-files"][0].as_str().unwrap(),
    ] {
        assert!(covered(path), "{path} is not mounted in the server pod");
    }
    let policy = server_cm["data"]["attestation-policy.yaml"]
        .as_str()
        .unwrap();
    Document::parse(policy.as_bytes()).unwrap();
    find("Service", "ekattest-server-metrics");
}
