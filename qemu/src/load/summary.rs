//! The load report's notes built from the device threads' results: merging them, one line
//! per thread that failed over or did not finish, and the run-wide totals (bytes, retries,
//! reconnects, duplicates, memory, rejection reasons). Pure formatting over numbers the
//! run collected; it starts and stops nothing.

use super::LoadOptions;
use super::worker::WorkerResult;

/// Adds one thread's result to the total.
pub(super) fn merge(into: &mut WorkerResult, r: WorkerResult) {
    into.attested += r.attested;
    into.rejected += r.rejected;
    into.errors += r.errors;
    into.retries += r.retries;
    into.retried_devices += r.retried_devices;
    into.time_to_identity.extend(r.time_to_identity);
    into.wire_bytes += r.wire_bytes;
    into.signatures_checked += r.signatures_checked;
    into.challenges_checked += r.challenges_checked;
    into.reconnects += r.reconnects;
    into.failovers += r.failovers;
    into.refused_subscriptions += r.refused_subscriptions;
    into.duplicates += r.duplicates;
    into.lost_publishes += r.lost_publishes;
    into.corrupt_retries += r.corrupt_retries;
    into.records.extend(r.records);
    into.attested_keys.extend(r.attested_keys);
    for (k, v) in r.reasons {
        *into.reasons.entry(k).or_default() += v;
    }
}

/// A line for thread `t` if its connection failed over, a subscription was refused, a
/// publish was lost or devices were left unfinished.
pub(super) fn thread_line(t: usize, r: &WorkerResult) -> Option<String> {
    if r.failovers == 0
        && r.unfinished == 0
        && r.lost_publishes == 0
        && r.refused_subscriptions == 0
    {
        return None;
    }
    let or = |s: &str, none: &'static str| {
        if s.is_empty() {
            none.to_owned()
        } else {
            s.to_owned()
        }
    };
    Some(format!(
        "device thread {t}: started on {}, {} failover(s), {} subscription(s) refused, ended \
         on {}, {} publishes lost with a dying connection, {} devices unfinished; last \
         connection failure: {}",
        r.first_broker,
        r.failovers,
        r.refused_subscriptions,
        or(&r.last_broker, "no broker"),
        r.lost_publishes,
        r.unfinished,
        or(&r.last_lost, "none")
    ))
}

/// Peak resident set size (VmHWM, KiB) of process `pid`.
pub(super) fn vm_hwm(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The run-wide notes; returns the bytes per attestation (None when nothing attested).
pub(super) fn totals_notes(
    opts: &LoadOptions,
    total: &WorkerResult,
    server_success: f64,
    notes: &mut Vec<String>,
) -> Option<f64> {
    let bytes = (total.attested > 0).then(|| total.wire_bytes as f64 / total.attested as f64);
    if let Some(b) = bytes {
        notes.push(format!(
            "bytes per attestation: MQTT PUBLISH + PUBACK of Login, Challenge, Answer and \
             Result, as counted by the devices (retries included; no TCP/IP headers, no \
             per-connection CONNECT/SUBSCRIBE); soft devices send no EK certificate: with an \
             RSA EK certificate of {} bytes a Login grows by {} bytes, i.e. {:.0} bytes per \
             attestation",
            opts.ek_cert_bytes,
            opts.ek_cert_bytes + 2,
            b + (opts.ek_cert_bytes + 2) as f64
        ));
    }
    notes.push(format!(
        "{} threads, window {} per thread, attempt timeout {:.1} s, subscriptions {:?}; {} \
         retries on {} devices ({} at once after a damaged frame or a rejection); {} \
         reconnects ({} to another broker); {} Result signatures verified; servers counted \
         {} successes; {} Challenge signatures verified",
        opts.threads,
        opts.window,
        opts.timeout.as_secs_f64(),
        opts.subscribe,
        total.retries,
        total.retried_devices,
        total.corrupt_retries,
        total.reconnects,
        total.failovers,
        total.signatures_checked,
        server_success,
        total.challenges_checked
    ));
    notes.push(format!(
        "{} duplicate identities (an Accepted Result for a device already attested)",
        total.duplicates
    ));
    if let Some(kb) = vm_hwm(std::process::id()) {
        notes.push(format!(
            "load generator peak RSS {kb} KiB (all simulated devices)"
        ));
    }
    for (reason, n) in &total.reasons {
        notes.push(format!("{n} x {reason}"));
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_threads_get_no_line_and_troubled_ones_say_why() {
        let mut r = WorkerResult {
            first_broker: "127.0.0.1:1".into(),
            ..WorkerResult::default()
        };
        assert_eq!(thread_line(0, &r), None);
        r.failovers = 2;
        r.last_lost = "I/O: Connection refused".into();
        let line = thread_line(3, &r).unwrap_or_default();
        assert!(line.starts_with("device thread 3: started on 127.0.0.1:1, 2 failover(s)"));
        assert!(line.contains("ended on no broker"), "{line}");
        assert!(line.ends_with("last connection failure: I/O: Connection refused"));

        let mut total = WorkerResult::default();
        merge(&mut total, r);
        let other = WorkerResult {
            attested: 5,
            duplicates: 1,
            ..WorkerResult::default()
        };
        merge(&mut total, other);
        assert_eq!(
            (total.failovers, total.attested, total.duplicates),
            (2, 5, 1)
        );
        let mut notes = Vec::new();
        let opts = LoadOptions::default();
        assert_eq!(totals_notes(&opts, &total, 5.0, &mut notes), Some(0.0));
        assert!(
            notes.iter().any(|n| n
                == "1 duplicate identities (an Accepted Result for a device already attested)"),
            "{notes:?}"
        );
        assert!(
            notes.iter().any(|n| n.contains("(2 to another broker)")),
            "{notes:?}"
        );
    }
}
