//! Secure-default rules the agent, the server and ekattestctl apply alike (issue 13, "Secure
//! defaults"), kept here so the three cannot drift apart.
//!
//! - Plaintext MQTT (`mqtt://`) or NATS (`nats://`) is accepted only to a loopback host
//!   ([`is_loopback_host`]) unless the operator sets `insecure-plaintext: true`.
//! - Password and private key files must not be readable or writable by group or others
//!   ([`private_mode_ok`]); a root-owned file may be group-readable
//!   ([`private_mode_ok_for`]), as Kubernetes projects Secrets (root, the pod's fsGroup,
//!   0440) and as PostgreSQL allows for its key.
//!
//! Pure functions on strings and numbers: no I/O, no allocation, never panics.

use core::net::IpAddr;

/// Whether `host` (a broker URL's host, IPv6 without brackets) is the loopback interface:
/// `localhost` (any case, with or without a final dot), 127.0.0.0/8, or `::1` (also as
/// the IPv4-mapped `::ffff:127.x.y.z`).
pub fn is_loopback_host(host: &str) -> bool {
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4.is_loopback(),
        Ok(IpAddr::V6(v6)) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Err(_) => false,
    }
}

/// Permission bits that must be clear on a password or private key file: any access by
/// group or others.
pub const PRIVATE_MODE_MASK: u32 = 0o077;

/// Whether a file with Unix `mode` is private to its owner (no group or other bits).
pub const fn private_mode_ok(mode: u32) -> bool {
    mode & PRIVATE_MODE_MASK == 0
}

/// [`private_mode_ok`], except that a file owned by root (`root_owned`) may also be read by
/// its group: root chose who is in that group (kubelet's fsGroup for a Secret volume). Group
/// write or execute and any access by others are refused either way.
pub const fn private_mode_ok_for(mode: u32, root_owned: bool) -> bool {
    if root_owned {
        mode & (PRIVATE_MODE_MASK & !0o040) == 0
    } else {
        private_mode_ok(mode)
    }
}

/// The hint for a plaintext (`mqtt://`) connection the broker dropped before answering, as
/// a TLS listener does when it gets an MQTT CONNECT instead of a TLS ClientHello: `error` is
/// the client library's message (`Connection reset by peer`, an unexpected end of file).
/// `None` for TLS connections and other errors.
#[must_use]
pub fn plaintext_to_tls_hint(tls: bool, error: &str) -> Option<&'static str> {
    const DROPPED: [&str; 5] = [
        "reset by peer",
        "closed by peer",
        "end of file",
        "UnexpectedEof",
        "Connection aborted",
    ];
    (!tls && DROPPED.iter().any(|d| error.contains(d))).then_some(
        "the broker closed the connection before answering: if this port is a TLS listener \
         (8883 usually is), use mqtts:// with the broker's CA",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "LOCALHOST",
            "localhost.",
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "10.0.2.2",
            "192.168.1.1",
            "broker.example.org",
            "localhost.example.org",
            "128.0.0.1",
            "::2",
            "0.0.0.0",
            "",
            "[::1]",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn private_modes() {
        assert!(private_mode_ok(0o100600));
        assert!(private_mode_ok(0o400));
        assert!(!private_mode_ok(0o640));
        assert!(private_mode_ok_for(0o100440, true));
        assert!(private_mode_ok_for(0o640, true));
        assert!(!private_mode_ok_for(0o640, false));
        assert!(!private_mode_ok_for(0o660, true), "group write");
        assert!(!private_mode_ok_for(0o644, true), "others read");
        assert!(!private_mode_ok(0o604));
        assert!(!private_mode_ok(0o100644));
    }

    #[test]
    fn plaintext_dropped_by_a_tls_port_suggests_mqtts() {
        let reset = "Mqtt state: Mqtt serialization/deserialization error: IO: Connection reset by peer (os error 104)";
        assert!(plaintext_to_tls_hint(false, reset).is_some_and(|h| h.contains("use mqtts://")));
        assert_eq!(plaintext_to_tls_hint(true, reset), None);
        assert_eq!(
            plaintext_to_tls_hint(false, "I/O: Connection refused (os error 111)"),
            None
        );
    }
}
