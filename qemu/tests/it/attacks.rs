//! Attacks on the real `ekattest-server` over a real mosquitto (issue 9 acceptance): wrong
//! AK attributes, an Answer on another node's topic, an Answer carrying another agent's
//! session id, replay, a copied EK public or certificate, and an expired session. Each is
//! rejected with a named code, counted under its metric reason, and leaves the honest
//! device's path intact where it should.
//!
//! Wire version 2: an Answer carries a MAC over the Login transcript, never the secret, and
//! the servers run with their default `agent-id-from-ek: true`, so an attacker presenting
//! another device's EK must do it under that device's agent id (its own is refused as
//! `agent_id_mismatch`).
//!
//! The attackers are scripted on the software TPM (qemu/src/soft_tpm.rs: software
//! ActivateCredential), so each case is fast; the copied-certificate case with a certificate
//! chain runs on two swtpm devices. The binaries come from the target folder of this test;
//! a missing binary or tool fails the test with the command that fixes it.
use crate::attack_kit;
use crate::common;

use std::time::Duration;

use attack_kit::{SUCCESS, SoftDevice, Wire, World, accepted, allow_list, failed, rejected};
use ekattest_agent::tpm::ak::{self as agent_ak, AkOptions};
use ekattest_agent::tpm::commands::Tpm;
use ekattest_agent::tpm::ek::{self as agent_ek, EkKind as AgentEkKind};
use ekattest_agent::tpm::key;
use ekattest_agent::tpm::stream::Stream;
use ekattest_fleet::soft_tpm::{EkAlg, SoftEk, SoftTpmError};
use ekattest_fleet::{Ca, Device, ProvisionOptions};
use ekattest_protocol::limits::NONCE_LEN;
use ekattest_protocol::msg::{Answer, Downlink, Login};
use ekattest_protocol::topic::default_agent_id;
use ekattest_protocol::tpm::public::attr;
use ekattest_protocol::{RejectCode, sign};

const LOG: Duration = Duration::from_secs(5);

/// `ak_public` with attribute bits `clear` cleared (TPM2B_PUBLIC: size(2) type(2)
/// nameAlg(2) objectAttributes(4)).
fn ak_without(ak_public: &[u8], clear: u32) -> Vec<u8> {
    let mut out = ak_public.to_vec();
    let attrs = u32::from_be_bytes(out[6..10].try_into().unwrap());
    assert_ne!(attrs & clear, 0, "the AK does not have the bit to clear");
    out[6..10].copy_from_slice(&(attrs & !clear).to_be_bytes());
    out
}

/// An AK that is not restricted, or not fixedTPM, could be a key whose private half lives
/// outside the TPM (or that signs anything): MakeCredential for its Name would prove
/// nothing. The server refuses the Login before any challenge, names the attribute, and
/// counts `ak_rejected`; the same device with its real AK is challenged.
#[test]
fn ak_not_restricted_or_not_fixed_tpm_is_rejected_before_a_challenge() {
    let ek = SoftEk::generate(EkAlg::P256).unwrap();
    let world = World::start(&allow_list(&[&ek]), &["node-1"], None);
    let mut dev = SoftDevice::with_ek(&world, ek);

    for (bit, name) in [
        (attr::RESTRICTED, "restricted"),
        (attr::FIXED_TPM, "fixedTPM"),
        (attr::FIXED_PARENT, "fixedParent"),
    ] {
        let bad_ak = ak_without(dev.ak.tpm2b_public(), bit);
        let login = dev.login_with(dev.ek.tpm2b_public(), &bad_ak);
        // One agent id per case: the server's per-agent login rate limit is not under test.
        let mut wire = Wire::connect(&world, &format!("ak-{}", name.to_lowercase()));
        let reply = wire.send_login(&login);
        assert_eq!(rejected(&reply), RejectCode::AkRejected, "{name}");
        world
            .server("node-1")
            .wait_for_log(&format!("AK attribute {name} is not set"), LOG)
            .unwrap();
    }
    assert_eq!(world.metric("node-1", &failed("ak_rejected")), 3.0);
    assert_eq!(
        world.metric("node-1", "attestation_sessions_active"),
        0.0,
        "a rejected Login must not open a session"
    );

    // Control: the unmodified AK is challenged and the answer accepted.
    let c = dev.challenge(&world);
    let answer = dev.answer(&c);
    assert!(accepted(&dev.send_answer(&c.node, &answer)));
    assert_eq!(world.metric("node-1", SUCCESS), 1.0);
}

