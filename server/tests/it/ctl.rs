//! ekattestctl end to end: runs the built binary on the real STM data in
//! ../shared/testdata/real-ek. The comparison with the seed's openssl pipeline needs
//! openssl and runs with `--features it`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ekattest_testkit::testdata;

const STM_HASH: &str = "de6a6ba0564fc32ed137b2e2c97b39c741e87a3fbbb80bc9092b75b6dc8a2aab";
const STM_DER: &str = "leaf/stm-st33htphahb4-rsa2048.der";
const STM_NV: &str = "leaf/stm-st33htphahb4-rsa2048.nv.bin";

fn data(rel: &str) -> PathBuf {
    testdata::existing(Path::new("real-ek").join(rel))
}

fn ctl(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ekattestctl"));
    for a in args {
        cmd.arg(a);
    }
    cmd.output().expect("run ekattestctl")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exit code")
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("              {l}\n"))
        .collect()
}

/// A one-policy document; `config` lines are indented under `config:`.
fn write_doc(dir: &Path, name: &str, config: &str, template: Option<&str>) -> PathBuf {
    let template = template
        .map(|t| format!("      spiffeIdTemplate: {t}\n"))
        .unwrap_or_default();
    let text = format!(
        "section: AgentAttestation\nschema: v1\nspec:\n  policies:\n    - name: {name}\n{template}      \
         requiredAttestors:\n        - type: tpm_ek\n          config:\n{config}"
    );
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn ca_config(ca: &str, intermediate: Option<&str>) -> String {
    let mut s = format!(
        "            caCerts: |\n{}",
        indent(&std::fs::read_to_string(data(ca)).unwrap())
    );
    if let Some(i) = intermediate {
        s.push_str(&format!(
            "            intermediateCerts: |\n{}",
            indent(&std::fs::read_to_string(data(i)).unwrap())
        ));
    }
    s
}

fn hash_config(h: &str) -> String {
    format!("            allowedHashes:\n              - \"{h}\"\n")
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

#[test]
fn help_is_printed_for_every_command() {
    for (args, want) in [
        (vec!["--help"], "ekattestctl ek-hash FILE"),
        (
            vec!["ek-hash", "--help"],
            "openssl pkey -pubin -outform DER",
        ),
        (
            vec!["config", "validate", "--help"],
            "Usage: ekattestctl config validate FILE",
        ),
        (
            vec!["config", "--help"],
            "Usage: ekattestctl config validate FILE",
        ),
        (vec!["ek", "verify", "--help"], "--ek-public FILE"),
    ] {
        let a: Vec<&dyn AsRef<std::ffi::OsStr>> = args.iter().map(|s| s as _).collect();
        let o = ctl(&a);
        assert_eq!(code(&o), 0, "{args:?}");
        assert!(stdout(&o).contains(want), "{args:?}: {}", stdout(&o));
    }
}

#[test]
fn usage_errors_exit_2_with_a_hint() {
    for args in [
        vec![],
        vec!["frobnicate"],
        vec!["ek-hash"],
        vec!["config", "check"],
        vec!["ek", "verify", "--cert", "x"],
        vec!["ek-hash", "a", "b"],
    ] {
        let a: Vec<&dyn AsRef<std::ffi::OsStr>> = args.iter().map(|s| s as _).collect();
        let o = ctl(&a);
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).is_empty(), "{args:?}");
    }
}

#[test]
fn ek_hash_of_the_stm_leaf_in_every_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let der = std::fs::read(data(STM_DER)).unwrap();
    let pem_path = dir.path().join("ek.pem");
    std::fs::write(&pem_path, pem::encode(&pem::Pem::new("CERTIFICATE", der))).unwrap();
    for file in [data(STM_DER), data(STM_NV), pem_path] {
        let o = ctl(&[&"ek-hash", &file]);
        assert_eq!(code(&o), 0, "{}: {}", file.display(), stderr(&o));
        assert_eq!(stdout(&o), format!("{STM_HASH}\n"), "{}", file.display());
    }
}

#[test]
fn ek_hash_of_garbage_exits_1_and_missing_file_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.bin");
    std::fs::write(&junk, b"\x30\x03\x02\x01\x05").unwrap();
    let o = ctl(&[&"ek-hash", &junk]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("junk.bin"), "{}", stderr(&o));
    let o = ctl(&[&"ek-hash", &dir.path().join("absent.pem")]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("cannot read"), "{}", stderr(&o));
}

