//! The TPM layer against real swtpm devices provisioned by the fleet harness (feature `it`).
//!
//! Oracles are independent of the agent: certificates as swtpm_setup wrote them, openssl's
//! public-key hash pipeline, tpm2-tools' EK publics, AK and MakeCredential, and the
//! swtpm-bound known-answer vectors in ../shared/testdata/make-credential.

use std::sync::OnceLock;
use std::time::Instant;

use ekattest_agent::tpm::activate::{self, Credential};
use ekattest_agent::tpm::ak::{self, AkOptions};
use ekattest_agent::tpm::commands::{RH_OWNER, Tpm};
use ekattest_agent::tpm::ek::{self, EkKind};
use ekattest_agent::tpm::stream::{self, Stream};
use ekattest_protocol::spki::PublicKey;
use ekattest_protocol::tpm::public::Public;
use ekattest_testkit::{Ca, Device, ProvisionOptions, testdata};

mod param_enc;

fn ca() -> &'static Ca {
    static CA: OnceLock<Ca> = OnceLock::new();
    CA.get_or_init(|| Ca::create().unwrap_or_else(|e| panic!("cannot create the swtpm CA: {e}")))
}

fn provision(rsa_keysize: u16, p256_ek_cert: bool) -> Device {
    let opts = ProvisionOptions {
        rsa_keysize,
        p256_ek_cert,
    };
    Device::provision(ca(), &opts).unwrap_or_else(|e| panic!("cannot provision swtpm: {e}"))
}

fn connect(device: &Device) -> Tpm<stream::Tcp> {
    let stream = Stream::connect_tcp("127.0.0.1", device.port()).unwrap();
    let mut tpm = Tpm::new(stream);
    tpm.startup_clear().unwrap();
    tpm.flush_leftovers().unwrap();
    tpm
}

fn fleet_kind(kind: EkKind) -> ekattest_testkit::EkKind {
    match kind {
        EkKind::Rsa2048 => ekattest_testkit::EkKind::Rsa2048,
        EkKind::P256 => ekattest_testkit::EkKind::P256,
        EkKind::P384 => ekattest_testkit::EkKind::P384,
        EkKind::Rsa3072 => ekattest_testkit::EkKind::Rsa3072,
    }
}

/// For each EK: found, certificate = what swtpm_setup wrote, public = what tpm2-tools reads,
/// key = certificate key, public_hash = openssl's.
fn check_discovery(device: &Device, want: &[EkKind]) {
    let mut oracle = Vec::new();
    for kind in want {
        let fk = fleet_kind(*kind);
        let cert = device.ek_cert_der(fk).unwrap();
        let file = device
            .work_dir()
            .join(format!("oracle-{}.der", kind.as_str()));
        std::fs::write(&file, &cert).unwrap();
        let hash = ekattest_testkit::openssl_public_hash(&file).unwrap();
        oracle.push((cert, device.ek_public(fk).unwrap(), hash));
    }
    let mut tpm = connect(device);
    let started = Instant::now();
    let found = ek::discover(&mut tpm).unwrap();
    eprintln!("discovery of {want:?}: {:?}", started.elapsed());
    let kinds: Vec<EkKind> = found.eks.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, want);
    for (ek, (cert, public, hash)) in found.eks.iter().zip(oracle) {
        let what = ek.kind.as_str();
        assert_eq!(
            ek.certificate.as_deref(),
            Some(&cert[..]),
            "{what} certificate"
        );
        assert_eq!(ek.nv_index, Some(ek.kind.cert_index()), "{what}");
        assert_eq!(
            hex::encode(&ek.public),
            hex::encode(&public),
            "{what} public vs tpm2-tools"
        );
        let spki = ekattest_agent::cert::summarize(&cert).unwrap().spki;
        let cert_key = PublicKey::from_spki_der(spki).unwrap();
        assert!(
            Public::decode(&ek.public).unwrap().key.same_key(&cert_key),
            "{what} key"
        );
        assert_eq!(
            hex::encode(ek.public_hash),
            hash,
            "{what} public_hash vs openssl"
        );
    }
}

#[test]
fn discovers_rsa2048_p256_p384_matching_certificates_and_openssl() {
    let device = provision(2048, true);
    check_discovery(&device, &[EkKind::Rsa2048, EkKind::P256, EkKind::P384]);
}