/// Two servers share the cluster's logins. A session lives only in the store of the node
/// that issued it: the same correct Answer published on the other node's answer topic is an
/// unknown session there. That node cannot touch the issuing node's store, so the session
/// is still pending on its own node, and the Answer on the right topic is accepted.
#[test]
fn answer_on_another_nodes_topic_is_unknown_there_and_the_session_survives() {
    let ek = SoftEk::generate(EkAlg::P256).unwrap();
    let world = World::start(&allow_list(&[&ek]), &["node-1", "node-2"], None);
    let mut dev = SoftDevice::with_ek(&world, ek);
    let c = dev.challenge(&world);
    let issuer = c.node.as_str().to_owned();
    let other = if issuer == "node-1" {
        "node-2"
    } else {
        "node-1"
    };
    let answer = dev.answer(&c);

    let wrong = dev.send_answer(other, &answer);
    assert_eq!(rejected(&wrong), RejectCode::UnknownSession);
    world
        .server(other)
        .wait_for_log("unknown session ID", LOG)
        .unwrap();
    assert_eq!(world.metric(other, &failed("unknown_session")), 1.0);
    assert_eq!(world.metric(&issuer, "attestation_sessions_active"), 1.0);

    let right = dev.send_answer(&issuer, &answer);
    assert!(accepted(&right), "{right:?}\n{}", world.logs());
    assert_eq!(world.metric(&issuer, SUCCESS), 1.0);
    assert_eq!(world.metric(other, SUCCESS), 0.0);
}

/// Attacker M publishes an Answer on its own answer topic carrying victim V's session id
/// (it would need to read V's downlink to learn it: the broker ACL forbids that, this test
/// assumes it anyway). The server answers M "unknown session ID", never reveals that the id
/// exists, and spends V's session: every session is single use, whoever answers it, so a
/// guessed or stolen id gives exactly one try and no oracle. The cost to V is one new Login
/// (its next Answer is an unknown session), never a wrong identity. V's retry succeeds.
#[test]
fn answer_with_another_agents_session_id_is_unknown_and_spends_that_session() {
    let (ek_v, ek_m) = (
        SoftEk::generate(EkAlg::P256).unwrap(),
        SoftEk::generate(EkAlg::P256).unwrap(),
    );
    let world = World::start(&allow_list(&[&ek_v, &ek_m]), &["node-1"], None);
    let mut victim = SoftDevice::with_ek(&world, ek_v);
    let mut attacker = SoftDevice::with_ek(&world, ek_m);

    let c = victim.challenge(&world);
    // Even the victim's correct Answer (the strongest case: its MAC and proof of
    // possession, copied verbatim) does not help the attacker on its own topic.
    let stolen = victim.answer(&c);
    assert_eq!(
        rejected(&attacker.send_answer(&c.node, &stolen)),
        RejectCode::UnknownSession
    );
    world
        .server("node-1")
        .wait_for_log(
            &format!(
                "belongs to agent {}, answered by {}",
                victim.agent, attacker.agent
            ),
            LOG,
        )
        .unwrap();
    victim.expect_silence();
    assert_eq!(world.metric("node-1", "attestation_sessions_active"), 0.0);

    // The victim's own answer now finds no session; a new Login attests.
    assert_eq!(
        rejected(&victim.send_answer(&c.node, &stolen)),
        RejectCode::UnknownSession
    );
    let c2 = victim.challenge(&world);
    assert_ne!(c2.session, c.session);
    let answer = victim.answer(&c2);
    assert!(accepted(&victim.send_answer(&c2.node, &answer)));
    assert_eq!(world.metric("node-1", SUCCESS), 1.0);
    assert_eq!(world.metric("node-1", &failed("unknown_session")), 2.0);
}

/// A correct Answer captured on the wire and published again (by the device itself or by
/// anyone on the broker) finds no session: the first one spent it. The replay mints no
/// second SVID.
#[test]
fn replayed_answer_is_an_unknown_session() {
    let ek = SoftEk::generate(EkAlg::Rsa2048).unwrap();
    let world = World::start(&allow_list(&[&ek]), &["node-1"], None);
    let mut dev = SoftDevice::with_ek(&world, ek);
    let c = dev.challenge(&world);
    let answer = dev.answer(&c);
    assert!(accepted(&dev.send_answer(&c.node, &answer)));
    for _ in 0..3 {
        assert_eq!(
            rejected(&dev.send_answer(&c.node, &answer)),
            RejectCode::UnknownSession
        );
    }
    assert_eq!(world.metric("node-1", SUCCESS), 1.0);
    assert_eq!(world.metric("node-1", &failed("unknown_session")), 3.0);
}

