//! SPIFFE IDs: the `spiffeIdTemplate` of a policy, its rendering, and the path syntax.
//!
//! [`SpiffeIdTemplate::render`] turns a validated EK's attributes into the agent's SPIFFE ID,
//! checked with [`validate_path`] (`ekattest_protocol::spiffe`, which the X.509-SVID issuer
//! [`crate::svid`] uses too). This module depends on nothing of the crate but the EK's
//! [`Attributes`], so the config loader and the policy selection both build on it without
//! depending on each other.
//!
//! Templates are parsed once, when the document is loaded, so a bad placeholder is a config
//! error and never a per-login surprise. Rendering must never produce an invalid SPIFFE ID
//! (empty segment, `.`/`..` segment, character outside `[A-Za-z0-9._-]`): an attribute the
//! agent lacks is a rejection, never an empty segment. Nothing here logs or panics.
//!
//! Attribute values are copied into the path with every character outside the SPIFFE path
//! alphabet replaced by `_` (the seed's own example renders `tpm_ek.manufacturer`
//! `id:53544D20` as `id_53544D20`). Percent-encoding is not an option: the SPIFFE ID
//! standard (section 2.2) allows only `[A-Za-z0-9._-]` in a path, so `%3A` would make an ID
//! that go-spiffe and every other conforming consumer rejects; rejecting such values would
//! make the seed's example template fail for every TPM that has identity fields.

use std::fmt;

use ekattest_protocol::msg::Method;
use ekattest_protocol::spiffe::is_segment_char;
pub use ekattest_protocol::spiffe::validate_path;

use crate::ek::Attributes;

/// Longest SPIFFE ID we render, trust domain included (the wire limit for SPIFFE IDs).
pub const SPIFFE_ID_MAX: usize = 2048;

/// The template used when a policy has no `spiffeIdTemplate`: every EK has a public hash,
/// so this renders for TPMs with and without an EK certificate.
pub const DEFAULT_SPIFFE_ID_TEMPLATE: &str = "/agents/tpm/{{tpm_ek.public_hash}}";

/// Why no policy applies or a SPIFFE ID cannot be rendered. Agent-caused: reject the login.
///
/// One error for the two steps of the login that turn a policy into an identity:
/// [`Document::select`](crate::config::Document::select) ([`PolicyError::NoPolicy`]) and
/// [`SpiffeIdTemplate::render`] (the other variants). Re-exported as `policy::PolicyError`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// No policy's requiredAttestors are all among the provided methods (seed string).
    #[error("no cluster policy authorizes the provided attestors")]
    NoPolicy {
        /// What the agent offered.
        provided: Vec<Method>,
    },
    /// The template names an attribute the validated EK does not have.
    #[error("SPIFFE ID template names an attribute the agent does not have: {attribute}")]
    MissingAttribute {
        /// The attribute, e.g. `tpm_ek.manufacturer`.
        attribute: &'static str,
    },
    /// The attribute is present but empty, so it cannot form part of a path.
    #[error("SPIFFE ID template names an attribute that is empty for this agent: {attribute}")]
    EmptyAttribute {
        /// The attribute, e.g. `tpm_ek.model`.
        attribute: &'static str,
    },
    /// The rendered path is not a valid SPIFFE ID path (e.g. an attribute value of `..`).
    #[error("rendered SPIFFE ID path {path:?} is invalid: {reason}")]
    InvalidPath {
        /// The rendered path.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The trust domain passed to [`SpiffeIdTemplate::render`] is not a valid SPIFFE trust
    /// domain name (lowercase letters, digits, `.`, `-`, `_`). A server configuration bug.
    #[error("trust domain {0:?} is invalid: use lowercase letters, digits, '.', '-' and '_'")]
    InvalidTrustDomain(String),
    /// The rendered SPIFFE ID exceeds [`SPIFFE_ID_MAX`] bytes.
    #[error("rendered SPIFFE ID is {len} bytes; the limit is {limit}")]
    TooLong {
        /// Rendered length.
        len: usize,
        /// [`SPIFFE_ID_MAX`].
        limit: usize,
    },
}

/// A template that does not parse. The config loader prefixes the field path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A placeholder names no known attribute.
    #[error(
        "unknown attribute in placeholder {placeholder}; known attributes: tpm_ek.public_hash, \
         tpm_ek.serial_number, tpm_ek.manufacturer, tpm_ek.model, tpm_ek.version"
    )]
    UnknownAttribute {
        /// The placeholder as written, e.g. `{{tpm_ek.vendor}}`.
        placeholder: String,
    },
    /// `{{` without a closing `}}`.
    #[error("placeholder opened at byte {offset} is not closed with }}}}")]
    Unclosed {
        /// Byte offset of the `{{`.
        offset: usize,
    },
    /// The template is not a path (`/a/b`), e.g. a full `spiffe://` URI or a relative path.
    #[error("must be a path starting with '/', without the spiffe:// scheme or trust domain")]
    NotAPath,
    /// A literal character outside `[A-Za-z0-9._-/]`.
    #[error("character {ch:?} at byte {offset} is not allowed in a SPIFFE ID path")]
    BadChar {
        /// The character.
        ch: char,
        /// Its byte offset.
        offset: usize,
    },
    /// An empty segment (`//` or a trailing `/`), or a `.`/`..` segment.
    #[error("segment {segment} is {what}")]
    BadSegment {
        /// 1-based segment number.
        segment: usize,
        /// `empty`, `'.'` or `'..'`.
        what: &'static str,
    },
    /// Longer than [`SPIFFE_ID_MAX`].
    #[error("is {len} bytes; the limit is {limit}")]
    TooLong {
        /// Template length.
        len: usize,
        /// [`SPIFFE_ID_MAX`].
        limit: usize,
    },
}

