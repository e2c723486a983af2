//! A mosquitto broker for tests and the fleet harness: started on free loopback ports in a
//! temporary directory, optionally with a TLS listener (a per-run EC P-256 CA made with the
//! openssl CLI) and with the shipped ACL (`deploy/mosquitto/acl`, read in place so the tests
//! prove the file operators deploy) plus a password file for the users it names.
//!
//! The broker runs under the harness watchdog ([`crate::process`]): it is stopped on drop and
//! never outlives the test process. This module never binds a fixed port, never touches the
//! system's mosquitto configuration or service, and never changes the process's working
//! directory or environment.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::process::{self, Error, Result, Watched};
use crate::swtpm::tool::{self, os_args};

/// How long mosquitto may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often [`Broker::start`] retries with fresh ports when another process took ours.
const START_ATTEMPTS: u32 = 5;

/// The shipped ACL, read in place.
pub const SHIPPED_ACL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/mosquitto/acl");

/// The server user of the shipped ACL.
pub const SERVER_USER: &str = "ekattest-server";
/// The config publisher user of the shipped ACL (`ekattestctl config set`).
pub const ADMIN_USER: &str = "ekattest-admin";
/// A user the shipped ACL does not name: it gets only the `pattern` lines, exactly like an
/// anonymous agent (the broker also has it, to prove that).
pub const AGENT_USER: &str = "agent";

/// What [`Broker::start`] sets up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BrokerOptions {
    /// Also listen with TLS (server certificate for `localhost` and `127.0.0.1`, signed by
    /// a per-run CA: [`Broker::ca_pem`]).
    pub tls: bool,
    /// Enforce the shipped ACL ([`SHIPPED_ACL`]) with a password file holding
    /// [`SERVER_USER`], [`ADMIN_USER`] and [`AGENT_USER`]; anonymous clients stay allowed
    /// (agents connect anonymously). Without it every client may do everything.
    pub acl: bool,
}

/// One running mosquitto (see the module docs).
#[derive(Debug)]
pub struct Broker {
    /// Deleted on drop, after the process is stopped (field order).
    process: Option<Watched>,
    opts: BrokerOptions,
    base: PathBuf,
    port: u16,
    tls_port: Option<u16>,
    users: Vec<(String, PathBuf)>,
    _dir: tempfile::TempDir,
}

impl Broker {
    /// Writes the configuration (and TLS material and password file), starts mosquitto on
    /// free loopback ports and waits until every listener accepts TCP connections.
    ///
    /// # Errors
    /// [`Error::Missing`] if mosquitto (or `mosquitto_passwd`, openssl) is not installed
    /// (`apt-get install mosquitto`), [`Error::NotReady`] with mosquitto's log if it does not
    /// come up.
    pub fn start(opts: &BrokerOptions) -> Result<Broker> {
        let mosquitto = process::find_program("mosquitto", "mosquitto")?;
        let (dir, base) = process::temp_dir("ekattest-broker-")?;
        let data = base.join("data");
        fs::create_dir_all(&data).map_err(|source| process::io("create", &data, source))?;
        if opts.tls {
            make_tls(&base)?;
        }
        let users = if opts.acl {
            make_users(&base)?
        } else {
            Vec::new()
        };
        let mut dir = Some(dir);
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            let Some(d) = dir.take() else { break };
            let port = process::free_port()?;
            let tls_port = if opts.tls {
                Some(process::free_port()?)
            } else {
                None
            };
            let mut broker = Broker {
                process: None,
                opts: *opts,
                base: base.clone(),
                port,
                tls_port,
                users: users.clone(),
                _dir: d,
            };
            broker.write_conf()?;
            match broker.launch(&mosquitto) {
                Ok(()) => return Ok(broker),
                Err(e) if e.to_string().contains("Address already in use") => {
                    last = Some(e);
                    // Another process took a port: same directory, fresh ports.
                    let Broker { _dir, .. } = broker;
                    dir = Some(_dir);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Invalid("no start attempt was made".into())))
    }

    /// `mqtt://127.0.0.1:PORT`: the plain listener.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// The plain listener's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mqtts://localhost:PORT`: the TLS listener, if the broker has one.
    pub fn tls_url(&self) -> Option<String> {
        self.tls_port.map(|p| format!("mqtts://localhost:{p}"))
    }

    /// The TLS listener's port, if any.
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// The CA certificate (PEM) clients must trust for the TLS listener, if any.
    pub fn ca_pem(&self) -> Option<PathBuf> {
        self.opts.tls.then(|| self.base.join("tls/ca.pem"))
    }

