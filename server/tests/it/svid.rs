//! SVID authority against openssl as the oracle: our CA and SVIDs verify with
//! `openssl verify`, CAs made by openssl load and issue verifiable SVIDs, the Result and
//! proof-of-possession signatures interoperate with `openssl dgst`, and `ekattestctl ca
//! create` writes a usable CA. Needs openssl (always installed by .ci/install); fails loudly
//! without it.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use ekattest_protocol::heapless;
use ekattest_protocol::msg::{Accepted, Attribute, AttributeName, SessionId};
use ekattest_protocol::sign;
use ekattest_server::svid::{self, Authority, SvidError};
use ekattest_testkit::testdata;

const ID: &str = "spiffe://example.org/agents/tpm/0123abcd";

/// Runs openssl in `dir`; panics if openssl cannot be started.
fn openssl(dir: &Path, args: &[&str]) -> Output {
    Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("openssl is required for this test (install it: .ci/install): {e}")
        })
}

fn openssl_ok(dir: &Path, args: &[&str]) -> String {
    String::from_utf8_lossy(&testdata::openssl(dir, args)).into_owned()
}

/// A P-256 agent key made by openssl: returns (key path, DER SPKI).
fn openssl_agent_key(dir: &Path, name: &str) -> (PathBuf, Vec<u8>) {
    let key = format!("{name}.key");
    let spki = format!("{name}.spki.der");
    openssl_ok(
        dir,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            &key,
        ],
    );
    openssl_ok(
        dir,
        &[
            "pkey", "-in", &key, "-pubout", "-outform", "DER", "-out", &spki,
        ],
    );
    (dir.join(key), std::fs::read(dir.join(spki)).unwrap())
}

fn write_svid_pem(dir: &Path, name: &str, der: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec())),
    )
    .unwrap();
    path
}

/// `openssl verify` of `svid` against `ca`; true if it succeeds.
fn openssl_verifies(dir: &Path, ca: &str, svid: &str) -> bool {
    let out = openssl(dir, &["verify", "-x509_strict", "-CAfile", ca, svid]);
    out.status.success() && String::from_utf8_lossy(&out.stdout).contains(": OK")
}

#[test]
fn our_ca_and_svids_verify_with_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ca, cert_pem, key_pem) =
        Authority::generate("example.org", Duration::from_secs(86_400)).unwrap();
    std::fs::write(d.join("ca.pem"), &cert_pem).unwrap();
    std::fs::write(d.join("ca.key"), &key_pem).unwrap();

    let ca_text = openssl_ok(d, &["x509", "-in", "ca.pem", "-noout", "-text"]);
    assert!(ca_text.contains("CA:TRUE, pathlen:1"), "{ca_text}");
    assert!(ca_text.contains("Certificate Sign, CRL Sign"), "{ca_text}");
    assert!(ca_text.contains("URI:spiffe://example.org"), "{ca_text}");
    assert!(ca_text.contains("prime256v1"), "{ca_text}");
    // openssl agrees the key is the certificate's.
    let cert_pub = openssl_ok(d, &["x509", "-in", "ca.pem", "-noout", "-pubkey"]);
    let key_pub = openssl_ok(d, &["pkey", "-in", "ca.key", "-pubout"]);
    assert_eq!(cert_pub, key_pub);

    let (_, spki) = openssl_agent_key(d, "agent");
    let der = ca
        .issue(&spki, ID, SystemTime::now(), Duration::from_secs(3600))
        .unwrap();
    write_svid_pem(d, "svid.pem", &der);
    assert!(openssl_verifies(d, "ca.pem", "svid.pem"));
    let purpose = openssl(
        d,
        &[
            "verify",
            "-purpose",
            "sslclient",
            "-CAfile",
            "ca.pem",
            "svid.pem",
        ],
    );
    assert!(purpose.status.success(), "usable for TLS client auth");
    let text = openssl_ok(d, &["x509", "-in", "svid.pem", "-noout", "-text"]);
    assert!(text.contains(&format!("URI:{ID}")), "{text}");
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(text.contains("Digital Signature"), "{text}");
    assert!(
        text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{text}"
    );
    assert!(
        text.contains("X509v3 Subject Alternative Name: critical"),
        "{text}"
    );
    assert!(text.contains("ecdsa-with-SHA256"), "{text}");
    // The SVID carries the agent's key.
    let svid_pub = openssl_ok(d, &["x509", "-in", "svid.pem", "-noout", "-pubkey"]);
    let agent_pub = openssl_ok(d, &["pkey", "-in", "agent.key", "-pubout"]);
    assert_eq!(svid_pub, agent_pub);

    // The oracle can say no: another CA does not verify it, a damaged SVID does not verify.
    let (_, other_pem, _) =
        Authority::generate("example.org", Duration::from_secs(86_400)).unwrap();
    std::fs::write(d.join("other.pem"), other_pem).unwrap();
    assert!(!openssl_verifies(d, "other.pem", "svid.pem"));
    let mut damaged = der.clone();
    let n = damaged.len();
    damaged[n - 3] ^= 1;
    write_svid_pem(d, "damaged.pem", &damaged);
    assert!(!openssl_verifies(d, "ca.pem", "damaged.pem"));
}

