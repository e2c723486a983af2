//! The daemon's Prometheus metrics: counters, a gauge and two histograms on atomics, the
//! text exposition format 0.0.4, and a minimal HTTP/1.1 responder for `GET /metrics`.
//!
//! Every label set is closed (attestor type, outcome, a reason from the closed
//! [`RejectCode`] set, a frame-rejection reason, a reload result, a document-refusal reason) and every series is
//! registered up front, so a scrape shows zeros before the first event and no device ever
//! adds a series. The responder reads at most [`REQUEST_MAX`] bytes per request, answers
//! one request per connection, and never blocks the attestation path.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ekattest_protocol::RejectCode;

use crate::registry::WriterStats;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Largest HTTP request read (request line and headers).
pub const REQUEST_MAX: usize = 8 * 1024;
/// Most scrape connections served at once; more wait in the listen backlog.
const CONNECTIONS_MAX: usize = 16;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Histogram bucket upper bounds, seconds (100 us .. 1 s).
pub const BUCKETS: [f64; 13] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Why a frame was dropped before the attestation logic saw it (`reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameRejection {
    /// The frame did not decode.
    Malformed,
    /// The frame is longer than the largest valid uplink message.
    Oversize,
    /// The topic is not one of ours (or names an invalid id).
    UnknownTopic,
    /// The worker queue was full.
    Busy,
    /// The agent's login rate limit (`login-burst`, `login-interval`) refused the Login.
    RateLimited,
}

impl FrameRejection {
    /// Every reason, in exposition order.
    pub const ALL: [Self; 5] = [
        Self::Malformed,
        Self::Oversize,
        Self::UnknownTopic,
        Self::Busy,
        Self::RateLimited,
    ];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Oversize => "oversize",
            Self::UnknownTopic => "unknown_topic",
            Self::Busy => "busy",
            Self::RateLimited => "rate_limited",
        }
    }
}

/// The `reason` label of a failed proof: the reject code's name in snake_case.
pub const fn reason_label(code: RejectCode) -> &'static str {
    match code {
        RejectCode::NoMatchingPolicy => "no_matching_policy",
        RejectCode::EkNotTrusted => "ek_not_trusted",
        RejectCode::EkChain => "ek_chain",
        RejectCode::ChallengeFailed => "challenge_failed",
        RejectCode::SecretMismatch => "secret_mismatch",
        RejectCode::UnknownSession => "unknown_session",
        RejectCode::PolicyNotFound => "policy_not_found",
        RejectCode::Busy => "busy",
        RejectCode::Malformed => "malformed",
        RejectCode::AkRejected => "ak_rejected",
        RejectCode::EkMismatch => "ek_mismatch",
        RejectCode::TemplateAttribute => "template_attribute",
        RejectCode::SessionExpired => "session_expired",
        RejectCode::UnsupportedVersion => "unsupported_version",
        RejectCode::EkUnsupported => "ek_unsupported",
        RejectCode::Internal => "internal",
        RejectCode::ProofOfPossession => "proof_of_possession",
        RejectCode::AgentIdMismatch => "agent_id_mismatch",
        RejectCode::KeyCertification => "key_certification",
        RejectCode::Banned => "banned",
    }
}

/// A histogram with the fixed [`BUCKETS`].
#[derive(Debug, Default)]
pub struct Histogram {
    /// Non-cumulative counts per bucket; the last slot is `+Inf`.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    /// Sum of observations, nanoseconds.
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let slot = BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(BUCKETS.len());
        if let Some(b) = self.buckets.get(slot) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0u64;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets.get(i).map_or(0, |b| b.load(Ordering::Relaxed));
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self
            .buckets
            .get(BUCKETS.len())
            .map_or(0, |b| b.load(Ordering::Relaxed));
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = Duration::from_nanos(self.sum_nanos.load(Ordering::Relaxed)).as_secs_f64();
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// Why a config-topic policy document was refused before its content was parsed
/// (`attestation_policy_documents_refused_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentRefusal {
    /// No signature trailer.
    Unsigned,
    /// A trailer that does not parse, or an oversized payload.
    Malformed,
    /// Signed for another cluster.
    WrongCluster,
    /// Signed by a key that is not in `policy-signers`.
    UnknownSigner,
    /// The signature does not verify.
    BadSignature,
    /// Issued before the config-topic document in force.
    Stale,
    /// Issued before the policy files last changed.
    OlderThanFiles,
    /// Issued too far in the future (the signer's clock is wrong).
    Future,
}

impl DocumentRefusal {
    /// Every reason, in exposition order.
    pub const ALL: [Self; 8] = [
        Self::Unsigned,
        Self::Malformed,
        Self::WrongCluster,
        Self::UnknownSigner,
        Self::BadSignature,
        Self::Stale,
        Self::OlderThanFiles,
        Self::Future,
    ];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unsigned => "unsigned",
            Self::Malformed => "malformed",
            Self::WrongCluster => "wrong_cluster",
            Self::UnknownSigner => "unknown_signer",
            Self::BadSignature => "bad_signature",
            Self::Stale => "stale",
            Self::OlderThanFiles => "older_than_files",
            Self::Future => "future",
        }
    }
}

