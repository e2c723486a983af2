//! PEM certificate bundles (`caCerts`, `intermediateCerts`) to DER, strictly.
//!
//! Text outside `-----BEGIN ...-----`/`-----END ...-----` lines is ignored (vendor bundles
//! such as keylime's carry an `openssl x509 -text` dump above each block). Inside, every
//! block must be a `CERTIFICATE` with valid base64 that the EK layer can parse. Unlike Go's
//! `AppendCertsFromPEM`, a bad block next to good ones is an error, not silently dropped:
//! a CA that quietly vanishes from the trust store shows up much later as devices rejected
//! for no visible reason. When no block is usable the error carries the seed's text
//! (`caCerts: could not parse any PEM certificates`).
//!
//! Expired or not-yet-valid certificates are accepted with a warning (chain validation then
//! fails for paths through them): vendor bundles such as keylime's carry CAs that expired
//! (an Infineon intermediate, 2025) next to current ones, and refusing the whole document
//! would lock out every fleet that pastes such a bundle, and with it the devices of all the
//! valid CAs. Never panics.

use std::fmt;
use std::time::SystemTime;

use super::ConfigError;
use crate::ek::{ChainOptions, EkError, TrustStore};

/// What is wrong with a `caCerts`/`intermediateCerts` value or one of its PEM blocks.
/// Lines count from 1 within the field's value; [`crate::config::Document::parse`] reports
/// them as lines of the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PemProblem {
    /// No `-----BEGIN` line at all.
    NoBlock,
    /// `-----BEGIN` without a matching `-----END`.
    Unterminated {
        /// Line of the BEGIN.
        line: usize,
    },
    /// `-----END` without a `-----BEGIN`.
    StrayEnd {
        /// Line of the END.
        line: usize,
    },
    /// A block of another type (e.g. `PUBLIC KEY`, `PRIVATE KEY`).
    NotCertificate {
        /// Line of the BEGIN.
        line: usize,
        /// The block's label.
        label: String,
    },
    /// The body is not valid base64.
    Base64 {
        /// Line of the BEGIN.
        line: usize,
        /// The decoder's message.
        detail: String,
    },
    /// The DER does not parse as a certificate.
    Certificate {
        /// Line of the BEGIN.
        line: usize,
        /// The parser's message.
        detail: String,
    },
}

impl PemProblem {
    /// The same problem with its line moved down by `by` (a line of the field's value made
    /// a line of the document).
    #[must_use]
    pub fn offset_lines(self, by: usize) -> Self {
        match self {
            Self::NoBlock => Self::NoBlock,
            Self::Unterminated { line } => Self::Unterminated { line: line + by },
            Self::StrayEnd { line } => Self::StrayEnd { line: line + by },
            Self::NotCertificate { line, label } => Self::NotCertificate {
                line: line + by,
                label,
            },
            Self::Base64 { line, detail } => Self::Base64 {
                line: line + by,
                detail,
            },
            Self::Certificate { line, detail } => Self::Certificate {
                line: line + by,
                detail,
            },
        }
    }
}

impl fmt::Display for PemProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PemProblem::NoBlock => f.write_str("no -----BEGIN CERTIFICATE----- block found"),
            PemProblem::Unterminated { line } => {
                write!(
                    f,
                    "the BEGIN line at line {line} has no matching -----END line"
                )
            }
            PemProblem::StrayEnd { line } => {
                write!(f, "the END line at line {line} has no -----BEGIN line")
            }
            PemProblem::NotCertificate { line, label } => {
                write!(
                    f,
                    "the block at line {line} is a {label:?}, expected CERTIFICATE"
                )
            }
            PemProblem::Base64 { line, detail } => {
                write!(f, "the block at line {line} is not valid base64 ({detail})")
            }
            PemProblem::Certificate { line, detail } => {
                write!(
                    f,
                    "the certificate at line {line} cannot be parsed ({detail})"
                )
            }
        }
    }
}

/// The DER certificates of one field, each checked by the EK layer's parser; adds validity
/// warnings prefixed with `path`.
pub(super) fn certificates(
    text: &str,
    path: &str,
    opts: ChainOptions,
    now: SystemTime,
    warnings: &mut Vec<String>,
) -> Result<Vec<Vec<u8>>, ConfigError> {
    let mut blocks = split(text);
    if blocks.is_empty() {
        return Err(ConfigError::NoPemCertificates {
            path: path.to_owned(),
            problem: PemProblem::NoBlock,
        });
    }
    let mut validity: Vec<(usize, Vec<String>)> = Vec::new();
    for (i, (line, block)) in blocks.iter_mut().enumerate() {
        if let Ok(der) = block {
            // One certificate per store, so a failure names its block.
            match TrustStore::new(vec![der.clone()], Vec::new(), opts) {
                Ok(store) => validity.push((i, store.not_valid_at(now))),
                Err(e) => {
                    let detail = match e {
                        EkError::Config { source, .. } => source.to_string(),
                        other => other.to_string(),
                    };
                    *block = Err(PemProblem::Certificate {
                        line: *line,
                        detail,
                    });
                }
            }
        }
    }
    let total = blocks.len();
    let good = blocks.iter().filter(|(_, b)| b.is_ok()).count();
    if let Some((index, problem)) = blocks
        .iter()
        .enumerate()
        .find_map(|(i, (_, b))| b.as_ref().err().map(|p| (i, p.clone())))
    {
        return Err(if good == 0 {
            ConfigError::NoPemCertificates {
                path: path.to_owned(),
                problem,
            }
        } else {
            ConfigError::PemBlock {
                path: path.to_owned(),
                block: index + 1,
                blocks: total,
                problem,
            }
        });
    }
    for (i, findings) in validity {
        for f in findings {
            warnings.push(format!(
                "{path}: certificate {} of {total} is outside its validity period: {f}; EK \
                 certificates that chain through it fail chain validation until it is replaced \
                 (allowedHashes are unaffected)",
                i + 1
            ));
        }
    }
    Ok(blocks.into_iter().filter_map(|(_, b)| b.ok()).collect())
}

