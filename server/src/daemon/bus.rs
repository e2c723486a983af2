//! The MQTT connection: rumqttc options and the rustls client configuration, shared by the
//! daemon and `ekattestctl config set`.
//!
//! TLS always uses an explicitly built rustls `ClientConfig` on the aws-lc-rs provider
//! (never a process default: in a workspace build ring is compiled in too, and
//! `ClientConfig::builder()` would panic). Certificates and keys are read from PEM files
//! named in the configuration; nothing here logs a password or key.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::config::{Broker, Password, TlsFiles};

/// MQTT keepalive.
pub const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// Why the broker connection cannot be set up (configuration, not network, problems).
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// A PEM file cannot be read or holds nothing usable.
    #[error("{what} {path}: {message}")]
    Pem {
        /// `tls.ca`, `tls.cert`, `tls.key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the configuration (e.g. the client key does not match the cert).
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Everything needed to open one MQTT connection.
#[derive(Debug, Clone, Copy)]
pub struct Connection<'a> {
    /// The broker.
    pub broker: &'a Broker,
    /// TLS files (used only with `mqtts://`).
    pub tls: &'a TlsFiles,
    /// MQTT user name.
    pub username: Option<&'a str>,
    /// MQTT password.
    pub password: Option<&'a Password>,
    /// Largest packet accepted from the broker, bytes.
    pub max_incoming: usize,
    /// Largest packet sent, bytes.
    pub max_outgoing: usize,
}

impl Connection<'_> {
    /// rumqttc options for client id `client_id`: clean session, [`KEEP_ALIVE`], the packet
    /// limits, credentials and, for `mqtts://`, TLS.
    ///
    /// # Errors
    /// [`BusError`] if the TLS files cannot be used.
    pub fn options(&self, client_id: &str) -> Result<MqttOptions, BusError> {
        let mut options = MqttOptions::new(client_id, self.broker.host.clone(), self.broker.port);
        options
            .set_keep_alive(KEEP_ALIVE)
            .set_clean_session(true)
            .set_max_packet_size(self.max_incoming, self.max_outgoing)
            .set_request_channel_capacity(1024)
            .set_inflight(1000);
        if let Some(user) = self.username {
            let password = self.password.map(Password::expose).unwrap_or_default();
            options.set_credentials(user, password);
        }
        if self.broker.tls {
            let config = tls_config(self.tls)?;
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(config),
            )));
        }
        Ok(options)
    }
}

/// A rustls client configuration on aws-lc-rs trusting `tls.ca`, with the client
/// certificate `tls.cert`/`tls.key` if set.
///
/// # Errors
/// [`BusError`] naming the file or rustls's objection.
pub fn tls_config(tls: &TlsFiles) -> Result<ClientConfig, BusError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &tls.ca {
        for cert in certificates("tls.ca", ca)? {
            roots.add(cert).map_err(|e| BusError::Pem {
                what: "tls.ca",
                path: ca.clone(),
                message: format!("not a usable CA certificate: {e}"),
            })?;
        }
    }
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let chain = certificates("tls.cert", cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| BusError::Pem {
                what: "tls.key",
                path: key.clone(),
                message: format!("no usable PEM private key: {e}"),
            })?;
            builder.with_client_auth_cert(chain, key)?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(config)
}

fn certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, BusError> {
    let err = |message: String| BusError::Pem {
        what,
        path: path.to_owned(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(format!("cannot read: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate found".to_owned()));
    }
    Ok(certs)
}

/// A delay in `[base/2, base]` (jitter so a fleet of servers does not reconnect in step).
pub fn jittered(base: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let half = base / 2;
    let extra = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
    half + Duration::from_millis(if extra == 0 { 0 } else { random % (extra + 1) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_to_full() {
        let base = Duration::from_secs(8);
        for _ in 0..100 {
            let d = jittered(base);
            assert!(d >= base / 2 && d <= base, "{d:?}");
        }
        assert_eq!(jittered(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn tls_config_names_a_missing_ca_file() {
        let tls = TlsFiles {
            ca: Some(PathBuf::from("/nonexistent/ca.pem")),
            ..TlsFiles::default()
        };
        let e = tls_config(&tls).unwrap_err().to_string();
        assert!(
            e.starts_with("tls.ca /nonexistent/ca.pem: cannot read"),
            "{e}"
        );
    }

    #[test]
    fn tls_config_rejects_a_file_without_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not pem\n").unwrap();
        let tls = TlsFiles {
            ca: Some(ca),
            ..TlsFiles::default()
        };
        let e = tls_config(&tls).unwrap_err().to_string();
        assert!(e.contains("no PEM certificate found"), "{e}");
    }

    #[test]
    fn options_carry_client_id_keepalive_and_limits() {
        let broker = Broker::parse("mqtt://127.0.0.1:1884").unwrap();
        let tls = TlsFiles::default();
        let c = Connection {
            broker: &broker,
            tls: &tls,
            username: None,
            password: None,
            max_incoming: 1 << 20,
            max_outgoing: 20_000,
        };
        let o = c.options("ekattest-server-n1").unwrap();
        assert_eq!(o.client_id(), "ekattest-server-n1");
        assert_eq!(o.broker_address(), ("127.0.0.1".to_owned(), 1884));
        assert_eq!(o.keep_alive(), KEEP_ALIVE);
        assert!(o.clean_session());
        assert_eq!(o.max_packet_size(), 1 << 20);
        assert!(o.credentials().is_none());
    }
}
