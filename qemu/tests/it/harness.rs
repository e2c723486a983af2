//! Integration tests of the swtpm harness (feature `it`): real swtpm, swtpm_setup,
//! swtpm_localca, tpm2-tools and openssl. A missing tool fails the test with the package to
//! install; nothing is skipped.
use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ekattest_fleet::{
    Ca, Device, EkKind, Error, ProvisionOptions, openssl_public_hash, tpm2_makecredential,
};
use ekattest_testkit::testdata;

const RSA2048_P256: ProvisionOptions = ProvisionOptions {
    rsa_keysize: 2048,
    p256_ek_cert: true,
};

/// Runs a command, panics with its stderr unless it succeeds; returns stdout.
fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (is it installed?): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn provision_timed(ca: &Ca, opts: &ProvisionOptions) -> Device {
    let start = Instant::now();
    let dev = Device::provision(ca, opts).unwrap();
    eprintln!(
        "provisioned {opts:?} in {} ms (port {}, pid {})",
        start.elapsed().as_millis(),
        dev.port(),
        dev.pid()
    );
    dev
}

/// `/proc/PID` exists and the process is not a zombie.
fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3 is the state; the command name in field 2 may contain spaces, so split
        // after its closing parenthesis.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

fn write_der(dir: &Path, name: &str, der: &[u8]) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, der).unwrap();
    path
}

/// `openssl verify -CAfile root -untrusted intermediate` on a DER certificate.
fn verify_against_ca(ca: &Ca, der_cert: &Path) -> String {
    let pem = der_cert.with_extension("pem");
    sh(
        "openssl",
        &[
            "x509",
            "-inform",
            "DER",
            "-in",
            der_cert.to_str().unwrap(),
            "-out",
            pem.to_str().unwrap(),
        ],
    );
    sh(
        "openssl",
        &[
            "verify",
            "-CAfile",
            ca.root_cert_pem().to_str().unwrap(),
            "-untrusted",
            ca.intermediate_cert_pem().to_str().unwrap(),
            pem.to_str().unwrap(),
        ],
    )
}

fn serial(der_cert: &Path) -> String {
    sh(
        "openssl",
        &[
            "x509",
            "-inform",
            "DER",
            "-in",
            der_cert.to_str().unwrap(),
            "-noout",
            "-serial",
        ],
    )
    .trim()
    .to_owned()
}

/// The EK public key as the TPM reports it (`tpm2_readpublic -f pem`), hashed by openssl.
fn tpm_public_hash(dev: &Device, kind: EkKind) -> String {
    let ctx = dev.ek_context(kind).unwrap();
    let pem = dev.work_dir().join(format!("ek-{}.pem", kind.nv_index()));
    dev.tpm2(
        "tpm2_readpublic",
        &["-c", ctx.as_str(), "-f", "pem", "-o", pem.to_str().unwrap()],
    )
    .unwrap();
    dev.flush_transient().unwrap();
    openssl_public_hash(&pem).unwrap()
}

/// Checks one provisioned device: which certificate indices exist, that each certificate
/// verifies against the CA, matches the NV contents, and certifies the TPM's own EK.
fn check_device(ca: &Ca, dev: &Device, present: &[EkKind], absent: &[EkKind]) {
    let nv = dev.nv_indices().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for &kind in present {
        assert!(
            nv.contains(&kind.nv_index()),
            "{kind} index missing in {nv:x?}"
        );
        let der = dev.ek_cert_der(kind).unwrap();
        assert_eq!(der.first(), Some(&0x30), "{kind} certificate is not DER");
        // The NV contents equal the certificate file.
        let index = format!("0x{:08X}", kind.nv_index());
        let from_nv = dev.work_dir().join("nv.der");
        dev.tpm2(
            "tpm2_nvread",
            &["-C", "o", "-o", from_nv.to_str().unwrap(), index.as_str()],
        )
        .unwrap();
        assert_eq!(
            fs::read(&from_nv).unwrap(),
            der,
            "{kind}: NV differs from the file"
        );
        let file = write_der(tmp.path(), &format!("{}.der", kind.nv_index()), &der);
        let verdict = verify_against_ca(ca, &file);
        assert!(verdict.trim_end().ends_with(": OK"), "{kind}: {verdict}");
        assert_eq!(
            openssl_public_hash(&file).unwrap(),
            tpm_public_hash(dev, kind),
            "{kind}: certificate key differs from the TPM's EK"
        );
    }
    for &kind in absent {
        assert!(
            !nv.contains(&kind.nv_index()),
            "{kind} index unexpectedly present"
        );
        assert!(matches!(dev.ek_cert_der(kind), Err(Error::NoEkCert { .. })));
    }
    // Nothing left loaded for the device's next client (libtpms has 3 object slots).
    let transient =
        String::from_utf8(dev.tpm2("tpm2_getcap", &["handles-transient"]).unwrap()).unwrap();
    assert!(
        transient.trim().is_empty(),
        "transient handles left: {transient}"
    );
}

