//! ekattestctl: offline operator commands (EK hashes, config validation, EK verification).
//!
//! A thin shell: it parses the command words and calls the command's entry point in
//! `ekattest_server::ctl`, which reads the command's flags and files, does the work and
//! returns the exit code. Only `config set` talks to the network (the MQTT broker);
//! only `ca create`, `config keygen` and `config sign --out` write files.
//!
//! Exit status: 0 success (hash printed, document valid, EK accepted); 1 the input was judged
//! and rejected (invalid document for `config validate`, EK rejected, a file that was read
//! holds no usable certificate or public key, whether its PEM or its DER is corrupt); 2
//! usage error, unreadable file, or (for `ek verify`) an invalid document.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use ekattest_server::ctl::{self, VERIFY_USAGE, ca, config_set, config_sign, verify};
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
                Some(sub) if sub == "set" => config_set::run(&mut parser, config_set::Op::Set),
                Some(sub) if sub == "get" => config_set::run(&mut parser, config_set::Op::Get),
                Some(sub) if sub == "clear" => config_set::run(&mut parser, config_set::Op::Clear),
                Some(sub) if sub == "sign" => config_sign::sign(&mut parser),
                Some(sub) if sub == "keygen" => config_sign::keygen(&mut parser),
                Some(sub) => Err(unknown(
                    "config",
                    &sub,
                    "validate|sign|keygen|set|get|clear",
                )),
            },
            Some("ek") => match subcommand(&mut parser, VERIFY_USAGE)? {
                None => Ok(ExitCode::SUCCESS),
                Some(sub) if sub == "verify" => verify::run(&mut parser),
                Some(sub) => Err(unknown("ek", &sub, "verify")),
            },
            Some("ca") => match subcommand(&mut parser, ca::USAGE)? {
                None => Ok(ExitCode::SUCCESS),
                Some(sub) if sub == "create" => ca::run(&mut parser),
                Some(sub) if sub == "issue-signer" => ca::run_issue_signer(&mut parser),
                Some(sub) => Err(unknown("ca", &sub, "create|issue-signer")),
            },
            _ => Err(format!("unknown command {cmd:?}; commands: ek-hash, config, ek, ca").into()),
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