#[test]
fn config_validate_summarizes_a_valid_document() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ca_config("ca/STM_RSA_RT.pem", Some("ca/STM_RSA_05I.pem")) + &hash_config(STM_HASH);
    let doc = write_doc(dir.path(), "stm", &cfg, None);
    let o = ctl(&[&"config", &"validate", &doc]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("valid AgentAttestation v1 document, 1 policy"),
        "{out}"
    );
    assert!(out.contains("policy \"stm\""), "{out}");
    assert!(
        out.contains("caCerts 1, intermediateCerts 1, allowedHashes 1, ekProfileCheck enforce"),
        "{out}"
    );
    assert!(
        out.contains("spiffeIdTemplate: /agents/tpm/{{tpm_ek.public_hash}} (default)"),
        "{out}"
    );
}

#[test]
fn config_validate_prints_the_seed_error_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = "            caCerts: |\n              -----BEGIN CERTIFICATE-----\n              MIIBxTCCAW...\n              -----END CERTIFICATE-----\n";
    let doc = write_doc(dir.path(), "bad", cfg, None);
    let o = ctl(&[&"config", &"validate", &doc]);
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("caCerts: could not parse any PEM certificates"),
        "{}",
        stderr(&o)
    );
    assert!(stdout(&o).is_empty());
    let o = ctl(&[&"config", &"validate", &dir.path().join("absent.yaml")]);
    assert_eq!(code(&o), 2);
}