#[test]
fn discovers_rsa3072_h6_ek() {
    let device = provision(3072, false);
    check_discovery(&device, &[EkKind::P384, EkKind::Rsa3072]);
}

#[test]
fn created_ek_equals_the_persistent_one() {
    // Recreating the persistent EKs from our templates proves the templates (incl. the
    // P-384 and RSA-3072 `unique` choice) are the ones swtpm used.
    for rsa in [2048, 3072] {
        let device = provision(rsa, false);
        let mut tpm = connect(&device);
        let found = ek::discover(&mut tpm).unwrap();
        for ek in &found.eks {
            assert!(
                ek.handle.is_some(),
                "{:?} should be persistent on swtpm",
                ek.kind
            );
            let transient = ek::Ek {
                handle: None,
                ..ek.clone()
            };
            let mut scope = tpm.scope();
            let started = Instant::now();
            ek::load(&mut scope, &transient)
                .unwrap_or_else(|e| panic!("{:?} template differs from swtpm's EK: {e}", ek.kind));
            eprintln!("CreatePrimary {:?} EK: {:?}", ek.kind, started.elapsed());
        }
        assert!(
            tpm.handles(0x8000_0000).unwrap().is_empty(),
            "scope left objects loaded"
        );
    }
}

#[test]
fn activates_tpm2_makecredential_credentials_for_each_ek() {
    let device = provision(2048, true);
    let (found, ak) = {
        let mut tpm = connect(&device);
        (
            ek::discover(&mut tpm).unwrap(),
            ak::read(&mut tpm, &AkOptions::default()).unwrap(),
        )
    };
    let secret: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
    for e in &found.eks {
        let cred = ekattest_testkit::tpm2_makecredential(&e.public, &secret, &ak.name).unwrap();
        let cred = Credential::decode_tpm2_tools(&cred).unwrap();
        let mut tpm = connect(&device);
        let started = Instant::now();
        let got = activate::activate(&mut tpm, e, &AkOptions::default(), &cred).unwrap();
        eprintln!("ActivateCredential {:?}: {:?}", e.kind, started.elapsed());
        assert_eq!(got, secret, "{:?}", e.kind);
        assert!(
            tpm.handles(0x8000_0000).unwrap().is_empty(),
            "objects left loaded"
        );
        assert!(
            tpm.handles(0x0200_0000).unwrap().is_empty(),
            "sessions left loaded"
        );

        // The same credential for another AK Name is rejected by the TPM's integrity check,
        // and nothing stays loaded after the error.
        let mut wrong = ak.name.clone();
        wrong[10] ^= 1;
        let bad = ekattest_testkit::tpm2_makecredential(&e.public, &secret, &wrong).unwrap();
        let bad = Credential::decode_tpm2_tools(&bad).unwrap();
        let err = activate::activate(&mut tpm, e, &AkOptions::default(), &bad).unwrap_err();
        assert!(
            err.to_string().contains("TPM_RC_INTEGRITY (0x1df)"),
            "{err}"
        );
        assert!(
            tpm.handles(0x8000_0000).unwrap().is_empty(),
            "objects left after error"
        );
        assert!(
            tpm.handles(0x0200_0000).unwrap().is_empty(),
            "sessions left after error"
        );
        assert!(
            tpm.handles(0x0300_0000).unwrap().is_empty(),
            "sessions left after error"
        );
    }
}

#[test]
fn swtpm_bound_vectors_activate_to_secret_bin() {
    let device = Device::from_state_file(&testdata::path(
        "make-credential/swtpm-bound-state/tpm2-00.permall",
    ))
    .unwrap_or_else(|e| panic!("cannot start swtpm on the vector state: {e}"));
    let secret = testdata::read("make-credential/secret.bin");
    let mut tpm = connect(&device);
    let found = ek::discover(&mut tpm).unwrap();
    // The vectors' AK is the AK template without noDA.
    let opts = AkOptions {
        no_da: false,
        ..AkOptions::default()
    };
    let ak = ak::read(&mut tpm, &opts).unwrap();
    for (case, kind) in [
        ("rsa2048", EkKind::Rsa2048),
        ("p256", EkKind::P256),
        ("p384", EkKind::P384),
    ] {
        let dir = format!("make-credential/swtpm-bound-{case}");
        assert_eq!(
            ak.name,
            testdata::read(format!("{dir}/ak.name")),
            "{case} AK name"
        );
        let e = found.pick(Some(kind)).unwrap();
        assert_eq!(
            e.public,
            testdata::read(format!("{dir}/ek.tpm2b_public")),
            "{case} EK"
        );
        let cred = testdata::read(format!("{dir}/expected.tpm2tools_credential"));
        let cred = Credential::decode_tpm2_tools(&cred).unwrap();
        let got = activate::activate(&mut tpm, e, &opts, &cred).unwrap();
        assert_eq!(got, secret, "{case}");
    }
}