/// Device B presents A's (allow-listed) EK public area with its own AK. Under its own agent
/// id that is `agent_id_mismatch` before anything else; under A's agent id (B publishes on
/// A's topics) the server challenges A's EK; B's EK cannot open the credential (the outer
/// HMAC fails, as on a TPM), so B cannot compute the MAC keyed with the secret, and the best
/// B can send is a MAC keyed with a guess: `challenge_failed`. Presenting A's AK too
/// changes nothing (the credential still needs A's EK).
#[test]
fn copied_ek_public_cannot_be_answered_without_that_ek() {
    let (ek_a, ek_b) = (
        SoftEk::generate(EkAlg::Rsa2048).unwrap(),
        SoftEk::generate(EkAlg::P256).unwrap(),
    );
    let world = World::start(&allow_list(&[&ek_a]), &["node-1"], None);
    let victim = SoftDevice::with_ek(&world, ek_a);
    let mut thief = SoftDevice::with_ek(&world, ek_b);

    let own_id = thief.login_with(victim.ek.tpm2b_public(), thief.ak.tpm2b_public());
    assert_eq!(
        rejected(&thief.send_login(&own_id)),
        RejectCode::AgentIdMismatch
    );
    assert_eq!(world.metric("node-1", &failed("agent_id_mismatch")), 1.0);

    // B on A's topics (its own MQTT client id).
    let mut as_victim = Wire::connect_as(&world, &victim.agent, &format!("{}-b", thief.agent));
    let aks = [
        thief.ak.tpm2b_public().to_vec(),
        victim.ak.tpm2b_public().to_vec(),
    ];
    for ak in &aks {
        let login = thief.login_with(victim.ek.tpm2b_public(), ak);
        let Downlink::Challenge(c) = as_victim.send_login(&login) else {
            panic!(
                "a copied, allow-listed EK public is challenged\n{}",
                world.logs()
            );
        };
        // The Challenge is genuine and names B's Login: B could act on it.
        world.verify_challenge(&victim.agent, &c, &as_victim.transcript());
        let opened =
            thief
                .ek
                .activate_credential(thief.ak.name(), &c.credential_blob, &c.encrypted_secret);
        assert!(
            matches!(
                opened,
                Err(SoftTpmError::Integrity | SoftTpmError::Malformed(_))
            ),
            "B's EK opened a credential made for A's EK: {opened:?}"
        );
        let guess = thief.answer_with(&c, &as_victim.transcript(), &[0x42; 32]);
        assert_eq!(
            rejected(&as_victim.send_answer(&c.node, &guess)),
            RejectCode::ChallengeFailed
        );
    }
    world
        .server("node-1")
        .wait_for_log("challenge response secret does not match", LOG)
        .unwrap();
    assert_eq!(world.metric("node-1", &failed("challenge_failed")), 2.0);
    assert_eq!(world.metric("node-1", SUCCESS), 0.0);
}

/// A session outlives its TTL by nothing: an Answer after the TTL is refused (the session is
/// gone or expired) even though the secret is right.
#[test]
fn answer_after_the_session_ttl_is_refused() {
    let ek = SoftEk::generate(EkAlg::P256).unwrap();
    let world = World::start(
        &allow_list(&[&ek]),
        &["node-1"],
        Some(Duration::from_secs(1)),
    );
    let mut dev = SoftDevice::with_ek(&world, ek);
    let c = dev.challenge(&world);
    assert_eq!(c.expires_in, 1, "the Challenge states the TTL");
    let answer = dev.answer(&c);
    std::thread::sleep(Duration::from_millis(2000));
    let code = rejected(&dev.send_answer(&c.node, &answer));
    assert!(
        matches!(
            code,
            RejectCode::UnknownSession | RejectCode::SessionExpired
        ),
        "{code:?}"
    );
    let refused = world.metric("node-1", &failed("unknown_session"))
        + world.metric("node-1", &failed("session_expired"));
    assert_eq!(refused, 1.0);
    assert_eq!(world.metric("node-1", SUCCESS), 0.0);
    // A fresh Login answered in time still attests.
    let c = dev.challenge(&world);
    let answer = dev.answer(&c);
    assert!(accepted(&dev.send_answer(&c.node, &answer)));
}