/// An attribute a template may name (origin `tpm_ek`, names as in the seed): the wire
/// protocol's closed set.
pub use ekattest_protocol::msg::AttributeName as Attribute;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Attr(Attribute),
}

/// A parsed `spiffeIdTemplate`: literal path text and `{{tpm_ek.xxx}}` placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffeIdTemplate {
    source: String,
    parts: Vec<Part>,
}

impl Default for SpiffeIdTemplate {
    fn default() -> Self {
        Self {
            source: DEFAULT_SPIFFE_ID_TEMPLATE.to_owned(),
            parts: vec![
                Part::Literal("/agents/tpm/".to_owned()),
                Part::Attr(Attribute::PublicHash),
            ],
        }
    }
}

impl fmt::Display for SpiffeIdTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl SpiffeIdTemplate {
    /// Parses a template such as `/agents/tpm/{{tpm_ek.manufacturer}}/{{tpm_ek.public_hash}}`.
    /// Spaces inside the braces are allowed (`{{ tpm_ek.model }}`).
    ///
    /// # Errors
    /// [`TemplateError`] for an unknown or unclosed placeholder, a literal character outside
    /// the SPIFFE path alphabet, an empty or dot segment, or a template that is not a path.
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        if template.len() > SPIFFE_ID_MAX {
            return Err(TemplateError::TooLong {
                len: template.len(),
                limit: SPIFFE_ID_MAX,
            });
        }
        if !template.starts_with('/') {
            return Err(TemplateError::NotAPath);
        }
        let mut parts = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            let offset = template.len() - rest.len();
            if let Some(inner) = rest.strip_prefix("{{") {
                let close = inner.find("}}").ok_or(TemplateError::Unclosed { offset })?;
                let name = inner.get(..close).unwrap_or_default().trim();
                let attr =
                    Attribute::from_name(name).ok_or_else(|| TemplateError::UnknownAttribute {
                        placeholder: format!("{{{{{}}}}}", inner.get(..close).unwrap_or_default()),
                    })?;
                parts.push(Part::Attr(attr));
                rest = inner.get(close + 2..).unwrap_or_default();
                continue;
            }
            let end = rest.find("{{").unwrap_or(rest.len());
            let literal = rest.get(..end).unwrap_or_default();
            if let Some((i, ch)) = literal.char_indices().find(|&(_, c)| !is_path_char(c)) {
                return Err(TemplateError::BadChar {
                    ch,
                    offset: offset + i,
                });
            }
            parts.push(Part::Literal(literal.to_owned()));
            rest = rest.get(end..).unwrap_or_default();
        }
        check_template_segments(&parts)?;
        Ok(Self {
            source: template.to_owned(),
            parts,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The attributes the template names, in order of appearance.
    pub fn attributes(&self) -> impl Iterator<Item = Attribute> + '_ {
        self.parts.iter().filter_map(|p| match p {
            Part::Attr(a) => Some(*a),
            Part::Literal(_) => None,
        })
    }

    /// Renders the SPIFFE ID for a validated EK: the path alone (`/agents/tpm/...`) when
    /// `trust_domain` is `None`, else `spiffe://{trust_domain}{path}`. Characters of an
    /// attribute value outside `[A-Za-z0-9._-]` become `_` (see the module docs).
    ///
    /// # Errors
    /// [`PolicyError::MissingAttribute`] if the EK lacks a named attribute,
    /// [`PolicyError::EmptyAttribute`], [`PolicyError::InvalidPath`] if the result is not a
    /// valid SPIFFE path, [`PolicyError::InvalidTrustDomain`], [`PolicyError::TooLong`].
    pub fn render(
        &self,
        attrs: &Attributes,
        trust_domain: Option<&str>,
    ) -> Result<String, PolicyError> {
        let mut out = String::new();
        if let Some(td) = trust_domain {
            if td.is_empty() || !td.bytes().all(is_trust_domain_byte) {
                return Err(PolicyError::InvalidTrustDomain(td.to_owned()));
            }
            out.push_str("spiffe://");
            out.push_str(td);
        }
        let path_start = out.len();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Attr(attr) => {
                    let name = attr.as_str();
                    let value = attrs
                        .get(name)
                        .ok_or(PolicyError::MissingAttribute { attribute: name })?;
                    if value.is_empty() {
                        return Err(PolicyError::EmptyAttribute { attribute: name });
                    }
                    if out.len().saturating_add(value.len()) > SPIFFE_ID_MAX {
                        return Err(PolicyError::TooLong {
                            len: out.len().saturating_add(value.len()),
                            limit: SPIFFE_ID_MAX,
                        });
                    }
                    out.extend(
                        value
                            .chars()
                            .map(|c| if is_segment_char(c) { c } else { '_' }),
                    );
                }
            }
        }
        if out.len() > SPIFFE_ID_MAX {
            return Err(PolicyError::TooLong {
                len: out.len(),
                limit: SPIFFE_ID_MAX,
            });
        }
        let path = out.get(path_start..).unwrap_or_default();
        if let Err(reason) = validate_path(path) {
            return Err(PolicyError::InvalidPath {
                path: path.to_owned(),
                reason,
            });
        }
        Ok(out)
    }
}

