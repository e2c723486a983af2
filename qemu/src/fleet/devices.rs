//! Device states for a fleet run: provisioned in parallel with `swtpm_setup` and the run's
//! CA, or reused from a state cache (`--cache DIR`).
//!
//! Provisioning keeps only each device's `tpm2-00.permall` (EK certificates are in its NV);
//! the attestation phase starts swtpm on a copy of it just before the agent runs, so a
//! 1,000-device run never has 1,000 swtpm processes alive. This module never leaves a swtpm
//! running (devices are dropped as soon as their state is copied) and never writes outside
//! the run folder and the cache folder.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::error::{self, Error, Result};
use crate::swtpm::{Ca, Device, ProvisionOptions};

/// The PEM files a policy needs to trust the devices' EK certificates.
#[derive(Debug, Clone)]
pub(crate) struct Anchors {
    /// swtpm-localca root certificate (policy `caCerts`).
    pub(crate) root: PathBuf,
    /// swtpm-localca intermediate (policy `intermediateCerts`).
    pub(crate) intermediate: PathBuf,
}

/// The states of a run: `count` permall files in `dir` plus the CA certificates.
#[derive(Debug)]
pub(crate) struct States {
    pub(crate) anchors: Anchors,
    pub(crate) files: Vec<PathBuf>,
    /// Wall time spent provisioning (zero when every state came from the cache).
    pub(crate) provisioning: Duration,
    /// Whether the states came from the cache.
    pub(crate) cached: bool,
    /// Keeps the swtpm CA (and its temp folder) alive for the run.
    _ca: Option<Ca>,
}

const CACHE_META: &str = "fleet-cache.json";

fn state_name(i: usize) -> String {
    format!("tpm-{i:05}.permall")
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to)
        .map(|_| ())
        .map_err(|source| Error::Copy {
            from: from.to_owned(),
            to: to.to_owned(),
            source,
        })
}

/// Reads a cache made with the same options holding at least `count` states.
fn from_cache(cache: &Path, count: usize, opts: &ProvisionOptions) -> Option<States> {
    let meta: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(cache.join(CACHE_META)).ok()?).ok()?;
    let fits = meta["rsa_keysize"].as_u64() == Some(u64::from(opts.rsa_keysize))
        && (meta["p256_ek_cert"].as_bool() == Some(true) || !opts.p256_ek_cert)
        && meta["devices"].as_u64().is_some_and(|n| n >= count as u64);
    if !fits {
        return None;
    }
    let anchors = Anchors {
        root: cache.join("root.pem"),
        intermediate: cache.join("intermediate.pem"),
    };
    let files: Vec<PathBuf> = (0..count).map(|i| cache.join(state_name(i))).collect();
    if !anchors.root.is_file()
        || !anchors.intermediate.is_file()
        || !files.iter().all(|f| f.is_file())
    {
        return None;
    }
    Some(States {
        anchors,
        files,
        provisioning: Duration::ZERO,
        cached: true,
        _ca: None,
    })
}

/// Provisions `count` devices (or reuses `cache`), `threads` at a time, into `dir`.
/// Checks `stop` between devices.
pub(crate) fn prepare(
    dir: &Path,
    count: usize,
    opts: &ProvisionOptions,
    threads: usize,
    cache: Option<&Path>,
    stop: &AtomicBool,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<States> {
    if let Some(c) = cache
        && let Some(states) = from_cache(c, count, opts)
    {
        return Ok(states);
    }
    let start = std::time::Instant::now();
    let ca = Ca::create().map_err(|e| Error::Ca {
        what: "cannot create the swtpm CA".into(),
        source: Box::new(e),
    })?;
    let anchors = Anchors {
        root: dir.join("swtpm-root.pem"),
        intermediate: dir.join("swtpm-intermediate.pem"),
    };
    copy(ca.root_cert_pem(), &anchors.root)?;
    copy(ca.intermediate_cert_pem(), &anchors.intermediate)?;
    let states_dir = dir.join("states");
    error::create_dir_all(&states_dir)?;
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let failure: Mutex<Option<Error>> = Mutex::new(None);
    let failed = AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                loop {
                    if stop.load(Ordering::Relaxed) || failed.load(Ordering::Relaxed) {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return;
                    }
                    let result = Device::provision(&ca, opts)
                        .map_err(|source| Error::Tpm {
                            what: format!("cannot provision swtpm device {i}"),
                            source,
                        })
                        .and_then(|d| {
                            copy(
                                &d.state_dir().join("tpm2-00.permall"),
                                &states_dir.join(state_name(i)),
                            )
                        });
                    if let Err(e) = result {
                        failed.store(true, Ordering::Relaxed);
                        if let Ok(mut f) = failure.lock() {
                            f.get_or_insert(e);
                        }
                        return;
                    }
                    progress(done.fetch_add(1, Ordering::Relaxed) + 1);
                }
            });
        }
    });
    if let Some(e) = failure.lock().ok().and_then(|mut f| f.take()) {
        return Err(e);
    }
    if stop.load(Ordering::Relaxed) {
        return Err(Error::Interrupted {
            step: Some("provisioning"),
        });
    }
    let files: Vec<PathBuf> = (0..count).map(|i| states_dir.join(state_name(i))).collect();
    let provisioning = start.elapsed();
    if let Some(c) = cache {
        save_cache(c, &anchors, &files, opts)?;
    }
    Ok(States {
        anchors,
        files,
        provisioning,
        cached: false,
        _ca: Some(ca),
    })
}

/// Replaces the cache's content with this run's states (the metadata last, so a cache
/// interrupted half-way is never taken as complete).
fn save_cache(
    cache: &Path,
    anchors: &Anchors,
    files: &[PathBuf],
    opts: &ProvisionOptions,
) -> Result<()> {
    error::create_dir_all(cache)?;
    let _ = fs::remove_file(cache.join(CACHE_META));
    copy(&anchors.root, &cache.join("root.pem"))?;
    copy(&anchors.intermediate, &cache.join("intermediate.pem"))?;
    for (i, f) in files.iter().enumerate() {
        copy(f, &cache.join(state_name(i)))?;
    }
    let meta = serde_json::json!({
        "devices": files.len(),
        "rsa_keysize": opts.rsa_keysize,
        "p256_ek_cert": opts.p256_ek_cert,
    });
    error::write(&cache.join(CACHE_META), meta.to_string())
}
