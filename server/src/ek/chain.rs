//! Certification path building from the EK certificate to a configured trust anchor.
//!
//! Every configured CA certificate is a trust anchor, self-signed or not (STMicro's RSA root
//! is cross-signed by GlobalSign). Candidate issuers come from the configured intermediates
//! and the certificates the device sent; they are matched by subject DN (bytes, or normalised)
//! and by AKI/SKI when both are present, and alternatives with the same subject are tried in
//! turn (depth-first, with backtracking). Every certificate in the path, anchor included, must
//! be within its validity period (the EK certificate itself may be outside it with
//! `acceptExpiredEk`, [`ChainOptions::accept_expired_ek`]); every issuer must be a CA
//! (basicConstraints cA) with keyCertSign when keyUsage is present, and respect
//! pathLenConstraint.
//!
//! Before any path is searched, the EK certificate itself must not be a CA certificate: not
//! one of the configured caCerts or intermediateCerts (reported as such), and not a
//! certificate whose basicConstraints says cA. Both fail the chain check whatever
//! `ekProfileCheck` says (the seed: the EK certificate "must not be a CA certificate").
//! A path that ends at a self-signed certificate which is not a configured CA is reported as
//! that (an untrusted root, or a self-signed EK certificate), not as a missing issuer.
//!
//! Work is bounded: at most `max_depth` certificates in a path, [`SIGNATURE_BUDGET`] signature
//! verifications and [`STEP_BUDGET`] candidate evaluations per call, no recursion. A loop
//! (A issued B issued A) ends because a certificate is never used twice in one path. This
//! module must never accept a path whose every signature it has not verified.

use super::cert::{Cert, format_time};
use super::profile::ProfileError;
use super::signature::SigFailure;
use super::types::{CertError, ChainOptions};

/// Most signature verifications one path search may do.
pub const SIGNATURE_BUDGET: usize = 32;
/// Most candidate issuers one path search may consider.
pub const STEP_BUDGET: usize = 512;

