//! The router: topic and frame checks, the bounded queue, the config hand-over.

use ekattest_protocol::encode;
use ekattest_protocol::heapless;
use ekattest_protocol::msg::{Answer, Login, Method, SessionId};

use std::sync::mpsc::{Receiver, sync_channel};
use std::time::Duration;

use ekattest_protocol::limits;

use super::super::ratelimit::LoginLimit;
use super::*;

fn router(capacity: usize) -> (Router, Receiver<Job>, EventLoop) {
    limited_router(
        capacity,
        LoginLimit {
            burst: 100,
            ..LoginLimit::default()
        },
    )
}

fn limited_router(capacity: usize, limit: LoginLimit) -> (Router, Receiver<Job>, EventLoop) {
    let options = rumqttc::MqttOptions::new("t", "127.0.0.1", 1);
    let (client, eventloop) = AsyncClient::new(options, 64);
    let (jobs, rx) = sync_channel(capacity);
    let r = Router {
        replies: Box::new(client),
        jobs,
        capacity,
        inbox: Arc::new(Inbox::default()),
        policy_topic: true,
        metrics: Arc::new(Metrics::default()),
        prefix: "ekattest/v1".to_owned(),
        cluster: "c-1".to_owned(),
        node: "n1".to_owned(),
        broker: "mqtt://127.0.0.1:1".to_owned(),
        limiter: Mutex::new(LoginLimiter::new(limit)),
    };
    (r, rx, eventloop)
}

fn frame(msg: &Uplink) -> Vec<u8> {
    let mut buf = vec![0u8; limits::FRAME_MAX];
    encode(msg, &mut buf).unwrap().to_vec()
}

fn login() -> Uplink {
    Uplink::Login(Login {
        methods: heapless::Vec::from_slice(&[Method::TpmEk]).unwrap(),
        ek_public: heapless::Vec::new(),
        ek_cert: None,
        ek_chain: heapless::Vec::new(),
        ak_public: heapless::Vec::new(),
        svid_key: None,
        key_certify: None,
        nonce: [0; 16],
        signer_hint: None,
    })
}

fn answer() -> Uplink {
    Uplink::Answer(Answer {
        session: SessionId([7; 16]),
        mac: [0; 32],
        pop: None,
    })
}

/// A Login with a real EK public area (the make-credential vectors' RSA-2048 EK).
fn login_with_ek() -> Uplink {
    let ek = ekattest_testkit::testdata::make_credential("rsa2048", "ek.tpm2b_public");
    let Uplink::Login(mut l) = login() else {
        unreachable!()
    };
    l.ek_public = heapless::Vec::from_slice(&ek).unwrap();
    Uplink::Login(l)
}

#[test]
fn a_login_job_carries_the_transcript_of_the_frame_as_received() {
    let (r, rx, _el) = router(4);
    let payload = frame(&login());
    r.route_publish(&publish(
        "ekattest/v1/c-1/agents/ek-1/login",
        payload.clone(),
    ));
    let Ok(Job::Login { transcript, .. }) = rx.try_recv() else {
        panic!("no login job")
    };
    assert_eq!(
        transcript,
        ekattest_protocol::sign::transcript("c-1", "ek-1", &payload).unwrap()
    );
    // The same bytes from another agent id have another transcript.
    r.route_publish(&publish(
        "ekattest/v1/c-1/agents/ek-2/login",
        payload.clone(),
    ));
    let Ok(Job::Login { transcript: t2, .. }) = rx.try_recv() else {
        panic!("no login job")
    };
    assert_ne!(t2, transcript);
}

#[test]
fn a_version_1_frame_is_refused_as_unsupported_and_not_queued() {
    let (r, rx, _el) = router(4);
    let mut v1 = frame(&login());
    v1[0] = 1;
    r.route_publish(&publish("ekattest/v1/c-1/agents/ek-1/login", v1));
    assert!(rx.try_recv().is_err());
    assert_eq!(
        count(
            &r,
            "attestation_signer_proof{attestor_type=\"tpm_ek\",outcome=\"failed\",reason=\"unsupported_version\"}"
        ),
        1
    );
}

