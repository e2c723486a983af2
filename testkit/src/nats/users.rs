//! `ekattest-fleet nats-users`: renders the NATS accounts file of a fleet (one account,
//! `EKATTEST`, holding the server user, the admin user and one user per device) from the
//! list of agent ids. The role permissions live in the shipped `deploy/nats/permissions.conf`,
//! which the rendered file includes; each device's permissions name its own id, because
//! nats-server has no client-id substitution like mosquitto's `%c` (deploy/nats/README.md).
//!
//! Passwords: read from `DIR/NAME.password` when the file exists, else made (16 random bytes,
//! hex) and written there with mode 0600, so a rerun with a longer fleet list keeps every
//! existing device's password. The rendered file holds bcrypt hashes (what `nats server
//! passwd` makes) or, with `--plain`, the passwords themselves (tests). Never prints a
//! password.

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use ekattest_protocol::topic::{self, Part};

/// The server user (`username:` in server.yaml; the permissions `$EKATTEST_SERVER`).
pub const SERVER_USER: &str = "ekattest-server";
/// The config publisher (`ekattestctl config set --username`; `$EKATTEST_ADMIN`).
pub const ADMIN_USER: &str = "ekattest-admin";
/// The shipped role permissions, read in place by the test harness.
pub const SHIPPED_PERMISSIONS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/nats/permissions.conf"
);

/// How passwords appear in the rendered file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    /// In clear (tests; nats-server warns about plaintext passwords).
    Plain,
    /// bcrypt with this cost (4..=31).
    Bcrypt(u32),
}

/// A user name and its password in clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// The NATS user name (for a device: its agent id, also its MQTT user name).
    pub user: String,
    /// The password in clear.
    pub password: String,
}

/// What can go wrong while rendering.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// An agent id or the prefix cannot be a topic level of ours.
    #[error("{what} {id:?}: {reason}")]
    BadId {
        /// "agent id" or "prefix".
        what: &'static str,
        /// The offending text.
        id: String,
        /// Why.
        reason: String,
    },
    /// The same agent id twice, or an agent id equal to a role user.
    #[error(
        "user {0:?} listed twice (agent ids must be unique and differ from {SERVER_USER}/{ADMIN_USER})"
    )]
    Duplicate(String),
    /// A file could not be read or written.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What we tried to do.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// bcrypt refused (bad cost).
    #[error("bcrypt: {0}")]
    Bcrypt(#[from] bcrypt::BcryptError),
    /// No random bytes for a new password.
    #[error("no random bytes for a password: {0}")]
    Random(getrandom::Error),
}

/// The NATS subject of `topic` (the server's mapping, [`topic::write_nats_subject`]).
fn subject_of(topic: &str) -> Result<String, String> {
    let mut out = String::with_capacity(topic.len() + 8);
    topic::write_nats_subject(topic, &mut out).map_err(|e| format!("{topic:?} {e}"))?;
    Ok(out)
}

/// The NATS subject of the MQTT topic prefix (`ekattest/v1` -> `ekattest.v1`).
///
/// # Errors
/// [`UsersError::BadId`] for a prefix that is not a valid topic prefix.
pub fn prefix_subject(prefix: &str) -> Result<String, UsersError> {
    let bad = |reason: String| UsersError::BadId {
        what: "prefix",
        id: prefix.to_owned(),
        reason,
    };
    topic::validate(Part::Prefix, prefix).map_err(|e| bad(e.to_string()))?;
    subject_of(prefix).map_err(bad)
}

/// The permissions block of device `id` (with the prefix subject `p`): publish its Login and
/// its Answers, subscribe its downlink (and `$MQTT.sub.>`, where nats-server 2.9 delivers
/// QoS 1 messages to an MQTT subscription; the MQTT client cannot subscribe to `$MQTT`
/// topics itself).
///
/// # Errors
/// [`UsersError::BadId`] if `id` is not a valid agent id.
pub fn device_permissions(p: &str, id: &str) -> Result<String, UsersError> {
    let bad = |reason: String| UsersError::BadId {
        what: "agent id",
        id: id.to_owned(),
        reason,
    };
    topic::validate(Part::Agent, id).map_err(|e| bad(e.to_string()))?;
    let a = subject_of(id).map_err(bad)?;
    Ok(format!(
        "{{ publish: {{ allow: [\"{p}.*.agents.{a}.login\", \"{p}.*.servers.*.answer.{a}\"] }}, \
         subscribe: {{ allow: [\"{p}.*.agents.{a}.down\", \"$MQTT.sub.>\"] }} }}"
    ))
}