/// Writes `{name}.pem`: a self-signed openssl certificate for `key` with `-addext` lines.
fn openssl_ca(dir: &Path, name: &str, key: &str, exts: &[&str]) {
    let pem = format!("{name}.pem");
    let mut args = vec![
        "req",
        "-x509",
        "-new",
        "-key",
        key,
        "-subj",
        "/O=Acme/CN=Acme SVID CA",
        "-days",
        "30",
        "-out",
        &pem,
    ];
    for e in exts {
        args.extend_from_slice(&["-addext", e]);
    }
    openssl_ok(dir, &args);
}

#[test]
fn openssl_made_cas_load_and_their_svids_verify() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, spki) = openssl_agent_key(d, "agent");
    let ca_exts = [
        "basicConstraints=critical,CA:TRUE",
        "keyUsage=critical,keyCertSign,cRLSign",
    ];

    // SEC1 key with an EC PARAMETERS block first, as `openssl ecparam -genkey` writes it.
    openssl_ok(
        d,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-out",
            "sec1.key",
        ],
    );
    openssl_ca(d, "sec1-ca", "sec1.key", &ca_exts);
    let ca = Authority::load(&d.join("sec1-ca.pem"), &d.join("sec1.key")).unwrap();
    assert_eq!(
        ca.trust_domain(),
        None,
        "no spiffe URI SAN: any trust domain"
    );
    let der = ca
        .issue(&spki, ID, SystemTime::now(), Duration::from_secs(600))
        .unwrap();
    write_svid_pem(d, "svid1.pem", &der);
    assert!(openssl_verifies(d, "sec1-ca.pem", "svid1.pem"));
    assert_eq!(
        std::fs::read_to_string(d.join("sec1-ca.pem"))
            .unwrap()
            .trim(),
        ca.bundle_pem().trim()
    );

    // PKCS#8 key, CA naming its trust domain: SVIDs only in it.
    openssl_ok(
        d,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "pk8.key",
        ],
    );
    let mut exts = ca_exts.to_vec();
    exts.push("subjectAltName=URI:spiffe://example.org");
    openssl_ca(d, "td-ca", "pk8.key", &exts);
    let ca = Authority::load(&d.join("td-ca.pem"), &d.join("pk8.key")).unwrap();
    assert_eq!(ca.trust_domain(), Some("example.org"));
    let der = ca
        .issue(&spki, ID, SystemTime::now(), Duration::from_secs(600))
        .unwrap();
    write_svid_pem(d, "svid2.pem", &der);
    assert!(openssl_verifies(d, "td-ca.pem", "svid2.pem"));
    assert!(!openssl_verifies(d, "sec1-ca.pem", "svid2.pem"));
    let e = ca
        .issue(
            &spki,
            "spiffe://other.org/agents/x",
            SystemTime::now(),
            Duration::from_secs(600),
        )
        .unwrap_err();
    assert!(matches!(e, SvidError::SpiffeId { .. }), "{e}");

    // Refused: a leaf (no CA:TRUE), a CA that may not sign certificates, a P-384 CA, an
    // RSA CA, and a key that is not the certificate's.
    openssl_ca(
        d,
        "leaf",
        "pk8.key",
        &["basicConstraints=critical,CA:FALSE"],
    );
    let e = Authority::load(&d.join("leaf.pem"), &d.join("pk8.key")).unwrap_err();
    assert!(e.to_string().contains("CA:TRUE"), "{e}");
    assert!(e.to_string().contains("leaf.pem"), "{e}");
    openssl_ca(
        d,
        "nosign",
        "pk8.key",
        &[
            "basicConstraints=critical,CA:TRUE",
            "keyUsage=critical,digitalSignature",
        ],
    );
    let e = Authority::load(&d.join("nosign.pem"), &d.join("pk8.key")).unwrap_err();
    assert!(e.to_string().contains("keyCertSign"), "{e}");
    openssl_ok(
        d,
        &[
            "ecparam",
            "-name",
            "secp384r1",
            "-genkey",
            "-noout",
            "-out",
            "p384.key",
        ],
    );
    openssl_ca(d, "p384-ca", "p384.key", &ca_exts);
    let e = Authority::load(&d.join("p384-ca.pem"), &d.join("p384.key")).unwrap_err();
    assert!(matches!(e, SvidError::CaKey { .. }), "{e}");
    let e = Authority::load(&d.join("p384-ca.pem"), &d.join("pk8.key")).unwrap_err();
    assert!(e.to_string().contains("not ECDSA P-256"), "{e}");
    openssl_ok(
        d,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "rsa.key",
        ],
    );
    openssl_ca(d, "rsa-ca", "rsa.key", &ca_exts);
    let e = Authority::load(&d.join("rsa-ca.pem"), &d.join("pk8.key")).unwrap_err();
    assert!(e.to_string().contains("not ECDSA P-256"), "{e}");
    let e = Authority::load(&d.join("td-ca.pem"), &d.join("rsa.key")).unwrap_err();
    assert!(matches!(e, SvidError::CaKey { .. }), "{e}");
    let e = Authority::load(&d.join("td-ca.pem"), &d.join("sec1.key")).unwrap_err();
    assert!(matches!(e, SvidError::KeyMismatch { .. }), "{e}");
}