#[test]
fn the_login_rate_limit_also_applies_per_ek_across_agent_ids() {
    let (r, rx, _el) = limited_router(
        8,
        LoginLimit {
            burst: 1,
            ..LoginLimit::default()
        },
    );
    // One captured Login replayed under invented agent ids: each id is new to the per-agent
    // limit, but the EK is the same.
    for agent in ["ek-a", "ek-b", "ek-c"] {
        r.route_publish(&publish(
            &format!("ekattest/v1/c-1/agents/{agent}/login"),
            frame(&login_with_ek()),
        ));
    }
    assert!(matches!(rx.try_recv(), Ok(Job::Login { agent, .. }) if agent == "ek-a"));
    assert!(
        rx.try_recv().is_err(),
        "a replay under another id was queued"
    );
    assert_eq!(
        count(
            &r,
            "attestation_frames_rejected_total{reason=\"rate_limited\"}"
        ),
        2
    );
}

fn publish(topic: &str, payload: Vec<u8>) -> Publish {
    Publish::new(topic, QoS::AtLeastOnce, payload)
}

fn count(r: &Router, series: &str) -> u64 {
    r.metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap()
}

#[test]
fn subscriptions_are_the_shared_logins_this_nodes_answers_and_config() {
    let (r, _rx, _el) = router(4);
    let filters: Vec<String> = r.subscriptions().into_iter().map(|f| f.path).collect();
    assert_eq!(
        filters,
        [
            "$share/ekattest/ekattest/v1/c-1/agents/+/login",
            "ekattest/v1/c-1/servers/n1/answer/+",
            "ekattest/v1/c-1/config",
        ]
    );
}

#[test]
fn logins_and_answers_to_this_node_become_jobs() {
    let (r, rx, _el) = router(4);
    r.route_publish(&publish(
        "ekattest/v1/c-1/agents/ek-1/login",
        frame(&login()),
    ));
    r.route_publish(&publish(
        "ekattest/v1/c-1/servers/n1/answer/ek-1",
        frame(&answer()),
    ));
    assert!(matches!(rx.try_recv(), Ok(Job::Login { agent, .. }) if agent == "ek-1"));
    assert!(matches!(rx.try_recv(), Ok(Job::Answer { agent, .. }) if agent == "ek-1"));
    assert_eq!(count(&r, "attestation_logins_total"), 1);
}

#[test]
fn foreign_topics_and_bad_frames_are_counted_not_queued() {
    let (r, rx, _el) = router(4);
    r.route_publish(&publish("other/topic", frame(&login())));
    r.route_publish(&publish(
        "ekattest/v1/c-1/servers/n2/answer/ek-1",
        frame(&answer()),
    ));
    r.route_publish(&publish("ekattest/v1/c-1/agents/ek-1/down", vec![1]));
    assert_eq!(
        count(
            &r,
            "attestation_frames_rejected_total{reason=\"unknown_topic\"}"
        ),
        3
    );
    r.route_publish(&publish(
        "ekattest/v1/c-1/agents/ek-1/login",
        vec![1, 0xff, 0xff],
    ));
    r.route_publish(&publish("ekattest/v1/c-1/agents/ek-1/login", vec![]));
    assert_eq!(
        count(
            &r,
            "attestation_frames_rejected_total{reason=\"malformed\"}"
        ),
        2
    );
    r.route_publish(&publish(
        "ekattest/v1/c-1/agents/ek-1/login",
        vec![1; limits::UPLINK_FRAME_MAX + 1],
    ));
    assert_eq!(
        count(&r, "attestation_frames_rejected_total{reason=\"oversize\"}"),
        1
    );
    assert!(rx.try_recv().is_err());
    assert_eq!(count(&r, "attestation_logins_total"), 0);
}

#[test]
fn a_full_queue_refuses_with_busy_instead_of_growing() {
    let (r, rx, _el) = router(1);
    let topic = "ekattest/v1/c-1/agents/ek-1/login";
    r.route_publish(&publish(topic, frame(&login())));
    r.route_publish(&publish(topic, frame(&login())));
    r.route_publish(&publish(topic, frame(&login())));
    assert_eq!(
        count(&r, "attestation_frames_rejected_total{reason=\"busy\"}"),
        2
    );
    assert_eq!(
        count(
            &r,
            "attestation_signer_proof{attestor_type=\"tpm_ek\",outcome=\"failed\",reason=\"busy\"}"
        ),
        2
    );
    assert!(rx.try_recv().is_ok());
    assert!(rx.try_recv().is_err());
}

