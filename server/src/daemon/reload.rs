//! Policy documents without restart: the document in force, the decision to replace it, and
//! the thread that watches the policy files and the retained config topic.
//!
//! Two sources feed one [`Reloader`]: the `policy-files` (checked every `reload-interval`
//! by modification time and size, merged into one document) and, only with `policy-topic:
//! true`, the payload of `{p}/{cluster}/config`: an AgentAttestation document in a signed
//! envelope ([`crate::config::signed`]). A source is considered only when its bytes change
//! (SHA-256), so a retained message re-delivered on reconnect is a no-op; a valid new
//! document replaces the one in force; an invalid one is logged with the seed's message and
//! the previous document stays.
//!
//! A config-topic document must pass, in this order, before its content is even parsed
//! (each refusal is logged with what failed and what to do, counted in
//! `attestation_policy_documents_refused_total{reason}`, and leaves the document in force):
//!
//! 1. the envelope decodes (`unsigned`, `malformed`);
//! 2. it is signed for this server's cluster (`wrong_cluster`) by a key of `policy-signers`
//!    (`unknown_signer`, `bad_signature`);
//! 3. its signed issue time is at most [`MAX_CLOCK_SKEW`] ahead of this server's clock
//!    (`future`: a document from the future would outrank every later file edit);
//! 4. it is not older than the config-topic document applied before it (`stale`: a replayed
//!    old document cannot roll the policy back);
//! 5. it was issued in a later second than the newest modification time of the policy files
//!    (`older_than_files`): a document from the topic never overrides a policy file that
//!    changed later, also after a restart, when the broker re-delivers the retained document
//!    (a tie in the same second goes to the files).
//!
//! A file change is always applied (the operator on the machine wins). The document in force
//! is an `Arc<Document>` behind a lock held only to clone the `Arc`: a login in flight keeps
//! the document it started with. Never panics on a document.

use std::fs;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::metrics::{DocumentRefusal, Metrics};
use crate::config::signed::{Envelope, EnvelopeError, Signers, utc};
use crate::config::{ConfigError, Document, MAX_DOCUMENT_BYTES};

/// Longest a config-topic document's issue time may lie ahead of this server's clock.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

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
    /// A config-topic document refused before its content was parsed (signature, cluster,
    /// ordering); the previous document (if any) stays in force.
    Refused {
        /// Lowercase hex SHA-256 of the whole payload received.
        sha256: String,
        /// The metric reason.
        reason: DocumentRefusal,
        /// What failed and what to do.
        message: String,
        /// The SHA-256 of the document still in force.
        previous: Option<String>,
    },
    /// The config topic's retained document was removed (`ekattestctl config clear`: an
    /// empty retained message). Servers keep the document in force; one that starts later
    /// gets no document from the topic.
    Cleared {
        /// The SHA-256 of the document still in force.
        previous: Option<String>,
    },
    /// These bytes were already considered from this source, or are the document in force:
    /// nothing to do.
    Unchanged,
}

/// What a config-topic document must satisfy besides being valid (`policy-topic: true`).
#[derive(Debug, Clone)]
pub struct TopicRules {
    /// This server's `cluster-id`.
    pub cluster: String,
    /// `policy-signers`.
    pub signers: Signers,
}

/// The reload decision, without I/O: per-source change detection, the signature and
/// ordering rules of config-topic documents, and the document in force.
#[derive(Debug, Default)]
pub struct Reloader {
    in_force: Option<String>,
    last_files: Option<[u8; 32]>,
    last_topic: Option<[u8; 32]>,
    /// `None`: `policy-topic: false`, every topic document is refused.
    topic: Option<TopicRules>,
    /// Newest modification time of the policy files when they were last read.
    files_modified: Option<SystemTime>,
    /// Issue time of the last config-topic document applied.
    topic_issued: Option<u64>,
}

impl Reloader {
    /// A reloader with no document in force that accepts policy files only.
    pub fn new() -> Self {
        Self::default()
    }

    /// A reloader that also accepts config-topic documents signed under `rules`.
    pub fn with_topic(rules: TopicRules) -> Self {
        Self {
            topic: Some(rules),
            ..Self::default()
        }
    }