#[test]
fn ek_verify_accepts_the_stm_leaf_through_its_chain() {
    let dir = tempfile::tempdir().unwrap();
    let template = "/agents/tpm/{{tpm_ek.manufacturer}}/{{tpm_ek.public_hash}}";
    let doc = write_doc(
        dir.path(),
        "stm",
        &ca_config("ca/STM_RSA_RT.pem", None),
        Some(template),
    );
    // The intermediate comes from the device (--chain), the leaf as a raw NV blob.
    let o = ctl(&[
        &"ek",
        &"verify",
        &"--config",
        &doc,
        &"--cert",
        &data(STM_NV),
        &"--chain",
        &data("ca/STM_RSA_05I.pem"),
        &"--json",
        &"--trust-domain",
        &"example.org",
    ]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let v = json(&o);
    assert_eq!(v["verdict"], "accepted");
    assert_eq!(v["policy"], "stm");
    assert_eq!(v["passed_check"], "chain");
    assert_eq!(v["attributes"]["tpm_ek.public_hash"], STM_HASH);
    assert_eq!(
        v["attributes"]["tpm_ek.serial_number"],
        "4cbd0fe61ee762edb28d50b268fc3586ff3d5e82"
    );
    assert_eq!(v["attributes"]["tpm_ek.manufacturer"], "id:53544D20");
    assert_eq!(v["attributes"]["tpm_ek.model"], "ST33HTPHAHB4");
    assert_eq!(v["attributes"]["tpm_ek.version"], "73.4");
    assert_eq!(
        v["agent_attestation_attributes"][0],
        format!("tpm_ek:tpm_ek.public_hash=\"{STM_HASH}\"")
    );
    assert_eq!(
        v["spiffe_id"],
        format!("spiffe://example.org/agents/tpm/id_53544D20/{STM_HASH}")
    );

    // Text form: the seed's attribute lines.
    let o = ctl(&[
        &"ek",
        &"verify",
        &"--config",
        &doc,
        &"--cert",
        &data(STM_DER),
        &"--chain",
        &data("ca/STM_RSA_05I.pem"),
    ]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("verdict: accepted\n"), "{out}");
    assert!(
        out.contains("  tpm_ek:tpm_ek.manufacturer=\"id:53544D20\"\n"),
        "{out}"
    );
    assert!(
        out.contains(&format!("spiffe_id: /agents/tpm/id_53544D20/{STM_HASH}\n")),
        "{out}"
    );
}

#[test]
fn ek_verify_accepts_by_allow_list_and_rejects_an_unlisted_hash() {
    let dir = tempfile::tempdir().unwrap();
    let ok = write_doc(dir.path(), "listed", &hash_config(STM_HASH), None);
    let o = ctl(&[
        &"ek",
        &"verify",
        &"--config",
        &ok,
        &"--cert",
        &data(STM_DER),
        &"--json",
    ]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let v = json(&o);
    assert_eq!(v["passed_check"], "allow_list");
    assert_eq!(v["spiffe_id"], format!("/agents/tpm/{STM_HASH}"));

    let other = "00".repeat(32);
    let bad = write_doc(dir.path(), "unlisted", &hash_config(&other), None);
    let o = ctl(&[
        &"ek",
        &"verify",
        &"--config",
        &bad,
        &"--cert",
        &data(STM_DER),
        &"--json",
    ]);
    assert_eq!(code(&o), 1, "{}{}", stdout(&o), stderr(&o));
    let v = json(&o);
    assert_eq!(v["verdict"], "rejected");
    assert_eq!(v["policy"], "unlisted");
    assert_eq!(
        v["error"],
        "EK did not pass any configured validation check"
    );
}

#[test]
fn ek_verify_rejects_a_wrong_ca_and_an_unrenderable_spiffe_id() {
    let dir = tempfile::tempdir().unwrap();
    let wrong = write_doc(
        dir.path(),
        "intel",
        &ca_config("ca/INTEL_RT.pem", Some("ca/INTEL_I.pem")),
        None,
    );
    let o = ctl(&[
        &"ek",
        &"verify",
        &"--config",
        &wrong,
        &"--cert",
        &data(STM_DER),
    ]);
    assert_eq!(code(&o), 1, "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("verdict: rejected"), "{}", stdout(&o));

    // Accepted by hash, but the SPIFFE ID cannot be rendered (invalid trust domain): the
    // verdict is rejected and still says which check passed.
    let ok = write_doc(dir.path(), "listed", &hash_config(STM_HASH), None);
    let o = ctl(&[
        &"ek",
        &"verify",
        &"--config",
        &ok,
        &"--cert",
        &data(STM_DER),
        &"--trust-domain",
        &"Bad Domain",
        &"--json",
    ]);
    assert_eq!(code(&o), 1, "{}{}", stdout(&o), stderr(&o));
    let v = json(&o);
    assert_eq!(v["verdict"], "rejected");
    assert!(v["error"].as_str().unwrap().contains("trust domain"), "{v}");
    assert_eq!(v["passed_check"], "allow_list");
}

#[test]
fn raw_key_tpm_hash_and_missing_attribute_rejection() {
    use sha2::Digest as _;
    let public = testdata::existing("make-credential/rsa2048/ek.tpm2b_public");
    let spki = testdata::existing("make-credential/rsa2048/ek.spki.der");
    // The allow-list fingerprint is the SHA-256 of the EK's DER SPKI (vector README).
    let want = hex::encode(sha2::Sha256::digest(std::fs::read(&spki).unwrap()));
    for f in [&public, &spki] {
        let o = ctl(&[&"ek-hash", f]);
        assert_eq!(code(&o), 0, "{}: {}", f.display(), stderr(&o));
        assert_eq!(stdout(&o).trim(), want, "{}", f.display());
    }

    let dir = tempfile::tempdir().unwrap();
    let seed_template = "/agents/tpm/{{tpm_ek.manufacturer}}/{{tpm_ek.public_hash}}";
    let doc = write_doc(dir.path(), "raw", &hash_config(&want), Some(seed_template));
    let o = ctl(&[
        &"ek",
        &"verify",
        &"--config",
        &doc,
        &"--ek-public",
        &public,
        &"--json",
    ]);
    assert_eq!(code(&o), 1, "{}{}", stdout(&o), stderr(&o));
    let v = json(&o);
    assert_eq!(v["verdict"], "rejected");
    assert_eq!(
        v["error"],
        "SPIFFE ID template names an attribute the agent does not have: tpm_ek.manufacturer"
    );
    assert_eq!(v["attributes"]["tpm_ek.public_hash"], want.as_str());

    let doc = write_doc(dir.path(), "raw_default", &hash_config(&want), None);
    let o = ctl(&[
        &"ek",
        &"verify",
        &"--config",
        &doc,
        &"--ek-public",
        &public,
        &"--json",
    ]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert_eq!(json(&o)["spiffe_id"], format!("/agents/tpm/{want}"));
}

#[test]
fn ek_verify_with_an_invalid_document_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write_doc(dir.path(), "bad", &hash_config("abc"), None);
    let o = ctl(&[
        &"ek",
        &"verify",
        &"--config",
        &bad,
        &"--cert",
        &data(STM_DER),
    ]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("allowedHashes[0]: not 64 hex digits"),
        "{}",
        stderr(&o)
    );
}

/// The STM leaf behind the 7-byte PC Client header (`10 01 00 LLLL 10 02`), padded like NV.
fn stm_seven_byte_blob(tag_bytes: usize) -> Vec<u8> {
    let der = std::fs::read(data(STM_DER)).unwrap();
    let mut blob = vec![0x10, 0x01, 0x00];
    blob.extend_from_slice(&u16::try_from(der.len() + tag_bytes).unwrap().to_be_bytes());
    blob.extend_from_slice(&[0x10, 0x02]);
    blob.extend_from_slice(&der);
    blob.resize(1600, 0xFF);
    blob
}

#[test]
fn ek_hash_and_verify_read_the_seven_byte_nv_header() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("ek7.bin");
    std::fs::write(&good, stm_seven_byte_blob(2)).unwrap();
    let o = ctl(&[&"ek-hash", &good]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("{STM_HASH}\n"));
    let doc = write_doc(
        dir.path(),
        "stm",
        &ca_config("ca/STM_RSA_RT.pem", Some("ca/STM_RSA_05I.pem")),
        None,
    );
    let o = ctl(&[
        &"ek",
        &"verify",
        &"--config",
        &doc,
        &"--cert",
        &good,
        &"--json",
    ]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert_eq!(json(&o)["attributes"]["tpm_ek.model"], "ST33HTPHAHB4");

    // LLLL = the DER length (the 5-byte rule) in the 7-byte form: both commands name it.
    let bad = dir.path().join("ek7-bad.bin");
    std::fs::write(&bad, stm_seven_byte_blob(0)).unwrap();
    let o = ctl(&[&"ek-hash", &bad]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("`10 01 00 LLLL 10 02` says LLLL = 1169 bytes"),
        "{}",
        stderr(&o)
    );
    let o = ctl(&[
        &"ek",
        &"verify",
        &"--config",
        &doc,
        &"--cert",
        &bad,
        &"--json",
    ]);
    assert_eq!(code(&o), 1, "{}{}", stdout(&o), stderr(&o));
    let v = json(&o);
    let reasons = v["reasons"].as_array().unwrap();
    assert_eq!(reasons.len(), 1, "{v}");
    assert!(
        reasons[0]
            .as_str()
            .unwrap()
            .contains("`10 01 00 LLLL 10 02` says LLLL = 1169 bytes"),
        "{v}"
    );
}

#[test]
fn corrupt_pem_and_corrupt_der_cert_both_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let doc = write_doc(
        dir.path(),
        "stm",
        &ca_config("ca/STM_RSA_RT.pem", None),
        None,
    );
    let pem = dir.path().join("corrupt.pem");
    std::fs::write(
        &pem,
        "-----BEGIN CERTIFICATE-----\nMIIB!!not base64!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let der = dir.path().join("corrupt.der");
    let mut bytes = std::fs::read(data(STM_DER)).unwrap();
    bytes.truncate(600);
    std::fs::write(&der, bytes).unwrap();
    let wrong_label = dir.path().join("key.pem");
    std::fs::write(
        &wrong_label,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    for file in [&pem, &der, &wrong_label] {
        let o = ctl(&[
            &"ek",
            &"verify",
            &"--config",
            &doc,
            &"--cert",
            file,
            &"--json",
        ]);
        assert_eq!(
            code(&o),
            1,
            "{}: {}{}",
            file.display(),
            stdout(&o),
            stderr(&o)
        );
        let v = json(&o);
        assert_eq!(v["verdict"], "rejected", "{v}");
        assert!(!v["reasons"].as_array().unwrap().is_empty(), "{v}");
        // Text mode: the same exit code, and the file named.
        let o = ctl(&[&"ek", &"verify", &"--config", &doc, &"--cert", file]);
        assert_eq!(code(&o), 1, "{}", file.display());
        assert!(stdout(&o).contains("verdict: rejected"), "{}", stdout(&o));
    }
    let o = ctl(&[&"ek", &"verify", &"--config", &doc, &"--cert", &pem]);
    assert!(
        stdout(&o).contains(&format!(
            "error: --cert {} holds no usable certificate",
            pem.display()
        )),
        "{}",
        stdout(&o)
    );
    // A corrupt PEM --chain is judged the same way; an unreadable file stays a usage error.
    let o = ctl(&[
        &"ek",
        &"verify",
        &"--config",
        &doc,
        &"--cert",
        &data(STM_DER),
        &"--chain",
        &pem,
    ]);
    assert_eq!(code(&o), 1, "{}{}", stdout(&o), stderr(&o));
    let o = ctl(&[
        &"ek",
        &"verify",
        &"--config",
        &doc,
        &"--cert",
        &dir.path().join("absent.pem"),
    ]);
    assert_eq!(code(&o), 2, "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("cannot read"), "{}", stderr(&o));
}

#[test]
fn ek_verify_reasons_never_repeat_a_message() {
    let dir = tempfile::tempdir().unwrap();
    // Both checks configured and failing; the certificate a corrupt DER (parser reason).
    let config = ca_config("ca/INTEL_RT.pem", None) + &hash_config(&"00".repeat(32));
    let doc = write_doc(dir.path(), "both", &config, None);
    let corrupt = dir.path().join("corrupt.der");
    let mut bytes = std::fs::read(data(STM_DER)).unwrap();
    bytes[1] = 0x83;
    std::fs::write(&corrupt, bytes).unwrap();
    let chain_only = write_doc(
        dir.path(),
        "chain",
        &ca_config("ca/INTEL_RT.pem", None),
        None,
    );
    for (doc, cert) in [
        (&doc, data(STM_DER)),
        (&doc, corrupt.clone()),
        (&chain_only, corrupt.clone()),
        (&chain_only, data(STM_DER)),
    ] {
        let o = ctl(&[
            &"ek",
            &"verify",
            &"--config",
            doc,
            &"--cert",
            &cert,
            &"--json",
        ]);
        assert_eq!(code(&o), 1, "{}{}", stdout(&o), stderr(&o));
        let v = json(&o);
        let mut seen: Vec<String> = vec![v["error"].as_str().unwrap().to_owned()];
        for r in v["reasons"].as_array().unwrap() {
            let r = r.as_str().unwrap();
            for earlier in &seen {
                assert!(!earlier.contains(r), "{r:?} repeats {earlier:?}: {v}");
            }
            seen.push(r.to_owned());
        }
        assert!(seen.len() > 1, "a reason is given: {v}");
    }
}

#[test]
fn config_validate_shows_accept_expired_ek() {
    let dir = tempfile::tempdir().unwrap();
    let config = hash_config(STM_HASH) + "            acceptExpiredEk: true\n";
    let doc = write_doc(dir.path(), "lenient", &config, None);
    let o = ctl(&[&"config", &"validate", &doc]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("acceptExpiredEk true"),
        "{}",
        stdout(&o)
    );
}

#[cfg(feature = "it")]
mod openssl {
    use super::*;

    /// The seed's pipeline, verbatim.
    fn seed_pipeline(cert_pem: &Path) -> String {
        let script = format!(
            "openssl x509 -in '{}' -pubkey -noout | openssl pkey -pubin -outform DER | sha256sum | awk '{{print $1}}'",
            cert_pem.display()
        );
        let o = Command::new("bash")
            .args(["-o", "pipefail", "-c", &script])
            .output()
            .expect("run bash");
        assert!(
            o.status.success(),
            "openssl pipeline failed (is openssl installed?): {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let hash = String::from_utf8(o.stdout).unwrap().trim().to_owned();
        assert_eq!(hash.len(), 64, "pipeline output {hash:?}");
        hash
    }

    #[test]
    fn ek_hash_matches_the_seed_openssl_pipeline_on_every_real_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let leaf_pem = dir.path().join("stm.pem");
        let der = std::fs::read(data(STM_DER)).unwrap();
        std::fs::write(&leaf_pem, pem::encode(&pem::Pem::new("CERTIFICATE", der))).unwrap();
        assert_eq!(seed_pipeline(&leaf_pem), STM_HASH);

        let mut files: Vec<PathBuf> = std::fs::read_dir(data("ca"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.retain(|p| p.extension().is_some_and(|x| x == "pem"));
        files.sort();
        assert_eq!(files.len(), 51);
        files.push(leaf_pem);
        for f in &files {
            let o = ctl(&[&"ek-hash", f]);
            assert_eq!(code(&o), 0, "{}: {}", f.display(), stderr(&o));
            assert_eq!(stdout(&o).trim(), seed_pipeline(f), "{}", f.display());
        }
    }

    #[test]
    fn ek_hash_of_a_pem_public_key_matches_the_certificate() {
        let dir = tempfile::tempdir().unwrap();
        for ca in [
            "ca/STM_RSA_RT.pem",
            "ca/NUVO_2110.pem",
            "ca/IFX_ECC_042.pem",
        ] {
            let key = dir.path().join("key.pem");
            let o = Command::new("openssl")
                .args(["x509", "-pubkey", "-noout", "-in"])
                .arg(data(ca))
                .output()
                .expect("openssl is required for --features it");
            assert!(o.status.success());
            std::fs::write(&key, &o.stdout).unwrap();
            let from_key = ctl(&[&"ek-hash", &key]);
            assert_eq!(code(&from_key), 0, "{}", stderr(&from_key));
            assert_eq!(stdout(&from_key).trim(), seed_pipeline(&data(ca)), "{ca}");
        }
    }
}

const POLICY: &str = "section: AgentAttestation\nschema: v1\nspec:\n  policies:\n  - name: p\n    \
requiredAttestors:\n    - type: tpm_ek\n      config:\n        allowedHashes: [\"de6a6ba0564fc32ed137b2e2c97b39c741e87a3fbbb80bc9092b75b6dc8a2aab\"]\n";

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `config keygen` then `config sign`: the key pair's modes, the envelope, and the library
/// decoder and verifier accepting what the command wrote.
fn keygen_and_sign(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let o = ctl(&[&"config", &"keygen", &"--out", &dir]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let key = dir.join("policy-signer.key");
    let public = dir.join("policy-signer.pub");
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&public), 0o644);
    assert!(
        std::fs::read_to_string(&key)
            .unwrap()
            .contains("BEGIN PRIVATE KEY")
    );
    assert!(
        std::fs::read_to_string(&public)
            .unwrap()
            .contains("BEGIN PUBLIC KEY")
    );
    // No overwrite without --force.
    let again = ctl(&[&"config", &"keygen", &"--out", &dir]);
    assert_eq!(code(&again), 2);
    assert!(
        stderr(&again).contains("refusing to overwrite"),
        "{}",
        stderr(&again)
    );

    let doc = dir.join("policy.yaml");
    std::fs::write(&doc, POLICY).unwrap();
    let signed = dir.join("policy.signed.yaml");
    let o = ctl(&[
        &"config", &"sign", &"--key", &key, &"--id", &"c-1", &"--out", &signed, &doc,
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("signed for cluster c-1"),
        "{}",
        stderr(&o)
    );
    (key, public, signed)
}

#[test]
fn config_keygen_and_sign_write_a_document_the_servers_verify() {
    use ekattest_server::config::signed::{Envelope, Signers};
    let dir = tempfile::tempdir().unwrap();
    let (key, public, signed) = keygen_and_sign(dir.path());
    let bytes = std::fs::read(&signed).unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert!(text.starts_with(POLICY), "{text}");
    assert!(text.contains("# -----BEGIN EKATTEST POLICY SIGNATURE-----\n# cluster: c-1\n"));
    let env = Envelope::decode(&bytes).unwrap();
    assert_eq!(env.document, POLICY.as_bytes());
    let mut signers = Signers::new();
    signers.add_pem(&std::fs::read(&public).unwrap()).unwrap();
    signers.verify(&env, "c-1").unwrap();
    assert!(signers.verify(&env, "c-2").is_err());
    // The signed file is still a valid document for `config validate`.
    let o = ctl(&[&"config", &"validate", &signed]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // stdout when --out is not given.
    let doc = dir.path().join("policy.yaml");
    let o = ctl(&[&"config", &"sign", &"--key", &key, &"--id", &"c-1", &doc]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(Envelope::decode(&o.stdout).is_ok());
    // An invalid document is never signed.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "section: AgentAttestation\nschema: v9\n").unwrap();
    let o = ctl(&[&"config", &"sign", &"--key", &key, &"--id", &"c-1", &bad]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(o.stdout.is_empty());
}

#[test]
fn group_readable_signing_key_and_password_file_are_refused_with_the_chmod() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _, _) = keygen_and_sign(dir.path());
    let doc = dir.path().join("policy.yaml");
    chmod(&key, 0o660);
    let o = ctl(&[&"config", &"sign", &"--key", &key, &"--id", &"c-1", &doc]);
    assert_eq!(code(&o), 2);
    let e = stderr(&o);
    assert!(e.contains("(mode 0660)"), "{e}");
    assert!(
        e.contains(&format!("run `chmod 600 {}`", key.display())),
        "{e}"
    );
    let o = ctl(&[
        &"config",
        &"set",
        &"cluster",
        &"--id",
        &"c-1",
        &doc,
        &"--sign-key",
        &key,
    ]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains(&format!("chmod 600 {}", key.display())),
        "{}",
        stderr(&o)
    );
    chmod(&key, 0o600);
    // The password file is checked before any connection (port 9 would refuse it).
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "secret\n").unwrap();
    chmod(&pw, 0o644);
    let o = ctl(&[
        &"config",
        &"set",
        &"cluster",
        &"--id",
        &"c-1",
        &doc,
        &"--sign-key",
        &key,
        &"--broker",
        &"mqtt://127.0.0.1:9",
        &"--username",
        &"admin",
        &"--password-file",
        &pw,
    ]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("--password-file"), "{e}");
    assert!(
        e.contains(&format!("run `chmod 600 {}`", pw.display())),
        "{e}"
    );
}

#[test]
fn config_set_refuses_plaintext_to_a_remote_broker_and_unsigned_documents() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _, signed) = keygen_and_sign(dir.path());
    let doc = dir.path().join("policy.yaml");
    for broker in ["mqtt://10.0.0.1:1883", "mqtt://broker.example.org"] {
        let o = ctl(&[
            &"config",
            &"set",
            &"cluster",
            &"--id",
            &"c-1",
            &doc,
            &"--sign-key",
            &key,
            &"--broker",
            &broker,
        ]);
        assert_eq!(code(&o), 2, "{broker}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains("not a loopback host"), "{e}");
        assert!(e.contains("--insecure-plaintext"), "{e}");
    }
    // Without a key, an unsigned document is not published (checked before connecting).
    let o = ctl(&[&"config", &"set", &"cluster", &"--id", &"c-1", &doc]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--sign-key KEY.pem is required"),
        "{}",
        stderr(&o)
    );
    // A file signed for another cluster is not published as c-2's.
    let o = ctl(&[&"config", &"set", &"cluster", &"--id", &"c-2", &signed]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("signed for cluster \"c-1\""),
        "{}",
        stderr(&o)
    );
}

#[cfg(feature = "it")]
#[test]
fn openssl_verifies_the_signature_over_the_documented_transcript() {
    use ekattest_server::config::signed::Envelope;
    let dir = tempfile::tempdir().unwrap();
    let (_, public, signed) = keygen_and_sign(dir.path());
    let bytes = std::fs::read(&signed).unwrap();
    let env = Envelope::decode(&bytes).unwrap();
    // The transcript as README documents it, assembled here byte by byte.
    let mut transcript = b"ekattest/v2 policy document\0".to_vec();
    transcript.extend_from_slice(&[0, 3]);
    transcript.extend_from_slice(b"c-1");
    transcript.extend_from_slice(&env.issued.to_be_bytes());
    transcript.extend_from_slice(&(POLICY.len() as u64).to_be_bytes());
    transcript.extend_from_slice(POLICY.as_bytes());
    let msg = dir.path().join("transcript.bin");
    let sig = dir.path().join("sig.der");
    std::fs::write(&msg, &transcript).unwrap();
    std::fs::write(&sig, &env.signature).unwrap();
    let o = Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(&public)
        .arg("-signature")
        .arg(&sig)
        .arg(&msg)
        .output()
        .expect("openssl is required for --features it");
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("Verified OK"));
    // One byte changed: openssl refuses too.
    let mut changed = transcript;
    let last = changed.len() - 2;
    changed[last] ^= 1;
    std::fs::write(&msg, &changed).unwrap();
    let o = Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(&public)
        .arg("-signature")
        .arg(&sig)
        .arg(&msg)
        .output()
        .unwrap();
    assert!(!o.status.success());
}
