//! Fuzz target `policy_config`: the `AgentAttestation` policy document parser
//! (`ekattest_server::config::Document`), including its YAML budget, PEM splitting,
//! certificate parsing and SPIFFE ID templates.
//!
//! Parsed at a fixed time (`parse_at`) so a finding reproduces whatever the date.
//!
//! Invariants: nothing panics and errors render; an accepted document has at least one
//! policy, unique non-empty names, at least one attestor per policy, and a `tpm_ek`
//! attestor that can trust something (a CA or a hash); selecting and rendering with it
//! never panics and a rendered SPIFFE ID is a path (or `spiffe://` with a trust domain).
#![no_main]

use std::collections::HashSet;
use std::time::{Duration, UNIX_EPOCH};

use ekattest_server::config::{Document, Method};
use ekattest_server::ek::Attributes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now = UNIX_EPOCH + Duration::from_secs(1_735_689_600); // 2025-01-01
    let doc = match Document::parse_at(data, now) {
        Ok(doc) => doc,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let policies = doc.policies();
    assert!(!policies.is_empty(), "accepted a document without policies");
    let mut names = HashSet::new();
    for p in policies {
        assert!(!p.name.trim().is_empty(), "accepted an empty policy name");
        assert!(
            names.insert(p.name.as_str()),
            "accepted duplicate policy {:?}",
            p.name
        );
        assert!(
            !p.attestors.is_empty(),
            "policy {:?} has no attestor",
            p.name
        );
        if let Some(c) = p.tpm_ek() {
            let anchors = c.ek.trust.as_ref().map_or(0, |t| t.len().0);
            assert_eq!(anchors, if c.ek.trust.is_some() { c.ca_certs } else { 0 });
            assert!(
                anchors > 0 || !c.ek.allowed_hashes.is_empty(),
                "policy {:?} trusts nothing",
                p.name
            );
        }
        let attrs = Attributes {
            public_hash: "ab".repeat(32),
            serial_number: Some("4cbd0fe6".to_owned()),
            manufacturer: Some("id:53544D20".to_owned()),
            model: Some("ST33HTPHAHB4".to_owned()),
            version: Some("73.4".to_owned()),
        };
        if let Ok(id) = p.spiffe_id.render(&attrs, None) {
            assert!(id.starts_with('/'), "rendered {id:?}");
        }
        if let Ok(id) = p.spiffe_id.render(&attrs, Some("example.org")) {
            assert!(id.starts_with("spiffe://example.org/"), "rendered {id:?}");
        }
    }
    let _ = doc.select(&[Method::TpmEk]).map(|p| p.name.len());
    let _ = doc.select(&[]);
    let _ = doc.warnings().len();
});
