//! Durations as operators write them in config files and flags: `90s`, `5m`, `1h`, `1h30m`,
//! `250ms`, `2d`. Agent and server configs both take them, so they parse them here, once.
//! Bounded (at most 12 digits per number), overflow-checked, never panics.

use core::fmt;
use core::time::Duration;

/// Not a duration; `Display` says which forms are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationError;

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("is not a duration; write e.g. 90s, 5m, 1h, 1h30m or 500ms")
    }
}

impl core::error::Error for DurationError {}

/// Parses one or more `<number><unit>` pairs (spaces allowed between pairs); units `ms`,
/// `s`, `m`, `h`, `d`.
///
/// # Errors
/// [`DurationError`] for anything else: empty text, a number without a unit, an unknown
/// unit, fractions, signs, or a total that overflows.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(DurationError);
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 12 {
            return Err(DurationError);
        }
        let (number, after) = rest.split_at(digits);
        let n: u64 = number.parse().map_err(|_| DurationError)?;
        let unit_len = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, after) = after.split_at(unit_len);
        let seconds = |per: u64| n.checked_mul(per).map(Duration::from_secs);
        let part = match unit {
            "ms" => Some(Duration::from_millis(n)),
            "s" => Some(Duration::from_secs(n)),
            "m" => seconds(60),
            "h" => seconds(3600),
            "d" => seconds(86_400),
            _ => None,
        };
        total = part
            .and_then(|p| total.checked_add(p))
            .ok_or(DurationError)?;
        rest = after.trim_start();
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_forms() {
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse(" 1h 30m "), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            " ",
            "5",
            "m",
            "5x",
            "-1s",
            "1.5h",
            "5m-",
            "99999999999999h",
            "1 h",
        ] {
            assert_eq!(parse(bad), Err(DurationError), "{bad:?}");
        }
        // 12 digits of days overflow nothing; 12 digits of ms neither; the sum of many
        // large parts must not overflow silently.
        let many = "999999999999d".repeat(100_000 / 13);
        assert_eq!(parse(&many[..]), Err(DurationError));
    }
}
