//! The load run's stage ([`crate::stage`]): its binaries, option checks, the stage
//! configuration (servers tuned for soft devices, `ekattestctl` CA, the key pool's policy),
//! and the SVID trust the simulated devices check the servers' answers with. It starts
//! nothing itself.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{CLUSTER, LoadOptions, TRUST_DOMAIN, keys, parse_broker, worker};
use crate::error::{self, Error, Result};
use crate::faults::Mode;
use crate::stage::{Bus, Policy, ServerSettings, StageConfig, Svid, SvidCa};

/// Finds `name`: in `dir` if given, else beside this executable (or its parent, for test
/// binaries in `deps/`), else on `PATH`.
pub(super) fn find_bin(dir: Option<&Path>, name: &str) -> Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(d) = dir {
        candidates.push(d.join(name));
    } else if let Ok(exe) = std::env::current_exe()
        && let Some(d) = exe.parent()
    {
        candidates.push(d.join(name));
        if let Some(p) = d.parent() {
            candidates.push(p.join(name));
        }
    }
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    Ok(crate::process::find_program(
        name,
        "cargo build --profile fleet -p ekattest-server",
    )?)
}

/// What the devices check the servers' answers with: the SVID signer (its public point and
/// its verified certificate) and the trust bundle.
pub(super) struct Trust {
    pub(super) ca_point: Arc<Vec<u8>>,
    pub(super) signer: Arc<ekattest_agent::daemon::identity::Signer>,
    pub(super) bundle: Arc<ekattest_agent::daemon::identity::TrustBundle>,
}

impl Trust {
    pub(super) fn load(svid: &Svid) -> Result<Self> {
        fn ca<E: std::error::Error + Send + Sync + 'static>(
            what: String,
        ) -> impl FnOnce(E) -> Error {
            move |e| Error::Ca {
                what,
                source: Box::new(e),
            }
        }
        let signer_pem = error::read(&svid.cert)?;
        let ca_point = Arc::new(keys::ca_point(&signer_pem)?);
        let bundle = ekattest_agent::daemon::identity::TrustBundle::from_pem(
            error::read(&svid.bundle)?,
            &svid.bundle,
        )
        .map_err(ca("the SVID root is no trust bundle".into()))?;
        let signer_der = pem::parse(&signer_pem)
            .map_err(ca(svid.cert.display().to_string()))?
            .into_contents();
        let signer = bundle
            .signer(&signer_der, worker::unix_now())
            .map_err(ca("the issued signer does not verify".into()))?;
        Ok(Self {
            ca_point,
            signer: Arc::new(signer),
            bundle: Arc::new(bundle),
        })
    }
}

/// Checks option combinations `run` cannot work with.
pub(super) fn check(opts: &LoadOptions) -> Result<()> {
    if opts.devices == 0 || opts.threads == 0 || opts.servers == 0 || opts.window == 0 {
        return Err(Error::Usage(
            "--devices, --threads, --servers and --window must be at least 1".into(),
        ));
    }
    if opts.nats_nodes > 0 && (opts.broker.is_some() || !opts.nats_urls.is_empty()) {
        return Err(Error::Usage(
            "--nats-nodes starts a cluster of its own: drop --broker (and nats_urls)".into(),
        ));
    }
    opts.faults
        .validate(
            Mode::Load,
            opts.servers,
            opts.broker.is_none() && opts.nats_nodes == 0,
            opts.nats_nodes,
        )
        .map_err(|e| Error::Usage(e.to_string()))?;
    if let Some(url) = &opts.broker {
        parse_broker(url).map_err(Error::BrokerUrl)?;
    }
    Ok(())
}

/// The stage of a load run: servers tuned for soft devices, the policy allow-listing
/// `keys` hashes.
pub(super) fn stage_config(
    opts: &LoadOptions,
    dir: &Path,
    server_bin: &Path,
    ctl_bin: &Path,
    policy_file: &Path,
) -> StageConfig {
    let mut config = StageConfig::new(
        dir,
        CLUSTER,
        TRUST_DOMAIN,
        server_bin,
        Policy::File(policy_file.to_owned()),
    );
    config.ca = SvidCa::Ctl {
        bin: ctl_bin.to_owned(),
    };
    config.bus = match &opts.broker {
        Some(url) => Bus::External {
            url: url.clone(),
            more: opts.broker_urls.clone(),
            nats_urls: opts.nats_urls.clone(),
        },
        None if opts.nats_nodes > 0 => Bus::Nats {
            nodes: opts.nats_nodes,
        },
        None => Bus::Mosquitto,
    };
    config.servers = opts.servers;
    config.registry = opts.registry;
    config.server_dir = |k| format!("server-{}", k - 1);
    config.server = ServerSettings {
        max_sessions: Some((opts.threads * opts.window * 4).max(100_000)),
        log_level: Some(opts.server_log_level.clone()),
        workers: opts.workers,
        // Soft devices retry on a short attempt timeout under faults, far more often than a
        // real agent's backoff allows, and devices take turns on the pool's EKs; the login
        // limits (per agent id and per EK, both off with burst 0) would throttle the
        // harness, not an attacker. It is tested by tests/flood.rs and the server's unit
        // tests.
        login_burst: Some(0),
        // Devices keep distinct agent ids (`{run}-{thread}-{n}`) over a pool of EKs: the
        // agent id is not the one derived from the EK.
        agent_id_from_ek: Some(false),
        reload_interval: Some(Duration::from_secs(60)),
    };
    // Devices reach the broker through the fault proxy when messages are dropped/corrupted;
    // the servers connect directly.
    config.proxy = opts
        .faults
        .needs_mqtt_proxy()
        .then(|| opts.faults.proxy_options());
    config
}