#[test]
fn result_and_pop_signatures_interoperate_with_openssl_dgst() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ca, cert_pem, _) =
        Authority::generate("example.org", Duration::from_secs(86_400)).unwrap();
    std::fs::write(d.join("ca.pem"), cert_pem).unwrap();
    std::fs::write(
        d.join("ca.pub"),
        openssl_ok(d, &["x509", "-in", "ca.pem", "-noout", "-pubkey"]),
    )
    .unwrap();

    // Result: signed by us, verified by openssl.
    let session = SessionId([0x42; 16]);
    let mut accepted = Accepted {
        spiffe_id: heapless::String::try_from(ID).unwrap(),
        attributes: heapless::Vec::new(),
        svid: heapless::Vec::from_slice(&[1, 2, 3]).unwrap(),
        signature: heapless::Vec::new(),
    };
    accepted
        .attributes
        .push(Attribute {
            name: AttributeName::PublicHash,
            value: heapless::String::try_from("ab").unwrap(),
        })
        .unwrap();
    let t = [0x33u8; 32];
    ca.sign_result("agent-1", &session, &t, &mut accepted)
        .unwrap();
    let msg = sign::result_signed_bytes("agent-1", &session, &t, &accepted).unwrap();
    std::fs::write(d.join("result.bin"), &msg).unwrap();
    std::fs::write(d.join("result.sig"), &accepted.signature).unwrap();
    let verify = [
        "dgst",
        "-sha256",
        "-verify",
        "ca.pub",
        "-signature",
        "result.sig",
        "result.bin",
    ];
    assert!(openssl_ok(d, &verify).contains("Verified OK"));
    let other = sign::result_signed_bytes("agent-2", &session, &t, &accepted).unwrap();
    std::fs::write(d.join("result.bin"), &other).unwrap();
    assert!(
        !openssl(d, &verify).status.success(),
        "bound to the agent id"
    );

    // Proof of possession: signed by openssl with the agent key, verified by us.
    let (_, spki) = openssl_agent_key(d, "agent");
    let mac = [0x17u8; 32];
    let pop_msg = sign::pop_signed_bytes(&t, &session, &mac);
    std::fs::write(d.join("pop.bin"), pop_msg).unwrap();
    openssl_ok(
        d,
        &[
            "dgst",
            "-sha256",
            "-sign",
            "agent.key",
            "-out",
            "pop.sig",
            "pop.bin",
        ],
    );
    let pop = std::fs::read(d.join("pop.sig")).unwrap();
    svid::verify_pop(&spki, &t, &session, &mac, &pop).unwrap();
    assert!(matches!(
        svid::verify_pop(&spki, &t, &SessionId([0x43; 16]), &mac, &pop),
        Err(SvidError::BadPop)
    ));
    assert!(matches!(
        svid::verify_pop(&spki, &[0x34; 32], &session, &mac, &pop),
        Err(SvidError::BadPop)
    ));
    let (_, other_spki) = openssl_agent_key(d, "other");
    assert!(matches!(
        svid::verify_pop(&other_spki, &t, &session, &mac, &pop),
        Err(SvidError::BadPop)
    ));
}