#[test]
fn ak_matches_tpm2_tools_ak() {
    let device = provision(2048, false);
    let oracle = device.tpm2_create_ak().unwrap();
    let mut tpm = connect(&device);
    let opts = AkOptions {
        no_da: false,
        ..AkOptions::default()
    };
    let ours = ak::read(&mut tpm, &opts).unwrap();
    assert_eq!(hex::encode(&ours.name), hex::encode(&oracle.name));
    assert_eq!(ours.public, oracle.public);
    // The default AK sets noDA, so it is a different key with a different Name.
    let default = ak::read(&mut tpm, &AkOptions::default()).unwrap();
    assert_ne!(default.name, ours.name);
    assert_eq!(
        Public::decode(&default.public).unwrap().attributes,
        0x0005_0472
    );
    let rsa = ak::read(
        &mut tpm,
        &AkOptions {
            kind: ak::AkKind::Rsa2048,
            ..AkOptions::default()
        },
    )
    .unwrap();
    assert_eq!(rsa.name.len(), 34);
}

#[test]
fn nv_reads_with_small_chunks_match_one_read() {
    let device = provision(2048, true);
    let mut tpm = connect(&device);
    for index in [0x01C0_0002, 0x01C0_000A, 0x01C0_0016] {
        tpm.set_nv_chunk(None);
        let whole = ek::read_nv(&mut tpm, index).unwrap();
        assert!(whole.len() > 3 * 64, "{index:#x}: {} bytes", whole.len());
        for chunk in [64, 100, 511] {
            tpm.set_nv_chunk(Some(chunk));
            assert_eq!(
                ek::read_nv(&mut tpm, index).unwrap(),
                whole,
                "{index:#x} chunk {chunk}"
            );
        }
    }
}

#[test]
fn leftovers_from_a_crashed_client_are_flushed() {
    let device = provision(2048, false);
    let template = AkOptions::default().template();
    {
        // A client that dies with objects loaded: swtpm keeps them (no resource manager).
        let mut tpm = Tpm::new(Stream::connect_tcp("127.0.0.1", device.port()).unwrap());
        tpm.startup_clear().unwrap();
        for _ in 0..3 {
            tpm.create_primary(RH_OWNER, &template).unwrap();
        }
        let e = tpm.create_primary(RH_OWNER, &template).unwrap_err();
        assert!(
            e.to_string().contains("TPM_RC_OBJECT_MEMORY (0x902)"),
            "{e}"
        );
        tpm.start_policy_session(0x000b).unwrap();
    }
    let mut tpm = Tpm::new(Stream::connect_tcp("127.0.0.1", device.port()).unwrap());
    assert_eq!(tpm.handles(0x8000_0000).unwrap().len(), 3);
    assert_eq!(tpm.flush_leftovers().unwrap(), 4);
    assert!(tpm.handles(0x8000_0000).unwrap().is_empty());
    assert!(tpm.handles(0x0200_0000).unwrap().is_empty());
    assert!(tpm.handles(0x0300_0000).unwrap().is_empty());
    ak::read(&mut tpm, &AkOptions::default()).unwrap();
}

/// A swtpm whose state directory is relative while daemonized (it chdirs to `/`) comes up
/// in failure mode: every command answers TPM_RC_FAILURE. Started and stopped here, by pid.
struct FailedSwtpm {
    port: u16,
    pid: String,
    _dir: tempfile::TempDir,
}

