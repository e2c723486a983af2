//! CPU time of a load run's processes (servers, broker processes, the load generator
//! itself) from `/proc/PID/stat`, sampled when the attestation phase starts and when it
//! ends, so the report can say what one attestation costs each of them and which one the
//! machine's cores were busy with.
//!
//! Read-only: it never signals or waits on a process; a process that is gone (killed by a
//! fault) simply has no figure.

use std::time::Duration;

/// Clock ticks per second of `/proc/PID/stat` (`USER_HZ`: 100 on every Linux architecture
/// this harness runs on; the kernel keeps it fixed for user space whatever `HZ` is).
const USER_HZ: u64 = 100;

/// User plus system CPU time of process `pid` (all its threads) so far.
pub(crate) fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line; the command name (field 2)
/// may hold spaces and parentheses, so fields are counted after its last `)`.
fn parse_stat(stat: &str) -> Option<Duration> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11); // field 3 (state) is the first
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = utime.checked_add(stime)?;
    Some(Duration::from_millis(ticks.checked_mul(1000 / USER_HZ)?))
}

/// One group of processes (e.g. "servers") sampled at the start and at the end.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    /// What the group is, for the report.
    pub(crate) name: String,
    /// (pid, CPU time at the start) of each process that ran then.
    start: Vec<(u32, Duration)>,
}

impl Group {
    /// Samples `pids` now.
    pub(crate) fn start(name: &str, pids: impl IntoIterator<Item = u32>) -> Self {
        Self {
            name: name.to_owned(),
            start: pids
                .into_iter()
                .filter_map(|p| Some((p, cpu_time(p)?)))
                .collect(),
        }
    }

    /// CPU time used since the start by the processes still alive, and how many of the
    /// sampled processes are gone.
    pub(crate) fn used(&self) -> (Duration, usize) {
        let mut used = Duration::ZERO;
        let mut gone = 0;
        for (pid, t0) in &self.start {
            match cpu_time(*pid) {
                Some(t) => used += t.saturating_sub(*t0),
                None => gone += 1,
            }
        }
        (used, gone)
    }
}

/// The report line: each group's CPU seconds and milliseconds per attestation, next to the
/// phase's wall time and the cores available.
pub(crate) fn line(groups: &[Group], attested: usize, wall: Duration) -> String {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let per = |d: Duration| {
        if attested == 0 {
            "n/a".to_owned()
        } else {
            format!("{:.2} ms", d.as_secs_f64() * 1000.0 / attested as f64)
        }
    };
    let mut total = Duration::ZERO;
    let parts: Vec<String> = groups
        .iter()
        .map(|g| {
            let (used, gone) = g.used();
            total += used;
            let gone = if gone > 0 {
                format!(", {gone} killed and not counted")
            } else {
                String::new()
            };
            format!(
                "{} {:.2} s ({} per attestation{gone})",
                g.name,
                used.as_secs_f64(),
                per(used)
            )
        })
        .collect();
    format!(
        "CPU in the attestation phase: {}; together {:.2} s ({} per attestation) in {:.2} s \
         wall on {cores} cores ({:.0}% of them busy)",
        parts.join(", "),
        total.as_secs_f64(),
        per(total),
        wall.as_secs_f64(),
        100.0 * total.as_secs_f64() / (wall.as_secs_f64() * cores as f64).max(1e-9)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "4242 (a) b) (c) S 1 2 3 4 5 6 7 8 9 10 250 130 0 0 20 0 4 0 100 1 2";
        assert_eq!(parse_stat(line), Some(Duration::from_millis(3800)));
        assert_eq!(parse_stat("4242 (x) S 1 2"), None);
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(
            parse_stat("1 (x) S 1 2 3 4 5 6 7 8 9 10 notanumber 1"),
            None
        );
    }

    #[test]
    fn this_process_uses_cpu_and_the_line_names_every_group() {
        let me = std::process::id();
        assert!(cpu_time(me).is_some());
        let g = Group::start("load generator", [me]);
        // Spin until this process has used 100 ms of CPU (bounded by 10 s of wall time on
        // a loaded machine).
        let spin = std::time::Instant::now();
        let mut x = 0u64;
        while g.used().0 < Duration::from_millis(100) && spin.elapsed() < Duration::from_secs(10) {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
        let (used, gone) = g.used();
        assert_eq!(gone, 0);
        assert!(used >= Duration::from_millis(100), "{used:?}");
        let dead = Group::start("nobody", [u32::MAX]);
        assert_eq!(dead.used(), (Duration::ZERO, 0));
        let text = line(&[g, dead], 10, Duration::from_secs(1));
        assert!(text.contains("load generator 0."), "{text}");
        assert!(text.contains("nobody 0.00 s"), "{text}");
        assert!(text.contains("per attestation"), "{text}");
    }
}
