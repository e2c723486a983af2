//! SPIFFE ID syntax (SPIFFE ID specification, section 2.2): the path check shared by the
//! server's SPIFFE ID templates and its X.509-SVID issuer.
//!
//! A path is `/`-separated non-empty segments of `[A-Za-z0-9._-]`, none equal to `.` or
//! `..`. Pure string checks: no allocation, never panics.

/// Checks a path against SPIFFE ID section 2.2: `/`-separated non-empty segments of
/// `[A-Za-z0-9._-]`, none equal to `.` or `..`. The empty path is not accepted (an agent ID
/// always has one).
///
/// # Errors
/// A short reason.
pub fn validate_path(path: &str) -> Result<(), &'static str> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err("does not start with '/'");
    };
    for segment in rest.split('/') {
        match segment {
            "" => return Err("has an empty segment"),
            "." | ".." => return Err("has a '.' or '..' segment"),
            s if !s.chars().all(is_segment_char) => {
                return Err("has a character outside [A-Za-z0-9._-]");
            }
            _ => {}
        }
    }
    Ok(())
}

/// True if `c` may appear in a SPIFFE ID path segment: `[A-Za-z0-9._-]`.
#[must_use]
pub fn is_segment_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}
