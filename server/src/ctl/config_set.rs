//! `ekattestctl config set cluster --id ID FILE --sign-key KEY.pem`: validates an
//! AgentAttestation document, signs it for cluster ID (`config_sign`) and publishes the
//! signed document, retained with QoS 1, on the cluster's config topic, where every server
//! with `policy-topic: true` applies it without restart (DESIGN.md section 2). A FILE that is
//! already signed (`config sign`, e.g. on an offline machine) is published as it is, after
//! checking its document and its cluster.
//!
//! An invalid document is reported with the seed's message and nothing is published. The
//! command waits for the broker's PUBACK (at most [`ACK_TIMEOUT`]), then subscribes to the
//! topic and reads the retained document back: exit 0 means the broker holds *this*
//! document, and the output names the sha256 the servers will log. A PUBACK alone proves
//! nothing: mosquitto acknowledges a publish its ACL drops.
//!
//! `config get` prints the retained document (with its signer, cluster, issue time and
//! sha256); `config clear` removes it (an empty retained message) and checks that it is gone.
//! `mqtt://` to a non-loopback host needs `--insecure-plaintext`; a password file or signing
//! key readable by group or others is refused. It never prints the password or the key.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::signed::{ENVELOPE_MAX, Envelope, EnvelopeError};
use crate::config::{ConfigError, Document};
use crate::daemon::bus::Connection;
use crate::daemon::config::{Broker, Password, TlsFiles};
use ekattest_protocol::hardening::{is_loopback_host, plaintext_to_tls_hint};
use ekattest_protocol::topic::Topics;
use rumqttc::{AsyncClient, Event, Outgoing, Packet, QoS};

/// How long to wait for the broker to take the document.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait, after the SUBACK, for the retained document (mosquitto sends it at
/// once; an empty topic sends nothing).
const RETAINED_WAIT: Duration = Duration::from_secs(2);

/// What the command does with the cluster's config topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `config set`: publish FILE, then read it back.
    Set,
    /// `config get`: print the retained document.
    Get,
    /// `config clear`: remove the retained document, then check it is gone.
    Clear,
}

/// What `ekattestctl config set|get|clear cluster` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// `--id`: the cluster (a valid topic part).
    pub cluster: String,
    /// `set`: the document; `get`: `--out`.
    pub file: Option<PathBuf>,
    /// `--broker`: the broker URL.
    pub broker: String,
    /// `--tls-ca`: the CA bundle for an `mqtts://` broker.
    pub tls_ca: Option<PathBuf>,
    /// `--username`.
    pub username: Option<String>,
    /// `--password-file` (mode 0600 or stricter).
    pub password_file: Option<PathBuf>,
    /// `--topic-prefix`.
    pub prefix: String,
    /// `--sign-key` (`set` of an unsigned document).
    pub sign_key: Option<PathBuf>,
    /// `--insecure-plaintext`: allow `mqtt://` to a non-loopback host.
    pub insecure_plaintext: bool,
}