/// A real swtpm device read through the agent library: its Login evidence and its TPM.
struct TpmDevice {
    login: Login,
    tpm: Tpm<ekattest_agent::tpm::stream::Tcp>,
    ek: agent_ek::Ek,
    agent: String,
}

impl TpmDevice {
    fn open(dev: &Device) -> TpmDevice {
        let mut tpm = Tpm::new(Stream::connect_tcp("127.0.0.1", dev.port()).unwrap());
        tpm.startup_clear().unwrap();
        tpm.flush_leftovers().unwrap();
        let endorsement = agent_ek::discover(&mut tpm).unwrap();
        let ek = endorsement
            .pick(Some(AgentEkKind::Rsa2048))
            .unwrap()
            .clone();
        let ak = agent_ak::read(&mut tpm, &AkOptions::default()).unwrap();
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).unwrap();
        let login =
            ekattest_agent::attest::login(&ek, &endorsement.chain, &ak, None, nonce, None).unwrap();
        let agent = default_agent_id(&ek.public_hash).to_string();
        TpmDevice {
            login,
            tpm,
            ek,
            agent,
        }
    }
}

/// Copied certificate, on real TPMs with a certificate chain. B presents A's genuine EK
/// certificate (it chains to the trusted CA) with B's own EK public: the certificate's key
/// is not the EK being challenged, so `ek_mismatch` before any challenge. B presenting A's
/// certificate and A's EK public (on A's topics: under B's own agent id that is
/// `agent_id_mismatch`) is challenged for A's EK, which B's TPM cannot open
/// (TPM_RC_INTEGRITY), so B cannot produce A's MAC, only one keyed with a guess:
/// `challenge_failed`. B's own evidence attests as B.
#[test]
fn copied_certificate_on_swtpm_is_a_mismatch_or_an_unopenable_challenge() {
    let ca = Ca::create().unwrap();
    let world = World::start(&common::policy(Some(&ca), &[]), &["node-1"], None);
    let opts = ProvisionOptions {
        rsa_keysize: 2048,
        p256_ek_cert: false,
    };
    let dev_a = Device::provision(&ca, &opts).unwrap_or_else(|e| panic!("swtpm: {e}"));
    let dev_b = Device::provision(&ca, &opts).unwrap_or_else(|e| panic!("swtpm: {e}"));
    let a = TpmDevice::open(&dev_a);
    let mut b = TpmDevice::open(&dev_b);
    let mut wire = Wire::connect(&world, &b.agent);

    let mut cert_only = b.login.clone();
    cert_only.ek_cert = a.login.ek_cert.clone();
    cert_only.ek_chain = a.login.ek_chain.clone();
    assert_eq!(
        rejected(&wire.send_login(&cert_only)),
        RejectCode::EkMismatch
    );
    assert_eq!(world.metric("node-1", &failed("ek_mismatch")), 1.0);

    let mut evidence = b.login.clone();
    evidence.ek_public = a.login.ek_public.clone();
    evidence.ek_cert = a.login.ek_cert.clone();
    evidence.ek_chain = a.login.ek_chain.clone();
    assert_eq!(
        rejected(&wire.send_login(&evidence)),
        RejectCode::AgentIdMismatch
    );
    let mut as_a = Wire::connect_as(&world, &a.agent, &format!("{}-b", b.agent));
    let Downlink::Challenge(c) = as_a.send_login(&evidence) else {
        panic!("A's complete evidence is challenged\n{}", world.logs());
    };
    let t = as_a.transcript();
    world.verify_challenge(&a.agent, &c, &t);
    let opened =
        ekattest_agent::attest::answer(&mut b.tpm, &b.ek, &AkOptions::default(), &c, &t, None);
    assert!(
        opened.is_err(),
        "B's TPM opened a credential made for A's EK"
    );
    let guess = Answer {
        session: c.session,
        mac: sign::answer_mac(&[0x42; 32], &t, &c.session, &c.node).unwrap(),
        pop: None,
    };
    assert_eq!(
        rejected(&as_a.send_answer(&c.node, &guess)),
        RejectCode::ChallengeFailed
    );
    assert_eq!(world.metric("node-1", &failed("challenge_failed")), 1.0);

    // Control: B's own evidence attests.
    let Downlink::Challenge(c) = wire.send_login(&b.login) else {
        panic!("B's own evidence is challenged\n{}", world.logs());
    };
    let t = wire.transcript();
    world.verify_challenge(&b.agent, &c, &t);
    let answer =
        ekattest_agent::attest::answer(&mut b.tpm, &b.ek, &AkOptions::default(), &c, &t, None)
            .unwrap();
    assert!(accepted(&wire.send_answer(&c.node, &answer)));
    assert_eq!(world.metric("node-1", SUCCESS), 1.0);
}

