//! Policy documents without restart: the document in force, the decision to replace it, and
//! the thread that watches the policy files and the retained config topic.
//!
//! Two sources feed one [`Reloader`]: the `policy-files` (checked every `reload-interval`
//! by modification time and size, merged into one document) and the payload of
//! `{p}/{cluster}/config` (a whole AgentAttestation document). A source is considered only
//! when its bytes change (SHA-256), so a retained message re-delivered on reconnect is a
//! no-op; a valid new document replaces the one in force (latest applied wins, whichever
//! source); an invalid one is logged with the seed's message and the previous document stays.
//! The document in force is an `Arc<Document>` behind a lock held only to clone the `Arc`:
//! a login in flight keeps the document it started with. Never panics on a document.

use std::fs;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use super::metrics::Metrics;
use crate::config::{ConfigError, Document, MAX_DOCUMENT_BYTES};

/// The document in force, shared by the workers and the reload thread.
#[derive(Debug, Default)]
pub struct PolicyState {
    current: RwLock<Option<Arc<Document>>>,
}

impl PolicyState {
    /// The document in force (`None` before any valid document).
    pub fn current(&self) -> Option<Arc<Document>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, doc: Arc<Document>) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(doc);
    }
}

/// Where a document came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The `policy-files`, merged.
    Files,
    /// The retained payload of the cluster's config topic.
    Topic,
}

/// What [`Reloader::consider`] did.
#[derive(Debug)]
pub enum Decision {
    /// The document is valid and now in force.
    Applied {
        /// Lowercase hex SHA-256 of the document bytes.
        sha256: String,
        /// The document.
        doc: Arc<Document>,
    },
    /// The document is invalid; the previous one (if any) stays in force.
    Invalid {
        /// Lowercase hex SHA-256 of the rejected bytes.
        sha256: String,
        /// The parse error.
        error: ConfigError,
        /// The SHA-256 of the document still in force.
        previous: Option<String>,
    },
    /// These bytes were already considered from this source, or are the document in force:
    /// nothing to do.
    Unchanged,
}

/// The reload decision, without I/O: per-source change detection and the document in force.
#[derive(Debug, Default)]
pub struct Reloader {
    in_force: Option<String>,
    last_files: Option<[u8; 32]>,
    last_topic: Option<[u8; 32]>,
}

impl Reloader {
    /// A reloader with no document in force.
    pub fn new() -> Self {
        Self::default()
    }

    /// The SHA-256 (hex) of the document in force.
    pub fn in_force(&self) -> Option<&str> {
        self.in_force.as_deref()
    }

    /// Considers `parts` from `source` (one entry per policy file, labelled by its path; one
    /// entry for the topic). The bytes hashed are the parts concatenated in order, so a
    /// single file's hash equals `sha256sum FILE`.
    pub fn consider(&mut self, source: Source, parts: &[(String, Vec<u8>)]) -> Decision {
        let mut hasher = Sha256::new();
        for (_, bytes) in parts {
            hasher.update(bytes);
        }
        let digest: [u8; 32] = hasher.finalize().into();
        let last = match source {
            Source::Files => &mut self.last_files,
            Source::Topic => &mut self.last_topic,
        };
        if *last == Some(digest) {
            return Decision::Unchanged;
        }
        *last = Some(digest);
        let sha256 = hex::encode(digest);
        if self.in_force.as_deref() == Some(sha256.as_str()) {
            // The same document from the other source: already in force.
            return Decision::Unchanged;
        }
        match parse_parts(parts) {
            Ok(doc) => {
                self.in_force = Some(sha256.clone());
                Decision::Applied {
                    sha256,
                    doc: Arc::new(doc),
                }
            }
            Err(error) => Decision::Invalid {
                sha256,
                error,
                previous: self.in_force.clone(),
            },
        }
    }
}

/// Parses each part and merges them (a single part is returned as parsed).
fn parse_parts(parts: &[(String, Vec<u8>)]) -> Result<Document, ConfigError> {
    let mut docs = Vec::with_capacity(parts.len());
    for (label, bytes) in parts {
        docs.push((label.clone(), Document::parse(bytes)?));
    }
    Document::merge(docs)
}