/// Runs `ekattestctl config set|get|clear cluster` against the broker. `Err` is a
/// usage-class error (bad broker URL, TLS flags that do not fit it, an unusable cluster id),
/// which the binary prints with exit status 2.
///
/// # Errors
/// The problem with the arguments, as the operator sees it.
pub fn run(args: &Args, op: Op) -> Result<ExitCode, String> {
    let broker = Broker::parse(&args.broker).map_err(|e| format!("--broker: {e}"))?;
    if !broker.tls && !is_loopback_host(&broker.host) {
        if !args.insecure_plaintext {
            return Err(format!(
                "--broker {}: plaintext MQTT to {:?}, which is not a loopback host: the \
                 document and the password would cross the network unencrypted; use \
                 mqtts:// with --tls-ca, or pass --insecure-plaintext to accept that",
                broker.url, broker.host
            ));
        }
        eprintln!(
            "warning: INSECURE: plaintext MQTT to non-loopback host {} (--insecure-plaintext)",
            broker.host
        );
    }
    let payload = match (op, &args.file) {
        (Op::Set, Some(file)) => {
            let bytes = match read_document(file) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("ekattestctl: {e}");
                    return Ok(ExitCode::from(2));
                }
            };
            match signed_payload(args, file, bytes) {
                Ok(b) => b,
                Err(code) => {
                    eprintln!("nothing was published");
                    return Ok(code);
                }
            }
        }
        _ => Vec::new(),
    };
    if broker.tls && args.tls_ca.is_none() {
        return Err("--tls-ca PEM is required with an mqtts:// broker".into());
    }
    if !broker.tls && args.tls_ca.is_some() {
        return Err("--tls-ca is only used with an mqtts:// broker".into());
    }
    if args.password_file.is_some() && args.username.is_none() {
        return Err("--password-file needs --username".into());
    }
    if let Some(f) = &args.password_file
        && let Err(e) = super::files::check_private("--password-file", f)
    {
        eprintln!("ekattestctl: {e}");
        return Ok(ExitCode::from(2));
    }
    let password = match &args.password_file {
        Some(f) => match Password::read(f) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("ekattestctl: --password-file {}: {e}", f.display());
                return Ok(ExitCode::from(2));
            }
        },
        None => None,
    };
    let topics = Topics::new(&args.prefix, &args.cluster).map_err(|e| e.to_string())?;
    let topic = topics.config().map_err(|e| e.to_string())?;
    let tls = TlsFiles {
        ca: args.tls_ca.clone(),
        ..TlsFiles::default()
    };
    let connection = Connection {
        broker: &broker,
        tls: &tls,
        username: args.username.as_deref(),
        password: password.as_ref(),
        max_incoming: 64 * 1024,
        max_outgoing: ENVELOPE_MAX + 4096,
    };
    let client_id = format!("ekattestctl-{}", std::process::id());
    let options = match connection.options(&client_id) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("ekattestctl: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ekattestctl: cannot start: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let topic = topic.as_str();
    let outcome = runtime.block_on(async {
        match op {
            Op::Set | Op::Clear => {
                publish(options.clone(), topic, payload.clone()).await?;
                let kept = read_retained(options, topic).await?;
                check_kept(op, topic, &payload, kept.as_deref())
            }
            Op::Get => match read_retained(options, topic).await? {
                Some(bytes) => Ok(bytes),
                None => Err(format!(
                    "no document is retained on {topic} (publish one with `ekattestctl config \
                     set`)"
                )),
            },
        }
    });
    let kept = match outcome {
        Ok(kept) => kept,
        Err(e) => {
            eprintln!("ekattestctl: {e}");
            if let Some(hint) = plaintext_to_tls_hint(broker.tls, &e) {
                eprintln!("ekattestctl: {hint}");
            }
            return Ok(ExitCode::from(1));
        }
    };
    match op {
        Op::Set => {
            println!(
                "{}: valid; signed document published retained on {topic} via {} and read back; \
                 servers log it as sha256 {}",
                args.file
                    .as_deref()
                    .unwrap_or(std::path::Path::new("-"))
                    .display(),
                broker.url,
                document_sha256(&kept)
            );
            Ok(ExitCode::SUCCESS)
        }
        Op::Clear => {
            println!(
                "{topic}: retained document removed via {}; running servers keep the one in \
                 force",
                broker.url
            );
            Ok(ExitCode::SUCCESS)
        }
        Op::Get => Ok(print_document(args, topic, &kept)),
    }
}

/// After `set` or `clear`: the broker must hold exactly what was published (`clear`:
/// nothing). Returns what it holds.
fn check_kept(op: Op, topic: &str, sent: &[u8], kept: Option<&[u8]>) -> Result<Vec<u8>, String> {
    let acl = "the broker acknowledged the publish but dropped it: its ACL does not let this \
               user write";
    match (op, kept) {
        (Op::Clear, None) => Ok(Vec::new()),
        (Op::Clear, Some(other)) => Err(format!(
            "{acl} {topic}; a document (sha256 {}) is still retained there",
            document_sha256(other)
        )),
        (_, Some(kept)) if kept == sent => Ok(kept.to_vec()),
        (_, Some(other)) => Err(format!(
            "{acl} {topic}; the broker keeps another document there (sha256 {}), which is \
             what servers apply",
            document_sha256(other)
        )),
        (_, None) => Err(format!(
            "{acl} {topic} (nothing is retained there); use a user the ACL lets write it \
             (deploy/mosquitto/acl: ekattest-admin)"
        )),
    }
}

/// The hash servers log for a config-topic payload: SHA-256 of the document inside the
/// envelope (of the whole payload if it is not an envelope).
fn document_sha256(payload: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let doc = Envelope::decode(payload).map_or(payload, |e| e.document);
    hex::encode(Sha256::digest(doc))
}

/// `config get`: the retained envelope's fields, then its document; `--out` gets the
/// signed bytes.
fn print_document(args: &Args, topic: &str, payload: &[u8]) -> ExitCode {
    let envelope = match Envelope::decode(payload) {
        Ok(e) => e,
        Err(e) => {
            eprintln!(
                "ekattestctl: {topic} holds {} bytes that are not a signed document: {e}",
                payload.len()
            );
            return ExitCode::from(1);
        }
    };
    if let Some(out) = &args.file
        && let Err(e) = std::fs::write(out, payload)
    {
        eprintln!("ekattestctl: cannot write {}: {e}", out.display());
        return ExitCode::from(2);
    }
    println!("# topic: {topic}");
    println!("# cluster: {}", envelope.cluster);
    println!("# signer: sha256:{}", hex::encode(envelope.signer));
    println!(
        "# issued: {} ({})",
        crate::config::signed::utc(envelope.issued),
        envelope.issued
    );
    println!(
        "# sha256: {} (the hash servers log)",
        document_sha256(payload)
    );
    print!("{}", String::from_utf8_lossy(envelope.document));
    ExitCode::SUCCESS
}