/// The accounts file: `include "{include}"` (the shipped permissions), then account
/// `EKATTEST` with JetStream (nats-server's MQTT needs it) and the users.
///
/// # Errors
/// [`UsersError`] for a bad id or prefix, a duplicate user or a bcrypt failure.
pub fn render(
    prefix: &str,
    include: &str,
    hash: Hash,
    server: &Credential,
    admin: &Credential,
    devices: &[Credential],
) -> Result<String, UsersError> {
    let p = prefix_subject(prefix)?;
    let secret = |c: &Credential| -> Result<String, UsersError> {
        Ok(match hash {
            Hash::Plain => c.password.clone(),
            Hash::Bcrypt(cost) => bcrypt::hash(&c.password, cost)?,
        })
    };
    let mut seen = std::collections::HashSet::new();
    let mut out = format!(
        "# Generated by `ekattest-fleet nats-users` for {n} devices; see deploy/nats/README.md.\n\
         include \"{include}\"\n\n\
         accounts {{\n  EKATTEST {{\n    jetstream: enabled\n    users: [\n",
        n = devices.len(),
    );
    for (c, perms, kinds) in [
        (server, "$EKATTEST_SERVER", "\"STANDARD\""),
        (admin, "$EKATTEST_ADMIN", "\"MQTT\", \"STANDARD\""),
    ] {
        if !seen.insert(c.user.clone()) {
            return Err(UsersError::Duplicate(c.user.clone()));
        }
        out.push_str(&format!(
            "      {{ user: \"{}\", password: \"{}\", permissions: {perms}, \
             allowed_connection_types: [{kinds}] }}\n",
            c.user,
            secret(c)?
        ));
    }
    for d in devices {
        let perms = device_permissions(&p, &d.user)?;
        if !seen.insert(d.user.clone()) {
            return Err(UsersError::Duplicate(d.user.clone()));
        }
        out.push_str(&format!(
            "      {{ user: \"{}\", password: \"{}\", allowed_connection_types: [\"MQTT\"],\n        \
             permissions: {perms} }}\n",
            d.user,
            secret(d)?
        ));
    }
    out.push_str("    ]\n  }\n}\n");
    Ok(out)
}

/// A new random password: 16 bytes, hex.
///
/// # Errors
/// [`UsersError::Random`] if the OS has no random bytes.
pub fn new_password() -> Result<String, UsersError> {
    let mut buf = [0u8; 16];
    getrandom::getrandom(&mut buf).map_err(UsersError::Random)?;
    Ok(hex::encode(buf))
}

/// The password of `user` from `dir/USER.password` (first line), made and written (mode
/// 0600) if the file does not exist.
///
/// # Errors
/// [`UsersError::Io`] if the file cannot be read or created.
pub fn password_in(dir: &Path, user: &str) -> Result<Credential, UsersError> {
    let path = dir.join(format!("{user}.password"));
    let io = |op, source| UsersError::Io {
        op,
        path: path.clone(),
        source,
    };
    let password = match fs::read_to_string(&path) {
        Ok(text) => text.lines().next().unwrap_or_default().trim().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let password = new_password()?;
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| io("create", e))?;
            writeln!(f, "{password}").map_err(|e| io("write", e))?;
            password
        }
        Err(e) => return Err(io("read", e)),
    };
    Ok(Credential {
        user: user.to_owned(),
        password,
    })
}

const USAGE: &str = "\
usage: ekattest-fleet nats-users --agents FILE --passwords DIR [options] > accounts.conf