/// `TPMT_PUBLIC` of an ECC P-256 ECDSA-SHA256 signing key template with `attrs`.
fn p256_template(attrs: u32) -> Vec<u8> {
    let mut t = vec![0x00, 0x23, 0x00, 0x0B];
    t.extend_from_slice(&attrs.to_be_bytes());
    t.extend_from_slice(&[
        0x00, 0x00, 0x00, 0x10, 0x00, 0x18, 0x00, 0x0B, 0x00, 0x03, 0x00, 0x10, 0x00, 0x00, 0x00,
        0x00,
    ]);
    t
}

/// A's Login with a TPM-resident SVID key certified by A's TPM for `nonce` with qualifying
/// data `qd` (the honest value unless a test forges it).
fn certified_login(
    dev: &mut TpmDevice,
    nonce: [u8; NONCE_LEN],
    qd: &[u8; 32],
    template: &[u8],
) -> (Login, key::CertifiedKey) {
    let certified =
        key::create_certified_from(&mut dev.tpm, &AkOptions::default(), qd, template).unwrap();
    let mut login = dev.login.clone();
    login.nonce = nonce;
    ekattest_agent::attest::with_certified_key(&mut login, &certified).unwrap();
    (login, certified)
}

fn honest_qd(agent: &str, nonce: &[u8; NONCE_LEN]) -> [u8; 32] {
    sign::certify_qualifying_data(attack_kit::CLUSTER, agent, nonce).unwrap()
}