    /// The SHA-256 (hex) of the document in force.
    pub fn in_force(&self) -> Option<&str> {
        self.in_force.as_deref()
    }

    /// Considers the policy files' `parts` (one entry per file, labelled by its path), read
    /// when the newest of their modification times was `modified`. The bytes hashed are the
    /// parts concatenated in order, so a single file's hash equals `sha256sum FILE`.
    pub fn consider_files(
        &mut self,
        parts: &[(String, Vec<u8>)],
        modified: Option<SystemTime>,
    ) -> Decision {
        if modified.is_some() {
            self.files_modified = modified;
        }
        let mut hasher = Sha256::new();
        for (_, bytes) in parts {
            hasher.update(bytes);
        }
        let digest: [u8; 32] = hasher.finalize().into();
        if self.last_files == Some(digest) {
            return Decision::Unchanged;
        }
        self.last_files = Some(digest);
        self.consider_document(hex::encode(digest), parts)
    }

    /// Considers a config-topic `payload` received at `now`: checks the envelope, its
    /// signature and its issue time ([module docs](self)), then the document.
    pub fn consider_topic(&mut self, payload: &[u8], now: SystemTime) -> Decision {
        let digest: [u8; 32] = Sha256::digest(payload).into();
        if self.last_topic == Some(digest) {
            return Decision::Unchanged;
        }
        self.last_topic = Some(digest);
        if payload.is_empty() {
            return Decision::Cleared {
                previous: self.in_force.clone(),
            };
        }
        let refuse = |reason: DocumentRefusal, message: String, previous: Option<String>| {
            Decision::Refused {
                sha256: hex::encode(digest),
                reason,
                message,
                previous,
            }
        };
        let previous = self.in_force.clone();
        let Some(rules) = &self.topic else {
            return refuse(
                DocumentRefusal::Unsigned,
                "policy-topic is false: config-topic documents are not accepted".to_owned(),
                previous,
            );
        };
        let envelope = match Envelope::decode(payload) {
            Ok(e) => e,
            Err(e) => return refuse(refusal(&e), e.to_string(), previous),
        };
        if let Err(e) = rules.signers.verify(&envelope, &rules.cluster) {
            return refuse(refusal(&e), e.to_string(), previous);
        }
        let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let issued = envelope.issued;
        if issued > now_secs.saturating_add(MAX_CLOCK_SKEW.as_secs()) {
            return refuse(
                DocumentRefusal::Future,
                format!(
                    "document issued at {} ({issued}), more than {} s after this server's clock \
                     ({}); check the clock of the machine that signed it and sign it again",
                    utc(issued),
                    MAX_CLOCK_SKEW.as_secs(),
                    utc(now_secs)
                ),
                previous,
            );
        }
        if let Some(in_force) = self.topic_issued
            && issued < in_force
        {
            return refuse(
                DocumentRefusal::Stale,
                format!(
                    "document issued at {} ({issued}) is older than the config-topic document \
                     in force (issued {} ({in_force})); a replayed old document cannot roll the \
                     policy back: sign the document again to apply it",
                    utc(issued),
                    utc(in_force)
                ),
                previous,
            );
        }
        if let Some(modified) = self.files_modified {
            let files_secs = modified
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            if issued <= files_secs {
                return refuse(
                    DocumentRefusal::OlderThanFiles,
                    format!(
                        "document issued at {} ({issued}) is not newer than the policy files \
                         (last modified {} ({files_secs})); the files stay in force: sign the \
                         document again to override them, or edit the files",
                        utc(issued),
                        utc(files_secs)
                    ),
                    previous,
                );
            }
        }
        let doc_digest = hex::encode(Sha256::digest(envelope.document));
        let decision = self.consider_document(
            doc_digest,
            &[("config topic".to_owned(), envelope.document.to_vec())],
        );
        if matches!(decision, Decision::Applied { .. } | Decision::Unchanged) {
            self.topic_issued = Some(issued);
        }
        decision
    }