fn check_template_segments(parts: &[Part]) -> Result<(), TemplateError> {
    // Segments as sequences of literal text and placeholders; a placeholder always renders
    // to a non-empty value, so only all-literal segments can be empty or dots here.
    let mut segments: Vec<(String, bool)> = vec![(String::new(), false)];
    for part in parts {
        match part {
            Part::Attr(_) => {
                if let Some(last) = segments.last_mut() {
                    last.1 = true;
                }
            }
            Part::Literal(text) => {
                let mut pieces = text.split('/');
                if let (Some(first), Some(last)) = (pieces.next(), segments.last_mut()) {
                    last.0.push_str(first);
                }
                segments.extend(pieces.map(|p| (p.to_owned(), false)));
            }
        }
    }
    // The template starts with '/', so the first "segment" is the empty text before it.
    for (i, (literal, has_attr)) in segments.iter().enumerate().skip(1) {
        if *has_attr {
            continue;
        }
        let what = match literal.as_str() {
            "" => "empty",
            "." => "'.'",
            ".." => "'..'",
            _ => continue,
        };
        return Err(TemplateError::BadSegment { segment: i, what });
    }
    Ok(())
}

fn is_path_char(c: char) -> bool {
    is_segment_char(c) || c == '/'
}

fn is_trust_domain_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs() -> Attributes {
        Attributes {
            public_hash: "ab".repeat(32),
            serial_number: Some("4cbd".to_owned()),
            manufacturer: Some("id:53544D20".to_owned()),
            model: Some("ST33HTPHAHB4".to_owned()),
            version: Some("73.4".to_owned()),
        }
    }

    #[test]
    fn default_template_equals_its_parse() {
        let parsed = SpiffeIdTemplate::parse(DEFAULT_SPIFFE_ID_TEMPLATE).unwrap();
        assert_eq!(parsed, SpiffeIdTemplate::default());
    }

    #[test]
    fn spaces_inside_braces_are_accepted() {
        let t = SpiffeIdTemplate::parse("/a/{{ tpm_ek.model }}").unwrap();
        assert_eq!(t.render(&attrs(), None).unwrap(), "/a/ST33HTPHAHB4");
    }

    #[test]
    fn template_segments_are_checked() {
        for (t, seg) in [
            ("/a//{{tpm_ek.model}}", 2),
            ("/a/", 2),
            ("/./x", 1),
            ("/x/..", 2),
        ] {
            match SpiffeIdTemplate::parse(t) {
                Err(TemplateError::BadSegment { segment, .. }) => assert_eq!(segment, seg, "{t}"),
                other => panic!("{t}: {other:?}"),
            }
        }
        assert_eq!(
            SpiffeIdTemplate::parse("/"),
            Err(TemplateError::BadSegment {
                segment: 1,
                what: "empty"
            })
        );
        // A placeholder fills a segment that would otherwise be a dot.
        assert!(SpiffeIdTemplate::parse("/.{{tpm_ek.model}}").is_ok());
    }

    #[test]
    fn unclosed_and_stray_braces_are_errors() {
        assert_eq!(
            SpiffeIdTemplate::parse("/a/{{tpm_ek.model"),
            Err(TemplateError::Unclosed { offset: 3 })
        );
        assert!(matches!(
            SpiffeIdTemplate::parse("/a/}}"),
            Err(TemplateError::BadChar { ch: '}', offset: 3 })
        ));
    }

    #[test]
    fn value_dot_dot_is_rejected_at_render() {
        let t = SpiffeIdTemplate::parse("/a/{{tpm_ek.model}}").unwrap();
        let mut a = attrs();
        a.model = Some("..".to_owned());
        assert!(matches!(
            t.render(&a, None),
            Err(PolicyError::InvalidPath { .. })
        ));
        a.model = Some(String::new());
        assert_eq!(
            t.render(&a, None),
            Err(PolicyError::EmptyAttribute {
                attribute: "tpm_ek.model"
            })
        );
    }

    #[test]
    fn overlong_value_is_rejected() {
        let t = SpiffeIdTemplate::parse("/a/{{tpm_ek.model}}").unwrap();
        let mut a = attrs();
        a.model = Some("m".repeat(SPIFFE_ID_MAX));
        assert!(matches!(
            t.render(&a, None),
            Err(PolicyError::TooLong { .. })
        ));
    }
}
