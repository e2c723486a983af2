//! End to end in process: the agent library on live swtpm devices and the server library,
//! with protocol frames in between (feature "it": needs swtpm, tpm2-tools and openssl).
use ekattest_agent::tpm::ek::EkKind as AgentEkKind;
use ekattest_agent::tpm::stream::Stream;
use ekattest_fleet::flow::{self, Server};
use ekattest_fleet::{Ca, Device, EkKind, ProvisionOptions, openssl_public_hash};
use ekattest_protocol::RejectCode;
use ekattest_protocol::msg::AttributeName;
use ekattest_server::ek::Check;

fn provision(ca: &Ca) -> Device {
    let opts = ProvisionOptions {
        rsa_keysize: 2048,
        p256_ek_cert: true,
    };
    Device::provision(ca, &opts).unwrap_or_else(|e| panic!("cannot provision swtpm: {e}"))
}

fn server(ca: &Ca) -> Server {
    Server::trusting(ca, "node-7").unwrap_or_else(|e| panic!("{e}"))
}

fn transport(dev: &Device) -> ekattest_agent::tpm::stream::Tcp {
    Stream::connect_tcp("127.0.0.1", dev.port()).unwrap()
}

#[test]
fn every_ek_kind_attests_and_answers_are_single_use() {
    let ca = Ca::create().unwrap();
    let dev = provision(&ca);
    let server = server(&ca);
    let cases = [
        (AgentEkKind::Rsa2048, EkKind::Rsa2048),
        (AgentEkKind::P256, EkKind::P256),
        (AgentEkKind::P384, EkKind::P384),
    ];
    for (agent_kind, harness_kind) in cases {
        let report = flow::attest(transport(&dev), Some(agent_kind), &server)
            .unwrap_or_else(|e| panic!("{agent_kind:?}: {e}"));
        let identity = report
            .outcome
            .as_ref()
            .unwrap_or_else(|r| panic!("{agent_kind:?} rejected: {r:?}"));
        // The attribute equals the independent openssl pipeline over the certificate file.
        let cert = dev.certs_dir().join(harness_kind.cert_file_name());
        let expected_hash = if cert.exists() {
            openssl_public_hash(&cert).unwrap()
        } else {
            let der = dev.ek_cert_der(harness_kind).unwrap();
            let tmp = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(tmp.path(), der).unwrap();
            openssl_public_hash(tmp.path()).unwrap()
        };
        let get = |n: AttributeName| {
            identity
                .attributes
                .iter()
                .find(|(name, _)| *name == n)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get(AttributeName::PublicHash), Some(expected_hash.as_str()));
        assert_eq!(get(AttributeName::Manufacturer), Some("id:00001014"));
        assert_eq!(get(AttributeName::Model), Some("swtpm"));
        assert_eq!(identity.check, Check::Chain);
        assert_eq!(
            identity.spiffe_id,
            format!("spiffe://fleet.test/agents/tpm/swtpm/{expected_hash}")
        );
        assert_eq!(report.agent, format!("ek-{}", &expected_hash[..32]));

        // Replaying the right answer finds no session: it was removed when answered.
        let replay = flow::answer_frame_to_outcome(
            &server,
            &report.agent,
            report.answer_frame.as_ref().unwrap(),
        )
        .unwrap();
        assert_eq!(replay.unwrap_err().code, RejectCode::UnknownSession);
    }
    assert_eq!(server.attestor.pending(), 0, "no session left behind");
}

#[test]
fn a_device_from_another_ca_is_rejected_without_a_session() {
    let trusted = Ca::create().unwrap();
    let other = Ca::create().unwrap();
    let dev = provision(&other);
    let server = server(&trusted);
    let report = flow::attest(transport(&dev), Some(AgentEkKind::P384), &server).unwrap();
    let rejection = report.outcome.unwrap_err();
    assert_eq!(rejection.code, RejectCode::EkChain);
    assert_eq!(
        rejection.code.to_string(),
        "failed to verify EK certificate chain"
    );
    assert!(
        rejection.reason.contains("CN=swtpm-localca"),
        "{}",
        rejection.reason
    );
    assert!(report.answer_frame.is_none());
    assert_eq!(server.attestor.pending(), 0);
}

/// `ekattest-fleet demo` is the README's demo: an alias of `run` (25 mixed devices without
/// options; here 3, to keep the test short). Every device attests through mosquitto and the
/// real daemons, and the report says so.
#[test]
fn demo_command_is_a_process_fleet_that_attests_every_device() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ekattest-fleet"))
        .args(["demo", "--devices", "3", "--ek", "mixed", "--report"])
        .arg(&report)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("3 / 3"), "summary table:\n{stdout}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(v["mode"], "run");
    assert_eq!(v["attested"], 3);
    assert_eq!(v["rejected"], 0);
    assert_eq!(v["errors"], 0);
}