/// Reads the policy files (each at most [`MAX_DOCUMENT_BYTES`] + 1 bytes, so an oversized
/// file fails in [`Document::parse`] with its own message).
///
/// # Errors
/// [`ConfigError::Read`] naming the file.
pub fn read_files(files: &[PathBuf]) -> Result<Vec<(String, Vec<u8>)>, ConfigError> {
    use std::io::Read;
    let mut parts = Vec::with_capacity(files.len());
    for file in files {
        let err = |source| ConfigError::Read {
            file: file.clone(),
            source,
        };
        let mut bytes = Vec::new();
        fs::File::open(file)
            .map_err(err)?
            .take(MAX_DOCUMENT_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(err)?;
        parts.push((file.display().to_string(), bytes));
    }
    Ok(parts)
}

/// Modification time and size of each file (`None` where it cannot be read).
fn stamps(files: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    files
        .iter()
        .map(|f| {
            let m = fs::metadata(f).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

/// Logs a decision with the operator messages and counts it.
pub fn report(decision: &Decision, source: &str, metrics: &Metrics) {
    match decision {
        Decision::Applied { sha256, doc } => {
            metrics.policy_reload(true);
            log::info!(
                sha256 = sha256.as_str(), source = source, policies = doc.policies().len();
                "Policy document in force"
            );
            for w in doc.warnings() {
                log::warn!(sha256 = sha256.as_str(), source = source; "{w}");
            }
        }
        Decision::Invalid {
            sha256,
            error,
            previous,
        } => {
            metrics.policy_reload(false);
            let text = error.to_string();
            let first = text.lines().next().unwrap_or_default();
            log::error!(sha256 = sha256.as_str(), source = source; "{first}");
            match previous {
                Some(prev) => log::warn!(
                    sha256 = prev.as_str(); "Previous policy document stays in force"
                ),
                None => log::warn!(
                    "No policy document is in force: every Login is rejected with \
                     \"attestation policy not found or no matching policy\""
                ),
            }
        }
        Decision::Unchanged => {}
    }
}

/// Latest config-topic payload handed from the MQTT loop to the reload thread (a newer
/// payload replaces an unread one: latest wins).
#[derive(Debug, Default)]
pub struct Inbox {
    slot: Mutex<InboxSlot>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct InboxSlot {
    payload: Option<Vec<u8>>,
    stop: bool,
}

impl Inbox {
    /// Hands over a config-topic payload.
    pub fn put(&self, payload: Vec<u8>) {
        self.slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .payload = Some(payload);
        self.wake.notify_one();
    }

    /// Asks the reload thread to exit.
    pub fn stop(&self) {
        self.slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stop = true;
        self.wake.notify_one();
    }

    /// Waits up to `timeout` for a payload; `Err(())` once stopped.
    pub(super) fn take(&self, timeout: Duration) -> Result<Option<Vec<u8>>, ()> {
        let slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut slot, _) = self
            .wake
            .wait_timeout_while(slot, timeout, |s| s.payload.is_none() && !s.stop)
            .unwrap_or_else(PoisonError::into_inner);
        if slot.stop {
            return Err(());
        }
        Ok(slot.payload.take())
    }
}

/// The reload loop: run on its own thread until [`Inbox::stop`]. `reloader` already holds
/// the document loaded at start-up (if any).
pub fn watch(
    mut reloader: Reloader,
    files: Vec<PathBuf>,
    interval: Duration,
    inbox: Arc<Inbox>,
    state: Arc<PolicyState>,
    metrics: Arc<Metrics>,
) {
    let files_label = files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    // Unknown at first: the first check reads the files, and an unchanged document is a
    // no-op by its hash (a change between start-up and this thread is not missed).
    let mut seen = None;
    let mut next_poll = Instant::now() + interval;
    loop {
        let wait = next_poll.saturating_duration_since(Instant::now());
        let Ok(payload) = inbox.take(wait) else {
            return;
        };
        if let Some(payload) = payload {
            if payload.is_empty() {
                log::info!(
                    "config topic cleared (empty retained message); the document in force stays"
                );
            } else {
                let decision =
                    reloader.consider(Source::Topic, &[("config topic".to_owned(), payload)]);
                apply(&decision, "config topic", &state, &metrics);
            }
        }
        if Instant::now() < next_poll || files.is_empty() {
            continue;
        }
        next_poll = Instant::now() + interval;
        let now = Some(stamps(&files));
        if now == seen {
            continue;
        }
        seen = now;
        match read_files(&files) {
            Ok(parts) => {
                let decision = reloader.consider(Source::Files, &parts);
                apply(&decision, &files_label, &state, &metrics);
            }
            Err(e) => {
                metrics.policy_reload(false);
                log::error!(source = files_label.as_str(), error:% = e; "cannot read policy file");
                if let Some(prev) = reloader.in_force() {
                    log::warn!(sha256 = prev; "Previous policy document stays in force");
                }
            }
        }
    }
}

/// Logs `decision` and installs an applied document.
pub fn apply(decision: &Decision, source: &str, state: &PolicyState, metrics: &Metrics) {
    if let Decision::Applied { doc, .. } = decision {
        state.set(Arc::clone(doc));
    }
    report(decision, source, metrics);
}

#[cfg(test)]
mod tests;