#[test]
fn config_payloads_go_to_the_reload_inbox() {
    let (r, _rx, _el) = router(1);
    r.route_publish(&publish("ekattest/v1/c-1/config", b"doc".to_vec()));
    assert_eq!(r.inbox.take(Duration::ZERO), Ok(Some(b"doc".to_vec())));
    r.route_publish(&publish(
        "ekattest/v1/c-1/config",
        vec![b'x'; crate::config::signed::ENVELOPE_MAX + 1],
    ));
    assert_eq!(r.inbox.take(Duration::ZERO), Ok(None));
    assert_eq!(
        count(&r, "attestation_frames_rejected_total{reason=\"oversize\"}"),
        1
    );
}

#[test]
fn without_policy_topic_the_config_topic_is_neither_subscribed_nor_routed() {
    let (mut r, _rx, _el) = router(1);
    let config = "ekattest/v1/c-1/config";
    assert!(r.subscriptions().iter().any(|f| f.path == config));
    r.policy_topic = false;
    assert!(!r.subscriptions().iter().any(|f| f.path == config));
    assert_eq!(r.subscriptions().len(), 2);
    r.route_publish(&publish(config, b"doc".to_vec()));
    assert_eq!(r.inbox.take(Duration::ZERO), Ok(None));
    assert_eq!(
        count(
            &r,
            "attestation_frames_rejected_total{reason=\"unknown_topic\"}"
        ),
        1
    );
}

#[test]
fn the_login_rate_limit_refuses_before_decoding_and_counts_rate_limited() {
    let (r, rx, _el) = limited_router(
        64,
        LoginLimit {
            burst: 2,
            interval: Duration::from_secs(60),
            table: 16,
        },
    );
    let topic = "ekattest/v1/c-1/agents/ek-loop/login";
    r.route_publish(&publish(topic, frame(&login())));
    r.route_publish(&publish(topic, frame(&login())));
    // Over the burst: refused whatever the payload, even one that would not decode.
    r.route_publish(&publish(topic, frame(&login())));
    r.route_publish(&publish(topic, vec![0xff; 3]));
    assert_eq!(
        count(
            &r,
            "attestation_frames_rejected_total{reason=\"rate_limited\"}"
        ),
        2
    );
    assert_eq!(
        count(
            &r,
            "attestation_frames_rejected_total{reason=\"malformed\"}"
        ),
        0,
        "the limited frame must not have been decoded"
    );
    assert_eq!(
        count(
            &r,
            "attestation_signer_proof{attestor_type=\"tpm_ek\",outcome=\"failed\",reason=\"busy\"}"
        ),
        2
    );
    assert_eq!(count(&r, "attestation_logins_total"), 2);
    // Answers are not limited; other agents have their own buckets.
    r.route_publish(&publish(
        "ekattest/v1/c-1/servers/n1/answer/ek-loop",
        frame(&answer()),
    ));
    r.route_publish(&publish(
        "ekattest/v1/c-1/agents/ek-other/login",
        frame(&login()),
    ));
    let queued: Vec<Job> = rx.try_iter().collect();
    assert_eq!(queued.len(), 4, "{queued:?}");
    assert_eq!(
        count(
            &r,
            "attestation_frames_rejected_total{reason=\"rate_limited\"}"
        ),
        2
    );
}

#[test]
fn a_flood_of_fake_agent_ids_keeps_the_limiter_bounded() {
    let (r, rx, _el) = limited_router(
        4,
        LoginLimit {
            burst: 1,
            interval: Duration::from_secs(60),
            table: 64,
        },
    );
    for i in 0..5000 {
        r.route_publish(&publish(
            &format!("ekattest/v1/c-1/agents/fake-{i}/login"),
            vec![0xff; 3],
        ));
        assert!(r.limiter.lock().unwrap().len() <= 64);
    }
    assert_eq!(
        count(
            &r,
            "attestation_frames_rejected_total{reason=\"malformed\"}"
        ),
        5000
    );
    assert!(rx.try_recv().is_err());
}