/// All of the daemon's metrics. Shared as `Arc<Metrics>`; every method is lock-free.
#[derive(Debug, Default)]
pub struct Metrics {
    proof_success: AtomicU64,
    proof_failed: [AtomicU64; RejectCode::ALL.len()],
    sessions_active: AtomicI64,
    logins: AtomicU64,
    frames_rejected: [AtomicU64; FrameRejection::ALL.len()],
    /// Server time spent on a Login (decode to Challenge ready).
    pub login_duration: Histogram,
    /// Server time spent on an Answer (decode to Result ready).
    pub answer_duration: Histogram,
    reloads_applied: AtomicU64,
    reloads_invalid: AtomicU64,
    documents_refused: [AtomicU64; DocumentRefusal::ALL.len()],
    frame_bytes_in: AtomicU64,
    frame_bytes_out: AtomicU64,
    /// X.509-SVIDs issued for a software key (0) and a TPM-resident key (1).
    svids_issued: [AtomicU64; 2],
    /// Connected to the broker (MQTT CONNACK received, or NATS connected), not lost since.
    broker_connected: AtomicBool,
    /// A policy document is in force.
    policy_loaded: AtomicBool,
    /// The registry writer's counters (none with `registry: {backend: none}`: the series are
    /// then zero).
    registry: OnceLock<Arc<WriterStats>>,
}

impl Metrics {
    /// Exports the registry writer's counters.
    pub fn set_registry(&self, stats: Arc<WriterStats>) {
        let _ = self.registry.set(stats);
    }

    /// A successful proof (an accepted Answer).
    pub fn proof_succeeded(&self) {
        self.proof_success.fetch_add(1, Ordering::Relaxed);
    }

