//! ekattestctl: offline operator commands (EK hashes, config validation, EK verification).
//!
//! A thin shell: it parses the command line (command words, flags, usage texts) and calls
//! the command's entry point in `ekattest_server::ctl` with its arguments; the entry point
//! reads the files, does the work and returns the exit code. Only `config set` talks to the
//! network (the MQTT broker); only `ca create`, `config keygen` and `config sign --out` write
//! files.
//!
//! Exit status: 0 success (hash printed, document valid, EK accepted); 1 the input was judged
//! and rejected (invalid document for `config validate`, EK rejected, a file that was read
//! holds no usable certificate or public key, whether its PEM or its DER is corrupt); 2
//! usage error, unreadable file, or (for `ek verify`) an invalid document.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use ekattest_protocol::topic;
use ekattest_server::ctl::config_set::Op;
use ekattest_server::ctl::{self, agent, ca, config_set, config_sign, verify};
use ekattest_server::registry::BanTarget;
use lexopt::prelude::*;

const USAGE: &str = "\
ekattestctl: offline ekattest operator commands

Usage:
  ekattestctl ek-hash FILE
  ekattestctl config validate FILE
  ekattestctl config sign --key KEY.pem --id ID FILE [--out OUT]
  ekattestctl config keygen --out DIR [--name NAME] [--force]
  ekattestctl config set cluster --id ID FILE --sign-key KEY.pem [--broker URL]
                        [--tls-ca PEM] [--username U --password-file F]
                        [--topic-prefix P] [--insecure-plaintext]
  ekattestctl config get cluster --id ID [--out FILE] [--broker URL] ...
  ekattestctl config clear cluster --id ID [--broker URL] ...
  ekattestctl ek verify --config FILE --cert EK [--chain FILE] [--ek-public FILE]
                        [--trust-domain TD] [--json]
  ekattestctl ca create --trust-domain TD --cert OUT.pem --key OUT.key [--days N]
  ekattestctl ca issue-signer --ca-cert ROOT.pem --ca-key ROOT.key --cert OUT.pem
                              --key OUT.key [--days N]
                        [--force]
  ekattestctl agent list [--since D] [--bans] [--json] [REGISTRY]
  ekattestctl agent show HASH|AGENT-ID [--json] [REGISTRY]
  ekattestctl agent ban (--ek HASH | --agent ID) [--reason TEXT] [REGISTRY]
  ekattestctl agent unban (--ek HASH | --agent ID) [REGISTRY]
  ekattestctl agent evict --ek HASH [REGISTRY]
  ekattestctl agent audit [--since D] [REGISTRY]
  ekattestctl COMMAND --help

Commands:
  ek-hash           print the tpm_ek.public_hash of an EK certificate or public key
  config validate   check an AgentAttestation document and summarize it
  config sign       validate a document and sign it for one cluster (policy-topic)
  config keygen     make the ECDSA P-256 key pair that signs policy documents
  config set        validate and sign a document, publish it retained on the cluster's
                    config topic (servers with policy-topic: true apply it), read it back
  config get        print the document retained on the cluster's config topic
  config clear      remove the retained document from the cluster's config topic
  ek verify         run EK validation against a document's tpm_ek policy
  ca create         create the trust domain's SVID CA (certificate = agents' trust
                    bundle, key 0600 for the server)
  agent             the device registry: list and show devices, ban and unban an EK or
                    agent id, evict a record, export the audit trail

Exit status: 0 success or accepted; 1 rejected (invalid document, EK rejected, no key
or certificate in a file that was read, corrupt PEM and corrupt DER alike); 2 usage
error, unreadable file, invalid document for `ek verify`, or a file `ca create` cannot
or may not write.
";

const EK_HASH_USAGE: &str = "\
Usage: ekattestctl ek-hash FILE

Prints the lowercase hex SHA-256 of the EK's DER SubjectPublicKeyInfo: the value for
allowedHashes and tpm_ek.public_hash, identical to the output of
  openssl x509 -in ek.pem -pubkey -noout | openssl pkey -pubin -outform DER | sha256sum
