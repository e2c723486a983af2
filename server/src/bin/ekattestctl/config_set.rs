//! `ekattestctl config set cluster --id ID FILE --sign-key KEY.pem`: validates an
//! AgentAttestation document, signs it for cluster ID (`config_sign`) and publishes the
//! signed document, retained with QoS 1, on the cluster's config topic, where every server
//! with `policy-topic: true` applies it without restart (DESIGN.md section 2). A FILE that is
//! already signed (`config sign`, e.g. on an offline machine) is published as it is, after
//! checking its document and its cluster.
//!
//! An invalid document is reported with the seed's message and nothing is published. The
//! command waits for the broker's PUBACK (at most [`ACK_TIMEOUT`]) so exit 0 means the broker
//! holds the document. `mqtt://` to a non-loopback host needs `--insecure-plaintext`; a
//! password file or signing key readable by group or others is refused. It never prints the
//! password or the key.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use ekattest_protocol::hardening::is_loopback_host;
use ekattest_protocol::topic::{self, Topics};
use ekattest_server::config::signed::{ENVELOPE_MAX, Envelope, EnvelopeError};
use ekattest_server::config::{ConfigError, Document};
use ekattest_server::daemon::bus::Connection;
use ekattest_server::daemon::config::{Broker, Password, TlsFiles};
use lexopt::prelude::*;
use rumqttc::{AsyncClient, Event, Outgoing, Packet, QoS};

/// How long to wait for the broker to take the document.
pub(crate) const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// Usage text of `config set`.
pub(crate) const USAGE: &str = "\
Usage: ekattestctl config set cluster --id ID FILE --sign-key KEY.pem [--broker URL]
                              [--tls-ca PEM] [--username U --password-file F]
                              [--topic-prefix P] [--insecure-plaintext]

Validates the AgentAttestation document FILE, signs it for cluster ID and publishes it
retained (QoS 1) on {prefix}/ID/config; every ekattest-server of cluster ID with
policy-topic: true and the key's public half in policy-signers applies it without
restart. An invalid document is reported and nothing is published. A FILE signed
already (`config sign`) is published as it is, without --sign-key.

  --id ID              cluster id (as in the servers' cluster-id)
  --sign-key KEY.pem   ECDSA P-256 private key (`config keygen`; mode 0600)
  --broker URL         mqtt://HOST:PORT or mqtts://HOST:PORT (default mqtt://127.0.0.1:1883)
  --tls-ca PEM         CA bundle that signs the broker's certificate (required for mqtts)
  --username U         MQTT user name
  --password-file F    file whose first line is the MQTT password
  --topic-prefix P     topic prefix (default ekattest/v1)
  --insecure-plaintext allow mqtt:// to a host other than loopback (the document and
                       the password cross the network unencrypted)

Exit 0 published and acknowledged, 1 invalid document or broker failure, 2 usage error
or unreadable file.
";

struct Args {
    cluster: String,
    file: PathBuf,
    broker: String,
    tls_ca: Option<PathBuf>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    prefix: String,
    sign_key: Option<PathBuf>,
    insecure_plaintext: bool,
}

/// Runs `config set` with the arguments after `set`.
pub(crate) fn run(parser: &mut lexopt::Parser) -> Result<ExitCode, lexopt::Error> {
    let Some(args) = parse(parser)? else {
        return Ok(ExitCode::SUCCESS);
    };
    let broker = Broker::parse(&args.broker).map_err(|e| format!("--broker: {e}"))?;
    if !broker.tls && !is_loopback_host(&broker.host) {
        if !args.insecure_plaintext {
            return Err(format!(
                "--broker {}: plaintext MQTT to {:?}, which is not a loopback host: the \
                 document and the password would cross the network unencrypted; use \
                 mqtts:// with --tls-ca, or pass --insecure-plaintext to accept that",
                broker.url, broker.host
            )
            .into());
        }
        eprintln!(
            "warning: INSECURE: plaintext MQTT to non-loopback host {} (--insecure-plaintext)",
            broker.host
        );
    }
    let bytes = match read_document(&args.file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("ekattestctl: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let bytes = match signed_payload(&args, bytes) {
        Ok(b) => b,
        Err(code) => {
            eprintln!("nothing was published");
            return Ok(code);
        }
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
    let outcome = runtime.block_on(publish(options, topic.as_str(), bytes));
    match outcome {
        Ok(()) => {
            println!(
                "{}: valid; signed document published retained on {} via {} (acknowledged)",
                args.file.display(),
                topic,
                broker.url
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("ekattestctl: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

/// The payload to publish: FILE signed with `--sign-key`, or FILE as it is if it is signed
/// already (for cluster `--id`). Validates the document either way; `Err` is the exit code
/// (the reason is printed).
fn signed_payload(args: &Args, bytes: Vec<u8>) -> Result<Vec<u8>, ExitCode> {
    let file = args.file.display();
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
            let bytes = super::config_sign::read_valid_document(&args.file)?;
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

fn parse(parser: &mut lexopt::Parser) -> Result<Option<Args>, lexopt::Error> {
    let mut scope_seen = false;
    let mut cluster = None;
    let mut file = None;
    let mut broker = "mqtt://127.0.0.1:1883".to_owned();
    let mut tls_ca = None;
    let mut username = None;
    let mut password_file = None;
    let mut prefix = topic::DEFAULT_PREFIX.to_owned();
    let mut sign_key = None;
    let mut insecure_plaintext = false;
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => {
                print!("{USAGE}");
                return Ok(None);
            }
            Long("id") => cluster = Some(parser.value()?.string()?),
            Long("broker") => broker = parser.value()?.string()?,
            Long("tls-ca") => tls_ca = Some(PathBuf::from(parser.value()?)),
            Long("username") => username = Some(parser.value()?.string()?),
            Long("password-file") => password_file = Some(PathBuf::from(parser.value()?)),
            Long("topic-prefix") => prefix = parser.value()?.string()?,
            Long("sign-key") => sign_key = Some(PathBuf::from(parser.value()?)),
            Long("insecure-plaintext") => insecure_plaintext = true,
            Value(v) if !scope_seen => {
                if v != "cluster" {
                    return Err(format!(
                        "unknown scope {v:?}; only `config set cluster` exists\n\n{USAGE}"
                    )
                    .into());
                }
                scope_seen = true;
            }
            Value(v) if file.is_none() => file = Some(PathBuf::from(v)),
            arg => return Err(arg.unexpected()),
        }
    }
    if !scope_seen {
        return Err(format!("missing `cluster`\n\n{USAGE}").into());
    }
    let cluster = cluster.ok_or_else(|| format!("missing --id ID\n\n{USAGE}"))?;
    topic::validate(topic::Part::Cluster, &cluster).map_err(|e| format!("--id: {e}"))?;
    let file = file.ok_or_else(|| format!("missing FILE\n\n{USAGE}"))?;
    Ok(Some(Args {
        cluster,
        file,
        broker,
        tls_ca,
        username,
        password_file,
        prefix,
        sign_key,
        insecure_plaintext,
    }))
}