#[test]
fn ca_exists_right_after_create() {
    let ca = Ca::create().unwrap();
    let root = ca.root_cert_pem();
    assert!(root.is_absolute() && root.starts_with(ca.dir()));
    let text = sh(
        "openssl",
        &["x509", "-in", root.to_str().unwrap(), "-noout", "-text"],
    );
    assert!(text.contains("Public-Key: (3072 bit)"), "{text}");
    // Self-signed root, intermediate issued by it.
    sh(
        "openssl",
        &[
            "verify",
            "-CAfile",
            root.to_str().unwrap(),
            root.to_str().unwrap(),
        ],
    );
    sh(
        "openssl",
        &[
            "verify",
            "-CAfile",
            root.to_str().unwrap(),
            ca.intermediate_cert_pem().to_str().unwrap(),
        ],
    );
    let dir = ca.dir().to_owned();
    drop(ca);
    assert!(!dir.exists(), "CA directory left behind");
}

#[test]
fn rsa2048_device_has_rsa_p256_and_p384_ek_certificates() {
    let ca = Ca::create().unwrap();
    let dev = provision_timed(&ca, &RSA2048_P256);
    assert_eq!(dev.spec(), format!("swtpm:127.0.0.1:{}", dev.port()));
    assert_eq!(
        dev.tcti(),
        format!("swtpm:host=127.0.0.1,port={}", dev.port())
    );
    check_device(
        &ca,
        &dev,
        &[EkKind::Rsa2048, EkKind::P256, EkKind::P384],
        &[EkKind::Rsa3072],
    );
    // keyUsage as swtpm_localca 0.7.1 sets it (the server's EK profile check relies on it):
    // keyEncipherment on the RSA EK, keyAgreement on both ECC EKs.
    let tmp = tempfile::tempdir().unwrap();
    for (kind, usage) in [
        (EkKind::Rsa2048, "Key Encipherment"),
        (EkKind::P256, "Key Agreement"),
        (EkKind::P384, "Key Agreement"),
    ] {
        let f = write_der(tmp.path(), "ku.der", &dev.ek_cert_der(kind).unwrap());
        let ku = sh(
            "openssl",
            &[
                "x509",
                "-inform",
                "DER",
                "-in",
                f.to_str().unwrap(),
                "-noout",
                "-ext",
                "keyUsage",
            ],
        );
        assert!(
            ku.contains("critical") && ku.contains(usage),
            "{kind}: {ku}"
        );
    }
    // The P-256 certificate carries the same TPM identity as swtpm's own.
    let tmp = tempfile::tempdir().unwrap();
    let p256 = write_der(
        tmp.path(),
        "p256.der",
        &dev.ek_cert_der(EkKind::P256).unwrap(),
    );
    let text = sh(
        "openssl",
        &[
            "x509",
            "-inform",
            "DER",
            "-in",
            p256.to_str().unwrap(),
            "-noout",
            "-text",
        ],
    );
    for needle in [
        "2.23.133.2.1=id:00001014",
        "2.23.133.2.2=swtpm",
        "prime256v1",
        "2.23.133.8.1",
    ] {
        assert!(text.contains(needle), "{needle} missing in\n{text}");
    }
}

#[test]
fn rsa3072_device_replaces_the_rsa2048_ek() {
    let ca = Ca::create().unwrap();
    let opts = ProvisionOptions {
        rsa_keysize: 3072,
        p256_ek_cert: false,
    };
    let dev = provision_timed(&ca, &opts);
    check_device(
        &ca,
        &dev,
        &[EkKind::Rsa3072, EkKind::P384],
        &[EkKind::Rsa2048, EkKind::P256],
    );
    let tmp = tempfile::tempdir().unwrap();
    let cert = write_der(
        tmp.path(),
        "rsa3072.der",
        &dev.ek_cert_der(EkKind::Rsa3072).unwrap(),
    );
    let text = sh(
        "openssl",
        &[
            "x509",
            "-inform",
            "DER",
            "-in",
            cert.to_str().unwrap(),
            "-noout",
            "-text",
        ],
    );
    assert!(text.contains("Public-Key: (3072 bit)"), "{text}");
}