FILE is a PEM or DER certificate (a raw NV blob with padding works too), a PEM or DER
public key (SubjectPublicKeyInfo), or an EK TPM2B_PUBLIC for TPMs without a certificate
(`tpm2_readpublic -c 0x81010001 -f tss -o ek.pub`). With several PEM blocks, the first
certificate or public key is used.
";

const CONFIG_USAGE: &str = "\
Usage: ekattestctl config validate FILE
       ekattestctl config sign --key KEY.pem --id ID FILE [--out OUT]
       ekattestctl config keygen --out DIR
       ekattestctl config set cluster --id ID FILE --sign-key KEY.pem ...
       ekattestctl config get|clear cluster --id ID ...
       (see `config sign|keygen|set|get|clear --help`)

Parses and validates an AgentAttestation document (every certificate, hash and
template) and prints a summary and any warnings. Exit 0 if valid, 1 if not (the error
names the field, e.g. spec.policies[0].requiredAttestors[0].config.caCerts), 2 if FILE
cannot be read.
";

/// Usage text of `ca create` and `ca issue-signer`.
const CA_USAGE: &str = "\
Usage: ekattestctl ca create --trust-domain TD --cert OUT.pem --key OUT.key
                             [--days N] [--force]
       ekattestctl ca issue-signer --ca-cert ROOT.pem --ca-key ROOT.key
                             --cert OUT.pem --key OUT.key [--days N] [--force]