/// Why the EK certificate did not chain to a configured CA.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The device sent no EK certificate (a raw-key TPM).
    #[error("the device sent no EK certificate")]
    NoCertificate,
    /// The EK certificate does not parse. (The parser's reason is part of the message, so it
    /// is not also a `source`: error chains would print it twice.)
    #[error("EK certificate: {0}")]
    Certificate(CertError),
    /// The EK certificate is one of the policy's configured CA certificates.
    #[error(
        "the EK certificate is {field} certificate {index} of this policy ({cert}): the device \
         sent a CA certificate instead of its own EK certificate"
    )]
    EkIsConfiguredCa {
        /// `caCerts` or `intermediateCerts`.
        field: &'static str,
        /// Position in that list (0-based).
        index: usize,
        /// The certificate.
        cert: String,
    },
    /// The EK certificate says cA in basicConstraints.
    #[error(
        "EK certificate {cert} is a CA certificate (basicConstraints cA): an EK certificate \
         never is; rejected in every ekProfileCheck mode"
    )]
    EkIsCa {
        /// The certificate.
        cert: String,
    },
    /// The EK certificate is past its notAfter (and acceptExpiredEk is off).
    #[error(
        "EK certificate {cert} expired on {not_after} (notAfter); if this TPM is still trusted, \
         set acceptExpiredEk: true in the policy's tpm_ek config to accept EK certificates \
         outside their validity period whose chain is otherwise valid"
    )]
    EkExpired {
        /// The certificate.
        cert: String,
        /// notAfter.
        not_after: String,
    },
    /// The EK certificate is before its notBefore (and acceptExpiredEk is off).
    #[error(
        "EK certificate {cert} is not valid before {not_before} (notBefore); check the server's \
         clock, or set acceptExpiredEk: true in the policy's tpm_ek config to accept EK \
         certificates outside their validity period whose chain is otherwise valid"
    )]
    EkNotYetValid {
        /// The certificate.
        cert: String,
        /// notBefore.
        not_before: String,
    },
    /// The EK certificate is self-signed (its issuer is its own subject).
    #[error(
        "EK certificate {cert} is self-signed and not among the configured caCerts: an EK \
         certificate is issued by the TPM vendor's CA; configure that CA in caCerts, or list \
         the key in allowedHashes"
    )]
    SelfSignedEk {
        /// The certificate.
        cert: String,
    },
    /// The path reached a self-signed root that is not a configured CA.
    #[error(
        "{cert} (depth {depth}) is a self-signed root certificate that is not among the \
         configured caCerts; add it to caCerts if it is a TPM vendor root you trust"
    )]
    UntrustedRoot {
        /// The root.
        cert: String,
        /// Its position.
        depth: usize,
    },
    /// More chain certificates than allowed.
    #[error("device sent {count} chain certificates, more than the limit of {limit}")]
    TooManyChainCerts {
        /// Count sent.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// No configured or presented certificate has the issuer's name (and key identifier).
    #[error(
        "no configured CA or intermediate certificate issued {cert} (issuer '{issuer}', depth {depth})"
    )]
    NoIssuer {
        /// The certificate whose issuer is missing.
        cert: String,
        /// Its issuer name.
        issuer: String,
        /// Its position (0 = EK certificate).
        depth: usize,
    },
    /// The only matching issuers are already in the path.
    #[error("certificate loop: every issuer of {cert} (depth {depth}) is already in the path")]
    Loop {
        /// The certificate.
        cert: String,
        /// Its position.
        depth: usize,
    },
    /// A certificate is outside its validity period.
    #[error("{cert} (depth {depth}) is not valid now: valid from {not_before} to {not_after}")]
    Time {
        /// The certificate.
        cert: String,
        /// Its position.
        depth: usize,
        /// notBefore.
        not_before: String,
        /// notAfter.
        not_after: String,
    },
    /// An issuer is not a CA certificate, or lacks keyCertSign.
    #[error("{cert} (depth {depth}) cannot issue certificates: {why}")]
    NotCa {
        /// The would-be issuer.
        cert: String,
        /// Its position.
        depth: usize,
        /// What is missing.
        why: &'static str,
    },
    /// An issuer's pathLenConstraint is exceeded.
    #[error("{cert} (depth {depth}) allows {path_len} intermediate CA certificates below it")]
    PathLen {
        /// The issuer.
        cert: String,
        /// Its position.
        depth: usize,
        /// Its pathLenConstraint.
        path_len: u32,
    },
    /// A certificate has a critical extension the verifier does not process.
    #[error("{cert} (depth {depth}) has unsupported critical extension {oid}")]
    CriticalExtension {
        /// The certificate.
        cert: String,
        /// Its position.
        depth: usize,
        /// The extension OID.
        oid: String,
    },
    /// A signature did not verify or is not supported.
    #[error("signature of {cert} (depth {depth}) by {issuer}: {why}")]
    Signature {
        /// The signed certificate.
        cert: String,
        /// Its position.
        depth: usize,
        /// The issuer tried.
        issuer: String,
        /// What failed.
        why: String,
    },
    /// The path would be longer than `max_depth`.
    #[error("no trust anchor within {max_depth} certificates (chain too deep)")]
    TooDeep {
        /// The limit.
        max_depth: usize,
    },
    /// The search budget ran out (too many same-name candidates).
    #[error("path search gave up after {signatures} signature checks and {steps} candidates")]
    Budget {
        /// Signatures verified.
        signatures: usize,
        /// Candidates considered.
        steps: usize,
    },
    /// The path verified but the EK certificate fails the TCG EK profile (enforce mode).
    #[error(transparent)]
    Profile(#[from] ProfileError),
}

/// The parsed trust anchors and intermediates.
#[derive(Debug, Default)]
pub(crate) struct Store {
    pub(crate) anchors: Vec<Cert>,
    pub(crate) intermediates: Vec<Cert>,
}

/// One certificate in the path under construction, with its untried issuer candidates.
struct Frame<'c> {
    cert: &'c Cert,
    /// Pool index of this certificate (None for the EK certificate).
    id: Option<usize>,
    candidates: Vec<usize>,
    next: usize,
}

struct Search<'c> {
    opts: ChainOptions,
    now: i64,
    anchors: &'c [Cert],
    pool: Vec<&'c Cert>,
    signatures: usize,
    steps: usize,
    best: Option<(usize, ChainError)>,
}

