//! ekattest-server: the attestation daemon. A thin shell over [`ekattest_server::daemon`]:
//! parses the command line, reads the config file, installs the JSON logger, runs.
//!
//! Usage: `ekattest-server --config FILE [--check]`. Exit status: 0 stopped cleanly (SIGTERM
//! or SIGINT) or `--check` passed; 1 the configuration, a policy file or the CA is invalid,
//! or start-up failed; 2 usage error. SIGHUP re-reads the policy files at once.

use std::path::PathBuf;
use std::process::ExitCode;

use ekattest_server::daemon::{self, config::ServerConfig, logging::JsonLogger, reload::Decision};
use lexopt::prelude::*;

const USAGE: &str = "\
ekattest-server: TPM EK attestation server (MQTT)

Usage:
  ekattest-server --config FILE [--check]

  --config FILE   server configuration (YAML; see deploy/server.yaml)
  --check         validate the configuration, the policy files and the SVID CA, then exit
  -h, --help      this text
  -V, --version   print `ekattest-server VERSION (git COMMIT)` and exit

Signals: SIGTERM/SIGINT stop cleanly; SIGHUP re-reads the policy files now (other keys of
the config file need a restart).

Exit status: 0 clean stop or check passed; 1 invalid configuration or start-up failure;
2 usage error.
";

struct Args {
    config: PathBuf,
    check: bool,
}

fn parse_args() -> Result<Option<Args>, lexopt::Error> {
    let mut parser = lexopt::Parser::from_env();
    let mut config = None;
    let mut check = false;
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => {
                print!("{USAGE}");
                return Ok(None);
            }
            Short('V') | Long("version") => {
                println!("{}", ekattest_protocol::version_line!("ekattest-server"));
                return Ok(None);
            }
            Short('c') | Long("config") => config = Some(PathBuf::from(parser.value()?)),
            Long("check") => check = true,
            arg => return Err(arg.unexpected()),
        }
    }
    let config = config.ok_or("missing --config FILE")?;
    Ok(Some(Args { config, check }))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ekattest-server: {e}");
            eprintln!("Try `ekattest-server --help`.");
            return ExitCode::from(2);
        }
    };
    let config = match ServerConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ekattest-server: {e}");
            return ExitCode::from(1);
        }
    };
    if args.check {
        return check(&config);
    }
    if let Err(e) = JsonLogger::new(config.log_level).install() {
        eprintln!("ekattest-server: cannot install the logger: {e}");
        return ExitCode::from(1);
    }
    match daemon::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!(error:% = e; "ekattest-server cannot start");
            ExitCode::from(1)
        }
    }
}

fn check(config: &ServerConfig) -> ExitCode {
    match daemon::load(config) {
        Ok(loaded) => {
            println!("{}: configuration valid", config.file.display());
            println!(
                "  node {} in cluster {}, broker {}, trust domain {}",
                config.node_id, config.cluster_id, config.broker.url, config.trust_domain
            );
            match &loaded.initial {
                Some(Decision::Applied { sha256, doc }) => {
                    println!(
                        "  policy document sha256 {sha256}: {} {}",
                        doc.policies().len(),
                        if doc.policies().len() == 1 {
                            "policy"
                        } else {
                            "policies"
                        }
                    );
                    for w in doc.warnings() {
                        println!("  warning: {w}");
                    }
                }
                _ => println!(
                    "  no policy-files: the document comes from the config topic \
                     (ekattestctl config set cluster)"
                ),
            }
            if let Some(w) = ttl_warning(config.svid_ttl, loaded.authority.not_after(), now()) {
                println!("  warning: {w}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ekattest-server: {}: {e}", config.file.display());
            ExitCode::from(1)
        }
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `--check`'s warning when `svid-ttl` is longer than the CA certificate has left: SVIDs are
/// then cut to the CA's notAfter, and agents renew ever more often until it expires.
fn ttl_warning(ttl: std::time::Duration, ca_not_after: i64, now: i64) -> Option<String> {
    let left = ca_not_after.saturating_sub(now);
    let ttl_secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    if ttl_secs <= left {
        return None;
    }
    let until = u64::try_from(ca_not_after).map_or_else(
        |_| ca_not_after.to_string(),
        ekattest_server::config::signed::utc,
    );
    Some(if left <= 0 {
        format!(
            "ca-cert expired at {until}: no SVID can be issued; make a new signer with \
             `ekattestctl ca issue-signer`"
        )
    } else {
        format!(
            "svid-ttl ({} s) exceeds the {left} s ca-cert has left (until {until}): SVIDs \
             will end with the CA; make a new signer with `ekattestctl ca issue-signer`",
            ttl.as_secs()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::ttl_warning;
    use std::time::Duration;

    #[test]
    fn svid_ttl_longer_than_the_ca_has_left_is_named() {
        let hour = Duration::from_secs(3600);
        assert_eq!(ttl_warning(hour, 10_000, 1_000), None);
        let w = ttl_warning(hour, 2_000, 1_000).unwrap();
        assert!(w.contains("svid-ttl (3600 s) exceeds the 1000 s"), "{w}");
        assert!(w.contains("ca issue-signer"), "{w}");
        let w = ttl_warning(hour, 500, 1_000).unwrap();
        assert!(w.contains("expired at 1970-01-01T00:08:20Z"), "{w}");
    }
}