Creates the trust domain's SVID certificate authority: a self-signed ECDSA P-256 CA
(O=ekattest, CN=TD CA, URI SAN spiffe://TD, CA:TRUE pathlen 1, keyCertSign, cRLSign).
The server signs agents' X.509-SVIDs and its Results with the key; agents verify both
with the certificate, their trust bundle.

  --trust-domain TD    the SPIFFE trust domain, e.g. example.org
  --cert OUT.pem       where to write the CA certificate (PEM)
  --key OUT.key        where to write the CA private key (PKCS#8 PEM, mode 0600)
  --days N             validity in days (default 365)
  --force              overwrite existing files

`issue-signer` issues the server's signer under that root: an ECDSA P-256 intermediate CA
(CN=TD signer, CA:TRUE pathlen 0, digitalSignature, keyCertSign, extendedKeyUsage
serverAuth, clientAuth and the ekattest signer usage). Configure it as the server's
ca-cert / ca-key: it signs the SVIDs, Challenges and Results, and the root key can stay
offline (agents keep the root as their trust bundle). --days defaults to 90 and is
clamped to the root's validity.

Exit 0 written, 2 usage error or a file that exists or cannot be written.
";

/// Usage text of `config sign`.
const SIGN_USAGE: &str = "\
Usage: ekattestctl config sign --key KEY.pem --id ID FILE [--out OUT]

Validates the AgentAttestation document FILE and signs it for cluster ID with the
ECDSA P-256 private key KEY.pem (from `config keygen`, or openssl). Writes the signed
document to OUT (default: stdout): FILE byte for byte, then a trailer of YAML comments
naming the cluster, the issue time (now), the signer's key fingerprint and the
signature. Servers of cluster ID with policy-topic: true and the public key in
policy-signers apply it from the config topic (`config set cluster`).

  --key KEY.pem   private key (PKCS#8 PRIVATE KEY or EC PRIVATE KEY, mode 0600)
  --id ID         cluster id the document is for (as in the servers' cluster-id)
  --out OUT       write the signed document there instead of stdout

Exit 0 signed, 1 invalid document, 2 usage error or unusable file.
";

/// Usage text of `config keygen`.
const KEYGEN_USAGE: &str = "\
Usage: ekattestctl config keygen --out DIR [--name NAME] [--force]

Makes an ECDSA P-256 key pair for signing policy documents:
  DIR/NAME.key   the private key (PKCS#8 PEM, mode 0600): keep it with the operator,
                 never on a server
  DIR/NAME.pub   the public key (PEM): list it in the servers' policy-signers
NAME defaults to policy-signer. Existing files are not overwritten without --force.

Exit 0 written, 2 usage error or a file that cannot or may not be written.
";

/// Usage text of `config set`.
const SET_USAGE: &str = "\
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

Exit 0 published and read back from the broker (the output names the sha256 the servers
will log), 1 invalid document, broker failure, or the broker kept another document (its
ACL refused the publish: mosquitto acknowledges it anyway), 2 usage error or unreadable
file.
";

/// Usage text of `config get` and `config clear`.
const GET_USAGE: &str = "\
Usage: ekattestctl config get cluster --id ID [--out FILE] [--broker URL] [--tls-ca PEM]
                              [--username U --password-file F] [--topic-prefix P]
                              [--insecure-plaintext]
       ekattestctl config clear cluster --id ID [--broker URL] ...

get: reads the document retained on {prefix}/ID/config and prints its cluster, signer,
issue time and sha256 (the hash the servers log), then the document. --out FILE also
writes the signed document as it is (`config set` republishes such a file unchanged).
Exit 0 printed, 1 no document retained or broker failure, 2 usage error.

clear: removes the retained document (an empty retained message) and checks that it is
gone. Running servers keep the document in force and log the clear; a server that starts
afterwards gets no document from the topic (only its policy-files). Exit 0 cleared, 1
broker failure or a document is still retained (the ACL refused the publish).
";

/// Usage text of `agent`.
const AGENT_USAGE: &str = "\
Usage: ekattestctl agent list [--since D] [--bans] [--json] [REGISTRY]
       ekattestctl agent show HASH|AGENT-ID [--json] [REGISTRY]
       ekattestctl agent ban (--ek HASH | --agent ID) [--reason TEXT] [REGISTRY]
       ekattestctl agent unban (--ek HASH | --agent ID) [REGISTRY]
       ekattestctl agent evict --ek HASH [REGISTRY]
       ekattestctl agent audit [--since D] [REGISTRY]

The device registry the servers write: one record per EK (tpm_ek.public_hash) with the
agent ids it attested under, attributes, SPIFFE ID, policy, first and last attestation,
count, last SVID serial, serving node and last failure.

  list      every device (--since D: attested or refused in the last D, e.g. 24h, 7d);
            --bans lists the bans instead
  show      one device, by EK hash or by agent id
  ban       refuse an EK (whatever agent id it uses) or an agent id at Login, before any
            signature check (reject code banned); every server node honours it within its
            registry.ban-refresh (default 2s)
  unban     lift a ban
  evict     forget a device's record; its audit lines stay and it may attest again
  audit     the audit trail (every attestation outcome: time, node, agent, EK, outcome,
            reason) as JSON lines, oldest first

REGISTRY is one of
  --server-config FILE    the server config whose registry to use (default
                          /etc/ekattest/server.yaml)
  --registry URL          sqlite:PATH, or postgres://USER@HOST[:PORT]/DATABASE with
                          --password-file F (its first line is the password)

Exit 0 done, 1 nothing matched (show, unban, evict), 2 usage error or the registry
cannot be opened.
";

/// Usage text of `ek verify` (printed by `ekattestctl ek --help` and `ek verify --help`).
const VERIFY_USAGE: &str = "\
Usage: ekattestctl ek verify --config FILE --cert EK [--chain FILE] [--ek-public FILE]
                             [--trust-domain TD] [--json]

Runs EK validation as the server would for an agent offering [tpm_ek], using the first
policy of the document that it selects, and prints the verdict, the failing check,
the attributes and the SPIFFE ID.

  --config FILE        AgentAttestation document
  --cert EK            EK certificate: PEM, DER, or a raw NV blob (0xFF padding is fine)
  --chain FILE         certificates the device sends from NV 0x01C00100..: PEM (any
                       number of blocks) or concatenated DER
  --ek-public FILE     the EK TPM2B_PUBLIC as the agent reads it (tpm2_readpublic -f tss);
                       checked against the certificate; may replace --cert for TPMs
                       without a certificate (allowedHashes only)
  --trust-domain TD    render spiffe://TD/... instead of the path alone
  --json               print one JSON object instead of text

Exit 0 accepted; 1 rejected, including a --cert or --chain file that holds no usable
certificate (corrupt PEM or corrupt DER alike); 2 usage error, unreadable file or invalid
document.
";

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ekattestctl: {e}");
            eprintln!("Try `ekattestctl --help`.");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<ExitCode, lexopt::Error> {
    let mut parser = lexopt::Parser::from_env();
    match parser.next()? {
        None => {
            eprint!("{USAGE}");
            Ok(ExitCode::from(2))
        }
        Some(Short('h') | Long("help")) => {
            print!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        Some(Short('V') | Long("version")) => {
            println!("{}", ekattest_protocol::version_line!("ekattestctl"));
            Ok(ExitCode::SUCCESS)
        }
        Some(Value(cmd)) => match cmd.to_str() {
            Some("help") => {
                print!("{USAGE}");
                Ok(ExitCode::SUCCESS)
            }
            Some("ek-hash") => {
                let Some(file) = single_file(&mut parser, EK_HASH_USAGE)? else {
                    return Ok(ExitCode::SUCCESS);
                };
                Ok(ctl::ek_hash(&file))
            }
            Some("config") => match subcommand(&mut parser, CONFIG_USAGE)? {
                None => Ok(ExitCode::SUCCESS),
                Some(sub) if sub == "validate" => {
                    let Some(file) = single_file(&mut parser, CONFIG_USAGE)? else {
                        return Ok(ExitCode::SUCCESS);
                    };
                    Ok(ctl::config_validate(&file))
                }
                Some(sub) if sub == "set" => config_set(&mut parser, Op::Set),
                Some(sub) if sub == "get" => config_set(&mut parser, Op::Get),
                Some(sub) if sub == "clear" => config_set(&mut parser, Op::Clear),
                Some(sub) if sub == "sign" => config_sign(&mut parser),
                Some(sub) if sub == "keygen" => config_keygen(&mut parser),
                Some(sub) => Err(unknown(
                    "config",
                    &sub,
                    "validate|sign|keygen|set|get|clear",
                )),
            },
            Some("ek") => match subcommand(&mut parser, VERIFY_USAGE)? {
                None => Ok(ExitCode::SUCCESS),
                Some(sub) if sub == "verify" => ek_verify(&mut parser),
                Some(sub) => Err(unknown("ek", &sub, "verify")),
            },
            Some("ca") => match subcommand(&mut parser, CA_USAGE)? {
                None => Ok(ExitCode::SUCCESS),
                Some(sub) if sub == "create" => ca_create(&mut parser),
                Some(sub) if sub == "issue-signer" => ca_issue_signer(&mut parser),
                Some(sub) => Err(unknown("ca", &sub, "create|issue-signer")),
            },
            Some("agent") => match subcommand(&mut parser, AGENT_USAGE)? {
                None => Ok(ExitCode::SUCCESS),
                Some(sub) => agent(&mut parser, &sub),
            },
            _ => Err(
                format!("unknown command {cmd:?}; commands: ek-hash, config, ek, ca, agent").into(),
            ),
        },
        Some(arg) => Err(arg.unexpected()),
    }
}

fn unknown(cmd: &str, sub: &OsString, known: &str) -> lexopt::Error {
    format!("unknown subcommand {sub:?} for {cmd}; try `ekattestctl {cmd} {known} --help`").into()
}

/// The next word of a two-word command, or `None` after printing help.
fn subcommand(parser: &mut lexopt::Parser, usage: &str) -> Result<Option<OsString>, lexopt::Error> {
    match parser.next()? {
        Some(Short('h') | Long("help")) => {
            print!("{usage}");
            Ok(None)
        }
        Some(Value(v)) => Ok(Some(v)),
        Some(arg) => Err(arg.unexpected()),
        None => Err(format!("missing subcommand\n\n{usage}").into()),
    }
}

/// Exactly one FILE argument, or `None` after printing help.
fn single_file(parser: &mut lexopt::Parser, usage: &str) -> Result<Option<PathBuf>, lexopt::Error> {
    let mut file = None;
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => {
                print!("{usage}");
                return Ok(None);
            }
            Value(v) if file.is_none() => file = Some(PathBuf::from(v)),
            arg => return Err(arg.unexpected()),
        }
    }
    file.map(Some)
        .ok_or_else(|| format!("missing FILE\n\n{usage}").into())
}

/// Largest `--days`: a hundred years.
const DAYS_MAX: u64 = 36_500;

/// The flags of `ca create` and `ca issue-signer` (each command takes its own subset).
#[derive(Default)]
struct CaFlags {
    trust_domain: Option<String>,
    ca_cert: Option<PathBuf>,
    ca_key: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    days: Option<u64>,
    force: bool,
}

/// Reads the flags `allowed` (long names); `None` after `--help`.
fn parse_ca(
    parser: &mut lexopt::Parser,
    allowed: &[&str],
) -> Result<Option<CaFlags>, lexopt::Error> {
    let mut f = CaFlags::default();
    while let Some(arg) = parser.next()? {
        if let Long(name) = &arg
            && !allowed.contains(name)
            && *name != "help"
        {
            return Err(arg.unexpected());
        }
        match arg {
            Short('h') | Long("help") => {
                print!("{CA_USAGE}");
                return Ok(None);
            }
            Long("trust-domain") => f.trust_domain = Some(parser.value()?.string()?),
            Long("ca-cert") => f.ca_cert = Some(PathBuf::from(parser.value()?)),
            Long("ca-key") => f.ca_key = Some(PathBuf::from(parser.value()?)),
            Long("cert") => f.cert = Some(PathBuf::from(parser.value()?)),
            Long("key") => f.key = Some(PathBuf::from(parser.value()?)),
            Long("days") => {
                let days: u64 = parser.value()?.parse()?;
                if days == 0 || days > DAYS_MAX {
                    return Err(format!("--days must be 1 to {DAYS_MAX}, not {days}").into());
                }
                f.days = Some(days);
            }
            Long("force") => f.force = true,
            arg => return Err(arg.unexpected()),
        }
    }
    Ok(Some(f))
}

fn required<T>(value: Option<T>, flag: &str) -> Result<T, lexopt::Error> {
    value.ok_or_else(|| format!("missing {flag}\n\n{CA_USAGE}").into())
}

/// `ca create` with the arguments after `create`.
fn ca_create(parser: &mut lexopt::Parser) -> Result<ExitCode, lexopt::Error> {
    let Some(f) = parse_ca(parser, &["trust-domain", "cert", "key", "days", "force"])? else {
        return Ok(ExitCode::SUCCESS);
    };
    Ok(ca::create(&ca::Create {
        trust_domain: required(f.trust_domain, "--trust-domain")?,
        cert: required(f.cert, "--cert")?,
        key: required(f.key, "--key")?,
        days: f.days.unwrap_or(365),
        force: f.force,
    }))
}

/// `ca issue-signer` with the arguments after `issue-signer`.
fn ca_issue_signer(parser: &mut lexopt::Parser) -> Result<ExitCode, lexopt::Error> {
    let Some(f) = parse_ca(
        parser,
        &["ca-cert", "ca-key", "cert", "key", "days", "force"],
    )?
    else {
        return Ok(ExitCode::SUCCESS);
    };
    Ok(ca::issue_signer(&ca::IssueSigner {
        ca_cert: required(f.ca_cert, "--ca-cert")?,
        ca_key: required(f.ca_key, "--ca-key")?,
        cert: required(f.cert, "--cert")?,
        key: required(f.key, "--key")?,
        days: f.days.unwrap_or(90),
        force: f.force,
    }))
}

/// `config sign` with the arguments after `sign`.
fn config_sign(parser: &mut lexopt::Parser) -> Result<ExitCode, lexopt::Error> {
    let mut key = None;
    let mut cluster = None;
    let mut out = None;
    let mut file = None;
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => {
                print!("{SIGN_USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            Long("key") => key = Some(PathBuf::from(parser.value()?)),
            Long("id") => cluster = Some(parser.value()?.string()?),
            Long("out") => out = Some(PathBuf::from(parser.value()?)),
            Value(v) if file.is_none() => file = Some(PathBuf::from(v)),
            arg => return Err(arg.unexpected()),
        }
    }
    let key = key.ok_or_else(|| format!("missing --key KEY.pem\n\n{SIGN_USAGE}"))?;
    let cluster = cluster.ok_or_else(|| format!("missing --id ID\n\n{SIGN_USAGE}"))?;
    topic::validate(topic::Part::Cluster, &cluster).map_err(|e| format!("--id: {e}"))?;
    let file = file.ok_or_else(|| format!("missing FILE\n\n{SIGN_USAGE}"))?;
    Ok(config_sign::sign(&config_sign::Sign {
        key,
        cluster,
        out,
        file,
    })?)
}

/// `config keygen` with the arguments after `keygen`.
fn config_keygen(parser: &mut lexopt::Parser) -> Result<ExitCode, lexopt::Error> {
    let mut dir = None;
    let mut name = "policy-signer".to_owned();
    let mut force = false;
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => {
                print!("{KEYGEN_USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            Long("out") => dir = Some(PathBuf::from(parser.value()?)),
            Long("name") => name = parser.value()?.string()?,
            Long("force") => force = true,
            arg => return Err(arg.unexpected()),
        }
    }
    let dir = dir.ok_or_else(|| format!("missing --out DIR\n\n{KEYGEN_USAGE}"))?;
    if name.is_empty() || name.contains(['/', '\0']) {
        return Err(format!("--name {name:?} is not a file name").into());
    }
    Ok(config_sign::keygen(&config_sign::Keygen {
        dir,
        name,
        force,
    }))
}

/// The flags of `config set|get|clear`; `None` after `--help`.
fn parse_config_set(
    parser: &mut lexopt::Parser,
    op: Op,
) -> Result<Option<config_set::Args>, lexopt::Error> {
    let usage = if op == Op::Set { SET_USAGE } else { GET_USAGE };
    let name = match op {
        Op::Set => "set",
        Op::Get => "get",
        Op::Clear => "clear",
    };
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
                print!("{usage}");
                return Ok(None);
            }
            Long("id") => cluster = Some(parser.value()?.string()?),
            Long("out") if op == Op::Get => file = Some(PathBuf::from(parser.value()?)),
            Long("broker") => broker = parser.value()?.string()?,
            Long("tls-ca") => tls_ca = Some(PathBuf::from(parser.value()?)),
            Long("username") => username = Some(parser.value()?.string()?),
            Long("password-file") => password_file = Some(PathBuf::from(parser.value()?)),
            Long("topic-prefix") => prefix = parser.value()?.string()?,
            Long("sign-key") if op == Op::Set => sign_key = Some(PathBuf::from(parser.value()?)),
            Long("insecure-plaintext") => insecure_plaintext = true,
            Value(v) if !scope_seen => {
                if v != "cluster" {
                    return Err(format!(
                        "unknown scope {v:?}; only `config {name} cluster` exists\n\n{usage}"
                    )
                    .into());
                }
                scope_seen = true;
            }
            Value(v) if op == Op::Set && file.is_none() => file = Some(PathBuf::from(v)),
            arg => return Err(arg.unexpected()),
        }
    }
    if !scope_seen {
        return Err(format!("missing `cluster`\n\n{usage}").into());
    }
    let cluster = cluster.ok_or_else(|| format!("missing --id ID\n\n{usage}"))?;
    topic::validate(topic::Part::Cluster, &cluster).map_err(|e| format!("--id: {e}"))?;
    if op == Op::Set && file.is_none() {
        return Err(format!("missing FILE\n\n{usage}").into());
    }
    Ok(Some(config_set::Args {
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

/// `config set|get|clear` with the arguments after the subcommand.
fn config_set(parser: &mut lexopt::Parser, op: Op) -> Result<ExitCode, lexopt::Error> {
    let Some(args) = parse_config_set(parser, op)? else {
        return Ok(ExitCode::SUCCESS);
    };
    Ok(config_set::run(&args, op)?)
}

/// The flags of `ek verify`, as given.
#[derive(Default)]
struct VerifyFlags {
    config: Option<PathBuf>,
    cert: Option<PathBuf>,
    chain: Option<PathBuf>,
    ek_public: Option<PathBuf>,
    trust_domain: Option<String>,
    json: bool,
}

/// `ek verify` with the arguments after `verify`.
fn ek_verify(parser: &mut lexopt::Parser) -> Result<ExitCode, lexopt::Error> {
    let mut a = VerifyFlags::default();
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => {
                print!("{VERIFY_USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            Long("config") => a.config = Some(parser.value()?.into()),
            Long("cert") => a.cert = Some(parser.value()?.into()),
            Long("chain") => a.chain = Some(parser.value()?.into()),
            Long("ek-public") => a.ek_public = Some(parser.value()?.into()),
            Long("trust-domain") => a.trust_domain = Some(parser.value()?.string()?),
            Long("json") => a.json = true,
            arg => return Err(arg.unexpected()),
        }
    }
    let Some(config) = a.config else {
        return Err("missing --config FILE".into());
    };
    if a.cert.is_none() && a.ek_public.is_none() {
        return Err("missing --cert EK (or --ek-public FILE for a TPM without certificate)".into());
    }
    Ok(verify::run(&verify::Args {
        config,
        cert: a.cert,
        chain: a.chain,
        ek_public: a.ek_public,
        trust_domain: a.trust_domain,
        json: a.json,
    }))
}

/// `agent list|show|ban|unban|evict|audit` with the arguments after the subcommand.
fn agent(parser: &mut lexopt::Parser, sub: &OsString) -> Result<ExitCode, lexopt::Error> {
    let name = sub.to_str().unwrap_or_default().to_owned();
    if !["list", "show", "ban", "unban", "evict", "audit"].contains(&name.as_str()) {
        return Err(unknown("agent", sub, "list|show|ban|unban|evict|audit"));
    }
    let (mut since, mut bans, mut json) = (None, false, false);
    let (mut ek, mut agent_id, mut reason, mut key) = (None, None, None, None);
    let (mut server_config, mut url, mut password_file) = (None, None, None);
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => {
                print!("{AGENT_USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            Long("since") if matches!(name.as_str(), "list" | "audit") => {
                let text = parser.value()?.string()?;
                let d = ekattest_protocol::duration::parse(&text)
                    .map_err(|e| format!("--since {text:?}: {e} (e.g. 24h, 7d)"))?;
                since = Some(d);
            }
            Long("bans") if name == "list" => bans = true,
            Long("json") if matches!(name.as_str(), "list" | "show") => json = true,
            Long("ek") if matches!(name.as_str(), "ban" | "unban" | "evict") => {
                let text = parser.value()?.string()?;
                ek = Some(ekattest_server::registry::parse_ek_hash(&text)?);
            }
            Long("agent") if matches!(name.as_str(), "ban" | "unban") => {
                agent_id = Some(parser.value()?.string()?);
            }
            Long("reason") if name == "ban" => reason = Some(parser.value()?.string()?),
            Long("server-config") => server_config = Some(PathBuf::from(parser.value()?)),
            Long("registry") => url = Some(parser.value()?.string()?),
            Long("password-file") => password_file = Some(PathBuf::from(parser.value()?)),
            Value(v) if name == "show" && key.is_none() => key = Some(v.string()?),
            arg => return Err(arg.unexpected()),
        }
    }
    let registry = match (server_config, url) {
        (Some(_), Some(_)) => {
            return Err("give --server-config or --registry, not both".into());
        }
        (_, Some(url)) => agent::Registry::Url { url, password_file },
        (file, None) => {
            if password_file.is_some() {
                return Err("--password-file goes with --registry postgres://...".into());
            }
            agent::Registry::ServerConfig(
                file.unwrap_or_else(|| PathBuf::from(agent::DEFAULT_SERVER_CONFIG)),
            )
        }
    };
    let target = |ek: Option<[u8; 32]>, agent_id: Option<String>| match (ek, agent_id) {
        (Some(h), None) => Ok(BanTarget::Ek(h)),
        (None, Some(a)) => Ok(BanTarget::Agent(a)),
        _ => Err(lexopt::Error::from(format!(
            "agent {name}: give exactly one of --ek HASH and --agent ID"
        ))),
    };
    let op = match name.as_str() {
        "list" => agent::Op::List { since, bans },
        "show" => agent::Op::Show(key.ok_or("agent show: missing HASH or AGENT-ID")?),
        "ban" => agent::Op::Ban {
            target: target(ek, agent_id)?,
            reason: reason.unwrap_or_default(),
        },
        "unban" => agent::Op::Unban(target(ek, agent_id)?),
        "evict" => agent::Op::Evict(ek.ok_or("agent evict: missing --ek HASH")?),
        _ => agent::Op::Audit { since },
    };
    Ok(agent::run(&agent::Args { registry, op, json }))
}