    /// The CA private key (PEM, P-256) of the TLS listener, to sign client certificates.
    pub fn ca_key(&self) -> Option<PathBuf> {
        self.opts.tls.then(|| self.base.join("tls/ca.key"))
    }

    /// `(user name, file holding its password)` for a user of the password file
    /// ([`SERVER_USER`], [`ADMIN_USER`], [`AGENT_USER`]); `None` without `acl` or for an
    /// unknown name. The file holds the password alone (the daemons' `password-file`).
    pub fn user(&self, name: &str) -> Option<(String, PathBuf)> {
        self.users.iter().find(|(n, _)| n == name).cloned()
    }

    /// The password of `name` as text (see [`Broker::user`]).
    pub fn password(&self, name: &str) -> Option<String> {
        let (_, file) = self.user(name)?;
        fs::read_to_string(file).ok().map(|s| s.trim().to_owned())
    }

    /// The generated mosquitto.conf.
    pub fn conf_path(&self) -> PathBuf {
        self.base.join("mosquitto.conf")
    }

    /// Stops mosquitto (SIGTERM, so it writes its persistence file with retained messages;
    /// SIGKILL after a timeout). The ports stay reserved for [`Broker::start_again`] only by
    /// convention: another process could take them meanwhile.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop();
        }
    }

    /// Whether mosquitto is running.
    pub fn is_running(&mut self) -> bool {
        match self.process.as_mut() {
            Some(p) => matches!(p.try_status(), Ok(None)),
            None => false,
        }
    }

    /// Starts mosquitto again with the same configuration and ports (a broker restart, as
    /// clients see it). A no-op if it is running.
    ///
    /// # Errors
    /// As [`Broker::start`]; also when another process took one of the ports meanwhile.
    pub fn start_again(&mut self) -> Result<()> {
        if self.is_running() {
            return Ok(());
        }
        let mosquitto = process::find_program("mosquitto", "mosquitto")?;
        self.launch(&mosquitto)
    }

    /// mosquitto's log (connections, denials, errors), for failure output.
    pub fn log(&self) -> String {
        process::read_text(&self.base.join("mosquitto.log"))
    }

    fn launch(&mut self, mosquitto: &Path) -> Result<()> {
        let log = self.base.join("mosquitto.out");
        let conf = self.conf_path();
        let mut p = Watched::spawn(mosquitto, &os_args!["-c", conf], &self.base, &log)?;
        let mut ports = vec![self.port];
        ports.extend(self.tls_port);
        let what = format!("mosquitto on 127.0.0.1:{ports:?}");
        match p.wait_ports(&what, &ports, READY_TIMEOUT) {
            Ok(()) => {
                self.process = Some(p);
                Ok(())
            }
            Err(Error::NotReady {
                what,
                reason,
                log,
                output,
            }) => Err(Error::NotReady {
                what,
                reason,
                log,
                output: format!(
                    "{output}\n{}",
                    process::tail(&self.base.join("mosquitto.log"))
                ),
            }),
            Err(e) => Err(e),
        }
    }

    fn write_conf(&self) -> Result<()> {
        let b = self.base.display();
        let mut c = format!(
            "# Generated by ekattest-fleet for one test run; see deploy/mosquitto/mosquitto.conf.\n\
             per_listener_settings false\n\
             # Keep running as the invoking user (ignored unless started as root).\n\
             user root\n\
             persistence true\n\
             persistence_location {b}/data/\n\
             log_dest file {b}/mosquitto.log\n\
             log_type all\n\
             connection_messages true\n\
             log_timestamp_format %Y-%m-%dT%H:%M:%S\n\
             max_packet_size 32768\n\
             max_queued_messages 1000\n\
             allow_anonymous true\n\
             listener {} 127.0.0.1\n",
            self.port
        );
        if let Some(tp) = self.tls_port {
            c.push_str(&format!(
                "listener {tp} 127.0.0.1\n\
                 cafile {b}/tls/ca.pem\n\
                 certfile {b}/tls/server.pem\n\
                 keyfile {b}/tls/server.key\n\
                 tls_version tlsv1.2\n"
            ));
        }
        if self.opts.acl {
            let acl = std::path::absolute(SHIPPED_ACL)
                .map_err(|source| process::io("make absolute", Path::new(SHIPPED_ACL), source))?;
            if !acl.is_file() {
                return Err(Error::Invalid(format!(
                    "the shipped ACL {} is missing",
                    acl.display()
                )));
            }
            c.push_str(&format!(
                "password_file {b}/passwd\nacl_file {}\n",
                acl.display()
            ));
        }
        process::write(&self.conf_path(), &c)
    }
}