impl Search<'_> {
    /// Keeps the failure that got furthest from the EK certificate (ties: the first).
    fn fail(&mut self, depth: usize, err: ChainError) {
        if self.best.as_ref().is_none_or(|(d, _)| depth > *d) {
            self.best = Some((depth, err));
        }
    }

    fn time_ok(&self, cert: &Cert) -> Result<(), ()> {
        if cert.not_before <= self.now && self.now <= cert.not_after {
            Ok(())
        } else {
            Err(())
        }
    }

    /// Checks of a certificate itself, wherever it sits in the path.
    fn own_checks(&self, cert: &Cert, depth: usize) -> Result<(), ChainError> {
        if self.time_ok(cert).is_err() {
            return Err(ChainError::Time {
                cert: cert.describe(),
                depth,
                not_before: format_time(cert.not_before),
                not_after: format_time(cert.not_after),
            });
        }
        if let Some(oid) = cert.unknown_critical.first() {
            return Err(ChainError::CriticalExtension {
                cert: cert.describe(),
                depth,
                oid: oid.clone(),
            });
        }
        Ok(())
    }

    /// Checks that `issuer`, placed at `depth` above `below` certificates of the path, may
    /// issue. An anchor without basicConstraints (a v1 root) is accepted; an intermediate
    /// must say cA.
    fn issuer_checks(
        &self,
        issuer: &Cert,
        depth: usize,
        path: &[Frame<'_>],
        anchor: bool,
    ) -> Result<(), ChainError> {
        self.own_checks(issuer, depth)?;
        let not_ca = |why| ChainError::NotCa {
            cert: issuer.describe(),
            depth,
            why,
        };
        match issuer.basic {
            Some(b) if !b.ca => return Err(not_ca("basicConstraints does not say cA")),
            None if !anchor => return Err(not_ca("no basicConstraints extension")),
            _ => {}
        }
        if issuer.key_usage.is_some_and(|ku| !ku.key_cert_sign) {
            return Err(not_ca("keyUsage lacks keyCertSign"));
        }
        if let Some(path_len) = issuer.basic.and_then(|b| b.path_len) {
            // Intermediates between the EK certificate and this issuer, self-issued excluded.
            let below = path
                .iter()
                .skip(1)
                .filter(|f| !f.cert.self_issued())
                .count();
            if below > usize::try_from(path_len).unwrap_or(usize::MAX) {
                return Err(ChainError::PathLen {
                    cert: issuer.describe(),
                    depth,
                    path_len,
                });
            }
        }
        Ok(())
    }

    fn verify(&mut self, child: &Cert, depth: usize, issuer: &Cert) -> Result<(), ChainError> {
        let fail = |why: String| ChainError::Signature {
            cert: child.describe(),
            depth,
            issuer: issuer.describe(),
            why,
        };
        if !child.sig_alg_consistent {
            return Err(fail(
                "tbsCertificate.signature differs from signatureAlgorithm".to_owned(),
            ));
        }
        if self.signatures >= SIGNATURE_BUDGET {
            return Err(ChainError::Budget {
                signatures: self.signatures,
                steps: self.steps,
            });
        }
        self.signatures += 1;
        child
            .verify_signed_by(issuer, self.opts.allow_sha1)
            .map_err(|e: SigFailure| fail(e.to_string()))
    }

    /// Tries the anchors for the certificate on top of the path; true on success.
    fn try_anchors(&mut self, path: &[Frame<'_>]) -> Result<bool, ChainError> {
        let Some(top) = path.last() else {
            return Ok(false);
        };
        let depth = path.len() - 1;
        let anchors = self.anchors;
        for anchor in anchors.iter().filter(|a| top.cert.issued_by_name(a)) {
            if anchor.der == top.cert.der {
                continue; // a self-signed anchor never issues itself into a path
            }
            self.steps += 1;
            let outcome = self
                .issuer_checks(anchor, depth + 1, path, true)
                .and_then(|()| self.verify(top.cert, depth, anchor));
            match outcome {
                Ok(()) => return Ok(true),
                Err(e @ ChainError::Budget { .. }) => return Err(e),
                Err(e) => self.fail(depth, e),
            }
        }
        Ok(false)
    }

    /// Checks of the EK certificate's validity period: outside it, an error naming the date
    /// and `acceptExpiredEk`, unless that option is on.
    fn ek_time_checks(&self, ek: &Cert) -> Result<(), ChainError> {
        if self.opts.accept_expired_ek || self.time_ok(ek).is_ok() {
            return Ok(());
        }
        Err(if self.now < ek.not_before {
            ChainError::EkNotYetValid {
                cert: ek.describe(),
                not_before: format_time(ek.not_before),
            }
        } else {
            ChainError::EkExpired {
                cert: ek.describe(),
                not_after: format_time(ek.not_after),
            }
        })
    }

    fn run(&mut self, ek: &Cert) -> Result<usize, ChainError> {
        self.ek_time_checks(ek)?;
        if let Some(oid) = ek.unknown_critical.first() {
            return Err(ChainError::CriticalExtension {
                cert: ek.describe(),
                depth: 0,
                oid: oid.clone(),
            });
        }
        let mut path = vec![Frame {
            cert: ek,
            id: None,
            candidates: Vec::new(),
            next: 0,
        }];
        self.expand(&mut path)?;
        if let Some(done) = self.success(&path)? {
            return Ok(done);
        }
        while let Some(top) = path.last_mut() {
            if self.steps >= STEP_BUDGET {
                return Err(ChainError::Budget {
                    signatures: self.signatures,
                    steps: self.steps,
                });
            }
            let Some(&cand) = top.candidates.get(top.next) else {
                path.pop();
                continue;
            };
            top.next += 1;
            self.steps += 1;
            let child = top.cert;
            let depth = path.len() - 1;
            let Some(&issuer) = self.pool.get(cand) else {
                continue;
            };
            let outcome = self
                .issuer_checks(issuer, depth + 1, &path, false)
                .and_then(|()| self.verify(child, depth, issuer));
            match outcome {
                Ok(()) => {
                    path.push(Frame {
                        cert: issuer,
                        id: Some(cand),
                        candidates: Vec::new(),
                        next: 0,
                    });
                    self.expand(&mut path)?;
                    if let Some(done) = self.success(&path)? {
                        return Ok(done);
                    }
                }
                Err(e @ ChainError::Budget { .. }) => return Err(e),
                Err(e) => self.fail(depth, e),
            }
        }
        Err(self
            .best
            .take()
            .map_or_else(|| no_issuer(ek, 0), |(_, e)| e))
    }

    /// Returns the path length (anchor included) if the top certificate is issued by an anchor.
    fn success(&mut self, path: &[Frame<'_>]) -> Result<Option<usize>, ChainError> {
        if path.len() + 1 > self.opts.max_depth {
            return Ok(None);
        }
        if self.try_anchors(path)? {
            Ok(Some(path.len() + 1))
        } else {
            Ok(None)
        }
    }

    /// Fills the candidate issuers of the top certificate, recording why there are none.
    fn expand(&mut self, path: &mut [Frame<'_>]) -> Result<(), ChainError> {
        let depth = path.len() - 1;
        let on_path: Vec<usize> = path.iter().filter_map(|f| f.id).collect();
        let Some(top) = path.last_mut() else {
            return Ok(());
        };
        let named: Vec<usize> = (0..self.pool.len())
            .filter(|&i| self.pool.get(i).is_some_and(|c| top.cert.issued_by_name(c)))
            .collect();
        let anchor_named = self.anchors.iter().any(|a| top.cert.issued_by_name(a));
        top.candidates = named
            .iter()
            .copied()
            .filter(|i| !on_path.contains(i))
            .collect();
        if !top.candidates.is_empty() && depth + 3 > self.opts.max_depth {
            // An intermediate here and an anchor above it would exceed the limit.
            top.candidates.clear();
            self.fail(
                depth,
                ChainError::TooDeep {
                    max_depth: self.opts.max_depth,
                },
            );
        } else if top.candidates.is_empty() && !anchor_named {
            let err = if named.is_empty() || top.cert.self_issued() {
                no_issuer(top.cert, depth)
            } else {
                ChainError::Loop {
                    cert: top.cert.describe(),
                    depth,
                }
            };
            self.fail(depth, err);
        }
        Ok(())
    }
}

/// Why `cert` at `depth` has no issuer to continue with: a self-signed certificate (its
/// issuer is its own subject: the only certificate that could have issued it is itself) is
/// an untrusted root, or a self-signed EK certificate; anything else lacks its issuer.
fn no_issuer(cert: &Cert, depth: usize) -> ChainError {
    match (cert.self_issued(), depth) {
        (true, 0) => ChainError::SelfSignedEk {
            cert: cert.describe(),
        },
        (true, _) => ChainError::UntrustedRoot {
            cert: cert.describe(),
            depth,
        },
        (false, _) => ChainError::NoIssuer {
            cert: cert.describe(),
            issuer: cert.issuer.to_string(),
            depth,
        },
    }
}

/// The EK certificate must not be a CA certificate: not one of the configured ones (named
/// by list and position), and not one that says cA.
fn ek_not_ca(store: &Store, ek: &Cert) -> Result<(), ChainError> {
    let configured = [
        ("caCerts", &store.anchors),
        ("intermediateCerts", &store.intermediates),
    ];
    for (field, list) in configured {
        if let Some(index) = list.iter().position(|c| c.der == ek.der) {
            return Err(ChainError::EkIsConfiguredCa {
                field,
                index,
                cert: ek.describe(),
            });
        }
    }
    if ek.is_ca() {
        return Err(ChainError::EkIsCa {
            cert: ek.describe(),
        });
    }
    Ok(())
}

/// Builds and verifies a path from `ek` through `store` and the device's `presented`
/// certificates to an anchor in `store`, at time `now` (UNIX seconds). Returns the path
/// length, anchor included.
pub(crate) fn build(
    store: &Store,
    ek: &Cert,
    presented: &[Cert],
    opts: ChainOptions,
    now: i64,
) -> Result<usize, ChainError> {
    ek_not_ca(store, ek)?;
    search(store, ek, presented, opts, now)
}

/// The path search of [`build`] from `start`, without the checks that only an EK
/// certificate must pass (not a CA).
fn search(
    store: &Store,
    start: &Cert,
    presented: &[Cert],
    opts: ChainOptions,
    now: i64,
) -> Result<usize, ChainError> {
    // Configured intermediates first, then what the device sent, without duplicates.
    let mut pool: Vec<&Cert> = Vec::with_capacity(store.intermediates.len() + presented.len());
    for cert in store.intermediates.iter().chain(presented) {
        let dup = pool.iter().any(|c| c.der == cert.der)
            || store.anchors.iter().any(|a| a.der == cert.der);
        if !dup {
            pool.push(cert);
        }
    }
    let mut search = Search {
        opts,
        now,
        anchors: &store.anchors,
        pool,
        signatures: 0,
        steps: 0,
        best: None,
    };
    search.run(start)
}

#[cfg(test)]
mod tests {
    use ekattest_testkit::testdata;

    use super::super::signature::{Hash, SigAlg};
    use super::*;

    /// 2024-06-01T00:00:00Z: inside the validity of the real CA certificates used here.
    const JUNE_2024: i64 = 1_717_200_000;

    /// Every vendor CA certificate whose issuer is in the set verifies under it (RSA PKCS#1
    /// SHA-1/256/384, ECDSA P-256/SHA-256 and P-384/SHA-384), and SHA-1 ones only when
    /// allowed. The path search starts at the CA certificate itself (`build` would refuse it
    /// as an EK certificate, rightly), with every other certificate of the set as an anchor.
    #[test]
    fn real_vendor_ca_signatures_verify() {
        let cas = testdata::existing("real-ek/ca");
        let mut names: Vec<String> = std::fs::read_dir(&cas)
            .unwrap_or_else(|e| panic!("test data {} missing: {e}", cas.display()))
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".pem"))
            .collect();
        names.sort();
        assert_eq!(names.len(), 51);
        let all: Vec<Cert> = names
            .iter()
            .map(|n| {
                let text = testdata::real_ek(&format!("ca/{n}"));
                Cert::parse(pem::parse(text).unwrap().contents()).unwrap()
            })
            .collect();
        let (mut verified, mut sha1) = (0, 0);
        for (i, (name, c)) in names.iter().zip(&all).enumerate() {
            let issuer_present = all
                .iter()
                .enumerate()
                .any(|(j, o)| j != i && c.issuer.matches(&o.subject));
            if c.self_issued() || !issuer_present {
                continue;
            }
            let store = Store {
                anchors: all
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, o)| o.clone())
                    .collect(),
                intermediates: Vec::new(),
            };
            let mut opts = ChainOptions {
                allow_sha1: true,
                ..ChainOptions::default()
            };
            let len =
                search(&store, c, &[], opts, JUNE_2024).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(len >= 2, "{name}");
            verified += 1;
            if c.sig_alg == SigAlg::RsaPkcs1(Hash::Sha1) {
                sha1 += 1;
                opts.allow_sha1 = false;
                let e = search(&store, c, &[], opts, JUNE_2024).unwrap_err();
                assert!(e.to_string().contains("SHA-1"), "{name}: {e}");
            }
        }
        // Sanity: the set holds the STM, Infineon, Intel, Nuvoton chains.
        assert!(
            verified >= 30 && sha1 >= 10,
            "verified {verified}, sha1 {sha1}"
        );
    }
}