Renders the NATS accounts file for a fleet: users ekattest-server and ekattest-admin with
the permissions of deploy/nats/permissions.conf, and one user per agent id in FILE (one id
a line; blank lines and # comments skipped) that may publish only its own Login and
Answers and read only its own downlink. Passwords come from DIR/NAME.password, made
(random, mode 0600) where missing; give each device its file as `password-file:` and its
agent id as `username:` in agent.yaml.

options:
  --prefix P          topic prefix (default ekattest/v1)
  --include PATH      the permissions file, relative to the accounts file
                      (default permissions.conf)
  --bcrypt-cost N     bcrypt cost (default 11); every connect costs the broker one hash
  --plain             passwords in clear (tests only)
  --out FILE          write here instead of stdout";

struct Args {
    agents: PathBuf,
    dir: PathBuf,
    prefix: String,
    include: String,
    hash: Hash,
    out: Option<PathBuf>,
}

fn parse_args(args: Vec<OsString>) -> Result<Option<Args>, lexopt::Error> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_args(args);
    let (mut agents, mut dir, mut out) = (None, None, None);
    let mut prefix = topic::DEFAULT_PREFIX.to_owned();
    let mut include = "permissions.conf".to_owned();
    let mut hash = Hash::Bcrypt(11);
    while let Some(arg) = parser.next()? {
        match arg {
            Long("agents") => agents = Some(PathBuf::from(parser.value()?)),
            Long("passwords") => dir = Some(PathBuf::from(parser.value()?)),
            Long("prefix") => prefix = parser.value()?.string()?,
            Long("include") => include = parser.value()?.string()?,
            Long("bcrypt-cost") => hash = Hash::Bcrypt(parser.value()?.parse()?),
            Long("plain") => hash = Hash::Plain,
            Long("out") => out = Some(PathBuf::from(parser.value()?)),
            Short('h') | Long("help") => return Ok(None),
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(Some(Args {
        agents: agents.ok_or("missing --agents FILE")?,
        dir: dir.ok_or("missing --passwords DIR")?,
        prefix,
        include,
        hash,
        out,
    }))
}

fn run(a: &Args) -> Result<(String, usize), UsersError> {
    let io = |op, path: &Path, source| UsersError::Io {
        op,
        path: path.to_owned(),
        source,
    };
    let list = fs::read_to_string(&a.agents).map_err(|e| io("read", &a.agents, e))?;
    let ids: Vec<&str> = list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    // Check every id before any password file is made.
    let p = prefix_subject(&a.prefix)?;
    for id in &ids {
        device_permissions(&p, id)?;
    }
    fs::create_dir_all(&a.dir).map_err(|e| io("create", &a.dir, e))?;
    let server = password_in(&a.dir, SERVER_USER)?;
    let admin = password_in(&a.dir, ADMIN_USER)?;
    let devices = ids
        .iter()
        .map(|id| password_in(&a.dir, id))
        .collect::<Result<Vec<_>, _>>()?;
    let text = render(&a.prefix, &a.include, a.hash, &server, &admin, &devices)?;
    Ok((text, devices.len()))
}

/// The `nats-users` command.
pub fn cli(args: Vec<OsString>) -> ExitCode {
    let args = match parse_args(args) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("ekattest-fleet nats-users: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let written = run(&args).and_then(|(text, n)| {
        match &args.out {
            Some(path) => fs::write(path, &text).map_err(|source| UsersError::Io {
                op: "write",
                path: path.clone(),
                source,
            })?,
            None => print!("{text}"),
        }
        Ok(n)
    });
    match written {
        Ok(n) => {
            eprintln!(
                "ekattest-fleet nats-users: {n} devices; passwords in {}",
                args.dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ekattest-fleet nats-users: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(user: &str) -> Credential {
        Credential {
            user: user.into(),
            password: format!("pw-{user}"),
        }
    }

    #[test]
    fn each_device_gets_only_its_own_subjects() {
        let text = render(
            "ekattest/v1",
            "permissions.conf",
            Hash::Plain,
            &cred(SERVER_USER),
            &cred(ADMIN_USER),
            &[cred("ek-aa"), cred("ek-bb")],
        )
        .unwrap();
        assert!(text.starts_with("# Generated"), "{text}");
        assert!(text.contains("include \"permissions.conf\""));
        assert!(text.contains("permissions: $EKATTEST_SERVER"));
        let aa = text.lines().skip_while(|l| !l.contains("\"ek-aa\"")).nth(1);
        assert_eq!(
            aa.unwrap().trim(),
            "permissions: { publish: { allow: [\"ekattest.v1.*.agents.ek-aa.login\", \
             \"ekattest.v1.*.servers.*.answer.ek-aa\"] }, subscribe: { allow: \
             [\"ekattest.v1.*.agents.ek-aa.down\", \"$MQTT.sub.>\"] } } }"
        );
    }

    #[test]
    fn ids_that_could_widen_a_subject_are_refused() {
        for id in ["ek-*", "ek->", "a b", "", "ek/x", "ek-aa\""] {
            assert!(device_permissions("ekattest.v1", id).is_err(), "{id:?}");
        }
        let dup = render(
            "ekattest/v1",
            "p.conf",
            Hash::Plain,
            &cred(SERVER_USER),
            &cred(ADMIN_USER),
            &[cred("ek-aa"), cred("ek-aa")],
        );
        assert!(matches!(dup, Err(UsersError::Duplicate(_))));
        let role = render(
            "ekattest/v1",
            "p.conf",
            Hash::Plain,
            &cred(SERVER_USER),
            &cred(ADMIN_USER),
            &[cred(ADMIN_USER)],
        );
        assert!(matches!(role, Err(UsersError::Duplicate(_))));
    }

    #[test]
    fn bcrypt_hashes_verify_and_passwords_are_kept() {
        let text = render(
            "ekattest/v1",
            "p.conf",
            Hash::Bcrypt(4),
            &cred(SERVER_USER),
            &cred(ADMIN_USER),
            &[],
        )
        .unwrap();
        let hash = text
            .split("password: \"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap();
        assert!(hash.starts_with("$2"), "{hash}");
        assert!(bcrypt::verify("pw-ekattest-server", hash).unwrap());
        assert!(!text.contains("pw-ekattest-server"));
        let dir = tempfile::tempdir().unwrap();
        let first = password_in(dir.path(), "ek-aa").unwrap();
        let again = password_in(dir.path(), "ek-aa").unwrap();
        assert_eq!(first, again);
        assert_eq!(first.password.len(), 32);
        let mode = fs::metadata(dir.path().join("ek-aa.password"))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }
}