type Block = (usize, Result<Vec<u8>, PemProblem>);

/// Splits `text` into PEM blocks: (line of BEGIN, DER or problem). Structural problems
/// (a BEGIN without END, an END without BEGIN) become failed blocks.
fn split(text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    // (line of BEGIN, label, base64 body)
    let mut open: Option<(usize, &str, String)> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        // `cat a.pem b.pem` with `a.pem` lacking its final newline (most vendor files do)
        // yields `-----END CERTIFICATE----------BEGIN CERTIFICATE-----` on one line.
        for l in line_pieces(raw.trim()) {
            if let Some(label) = marker(l, "-----BEGIN ") {
                if let Some((begin, _, _)) = open.take() {
                    blocks.push((begin, Err(PemProblem::Unterminated { line: begin })));
                }
                open = Some((line, label, String::new()));
            } else if let Some(label) = marker(l, "-----END ") {
                match open.take() {
                    None => blocks.push((line, Err(PemProblem::StrayEnd { line }))),
                    Some((begin, begin_label, _)) if begin_label != label => {
                        blocks.push((begin, Err(PemProblem::Unterminated { line: begin })));
                    }
                    Some((begin, label, body)) => {
                        blocks.push((begin, decode(begin, label, &body)));
                    }
                }
            } else if let Some((_, _, body)) = open.as_mut() {
                body.push_str(l);
                body.push('\n');
            }
        }
    }
    if let Some((begin, _, _)) = open {
        blocks.push((begin, Err(PemProblem::Unterminated { line: begin })));
    }
    blocks
}

/// Splits a line before every `-----BEGIN ` that does not start it and after every
/// `-----END LABEL-----`, so markers glued to each other or to text stand alone.
fn line_pieces(line: &str) -> Vec<&str> {
    const END: &str = "-----END ";
    let mut out = Vec::new();
    let mut rest = line;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix(END)
            && let Some(i) = after.find("-----")
        {
            let cut = END.len() + i + "-----".len();
            if let (Some(marker), Some(next)) = (rest.get(..cut), rest.get(cut..)) {
                out.push(marker);
                rest = next.trim_start();
                continue;
            }
        }
        match rest.get(1..).and_then(|t| t.find("-----BEGIN ")) {
            Some(i) => {
                let (piece, next) = (rest.get(..=i), rest.get(i + 1..));
                out.extend(piece);
                rest = next.unwrap_or_default();
            }
            None => {
                out.push(rest);
                break;
            }
        }
    }
    out
}

/// `-----BEGIN LABEL-----` -> `LABEL`.
fn marker<'a>(line: &'a str, prefix: &str) -> Option<&'a str> {
    line.strip_prefix(prefix)?.strip_suffix("-----")
}

fn decode(line: usize, label: &str, body: &str) -> Result<Vec<u8>, PemProblem> {
    if label != "CERTIFICATE" {
        return Err(PemProblem::NotCertificate {
            line,
            label: label.to_owned(),
        });
    }
    let block = format!("-----BEGIN {label}-----\n{body}-----END {label}-----\n");
    let pem = pem::parse(block).map_err(|e| PemProblem::Base64 {
        line,
        detail: e.to_string(),
    })?;
    if pem.contents().is_empty() {
        return Err(PemProblem::Base64 {
            line,
            detail: "empty body".to_owned(),
        });
    }
    Ok(pem.into_contents())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_reports_structure_problems() {
        let b = split("junk\n-----END CERTIFICATE-----\n");
        assert_eq!(b, vec![(2, Err(PemProblem::StrayEnd { line: 2 }))]);
        let b = split("-----BEGIN CERTIFICATE-----\nAAAA\n");
        assert_eq!(b, vec![(1, Err(PemProblem::Unterminated { line: 1 }))]);
        let b = split("x\n-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n");
        assert!(matches!(
            &b[..],
            [(2, Err(PemProblem::NotCertificate { line: 2, .. }))]
        ));
        let b = split("-----BEGIN CERTIFICATE-----\nMIIBxTCCAW...\n-----END CERTIFICATE-----\n");
        assert!(matches!(
            &b[..],
            [(1, Err(PemProblem::Base64 { line: 1, .. }))]
        ));
        let b = split("-----BEGIN CERTIFICATE-----\nAAEC\n-----END CERTIFICATE-----\n");
        assert_eq!(b, vec![(1, Ok(vec![0, 1, 2]))]);
        assert!(split("no pem here").is_empty());
        let two = "-----BEGIN CERTIFICATE-----\nAAEC\n-----END CERTIFICATE----------BEGIN CERTIFICATE-----\nAAED\n-----END CERTIFICATE-----";
        assert_eq!(
            split(two),
            vec![(1, Ok(vec![0, 1, 2])), (3, Ok(vec![0, 1, 3]))]
        );
        let text_after =
            "-----BEGIN CERTIFICATE-----\nAAEC\n-----END CERTIFICATE-----Certificate:\n";
        assert_eq!(split(text_after), vec![(1, Ok(vec![0, 1, 2]))]);
        assert_eq!(
            line_pieces("a-----BEGIN X-----"),
            vec!["a", "-----BEGIN X-----"]
        );
    }
}