fn ctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ekattestctl"))
        .args(args)
        .output()
        .expect("run ekattestctl")
}

#[test]
fn ekattestctl_ca_create_writes_a_usable_ca_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cert = d.join("ca.pem");
    let key = d.join("ca.key");
    let (cert_s, key_s) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let create = |extra: &[&str]| {
        let mut args = vec![
            "ca",
            "create",
            "--trust-domain",
            "example.org",
            "--cert",
            cert_s,
            "--key",
            key_s,
        ];
        args.extend_from_slice(extra);
        ctl(&args)
    };
    let out = create(&["--days", "10"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("trust bundle for agents"), "{stdout}");
    assert!(stdout.contains(cert_s), "{stdout}");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let ca = Authority::load(&cert, &key).unwrap();
    assert_eq!(ca.trust_domain(), Some("example.org"));
    let end = openssl_ok(d, &["x509", "-in", "ca.pem", "-noout", "-enddate"]);
    let checkend_9d = openssl(
        d,
        &["x509", "-in", "ca.pem", "-noout", "-checkend", "777600"],
    );
    let checkend_11d = openssl(
        d,
        &["x509", "-in", "ca.pem", "-noout", "-checkend", "950400"],
    );
    assert!(checkend_9d.status.success(), "valid 10 days: {end}");
    assert!(!checkend_11d.status.success(), "valid 10 days: {end}");
    let (_, spki) = openssl_agent_key(d, "agent");
    let der = ca
        .issue(&spki, ID, SystemTime::now(), Duration::from_secs(600))
        .unwrap();
    write_svid_pem(d, "svid.pem", &der);
    assert!(openssl_verifies(d, "ca.pem", "svid.pem"));

    // Existing files are kept unless --force.
    let before = (std::fs::read(&cert).unwrap(), std::fs::read(&key).unwrap());
    let out = create(&[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert_eq!(
        before,
        (std::fs::read(&cert).unwrap(), std::fs::read(&key).unwrap())
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = create(&["--force"]);
    assert!(out.status.success(), "{out:?}");
    assert_ne!(before.1, std::fs::read(&key).unwrap(), "a new key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600,
        "--force restores 0600"
    );
    Authority::load(&cert, &key).unwrap();

    // Usage errors.
    let bad_td = ctl(&[
        "ca",
        "create",
        "--trust-domain",
        "Bad Domain",
        "--cert",
        "x.pem",
        "--key",
        "x.key",
    ]);
    assert_eq!(bad_td.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_td.stderr).contains("invalid trust domain"));
    let no_key = ctl(&[
        "ca",
        "create",
        "--trust-domain",
        "example.org",
        "--cert",
        "x.pem",
    ]);
    assert_eq!(no_key.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no_key.stderr).contains("missing --key"));
    let days = ctl(&[
        "ca",
        "create",
        "--trust-domain",
        "a",
        "--cert",
        "x",
        "--key",
        "y",
        "--days",
        "0",
    ]);
    assert_eq!(days.status.code(), Some(2));
    let help = ctl(&["ca", "create", "--help"]);
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--trust-domain TD"));
    let top = ctl(&["--help"]);
    assert!(String::from_utf8_lossy(&top.stdout).contains("ca create"));
}