#[test]
fn devices_provision_in_parallel_with_unique_serials() {
    const N: usize = 4;
    let ca = Ca::create().unwrap();
    let start = Instant::now();
    let devices: Vec<Device> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..N)
            .map(|_| s.spawn(|| provision_timed(&ca, &RSA2048_P256)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    eprintln!(
        "{N} devices in parallel: {} ms wall",
        start.elapsed().as_millis()
    );
    let ports: HashSet<u16> = devices.iter().map(Device::port).collect();
    assert_eq!(ports.len(), N, "two devices share a port");
    let tmp = tempfile::tempdir().unwrap();
    let mut serials = HashSet::new();
    for (i, dev) in devices.iter().enumerate() {
        for kind in [EkKind::Rsa2048, EkKind::P256, EkKind::P384] {
            let f = write_der(
                tmp.path(),
                &format!("{i}-{}.der", kind.nv_index()),
                &dev.ek_cert_der(kind).unwrap(),
            );
            assert!(verify_against_ca(&ca, &f).trim_end().ends_with(": OK"));
            assert!(serials.insert(serial(&f)), "duplicate certificate serial");
        }
    }
    // Devices answer independently: each has its own EK.
    let hashes: HashSet<String> = devices
        .iter()
        .map(|d| tpm_public_hash(d, EkKind::Rsa2048))
        .collect();
    assert_eq!(hashes.len(), N);
}

#[test]
fn drop_stops_swtpm_and_removes_the_state() {
    let ca = Ca::create().unwrap();
    let dev = provision_timed(&ca, &ProvisionOptions::default());
    let pid = dev.pid();
    let state = dev.state_dir().to_owned();
    let port = dev.port();
    assert!(alive(pid), "swtpm {pid} not running");
    let pid_file = fs::read_to_string(state.join("swtpm.pid")).unwrap();
    assert_eq!(pid_file.trim(), pid.to_string());
    let start = Instant::now();
    drop(dev);
    eprintln!("stopped in {} ms", start.elapsed().as_millis());
    assert!(!alive(pid), "swtpm {pid} still running after drop");
    assert!(!state.exists(), "state directory left behind");
    assert!(
        std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_millis(200)
        )
        .is_err(),
        "port {port} still accepts connections"
    );
}

/// Environment variable that turns [`watchdog_child`] into the victim process.
const WATCHDOG_CHILD: &str = "EKATTEST_FLEET_WATCHDOG_CHILD";

/// Helper process for `killed_test_process_takes_its_swtpm_along`, not a test by itself:
/// run by that test as a subprocess (this test binary, filtered to this name, with
/// `WATCHDOG_CHILD` set), it provisions a device, prints swtpm's pid and waits to be killed.
/// Without the variable it has nothing to do.
#[test]
fn watchdog_child() {
    use std::io::Write;
    if std::env::var_os(WATCHDOG_CHILD).is_none() {
        return;
    }
    let ca = Ca::create().unwrap();
    let dev = Device::provision(&ca, &ProvisionOptions::default()).unwrap();
    println!("SWTPM_PID={}", dev.pid());
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(60));
    panic!("watchdog child was not killed within 60 s");
}

