//! Broker URLs: `SCHEME://HOST[:PORT][/]`, the one parser behind the agent's and the
//! server's `broker` keys, the server's `nats-url` and the fleet harness's `--broker`.
//!
//! Only a scheme, a host (a name, an IPv4 address or an IPv6 address in brackets) and an
//! optional port are accepted; a path, user info, query or fragment is refused, so a URL
//! can never carry credentials. The parser borrows from its input and allocates nothing;
//! each caller turns a [`UrlError`] into its own message (the texts are part of their
//! configuration errors).

/// A URL scheme a caller accepts, with what it implies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheme {
    /// The scheme name, without `://`.
    pub name: &'static str,
    /// Whether the connection uses TLS.
    pub tls: bool,
    /// The port when the URL names none.
    pub default_port: u16,
}

/// `mqtt://`: MQTT over TCP, port 1883.
pub const MQTT: Scheme = Scheme {
    name: "mqtt",
    tls: false,
    default_port: 1883,
};

/// `mqtts://`: MQTT over TLS, port 8883.
pub const MQTTS: Scheme = Scheme {
    name: "mqtts",
    tls: true,
    default_port: 8883,
};

/// `nats://`: NATS over TCP, port 4222.
pub const NATS: Scheme = Scheme {
    name: "nats",
    tls: false,
    default_port: 4222,
};

/// `tls://`: NATS over TLS, port 4222.
pub const NATS_TLS: Scheme = Scheme {
    name: "tls",
    tls: true,
    default_port: 4222,
};

/// The schemes of an MQTT `broker` key.
pub const MQTT_SCHEMES: [Scheme; 2] = [MQTT, MQTTS];

/// The schemes of a `nats-url` key.
pub const NATS_SCHEMES: [Scheme; 2] = [NATS, NATS_TLS];

/// A parsed broker URL, borrowing its host from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokerUrl<'a> {
    /// The scheme found.
    pub scheme: Scheme,
    /// Host name or address (an IPv6 address without its brackets); never empty.
    pub host: &'a str,
    /// The port: the one written, else the scheme's default.
    pub port: u16,
}

/// What is wrong with a broker URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlError<'a> {
    /// The URL starts with none of the accepted `SCHEME://`.
    UnknownScheme,
    /// A path, user info, query or fragment (`/`, `@`, `?`, `#` after the host).
    NotHostPort,
    /// An IPv6 address whose `[` is never closed.
    UnclosedBracket,
    /// Something other than `:PORT` after an IPv6 address's `]`.
    AfterBracket {
        /// The text after `]`.
        after: &'a str,
    },
    /// Nothing between `://` and the port.
    EmptyHost,
    /// A port that is not a number in 1..=65535.
    BadPort {
        /// The port as written.
        port: &'a str,
    },
}

/// Parses `url` with one of `schemes` (`SCHEME://` must match exactly, so `mqtt` never
/// matches `mqtts://`).
///
/// # Errors
/// [`UrlError`] naming the first problem found, in the order of the variants.
pub fn parse<'a>(url: &'a str, schemes: &[Scheme]) -> Result<BrokerUrl<'a>, UrlError<'a>> {
    let (scheme, rest) = schemes
        .iter()
        .find_map(|s| {
            url.strip_prefix(s.name)
                .and_then(|r| r.strip_prefix("://"))
                .map(|rest| (*s, rest))
        })
        .ok_or(UrlError::UnknownScheme)?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '@', '?', '#']) {
        return Err(UrlError::NotHostPort);
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or(UrlError::UnclosedBracket)?;
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err(UrlError::AfterBracket { after }),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err(UrlError::EmptyHost);
    }
    let port = match port {
        None => scheme.default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or(UrlError::BadPort { port: p })?,
    };
    Ok(BrokerUrl { scheme, host, port })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(url: &str) -> (&'static str, &str, u16) {
        let u = parse(url, &MQTT_SCHEMES).unwrap();
        (u.scheme.name, u.host, u.port)
    }

    #[test]
    fn host_port_and_defaults() {
        assert_eq!(ok("mqtt://broker"), ("mqtt", "broker", 1883));
        assert_eq!(ok("mqtts://broker/"), ("mqtts", "broker", 8883));
        assert_eq!(ok("mqtt://10.0.0.1:1884"), ("mqtt", "10.0.0.1", 1884));
        assert_eq!(ok("mqtts://[::1]:8884"), ("mqtts", "::1", 8884));
        assert_eq!(ok("mqtt://[fe80::1]"), ("mqtt", "fe80::1", 1883));
        let n = parse("tls://[::1]/", &NATS_SCHEMES).unwrap();
        assert_eq!((n.scheme, n.host, n.port), (NATS_TLS, "::1", 4222));
    }

    #[test]
    fn errors_name_the_problem() {
        let err = |url| parse(url, &MQTT_SCHEMES).unwrap_err();
        assert_eq!(err("http://x"), UrlError::UnknownScheme);
        assert_eq!(err("mqtt:/x"), UrlError::UnknownScheme);
        assert_eq!(err("nats://x"), UrlError::UnknownScheme);
        assert_eq!(err("mqtt://u:p@x"), UrlError::NotHostPort);
        assert_eq!(err("mqtt://x/path"), UrlError::NotHostPort);
        assert_eq!(err("mqtt://x?q"), UrlError::NotHostPort);
        assert_eq!(err("mqtt://[::1"), UrlError::UnclosedBracket);
        assert_eq!(err("mqtt://[::1]x"), UrlError::AfterBracket { after: "x" });
        assert_eq!(err("mqtt://:1883"), UrlError::EmptyHost);
        assert_eq!(err("mqtt://"), UrlError::EmptyHost);
        assert_eq!(err("mqtt://x:0"), UrlError::BadPort { port: "0" });
        assert_eq!(err("mqtt://x:65536"), UrlError::BadPort { port: "65536" });
        assert_eq!(err("mqtt://x:"), UrlError::BadPort { port: "" });
    }
}
