//! Fuzz target `agent_config`: the agent's YAML configuration parser
//! (`ekattest_agent::daemon::config::Config::parse`), on inputs up to the 64 KiB that
//! `Config::load` reads.
//!
//! Invariants: nothing panics and errors render; an accepted configuration re-validates
//! (every topic level it names is a valid topic part, the retry bounds are ordered and not
//! zero, the response timeout is not zero, renew-before is a fraction, mqtts has a CA and
//! cert/key come together) and parsing it again gives the same configuration.
#![no_main]

use ekattest_agent::daemon::config::{CONFIG_MAX, Config};
use ekattest_protocol::topic::{self, Part};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() as u64 > CONFIG_MAX {
        return;
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = match Config::parse(text) {
        Ok(c) => c,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    topic::validate(Part::Cluster, &config.cluster_id).expect("cluster-id re-validates");
    topic::validate(Part::Prefix, &config.topic_prefix).expect("topic-prefix re-validates");
    if let Some(agent) = &config.agent_id {
        topic::validate(Part::Agent, agent).expect("agent-id re-validates");
    }
    assert!(
        !config.retry.initial.is_zero(),
        "zero retry.initial accepted"
    );
    assert!(
        config.retry.initial <= config.retry.max,
        "retry bounds out of order"
    );
    assert!(
        !config.response_timeout.is_zero(),
        "zero response-timeout accepted"
    );
    assert!(
        config.renew_before > 0.0 && config.renew_before < 1.0,
        "renew-before {} accepted",
        config.renew_before
    );
    assert!(!config.broker.host.is_empty(), "empty broker host accepted");
    if config.broker.tls {
        assert!(
            config.tls.as_ref().and_then(|t| t.ca.as_ref()).is_some(),
            "mqtts without a CA accepted"
        );
    }
    if let Some(tls) = &config.tls {
        assert_eq!(
            tls.cert.is_some(),
            tls.key.is_some(),
            "cert without key accepted"
        );
    }
    // Pure and deterministic: the same text gives the same configuration.
    assert_eq!(Config::parse(text).ok().as_ref(), Some(&config));
});