/// Forged certifications of a TPM-resident SVID key (issue 14), each built from real swtpm
/// output the way an attacker with some access would: a certification signed by another
/// TPM's AK, one made for another Login's qualifying data, a genuine certification of a key
/// the TPM may let leave (fixedTPM and fixedParent clear), and a software key's public area
/// (claiming every attribute) sent with a genuine certification of a TPM key. Each is
/// refused before a challenge as `key_certification`, naming the check; the TPM itself
/// refuses to certify a software key loaded public-only, or to activate a credential for a
/// software AK loaded that way (tpm2-tools as the attacker's tool: TPM_RC_AUTH_UNAVAILABLE,
/// although the load itself succeeds with fixedTPM claimed). The honest certified key attests, proves possession with
/// TPM2_Sign, and its SVID certifies that key.
#[test]
fn forged_key_certifications_are_refused_and_a_genuine_one_attests() {
    let ca = Ca::create().unwrap();
    let world = World::start(&common::policy(Some(&ca), &[]), &["node-1"], None);
    let opts = ProvisionOptions {
        rsa_keysize: 2048,
        p256_ek_cert: false,
    };
    let dev_a = Device::provision(&ca, &opts).unwrap_or_else(|e| panic!("swtpm: {e}"));
    let dev_b = Device::provision(&ca, &opts).unwrap_or_else(|e| panic!("swtpm: {e}"));
    let mut a = TpmDevice::open(&dev_a);
    let a_id = a.agent.clone();
    let mut b = TpmDevice::open(&dev_b);
    let mut wire = Wire::connect(&world, &a.agent);
    let honest = p256_template(0x0004_0472);
    let refused = |wire: &mut Wire, login: &Login, why: &str| {
        assert_eq!(
            rejected(&wire.send_login(login)),
            RejectCode::KeyCertification,
            "{why}"
        );
        world
            .server("node-1")
            .wait_for_log(why, LOG)
            .unwrap_or_else(|e| panic!("{e}\n{}", world.logs()));
    };

    // 1. Another TPM's AK certifies a key of its own, with A's qualifying data.
    let nonce = [0x01; NONCE_LEN];
    let (_, by_b) = certified_login(&mut b, nonce, &honest_qd(&a_id, &nonce), &honest);
    let mut login = a.login.clone();
    login.nonce = nonce;
    ekattest_agent::attest::with_certified_key(&mut login, &by_b).unwrap();
    refused(
        &mut wire,
        &login,
        "signed by another key than the Login's AK",
    );

    // 2. A genuine certification by A's AK, made for another Login (another nonce).
    let (mut login, _) = certified_login(
        &mut a,
        [0x02; NONCE_LEN],
        &honest_qd(&a_id, &[0x02; 16]),
        &honest,
    );
    login.nonce = [0x03; NONCE_LEN];
    refused(&mut wire, &login, "made for another Login");

    // 3. A genuine certification of a key without fixedTPM / fixedParent (duplicable).
    let nonce = [0x04; NONCE_LEN];
    let (login, _) = certified_login(
        &mut a,
        nonce,
        &honest_qd(&a_id, &nonce),
        &p256_template(0x0004_0460),
    );
    refused(&mut wire, &login, "the certified key lacks fixedTPM");

    // 4. A software key's public area claiming every attribute of a TPM key, with a genuine
    //    certification of a TPM key: the attested Name is not this public area's.
    let nonce = [0x05; NONCE_LEN];
    let (mut login, genuine) = certified_login(&mut a, nonce, &honest_qd(&a_id, &nonce), &honest);
    let soft = p256::ecdsa::SigningKey::from_slice(&[0x77; 32]).unwrap();
    let point = soft.verifying_key().to_encoded_point(false);
    let mut area = p256_template(0x0004_0472);
    area.truncate(area.len() - 4);
    for c in [point.x().unwrap(), point.y().unwrap()] {
        area.extend_from_slice(&[0x00, 0x20]);
        area.extend_from_slice(c);
    }
    let mut public = u16::try_from(area.len()).unwrap().to_be_bytes().to_vec();
    public.extend_from_slice(&area);
    let kc = login.key_certify.as_mut().unwrap();
    kc.public = ekattest_protocol::heapless::Vec::from_slice(&public).unwrap();
    let soft_spki = {
        use p256::pkcs8::EncodePrivateKey as _;
        let der = soft.to_pkcs8_der().unwrap();
        ekattest_agent::daemon::identity::SvidKey::from_pkcs8_der(der.as_bytes())
            .unwrap()
            .spki_der()
            .unwrap()
    };
    login.svid_key = Some(ekattest_protocol::heapless::Vec::from_slice(&soft_spki).unwrap());
    refused(
        &mut wire,
        &login,
        "attests another key than the public area",
    );
    assert_eq!(world.metric("node-1", &failed("key_certification")), 4.0);
    assert_eq!(world.metric("node-1", SUCCESS), 0.0);

    // The TPM will not certify that software key either: loaded public-only (with every
    // attribute it claims), its authValue is unavailable to Certify.
    drop(b);
    let dir = world.dir.path();
    let pem = dir.join("soft-pub.pem");
    std::fs::write(
        &pem,
        p256::pkcs8::EncodePublicKey::to_public_key_pem(
            &p256::PublicKey::from_sec1_bytes(point.as_bytes()).unwrap(),
            p256::pkcs8::LineEnding::LF,
        )
        .unwrap(),
    )
    .unwrap();
    let tools = |args: &[&str]| {
        std::process::Command::new(args[0])
            .args(&args[1..])
            .env("TPM2TOOLS_TCTI", dev_b.tcti())
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| panic!("tpm2-tools are required (apt-get install tpm2-tools): {e}"))
    };
    // tpm2_loadexternal of the software key's public half only, with `alg` and `attrs`.
    let load_external = |alg: &str, attrs: &str, ctx: &str| {
        tools(&[
            "tpm2_loadexternal",
            "-C",
            "o",
            "-G",
            alg,
            "-u",
            pem.to_str().unwrap(),
            "-a",
            attrs,
            "-c",
            &format!("{ctx}.ctx"),
            "-n",
            &format!("{ctx}.name"),
        ])
    };
    let ext = load_external(
        "ecc",
        "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign",
        "ext",
    );
    assert!(
        ext.status.success(),
        "{}",
        String::from_utf8_lossy(&ext.stderr)
    );
    let _ = tools(&["tpm2_flushcontext", "-t"]);
    let ak = tools(&[
        "tpm2_createprimary",
        "-C",
        "o",
        "-G",
        "ecc256:ecdsa-sha256:null",
        "-a",
        "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign|noda",
        "-c",
        "ak.ctx",
    ]);
    assert!(
        ak.status.success(),
        "{}",
        String::from_utf8_lossy(&ak.stderr)
    );
    let _ = tools(&["tpm2_flushcontext", "-t"]);
    let certify = tools(&[
        "tpm2_certify",
        "-c",
        "ext.ctx",
        "-C",
        "ak.ctx",
        "-g",
        "sha256",
        "-o",
        "att.bin",
        "-s",
        "sig.bin",
    ]);
    let stderr = String::from_utf8_lossy(&certify.stderr);
    assert!(
        !certify.status.success(),
        "the TPM certified a public-only object"
    );
    assert!(
        stderr.contains("0x12F") || stderr.contains("0x12f"),
        "{stderr}"
    );
    let _ = tools(&["tpm2_flushcontext", "-t"]);
    // Nor will it activate a credential for a software "AK" loaded public-only with every
    // AK attribute claimed: the credential opens only for an object whose authorization the
    // TPM holds.
    let ext_ak = load_external(
        "ecc:ecdsa-sha256:null",
        "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign",
        "extak",
    );
    assert!(
        ext_ak.status.success(),
        "{}",
        String::from_utf8_lossy(&ext_ak.stderr)
    );
    let _ = tools(&["tpm2_flushcontext", "-t"]);
    let ek = tools(&["tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub"]);
    assert!(
        ek.status.success(),
        "{}",
        String::from_utf8_lossy(&ek.stderr)
    );
    let _ = tools(&["tpm2_flushcontext", "-t"]);
    std::fs::write(dir.join("secret"), [0x5a; 32]).unwrap();
    let name = hex::encode(std::fs::read(dir.join("extak.name")).unwrap());
    let made = tools(&[
        "tpm2_makecredential",
        "-T",
        "none",
        "-e",
        "ek.pub",
        "-s",
        "secret",
        "-n",
        &name,
        "-o",
        "cred.bin",
    ]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let session = tools(&["tpm2_startauthsession", "--policy-session", "-S", "s.ctx"]);
    assert!(session.status.success());
    let secret = tools(&["tpm2_policysecret", "-S", "s.ctx", "-c", "e"]);
    assert!(
        secret.status.success(),
        "{}",
        String::from_utf8_lossy(&secret.stderr)
    );
    let activated = tools(&[
        "tpm2_activatecredential",
        "-c",
        "extak.ctx",
        "-C",
        "ek.ctx",
        "-i",
        "cred.bin",
        "-o",
        "recovered",
        "-P",
        "session:s.ctx",
    ]);
    let stderr = String::from_utf8_lossy(&activated.stderr);
    assert!(
        !activated.status.success(),
        "the TPM activated a credential for a software AK"
    );
    assert!(
        stderr.contains("0x12F") || stderr.contains("0x12f"),
        "{stderr}"
    );
    assert!(!dir.join("recovered").exists());
    let _ = tools(&["tpm2_flushcontext", "s.ctx"]);
    let _ = tools(&["tpm2_flushcontext", "-t"]);

    // Control: the genuine certification attests, possession proven in the TPM.
    let nonce = [0x06; NONCE_LEN];
    let (login, certified) = certified_login(&mut a, nonce, &honest_qd(&a_id, &nonce), &honest);
    let Downlink::Challenge(c) = wire.send_login(&login) else {
        panic!("the genuine certification is challenged\n{}", world.logs());
    };
    let t = wire.transcript();
    world.verify_challenge(&a.agent, &c, &t);
    let answer = ekattest_agent::attest::answer(
        &mut a.tpm,
        &a.ek,
        &AkOptions::default(),
        &c,
        &t,
        Some(ekattest_agent::attest::PopKey::Tpm(&certified.key)),
    )
    .unwrap();
    let reply = wire.send_answer(&c.node, &answer);
    let Downlink::Result(ekattest_protocol::msg::Outcome::Accepted(acc)) = &reply else {
        panic!("not accepted: {reply:?}\n{}", world.logs());
    };
    let svid = x509_parser::parse_x509_certificate(&acc.svid).unwrap().1;
    assert_eq!(
        svid.public_key().raw,
        certified.key.spki(),
        "SVID for the TPM key"
    );
    assert_ne!(
        certified.key.spki(),
        genuine.key.spki(),
        "a fresh key per Login"
    );
    assert_eq!(world.metric("node-1", SUCCESS), 1.0);
}