    /// Parses `parts` (whose hash is `sha256`) unless that document is in force already.
    fn consider_document(&mut self, sha256: String, parts: &[(String, Vec<u8>)]) -> Decision {
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

/// The metric reason of an envelope refusal.
fn refusal(e: &EnvelopeError) -> DocumentRefusal {
    match e {
        EnvelopeError::Unsigned => DocumentRefusal::Unsigned,
        EnvelopeError::TooLong { .. } | EnvelopeError::Malformed { .. } => {
            DocumentRefusal::Malformed
        }
        EnvelopeError::WrongCluster { .. } => DocumentRefusal::WrongCluster,
        EnvelopeError::UnknownSigner { .. } => DocumentRefusal::UnknownSigner,
        EnvelopeError::BadSignature { .. } => DocumentRefusal::BadSignature,
    }
}

/// Newest modification time of `files` (`None` if none can be examined).
pub fn newest_modification(files: &[PathBuf]) -> Option<SystemTime> {
    files
        .iter()
        .filter_map(|f| fs::metadata(f).ok()?.modified().ok())
        .max()
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
        Decision::Refused {
            sha256,
            reason,
            message,
            previous,
        } => {
            metrics.document_refused(*reason);
            log::error!(
                sha256 = sha256.as_str(), source = source, reason = reason.as_str();
                "Policy document refused: {message}"
            );
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
        Decision::Cleared { previous } => {
            let prev = previous.as_deref().unwrap_or("none");
            log::info!(
                sha256 = prev, source = source;
                "Config topic cleared: the policy document in force stays until another \
                 document arrives or the server restarts"
            );
        }
        Decision::Unchanged => {}
    }
}

/// Latest config-topic payload handed from the MQTT loop to the reload thread (a newer
/// payload replaces an unread one: latest wins), and SIGHUP's request to re-read the policy
/// files now.
#[derive(Debug, Default)]
pub struct Inbox {
    slot: Mutex<InboxSlot>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct InboxSlot {
    payload: Option<Vec<u8>>,
    rescan: bool,
    stop: bool,
}

/// What woke the reload thread.
#[derive(Debug, Default)]
pub(super) struct Wake {
    /// A config-topic payload.
    payload: Option<Vec<u8>>,
    /// SIGHUP: re-read the policy files now.
    rescan: bool,
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

    /// Asks the reload thread to re-read the policy files now (SIGHUP), whether or not
    /// their modification times changed.
    pub fn rescan(&self) {
        self.slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .rescan = true;
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
    #[cfg(test)]
    pub(super) fn take(&self, timeout: Duration) -> Result<Option<Vec<u8>>, ()> {
        self.wait(timeout).map(|w| w.payload)
    }

    /// Waits up to `timeout` for a payload or a rescan request; `Err(())` once stopped.
    pub(super) fn wait(&self, timeout: Duration) -> Result<Wake, ()> {
        let slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut slot, _) = self
            .wake
            .wait_timeout_while(slot, timeout, |s| {
                s.payload.is_none() && !s.rescan && !s.stop
            })
            .unwrap_or_else(PoisonError::into_inner);
        if slot.stop {
            return Err(());
        }
        Ok(Wake {
            payload: slot.payload.take(),
            rescan: std::mem::take(&mut slot.rescan),
        })
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
        let Ok(wake) = inbox.wait(wait) else {
            return;
        };
        if wake.rescan {
            if files.is_empty() {
                log::info!(
                    "SIGHUP: no policy-files to reload (the document comes from the config \
                     topic); other configuration keys need a restart"
                );
            } else {
                // Read now, even if the modification times did not change.
                next_poll = Instant::now();
                seen = None;
            }
        }
        if let Some(payload) = wake.payload {
            // An empty payload is `config clear`: Decision::Cleared, logged.
            let decision = reloader.consider_topic(&payload, SystemTime::now());
            apply(&decision, "config topic", &state, &metrics);
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
        let modified = newest_modification(&files);
        match read_files(&files) {
            Ok(parts) => {
                let decision = reloader.consider_files(&parts, modified);
                apply(&decision, &files_label, &state, &metrics);
                if wake.rescan {
                    log::info!(
                        files = files_label.as_str(), sha256 = reloader.in_force().unwrap_or("none");
                        "SIGHUP: policy files reloaded"
                    );
                }
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
        metrics.set_policy_loaded();
    }
    report(decision, source, metrics);
}

#[cfg(test)]
mod tests;
