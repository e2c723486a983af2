//! The `ekattest-agent tpm info|activate` operator commands run as a process against a
//! freshly provisioned swtpm (feature `it`); outputs are parsed and checked against
//! openssl and tpm2-tools.

use std::process::{Command, Output};
use std::time::Instant;

use ekattest_testkit::{Ca, Device, EkKind, ProvisionOptions, testdata};
use serde_json::Value;

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ekattest-agent"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ekattest-agent: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn tpm_info_json_and_activate_against_swtpm() {
    let ca = Ca::create().unwrap_or_else(|e| panic!("cannot create the swtpm CA: {e}"));
    let opts = ProvisionOptions {
        rsa_keysize: 2048,
        p256_ek_cert: true,
    };
    let device = Device::provision(&ca, &opts).unwrap_or_else(|e| panic!("provision: {e}"));
    let spec = device.spec();

    // Oracles first: swtpm serves one client at a time.
    let mut hashes = Vec::new();
    for kind in [EkKind::Rsa2048, EkKind::P256, EkKind::P384] {
        let file = device.work_dir().join(format!("{kind}.der"));
        std::fs::write(&file, device.ek_cert_der(kind).unwrap()).unwrap();
        hashes.push(ekattest_testkit::openssl_public_hash(&file).unwrap());
    }

    let started = Instant::now();
    let out = agent(&["tpm", "info", "--tpm", &spec, "--json"]);
    eprintln!("tpm info --json (process): {:?}", started.elapsed());
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["tpm"], spec.as_str());
    assert_eq!(info["manufacturer"], "IBM (id:49424D00)");
    let eks = info["eks"].as_array().unwrap();
    let kinds: Vec<&str> = eks.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["rsa2048", "p256", "p384"]);
    let indices: Vec<&str> = eks
        .iter()
        .map(|e| e["nv_index"].as_str().unwrap())
        .collect();
    assert_eq!(indices, ["0x01c00002", "0x01c0000a", "0x01c00016"]);
    for (ek, hash) in eks.iter().zip(&hashes) {
        assert_eq!(ek["public_hash"].as_str().unwrap(), hash, "{}", ek["kind"]);
        assert_eq!(ek["certificate"]["subject"], "CN=unknown");
        assert!(
            ek["certificate"]["issuer"]
                .as_str()
                .unwrap()
                .contains("swtpm-localca")
        );
        assert!(!ek["certificate"]["serial"].as_str().unwrap().is_empty());
    }
    assert_eq!(eks[0]["handle"], "0x81010001");
    assert_eq!(eks[1]["handle"], Value::Null);
    assert_eq!(eks[2]["handle"], "0x81010016");
    let ak_name = hex::decode(info["ak"]["name"].as_str().unwrap()).unwrap();
    assert_eq!(ak_name.len(), 34);
    assert_eq!(&ak_name[..2], &[0x00, 0x0b]);

    // Text form: the same facts, human readable.
    let out = agent(&["tpm", "info", "--tpm", &spec]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let t = text(&out.stdout);
    for hash in &hashes {
        assert!(t.contains(&format!("public_hash: {hash}")), "{t}");
    }
    assert!(
        t.contains(&format!("AK name: {}", hex::encode(&ak_name))),
        "{t}"
    );

    // tpm activate with a credential from tpm2_makecredential, for each EK.
    let secret = b"ekattest cli activation secret!!";
    for ek in eks {
        let kind = ek["kind"].as_str().unwrap();
        let public = hex::decode(ek["public"].as_str().unwrap()).unwrap();
        let cred = ekattest_testkit::tpm2_makecredential(&public, secret, &ak_name).unwrap();
        let file = device.work_dir().join(format!("{kind}.cred"));
        std::fs::write(&file, cred).unwrap();
        let started = Instant::now();
        let out = agent(&[
            "tpm",
            "activate",
            "--tpm",
            &spec,
            "--credential",
            file.to_str().unwrap(),
            "--ek",
            kind,
        ]);
        eprintln!(
            "tpm activate --ek {kind} (process): {:?}",
            started.elapsed()
        );
        assert!(out.status.success(), "{kind} stderr: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), hex::encode(secret), "{kind}");
    }

    // A credential made for another AK Name: the TPM's integrity check fails, exit code 1.
    let mut wrong = ak_name.clone();
    wrong[33] ^= 0x80;
    let public = hex::decode(eks[1]["public"].as_str().unwrap()).unwrap();
    let cred = ekattest_testkit::tpm2_makecredential(&public, secret, &wrong).unwrap();
    let file = device.work_dir().join("wrong.cred");
    std::fs::write(&file, cred).unwrap();
    let out = agent(&[
        "tpm",
        "activate",
        "--tpm",
        &spec,
        "--credential",
        file.to_str().unwrap(),
        "--ek",
        "p256",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("TPM_RC_INTEGRITY (0x1df)"),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn usage_and_input_errors_have_clear_messages() {
    let out = agent(&["tpm", "frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown command: tpm frobnicate"));

    let out = agent(&["tpm", "activate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("needs --credential FILE"));

    let out = agent(&["tpm", "info", "--tpm", "swtpm:localhost"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("missing :PORT"));

    let out = agent(&["tpm", "activate", "--credential", "/x", "--ek", "rsa1024"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown EK kind \"rsa1024\""));

    let out = agent(&["tpm", "info", "--tpm", "/dev/ekattest-no-such-tpm"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("/dev/ekattest-no-such-tpm") && err.contains("tpm_tis"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.cred");
    std::fs::write(&junk, b"not a credential").unwrap();
    let out = agent(&[
        "tpm",
        "activate",
        "--credential",
        junk.to_str().unwrap(),
        "--tpm",
        "swtpm:127.0.0.1:1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("invalid credential file") && err.contains("magic"),
        "{err}"
    );

    // Nothing listens on port 1: a connect error naming the address.
    std::fs::write(
        &junk,
        testdata::make_credential("p256", "expected.tpm2tools_credential"),
    )
    .unwrap();
    let out = agent(&[
        "tpm",
        "activate",
        "--credential",
        junk.to_str().unwrap(),
        "--tpm",
        "swtpm:127.0.0.1:1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("swtpm:127.0.0.1:1") && err.contains("connect"),
        "{err}"
    );

    let out = agent(&["--help"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("tpm activate --credential FILE"));
}

/// A file with known bytes and an mtime in the past, so any write shows.
fn precious_file(dir: &std::path::Path) -> (std::path::PathBuf, std::time::SystemTime) {
    let path = dir.join("precious");
    std::fs::write(&path, b"0123456789abcdef: must survive").unwrap();
    let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(old)
        .unwrap();
    (path, old)
}

fn assert_untouched(path: &std::path::Path, mtime: std::time::SystemTime) {
    assert_eq!(
        std::fs::read(path).unwrap(),
        b"0123456789abcdef: must survive",
        "{} was written to",
        path.display()
    );
    assert_eq!(std::fs::metadata(path).unwrap().modified().unwrap(), mtime);
}

#[test]
fn tpm_paths_that_are_not_devices_are_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let (file, mtime) = precious_file(dir.path());
    let file_arg = file.to_str().unwrap();
    let credential = testdata::existing("make-credential/p256/expected.tpm2tools_credential");
    let credential = credential.to_str().unwrap();
    let sub = dir.path().join("subdir");
    std::fs::create_dir(&sub).unwrap();
    let missing = dir.path().join("missing");
    for (spec, found) in [
        (
            file_arg.to_owned(),
            "is a regular file, not a character device",
        ),
        (
            format!("swtpm-unix:{file_arg}"),
            "is a regular file, not a unix socket",
        ),
        (
            sub.display().to_string(),
            "is a directory, not a character device",
        ),
        (
            format!("swtpm-unix:{}", sub.display()),
            "is a directory, not a unix socket",
        ),
        (missing.display().to_string(), "not found"),
    ] {
        for args in [
            vec!["tpm", "info", "--tpm", &spec],
            vec![
                "tpm",
                "activate",
                "--credential",
                credential,
                "--tpm",
                &spec,
            ],
        ] {
            let out = agent(&args);
            let err = text(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
            assert!(err.contains(found), "{args:?}: {err}");
            let path = spec.trim_start_matches("swtpm-unix:");
            assert!(err.contains(path), "{args:?}: {err}");
            if !found.contains("not found") {
                assert!(err.contains("pass "), "{args:?}: {err}");
            }
            assert_untouched(&file, mtime);
        }
    }
    assert!(!missing.exists(), "the missing path was created");
}

#[test]
fn a_character_device_that_is_no_tpm_fails_the_exchange() {
    // /dev/null passes the type check (a character device); the Startup gets no answer.
    let out = agent(&["tpm", "info", "--tpm", "/dev/null"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("/dev/null"), "{err}");
    assert!(err.contains("shorter than the 10-byte header"), "{err}");
}

#[test]
fn version_flag_prints_name_version_and_git_commit() {
    let line = ekattest_testkit::version::check_version_flag(
        std::path::Path::new(env!("CARGO_BIN_EXE_ekattest-agent")),
        "ekattest-agent",
        env!("CARGO_PKG_VERSION"),
    )
    .unwrap();
    eprintln!("{line}");
}