#[test]
fn killed_test_process_takes_its_swtpm_along() {
    use std::io::{BufRead, BufReader};
    let mut victim = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "harness::watchdog_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(WATCHDOG_CHILD, "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = victim.stdout.take().unwrap();
    let pid: u32 = BufReader::new(stdout)
        .lines()
        .map_while(|l| l.ok())
        // libtest prints "test watchdog_child ... " on the same line first.
        .find_map(|l| {
            l.split_once("SWTPM_PID=")
                .and_then(|(_, p)| p.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("the child test printed no SWTPM_PID"));
    assert!(alive(pid), "swtpm {pid} not running in the child");
    // SIGKILL: no destructor runs in the victim.
    victim.kill().unwrap();
    victim.wait().unwrap();
    let start = Instant::now();
    while alive(pid) && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !alive(pid),
        "swtpm {pid} survived its SIGKILLed test process"
    );
    eprintln!(
        "orphaned swtpm gone {} ms after SIGKILL",
        start.elapsed().as_millis()
    );
}

#[test]
fn failed_provisioning_leaves_nothing_running() {
    let ca = Ca::create().unwrap();
    let bad = ProvisionOptions {
        rsa_keysize: 4096,
        p256_ek_cert: false,
    };
    let err = Device::provision(&ca, &bad).unwrap_err();
    assert!(err.to_string().contains("rsa_keysize 4096"), "{err}");
    // A state file that is not a TPM state: swtpm must not be left behind either way.
    let tmp = tempfile::tempdir().unwrap();
    let junk = tmp.path().join("tpm2-00.permall");
    fs::write(&junk, b"not a tpm state").unwrap();
    match Device::from_state_file(&junk) {
        Ok(dev) => {
            // swtpm may start and report the damage per command instead; then tools fail.
            assert!(dev.nv_indices().is_err());
        }
        Err(e) => eprintln!("junk state refused: {e}"),
    }
    let err = Device::from_state_file(&tmp.path().join("missing.permall")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
}

#[test]
fn openssl_public_hash_matches_the_known_stm_value() {
    let der = testdata::existing("real-ek/leaf/stm-st33htphahb4-rsa2048.der");
    let want = "de6a6ba0564fc32ed137b2e2c97b39c741e87a3fbbb80bc9092b75b6dc8a2aab";
    assert_eq!(openssl_public_hash(&der).unwrap(), want);
    // PEM input gives the same.
    let tmp = tempfile::tempdir().unwrap();
    let pem = tmp.path().join("stm.pem");
    sh(
        "openssl",
        &[
            "x509",
            "-inform",
            "DER",
            "-in",
            der.to_str().unwrap(),
            "-out",
            pem.to_str().unwrap(),
        ],
    );
    assert_eq!(openssl_public_hash(&pem).unwrap(), want);
    assert!(openssl_public_hash(&tmp.path().join("nope.der")).is_err());
}

#[test]
fn tpm2_tools_credentials_round_trip_on_every_ek() {
    let ca = Ca::create().unwrap();
    let dev = provision_timed(&ca, &RSA2048_P256);
    let ak = dev.tpm2_create_ak().unwrap();
    let mut other_name = ak.name.clone();
    if let Some(last) = other_name.last_mut() {
        *last ^= 1;
    }
    let secret: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(7) ^ 0x5a).collect();
    for kind in [EkKind::Rsa2048, EkKind::P256, EkKind::P384] {
        let ek = dev.ek_public(kind).unwrap();
        let cred = tpm2_makecredential(&ek, &secret, &ak.name).unwrap();
        assert_eq!(&cred[..8], &[0xba, 0xdc, 0xc0, 0xde, 0, 0, 0, 1]);
        let got = dev.tpm2_activatecredential(&ak, kind, &cred).unwrap();
        assert_eq!(got, secret, "{kind}");
        // A credential bound to another AK name fails the integrity check.
        let wrong = tpm2_makecredential(&ek, &secret, &other_name).unwrap();
        let err = dev.tpm2_activatecredential(&ak, kind, &wrong).unwrap_err();
        assert!(
            err.to_string().to_lowercase().contains("0x1df"),
            "{kind}: {err}"
        );
    }
    // The device is clean afterwards.
    let left = String::from_utf8(dev.tpm2("tpm2_getcap", &["handles-transient"]).unwrap()).unwrap();
    assert!(left.trim().is_empty(), "{left}");
}

#[test]
fn swtpm_bound_vectors_activate_on_the_shared_state() {
    let dev = Device::from_state_file(&testdata::existing(
        "make-credential/swtpm-bound-state/tpm2-00.permall",
    ))
    .unwrap();
    let ak = dev.tpm2_create_ak().unwrap();
    let secret = testdata::read("make-credential/secret.bin");
    for (dir, kind) in [
        ("swtpm-bound-rsa2048", EkKind::Rsa2048),
        ("swtpm-bound-p256", EkKind::P256),
        ("swtpm-bound-p384", EkKind::P384),
    ] {
        // The vectors are bound to this TPM's AK from the AK template: ours must be it.
        let want_name = testdata::read(format!("make-credential/{dir}/ak.name"));
        assert_eq!(
            hex::encode(&ak.name),
            hex::encode(&want_name),
            "{kind}: AK name"
        );
        assert_eq!(
            hex::encode(&ak.public),
            hex::encode(testdata::read(format!(
                "make-credential/{dir}/ak.tpm2b_public"
            ))),
            "{kind}: AK public"
        );
        let ek = testdata::read(format!("make-credential/{dir}/ek.tpm2b_public"));
        assert_eq!(
            hex::encode(dev.ek_public(kind).unwrap()),
            hex::encode(&ek),
            "{kind}: EK public"
        );
        let cred = testdata::read(format!(
            "make-credential/{dir}/expected.tpm2tools_credential"
        ));
        assert_eq!(
            dev.tpm2_activatecredential(&ak, kind, &cred).unwrap(),
            secret,
            "{kind}"
        );
    }
}

#[test]
fn version_flag_prints_name_version_and_git_commit() {
    let line = ekattest_fleet::version::check_version_flag(
        Path::new(env!("CARGO_BIN_EXE_ekattest-fleet")),
        "ekattest-fleet",
        env!("CARGO_PKG_VERSION"),
    )
    .unwrap();
    eprintln!("{line}");
}
