//! The agent's only rumqttc user: builds the sync client (clean session, keepalive 30 s,
//! packets up to twice the protocol's largest frame) and its TLS configuration on rustls with
//! the ring provider, passed explicitly (rustls never picks a process default here, so a
//! workspace build with aws-lc compiled in cannot change or break it). One client per
//! connection attempt, to the broker the caller picks from the config's list (every URL of
//! a list shares the scheme and the `tls:` files, so the TLS configuration is the same for
//! all of them; only the server name checked against the certificate differs).
//!
//! Credentials come from files named in the config; the password is never logged. The
//! password file and the TLS client key are refused if group or others may read them
//! ([`check_private_file`]), and a plaintext connection to a non-loopback host (allowed only
//! by `insecure-plaintext: true`) is logged as a warning naming the host.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ekattest_protocol::limits::FRAME_MAX;
use rumqttc::{Client, Connection, MqttOptions, TlsConfiguration, Transport};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use ekattest_protocol::hardening::is_loopback_host;

use super::config::{Broker, Config, check_private_file};

/// MQTT keepalive.
pub const KEEPALIVE: Duration = Duration::from_secs(30);

/// Largest MQTT packet sent or received: two protocol frames, plus topic and header room.
pub const PACKET_MAX: usize = 2 * FRAME_MAX + 1024;

/// Why the MQTT client could not be set up (configuration or files; not the network).
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// A TLS or credential file could not be read or parsed.
    #[error("cannot use {what} {path}: {reason}")]
    File {
        /// Which config key's file.
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(String),
}

fn file_error(what: &'static str, path: &Path, reason: impl ToString) -> MqttError {
    MqttError::File {
        what,
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Builds the client for `broker` (one of `config.brokers()`) with the settings of `config`
/// and MQTT client id `agent_id`.
///
/// # Errors
/// [`MqttError`] if a TLS or password file cannot be used.
pub fn client(
    config: &Config,
    broker: &Broker,
    agent_id: &str,
) -> Result<(Client, Connection), MqttError> {
    if !broker.tls && !is_loopback_host(&broker.host) {
        log::warn!(
            "INSECURE: plaintext MQTT to non-loopback host {} (insecure-plaintext: true): the \
             password and attestation messages cross the network unencrypted",
            broker.host
        );
    }
    let mut options = MqttOptions::new(agent_id, broker.host.clone(), broker.port);
    options
        .set_clean_session(true)
        .set_keep_alive(KEEPALIVE)
        .set_max_packet_size(PACKET_MAX, PACKET_MAX);
    if let Some(user) = &config.username {
        let password = match &config.password_file {
            Some(path) => read_password(path)?,
            None => String::new(),
        };
        options.set_credentials(user.clone(), password);
    }
    if broker.tls {
        let tls = tls_config(config)?;
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
    }
    Ok(Client::new(options, 16))
}

fn read_password(path: &Path) -> Result<String, MqttError> {
    check_private_file("password-file", path).map_err(|e| file_error("password-file", path, e))?;
    let text = std::fs::read_to_string(path).map_err(|e| file_error("password-file", path, e))?;
    if text.len() > 4096 {
        return Err(file_error("password-file", path, "longer than 4 KiB"));
    }
    Ok(text.trim_end_matches(['\r', '\n']).to_owned())
}

/// The rustls client configuration: ring provider, safe protocol versions, the `tls.ca`
/// roots, and the `tls.cert`/`tls.key` client certificate if configured.
///
/// # Errors
/// [`MqttError`] naming the file or rustls's complaint.
pub fn tls_config(config: &Config) -> Result<rustls::ClientConfig, MqttError> {
    let tls = config.tls.clone().unwrap_or(super::config::Tls {
        ca: None,
        cert: None,
        key: None,
    });
    let mut roots = RootCertStore::empty();
    if let Some(ca) = &tls.ca {
        let certs = CertificateDer::pem_file_iter(ca)
            .map_err(|e| file_error("tls.ca", ca, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| file_error("tls.ca", ca, e))?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(file_error("tls.ca", ca, "no usable PEM certificate"));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| MqttError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| file_error("tls.cert", cert, e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| file_error("tls.cert", cert, e))?;
            check_private_file("tls.key", key).map_err(|e| file_error("tls.key", key, e))?;
            let key_der =
                PrivateKeyDer::from_pem_file(key).map_err(|e| file_error("tls.key", key, e))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| MqttError::Tls(e.to_string()))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}