    /// An X.509-SVID issued, for a TPM-resident key (`svid-key: tpm`) or a software key.
    pub fn svid_issued(&self, tpm_key: bool) {
        if let Some(c) = self.svids_issued.get(usize::from(tpm_key)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The bus connection came up (`true`) or was lost (`false`).
    pub fn set_broker_connected(&self, up: bool) {
        self.broker_connected.store(up, Ordering::Relaxed);
    }

    /// A policy document is (now) in force.
    pub fn set_policy_loaded(&self) {
        self.policy_loaded.store(true, Ordering::Relaxed);
    }

    /// Why the server is not ready (`/readyz`): empty when it is (connected to the broker,
    /// and a policy document in force).
    pub fn not_ready(&self) -> Vec<&'static str> {
        let mut why = Vec::new();
        if !self.broker_connected.load(Ordering::Relaxed) {
            why.push("not connected to the broker");
        }
        if !self.policy_loaded.load(Ordering::Relaxed) {
            why.push("no policy document in force");
        }
        why
    }

    /// A failed proof: a rejected Login or Answer.
    pub fn proof_failed(&self, code: RejectCode) {
        if let Some(c) = self.proof_failed.get(usize::from(code.code())) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A Login received (decoded and addressed to a valid agent id).
    pub fn login_received(&self) {
        self.logins.fetch_add(1, Ordering::Relaxed);
    }

    /// A frame dropped or refused before attestation.
    pub fn frame_rejected(&self, why: FrameRejection) {
        if let Some(c) = self.frames_rejected.get(why as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Payload bytes of a frame received from the broker (any topic, before any check).
    pub fn frame_received(&self, payload_len: usize) {
        self.frame_bytes_in.fetch_add(
            u64::try_from(payload_len).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Payload bytes of a frame published to the broker (Challenge or Result).
    pub fn frame_published(&self, payload_len: usize) {
        self.frame_bytes_out.fetch_add(
            u64::try_from(payload_len).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Sets the pending-session gauge.
    pub fn set_sessions_active(&self, n: usize) {
        self.sessions_active
            .store(i64::try_from(n).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    /// A policy document applied (`true`) or refused as invalid (`false`).
    pub fn policy_reload(&self, applied: bool) {
        let c = if applied {
            &self.reloads_applied
        } else {
            &self.reloads_invalid
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// A config-topic document refused before its content was considered.
    pub fn document_refused(&self, why: DocumentRefusal) {
        if let Some(c) = self.documents_refused.get(why as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        out.push_str(
            "# HELP attestation_signer_proof Attestation proofs checked by this server, by outcome.\n\
             # TYPE attestation_signer_proof counter\n",
        );
        let _ = writeln!(
            out,
            "attestation_signer_proof{{attestor_type=\"tpm_ek\",outcome=\"success\"}} {}",
            load(&self.proof_success)
        );
        for code in RejectCode::ALL {
            let n = self
                .proof_failed
                .get(usize::from(code.code()))
                .map_or(0, load);
            let _ = writeln!(
                out,
                "attestation_signer_proof{{attestor_type=\"tpm_ek\",outcome=\"failed\",reason=\"{}\"}} {n}",
                reason_label(*code)
            );
        }
        out.push_str(
            "# HELP attestation_svids_issued_total X.509-SVIDs issued, by where the key lives (tpm: certified by the AK).\n\
             # TYPE attestation_svids_issued_total counter\n",
        );
        for (key, c) in ["software", "tpm"].iter().zip(&self.svids_issued) {
            let _ = writeln!(
                out,
                "attestation_svids_issued_total{{key=\"{key}\"}} {}",
                load(c)
            );
        }
        out.push_str(
            "# HELP ekattest_build_info The running ekattest-server's version and git commit (value 1).\n\
             # TYPE ekattest_build_info gauge\n",
        );
        let _ = writeln!(
            out,
            "ekattest_build_info{{version=\"{}\",commit=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            env!("EKATTEST_GIT_COMMIT")
        );
        out.push_str(
            "# HELP attestation_broker_connected 1 while connected to the broker (MQTT or NATS), else 0.\n\
             # TYPE attestation_broker_connected gauge\n",
        );
        let _ = writeln!(
            out,
            "attestation_broker_connected {}",
            u8::from(self.broker_connected.load(Ordering::Relaxed))
        );
        out.push_str(
            "# HELP attestation_sessions_active Challenge sessions pending on this node.\n\
             # TYPE attestation_sessions_active gauge\n",
        );
        let _ = writeln!(
            out,
            "attestation_sessions_active {}",
            self.sessions_active.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP attestation_logins_total Login messages received.\n\
             # TYPE attestation_logins_total counter\n",
        );
        let _ = writeln!(out, "attestation_logins_total {}", load(&self.logins));
        out.push_str(
            "# HELP attestation_frames_rejected_total Frames refused before attestation, by reason.\n\
             # TYPE attestation_frames_rejected_total counter\n",
        );
        for why in FrameRejection::ALL {
            let n = self.frames_rejected.get(why as usize).map_or(0, load);
            let _ = writeln!(
                out,
                "attestation_frames_rejected_total{{reason=\"{}\"}} {n}",
                why.as_str()
            );
        }
        self.login_duration.render(
            &mut out,
            "attestation_login_duration_seconds",
            "Server time to process a Login, seconds.",
        );
        self.answer_duration.render(
            &mut out,
            "attestation_answer_duration_seconds",
            "Server time to process an Answer, seconds.",
        );
        out.push_str(
            "# HELP attestation_policy_reloads_total Policy documents considered, by result.\n\
             # TYPE attestation_policy_reloads_total counter\n",
        );
        let _ = writeln!(
            out,
            "attestation_policy_reloads_total{{result=\"applied\"}} {}",
            load(&self.reloads_applied)
        );
        let _ = writeln!(
            out,
            "attestation_policy_reloads_total{{result=\"invalid\"}} {}",
            load(&self.reloads_invalid)
        );
        out.push_str(
            "# HELP attestation_policy_documents_refused_total Config-topic policy documents \
             refused before parsing (signature, cluster, ordering), by reason.\n\
             # TYPE attestation_policy_documents_refused_total counter\n",
        );
        for why in DocumentRefusal::ALL {
            let n = self.documents_refused.get(why as usize).map_or(0, load);
            let _ = writeln!(
                out,
                "attestation_policy_documents_refused_total{{reason=\"{}\"}} {n}",
                why.as_str()
            );
        }
        out.push_str(
            "# HELP attestation_frame_bytes_total Payload bytes of frames received (in) and published (out).\n\
             # TYPE attestation_frame_bytes_total counter\n",
        );
        let _ = writeln!(
            out,
            "attestation_frame_bytes_total{{direction=\"in\"}} {}",
            load(&self.frame_bytes_in)
        );
        let _ = writeln!(
            out,
            "attestation_frame_bytes_total{{direction=\"out\"}} {}",
            load(&self.frame_bytes_out)
        );
        self.render_registry(&mut out);
        out
    }

    fn render_registry(&self, out: &mut String) {
        let zero = WriterStats::default();
        let r = self.registry.get().map_or(&zero, |s| s.as_ref());
        for (name, kind, help, value) in [
            (
                "attestation_registry_events_written_total",
                "counter",
                "Attestation outcomes written to the registry.",
                r.written.load(Ordering::Relaxed).to_string(),
            ),
            (
                "attestation_registry_events_dropped_total",
                "counter",
                "Attestation outcomes dropped because the registry queue (queue-max) was full.",
                r.dropped.load(Ordering::Relaxed).to_string(),
            ),
            (
                "attestation_registry_write_failures_total",
                "counter",
                "Registry batches that failed to write (kept and retried).",
                r.failures.load(Ordering::Relaxed).to_string(),
            ),
            (
                "attestation_registry_queue",
                "gauge",
                "Attestation outcomes waiting to be written to the registry.",
                r.queued.load(Ordering::Relaxed).to_string(),
            ),
            (
                "attestation_ek_agent_id_conflicts_total",
                "counter",
                "EKs accepted under a second agent id within registry.duplicate-window.",
                r.conflicts.load(Ordering::Relaxed).to_string(),
            ),
            (
                "attestation_bans",
                "gauge",
                "Bans (EKs and agent ids) in force on this node.",
                r.bans.load(Ordering::Relaxed).to_string(),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
    }
}

/// Binds the metrics listener (done before the daemon starts, so a taken port fails fast).
///
/// # Errors
/// The bind error.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `GET /metrics`, `/healthz` (the process answers) and `/readyz` (connected to the
/// broker with a policy document in force; 503 naming what is missing) on `listener` until
/// the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                log::warn!(error:% = e; "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            if let Err(e) = respond(stream, &metrics).await {
                log::debug!(peer:% = peer, error:% = e; "metrics request failed");
            }
            drop(permit);
        });
    }
}

/// Reads one request (bounded in size and time) and writes the response.
async fn respond(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut buf = vec![0u8; REQUEST_MAX];
    let mut len = 0;
    let head_end = tokio::time::timeout(REQUEST_TIMEOUT, async {
        loop {
            if let Some(end) = find_head_end(buf.get(..len).unwrap_or_default()) {
                return Ok(Some(end));
            }
            let Some(free) = buf.get_mut(len..) else {
                return Ok(None);
            };
            if free.is_empty() {
                return Ok(None);
            }
            let n = stream.read(free).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed before the end of the request",
                ));
            }
            len += n;
        }
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request timed out"))??;
    let response = match head_end {
        None => plain(
            431,
            "Request Header Fields Too Large",
            "request too large\n",
        ),
        Some(end) => route(buf.get(..end).unwrap_or_default(), metrics),
    };
    stream.write_all(&response).await?;
    stream.shutdown().await
}

fn find_head_end(bytes: &[u8]) -> Option<usize> {
    bytes.windows(4).position(|w| w == b"\r\n\r\n")
}

/// The response to a request whose head is `head` (without the final blank line).
pub fn route(head: &[u8], metrics: &Metrics) -> Vec<u8> {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, target) = (parts.next(), parts.next());
    let path = target.map(|t| t.split(|&b| b == b'?').next().unwrap_or_default());
    match (method, path) {
        (Some(b"GET"), Some(b"/metrics")) => response(
            200,
            "OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render().as_bytes(),
        ),
        (Some(b"GET"), Some(b"/healthz")) => plain(200, "OK", "ok\n"),
        (Some(b"GET"), Some(b"/readyz")) => {
            let why = metrics.not_ready();
            if why.is_empty() {
                plain(200, "OK", "ready\n")
            } else {
                plain(
                    503,
                    "Service Unavailable",
                    &format!("not ready: {}\n", why.join("; ")),
                )
            }
        }
        (Some(b"GET"), Some(_)) => plain(
            404,
            "Not Found",
            "not found; try /metrics, /healthz or /readyz\n",
        ),
        (Some(_), Some(_)) => plain(405, "Method Not Allowed", "only GET is supported\n"),
        _ => plain(400, "Bad Request", "bad request\n"),
    }
}

fn plain(status: u16, reason: &str, body: &str) -> Vec<u8> {
    response(status, reason, "text/plain; charset=utf-8", body.as_bytes())
}

fn response(status: u16, reason: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests;