impl FailedSwtpm {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("state")).unwrap();
        let pid_file = dir.path().join("swtpm.pid");
        for _ in 0..8 {
            let port = {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap().port()
            };
            if port == u16::MAX || std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_err() {
                continue;
            }
            let status = std::process::Command::new("swtpm")
                .current_dir(dir.path())
                .args(["socket", "--tpm2", "--tpmstate", "dir=state"])
                .args([
                    "--server",
                    &format!("type=tcp,port={port},bindaddr=127.0.0.1"),
                ])
                .args([
                    "--ctrl",
                    &format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1),
                ])
                .args(["--flags", "not-need-init,startup-clear", "-d"])
                .arg("--pid")
                .arg(format!("file={}", pid_file.display()))
                .status()
                .unwrap_or_else(|e| panic!("swtpm not runnable (apt-get install swtpm): {e}"));
            if status.success() {
                let pid = std::fs::read_to_string(&pid_file)
                    .unwrap()
                    .trim()
                    .to_owned();
                return Self {
                    port,
                    pid,
                    _dir: dir,
                };
            }
        }
        panic!("could not start swtpm on a free port");
    }
}

impl Drop for FailedSwtpm {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill").arg(&self.pid).status();
    }
}

#[test]
fn tpm_in_failure_mode_is_a_clear_error() {
    let swtpm = FailedSwtpm::start();
    let mut tpm = Tpm::new(Stream::connect_tcp("127.0.0.1", swtpm.port).unwrap());
    let e = tpm.startup_clear().unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("TPM2_Startup failed: TPM_RC_FAILURE (0x101)"),
        "{msg}"
    );
    assert!(msg.contains("failure mode"), "{msg}");
    let e = ek::discover(&mut tpm).unwrap_err();
    assert!(e.to_string().contains("TPM_RC_FAILURE (0x101)"), "{e}");
    let e = ak::read(&mut tpm, &AkOptions::default()).unwrap_err();
    assert!(
        e.to_string()
            .contains("TPM2_CreatePrimary failed: TPM_RC_FAILURE"),
        "{e}"
    );
    drop(tpm);

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ekattest-agent"))
        .args([
            "tpm",
            "info",
            "--tpm",
            &format!("swtpm:127.0.0.1:{}", swtpm.port),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("TPM_RC_FAILURE (0x101)") && err.contains("failure mode"),
        "{err}"
    );
}

/// Defines NV `index` in the platform hierarchy (empty auth on swtpm) and writes `data`.
fn nv_write(device: &Device, index: u32, data: &[u8]) {
    let file = device.work_dir().join(format!("nv-{index:08x}.bin"));
    std::fs::write(&file, data).unwrap();
    let index = format!("{index:#010x}");
    let size = data.len().to_string();
    let attrs = "ppwrite|ppread|ownerread|authread|no_da|platformcreate";
    device
        .tpm2(
            "tpm2_nvdefine",
            &["-C", "p", "-s", &size, "-a", attrs, &index],
        )
        .unwrap();
    device
        .tpm2(
            "tpm2_nvwrite",
            &["-C", "p", "-i", file.to_str().unwrap(), &index],
        )
        .unwrap();
}

#[test]
fn chain_range_is_split_into_certificates() {
    let device = provision(2048, false);
    let root = testdata::pem_to_der(ca().root_cert_pem());
    let intermediate = testdata::pem_to_der(ca().intermediate_cert_pem());
    // NV indices hold at most 2048 bytes on swtpm: the intermediate, a small second DER
    // object and padding in the first index, the root in the second.
    let small = vec![0x30, 0x03, 0x02, 0x01, 0x05];
    let mut blob = [intermediate.clone(), small.clone()].concat();
    blob.extend_from_slice(&[0xff; 40]);
    nv_write(&device, 0x01C0_0100, &blob);
    nv_write(&device, 0x01C0_0101, &root);
    let mut tpm = connect(&device);
    tpm.set_nv_chunk(Some(256));
    let found = ek::discover(&mut tpm).unwrap();
    assert_eq!(found.chain, vec![intermediate, small, root]);
}

#[test]
fn low_range_nonce_changes_the_template() {
    // With an EK nonce at 0x01C0000B the L-2 EK is a different key, so the certificate at
    // 0x01C0000A no longer matches: discovery must say so instead of reporting it.
    let device = provision(2048, true);
    nv_write(&device, 0x01C0_000B, &[0x42; 16]);
    let mut tpm = connect(&device);
    let e = ek::discover(&mut tpm).unwrap_err();
    assert!(
        matches!(
            e,
            ekattest_agent::tpm::Error::EkMismatch {
                nv_index: 0x01C0_000A,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("does not match the EK certificate at NV index 0x01c0000a")
    );
    assert!(
        tpm.handles(0x8000_0000).unwrap().is_empty(),
        "objects left after error"
    );
}