/// 16 random bytes as hex, from the OS.
fn random_hex() -> Result<String> {
    let path = Path::new("/dev/urandom");
    let mut buf = [0u8; 16];
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|source| process::io("read", path, source))?;
    Ok(hex::encode(buf))
}

/// The password file (`mosquitto_passwd`) and one `users/NAME.password` file per user.
fn make_users(base: &Path) -> Result<Vec<(String, PathBuf)>> {
    let passwd_tool = process::find_program("mosquitto_passwd", "mosquitto")?;
    let users_dir = base.join("users");
    fs::create_dir_all(&users_dir).map_err(|source| process::io("create", &users_dir, source))?;
    let passwd = base.join("passwd");
    process::write(&passwd, "")?;
    let mut out = Vec::new();
    for name in [SERVER_USER, ADMIN_USER, AGENT_USER] {
        let password = random_hex()?;
        let file = users_dir.join(format!("{name}.password"));
        process::write_private(&file, &format!("{password}\n"))?;
        let status = std::process::Command::new(&passwd_tool)
            .arg("-b")
            .arg(&passwd)
            .arg(name)
            .arg(&password)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|source| process::io("run", &passwd_tool, source))?;
        if !status.status.success() {
            return Err(Error::Request {
                what: format!("mosquitto_passwd -b {} {name}", passwd.display()),
                detail: tool::lossy(&status.stderr),
            });
        }
        out.push((name.to_owned(), file));
    }
    Ok(out)
}

/// An EC P-256 CA and a server certificate for `localhost` / `127.0.0.1`, in `base/tls`.
fn make_tls(base: &Path) -> Result<()> {
    let tls = base.join("tls");
    fs::create_dir_all(&tls).map_err(|source| process::io("create", &tls, source))?;
    make_ca(&tls, "ekattest test broker CA")?;
    let ext = tls.join("server.ext");
    process::write(
        &ext,
        "basicConstraints = critical, CA:FALSE\n\
         keyUsage = critical, digitalSignature\n\
         extendedKeyUsage = serverAuth\n\
         subjectAltName = DNS:localhost, IP:127.0.0.1\n",
    )?;
    sign_leaf(&tls, "server", "localhost", &ext)
}

/// `dir/ca.key` (P-256) and `dir/ca.pem` (self-signed, CA:TRUE, 2 days) named `cn`.
///
/// # Errors
/// When openssl is missing or fails.
pub fn make_ca(dir: &Path, cn: &str) -> Result<()> {
    let key = dir.join("ca.key");
    let cert = dir.join("ca.pem");
    let cnf = dir.join("ca.cnf");
    process::write(
        &cnf,
        &format!(
            "[req]\ndistinguished_name = dn\nprompt = no\nx509_extensions = v3_ca\n\
             [dn]\nCN = {cn}\n\
             [v3_ca]\nbasicConstraints = critical, CA:TRUE\n\
             keyUsage = critical, keyCertSign, cRLSign\nsubjectKeyIdentifier = hash\n"
        ),
    )?;
    genkey(&key)?;
    tool::run(
        "openssl",
        &os_args![
            "req", "-x509", "-new", "-config", cnf, "-key", key, "-days", "2", "-sha256", "-out",
            cert
        ],
        tool::SHORT,
    )?;
    Ok(())
}

/// `dir/NAME.key` and `dir/NAME.pem` with subject `cn` and the extensions in `ext`, signed
/// by `dir/ca.pem` / `dir/ca.key`.
///
/// # Errors
/// When openssl is missing or fails.
pub fn sign_leaf(dir: &Path, name: &str, cn: &str, ext: &Path) -> Result<()> {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let cert = dir.join(format!("{name}.pem"));
    let cnf = dir.join(format!("{name}.cnf"));
    process::write(
        &cnf,
        &format!("[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = {cn}\n"),
    )?;
    genkey(&key)?;
    tool::run(
        "openssl",
        &os_args!["req", "-new", "-config", cnf, "-key", key, "-out", csr],
        tool::SHORT,
    )?;
    let serial = format!("0x{}", random_hex()?);
    tool::run(
        "openssl",
        &os_args![
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            dir.join("ca.pem"),
            "-CAkey",
            dir.join("ca.key"),
            "-set_serial",
            serial,
            "-days",
            "2",
            "-sha256",
            "-extfile",
            ext,
            "-out",
            cert
        ],
        tool::SHORT,
    )?;
    Ok(())
}

fn genkey(key: &Path) -> Result<()> {
    tool::run(
        "openssl",
        &os_args![
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            key
        ],
        tool::SHORT,
    )?;
    process::make_private(key)
}
