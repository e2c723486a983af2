//! RFC 3339 UTC timestamps for the JSON log lines of both daemons (`"time"`), formatted
//! here once so the agent's and the server's lines agree to the character. Pure arithmetic on
//! unix time: no clock is read here, nothing allocates, nothing panics.

use core::fmt;

/// A unix time with milliseconds that displays as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rfc3339 {
    secs: u64,
    millis: u32,
}

impl Rfc3339 {
    /// `secs` since 1970-01-01 UTC plus `millis` (clamped to 999).
    #[must_use]
    pub fn new(secs: u64, millis: u32) -> Self {
        Self {
            secs,
            millis: millis.min(999),
        }
    }
}

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (days, rem) = (self.secs / 86_400, self.secs % 86_400);
        let (year, month, day) = civil_from_days(days);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60,
            self.millis
        )
    }
}

/// A unix time in whole seconds that displays as `YYYY-MM-DDTHH:MM:SSZ` (signed policy
/// documents' issue times, certificate dates in messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcSeconds(pub u64);

impl fmt::Display for UtcSeconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (days, rem) = (self.0 / 86_400, self.0 % 86_400);
        let (year, month, day) = civil_from_days(days);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (H. Hinnant's `civil_from_days`, on unsigned numbers).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days.saturating_add(719_468);
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::Rfc3339;
    use std::string::ToString as _;

    #[test]
    fn matches_known_instants() {
        assert_eq!(Rfc3339::new(0, 0).to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            Rfc3339::new(1_700_000_000, 42).to_string(),
            "2023-11-14T22:13:20.042Z"
        );
        // A leap day, the end of a century year, and `date -u -d @1234567890`.
        assert_eq!(
            Rfc3339::new(951_782_400, 0).to_string(),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            Rfc3339::new(4_102_444_799, 999).to_string(),
            "2099-12-31T23:59:59.999Z"
        );
        assert_eq!(
            Rfc3339::new(1_234_567_890, 5000).to_string(),
            "2009-02-13T23:31:30.999Z"
        );
    }

    #[test]
    fn whole_seconds_drop_the_fraction() {
        use super::UtcSeconds;
        assert_eq!(UtcSeconds(0).to_string(), "1970-01-01T00:00:00Z");
        assert_eq!(UtcSeconds(951_782_400).to_string(), "2000-02-29T00:00:00Z");
        assert_eq!(
            UtcSeconds(1_800_000_000).to_string(),
            "2027-01-15T08:00:00Z"
        );
    }
}