/// Subscribes to `topic` and returns the retained payload (`None` if nothing is retained).
async fn read_retained(
    options: rumqttc::MqttOptions,
    topic: &str,
) -> Result<Option<Vec<u8>>, String> {
    let broker = format!(
        "{}:{}",
        options.broker_address().0,
        options.broker_address().1
    );
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client
        .subscribe(topic, QoS::AtLeastOnce)
        .await
        .map_err(|e| format!("cannot queue the subscription: {e}"))?;
    let subscribed = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    let refused = ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure));
                    return if refused {
                        Err(format!(
                            "broker {broker} refused the subscription to {topic}: this user may \
                             not read it, so the document cannot be checked (deploy/mosquitto/acl \
                             gives ekattest-admin readwrite)"
                        ))
                    } else {
                        Ok(())
                    };
                }
                Ok(_) => {}
                Err(e) => return Err(format!("broker {broker}: {e}")),
            }
        }
    };
    match tokio::time::timeout(ACK_TIMEOUT, subscribed).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(format!(
                "broker {broker} did not acknowledge the subscription to {topic}"
            ));
        }
    }
    let retained = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == topic => {
                    return Ok(Some(p.payload.to_vec()));
                }
                Ok(_) => {}
                Err(e) => return Err(format!("broker {broker}: {e}")),
            }
        }
    };
    let kept = tokio::time::timeout(RETAINED_WAIT, retained)
        .await
        .unwrap_or(Ok(None))?;
    let _ = client.disconnect().await;
    Ok(kept.filter(|p| !p.is_empty()))
}

/// The payload to publish: FILE signed with `--sign-key`, or FILE as it is if it is signed
/// already (for cluster `--id`). Validates the document either way; `Err` is the exit code
/// (the reason is printed).
fn signed_payload(
    args: &Args,
    path: &std::path::Path,
    bytes: Vec<u8>,
) -> Result<Vec<u8>, ExitCode> {
    let file = path.display();
    match Envelope::decode(&bytes) {
        Ok(envelope) => {
            if args.sign_key.is_some() {
                eprintln!("{file}: signed already; publish it without --sign-key");
                return Err(ExitCode::from(2));
            }
            if envelope.cluster != args.cluster {
                eprintln!(
                    "{file}: signed for cluster {:?}, not --id {:?}; sign it again with \
                     --id {}",
                    envelope.cluster, args.cluster, args.cluster
                );
                return Err(ExitCode::from(1));
            }
            if let Err(e) = Document::parse(envelope.document) {
                eprintln!("{file}: invalid: {e}");
                return Err(ExitCode::from(1));
            }
            Ok(bytes)
        }
        Err(EnvelopeError::Unsigned) => {
            let Some(key_path) = &args.sign_key else {
                eprintln!(
                    "ekattestctl: --sign-key KEY.pem is required: servers apply only signed \
                     documents (make a key with `ekattestctl config keygen`)"
                );
                return Err(ExitCode::from(2));
            };
            let key = super::config_sign::read_key(key_path).map_err(|e| {
                eprintln!("ekattestctl: {e}");
                ExitCode::from(2)
            })?;
            let bytes = super::config_sign::read_valid_document(path)?;
            key.sign(&bytes, &args.cluster, super::config_sign::now_secs())
                .map_err(|e| {
                    eprintln!("ekattestctl: cannot sign: {e}");
                    ExitCode::from(1)
                })
        }
        Err(e) => {
            eprintln!("{file}: {e}");
            Err(ExitCode::from(1))
        }
    }
}

fn read_document(file: &std::path::Path) -> Result<Vec<u8>, ConfigError> {
    use std::io::Read;
    let err = |source| ConfigError::Read {
        file: file.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(file)
        .map_err(err)?
        .take(ENVELOPE_MAX as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(err)?;
    Ok(bytes)
}

/// Connects, publishes retained QoS 1, waits for the PUBACK, disconnects.
async fn publish(options: rumqttc::MqttOptions, topic: &str, doc: Vec<u8>) -> Result<(), String> {
    let broker = format!(
        "{}:{}",
        options.broker_address().0,
        options.broker_address().1
    );
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client
        .publish(topic, QoS::AtLeastOnce, true, doc)
        .await
        .map_err(|e| format!("cannot queue the document: {e}"))?;
    let wait = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(format!("broker {broker}: {e}")),
            }
        }
    };
    match tokio::time::timeout(ACK_TIMEOUT, wait).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err(format!(
                "broker {broker} did not acknowledge the document within {}s; check the broker \
                 address, credentials and ACL (the user needs write access to {topic})",
                ACK_TIMEOUT.as_secs()
            ));
        }
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    Ok(())
}
