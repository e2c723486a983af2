//! The load run's key material: a pool of software EKs (each with its AK), the mapping of
//! device numbers onto pool keys, the run's policy document (allowedHashes = the pool's EK
//! hashes), and small DER helpers.
//!
//! RSA-2048 generation costs tens of milliseconds, and one policy document holds at most
//! [`MAX_DOCUMENT_BYTES`] (about 15,000 hashes), so the pool can be smaller than the fleet:
//! devices beyond it reuse pool keys under distinct agent ids (the load servers run with
//! `agent-id-from-ek: false`). The server keeps one pending session per EK (a second Login
//! with the same EK replaces the first's session), so two devices sharing an EK must not
//! attest at the same time: a device holds its key's lease ([`KeyPool::try_lease`]) from
//! its first Login until it finishes, and a device whose key is leased waits. Nothing here
//! does I/O except [`write_policy`].

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ekattest_protocol::heapless;
use ekattest_protocol::limits::SVID_KEY_MAX;
use ekattest_protocol::spki::{EccCurve, PublicKey, SPKI_MAX};
use ekattest_server::config::MAX_DOCUMENT_BYTES;

use crate::error::{Error, Result};
use crate::soft_tpm::{EkAlg, SoftAk, SoftEk};

/// Which EK templates the simulated devices use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EkMix {
    /// Every device RSA-2048 (L-1).
    Rsa2048,
    /// Every device P-256 (L-2).
    P256,
    /// Even device numbers RSA-2048, odd ones P-256.
    Mixed,
}

impl EkMix {
    /// Parses `rsa2048`, `p256` or `mixed`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "rsa2048" => Some(Self::Rsa2048),
            "p256" => Some(Self::P256),
            "mixed" => Some(Self::Mixed),
            _ => None,
        }
    }

    /// The command-line name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rsa2048 => "rsa2048",
            Self::P256 => "p256",
            Self::Mixed => "mixed",
        }
    }

    /// The EK template of device `n`.
    pub fn alg_of(self, n: usize) -> EkAlg {
        match self {
            Self::Rsa2048 => EkAlg::Rsa2048,
            Self::P256 => EkAlg::P256,
            Self::Mixed if n.is_multiple_of(2) => EkAlg::Rsa2048,
            Self::Mixed => EkAlg::P256,
        }
    }

    /// How many of `devices` use RSA-2048 and how many P-256.
    pub fn split(self, devices: usize) -> (usize, usize) {
        match self {
            Self::Rsa2048 => (devices, 0),
            Self::P256 => (0, devices),
            Self::Mixed => (devices.div_ceil(2), devices / 2),
        }
    }
}

/// One pool entry: an EK and the AK that goes with it.
#[derive(Debug)]
pub struct PoolKey {
    /// The endorsement key.
    pub ek: SoftEk,
    /// The attestation key.
    pub ak: SoftAk,
}

/// The run's keys.
#[derive(Debug)]
pub struct KeyPool {
    mix: EkMix,
    rsa: Vec<PoolKey>,
    p256: Vec<PoolKey>,
    /// One per key ([`Self::key_id`] order): a device attests with it now.
    leases: Vec<AtomicBool>,
    /// Leases released so far, so a waiting thread looks again only after a release.
    released: AtomicU64,
}

impl KeyPool {
    /// Generates `rsa` RSA-2048 and `p256` P-256 entries on `threads` threads.
    ///
    /// # Errors
    /// A message if key generation fails.
    pub fn generate(mix: EkMix, rsa: usize, p256: usize, threads: usize) -> Result<Self> {
        let gen_many = |alg: EkAlg, n: usize| -> Result<Vec<PoolKey>> {
            let threads = threads.clamp(1, n.max(1));
            let per = n.div_ceil(threads);
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads)
                    .map(|t| {
                        let count = per.min(n.saturating_sub(t * per));
                        s.spawn(move || {
                            (0..count)
                                .map(|_| {
                                    Ok(PoolKey {
                                        ek: SoftEk::generate(alg)
                                            .map_err(|e| Error::Keys(e.to_string()))?,
                                        ak: SoftAk::generate()
                                            .map_err(|e| Error::Keys(e.to_string()))?,
                                    })
                                })
                                .collect::<Result<Vec<_>>>()
                        })
                    })
                    .collect();
                let mut all = Vec::with_capacity(n);
                for h in handles {
                    all.extend(
                        h.join()
                            .map_err(|_| Error::Keys("key generation thread panicked".into()))??,
                    );
                }
                Ok(all)
            })
        };
        let rsa = gen_many(EkAlg::Rsa2048, rsa)?;
        let p256 = gen_many(EkAlg::P256, p256)?;
        if rsa.is_empty() && p256.is_empty() {
            return Err(Error::Keys("the key pool is empty".into()));
        }
        Ok(Self {
            mix,
            leases: (0..rsa.len() + p256.len())
                .map(|_| AtomicBool::new(false))
                .collect(),
            rsa,
            p256,
            released: AtomicU64::new(0),
        })
    }

    /// The key id of device number `n` (global across threads): an index into the RSA keys
    /// followed by the P-256 keys.
    pub fn key_id(&self, n: usize) -> usize {
        let (rsa, index) = match (self.mix, self.mix.alg_of(n)) {
            (EkMix::Mixed, EkAlg::Rsa2048) => (true, n / 2),
            (EkMix::Mixed, EkAlg::P256) => (false, n / 2),
            (_, EkAlg::Rsa2048) => (true, n),
            (_, EkAlg::P256) => (false, n),
        };
        // Both pools are non-empty whenever a device uses them (see `pool_sizes`); fall back
        // to the other pool rather than panic.
        let rsa = if rsa {
            !self.rsa.is_empty()
        } else {
            self.p256.is_empty()
        };
        if rsa {
            index % self.rsa.len().max(1)
        } else {
            self.rsa.len() + index % self.p256.len().max(1)
        }
    }

    /// The key with id `id` ([`Self::key_id`]); ids wrap around the pool.
    pub fn key(&self, id: usize) -> &PoolKey {
        let id = id % (self.rsa.len() + self.p256.len()).max(1);
        match self.rsa.get(id) {
            Some(k) => k,
            None => &self.p256[id - self.rsa.len()],
        }
    }

    /// The key of device number `n` (global across threads).
    pub fn for_device(&self, n: usize) -> &PoolKey {
        self.key(self.key_id(n))
    }

    /// Takes key `id` for one device's attestation; `false` if another device holds it.
    pub fn try_lease(&self, id: usize) -> bool {
        self.leases.get(id).is_some_and(|l| {
            l.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        })
    }

    /// Gives key `id` back (its device finished).
    pub fn release(&self, id: usize) {
        if let Some(l) = self.leases.get(id) {
            l.store(false, Ordering::Release);
            self.released.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// How many leases were released so far (changes whenever a key may have come free).
    pub fn releases(&self) -> u64 {
        self.released.load(Ordering::Acquire)
    }

    /// Every EK's `tpm_ek.public_hash`, lowercase hex.
    pub fn hashes(&self) -> Vec<String> {
        self.rsa
            .iter()
            .chain(&self.p256)
            .map(|k| hex::encode(k.ek.public_hash()))
            .collect()
    }

    /// Number of RSA-2048 and P-256 keys.
    pub fn sizes(&self) -> (usize, usize) {
        (self.rsa.len(), self.p256.len())
    }
}

/// Pool sizes for `devices` devices: RSA keys at most `rsa_max`, P-256 at most `p256_max`,
/// and at least one of each kind any device uses.
pub fn pool_sizes(mix: EkMix, devices: usize, rsa_max: usize, p256_max: usize) -> (usize, usize) {
    let (r, p) = mix.split(devices);
    (r.min(rsa_max.max(1)), p.min(p256_max.max(1)))
}

/// Bytes of the policy document for `hashes` allow-listed hashes (see [`policy_document`]).
pub fn policy_len(hashes: usize) -> usize {
    POLICY_HEAD.len() + POLICY_TAIL.len() + (hashes * 67).saturating_sub(1)
}

/// Most hashes one policy document can hold.
pub fn max_hashes() -> usize {
    (MAX_DOCUMENT_BYTES + 1 - POLICY_HEAD.len() - POLICY_TAIL.len()) / 67
}

const POLICY_HEAD: &str = "section: AgentAttestation\nschema: v1\nspec:\n  policies:\n    - name: \
     load\n      spiffeIdTemplate: /agents/tpm/{{tpm_ek.public_hash}}\n      requiredAttestors:\n        \
     - type: tpm_ek\n          config:\n            allowedHashes: [";
const POLICY_TAIL: &str = "]\n";

/// The run's AgentAttestation document: one policy allow-listing `hashes` in a flow
/// sequence (67 bytes per hash, commas included).
pub fn policy_document(hashes: &[String]) -> String {
    let mut doc = String::with_capacity(policy_len(hashes.len()));
    doc.push_str(POLICY_HEAD);
    for (i, h) in hashes.iter().enumerate() {
        if i > 0 {
            doc.push(',');
        }
        doc.push('"');
        doc.push_str(h);
        doc.push('"');
    }
    doc.push_str(POLICY_TAIL);
    doc
}

/// Writes the policy document for `hashes` to `path`.
///
/// # Errors
/// A message if the document would exceed the server's [`MAX_DOCUMENT_BYTES`] or the file
/// cannot be written.
pub fn write_policy(path: &Path, hashes: &[String]) -> Result<usize> {
    let doc = policy_document(hashes);
    if doc.len() > MAX_DOCUMENT_BYTES {
        return Err(Error::Keys(format!(
            "{} allow-listed EK hashes make a {}-byte policy document; the server reads at most \
             {MAX_DOCUMENT_BYTES} bytes (about {} hashes): lower --keys",
            hashes.len(),
            doc.len(),
            max_hashes()
        )));
    }
    std::fs::write(path, &doc).map_err(Error::io("write", &path))?;
    Ok(doc.len())
}

/// DER SubjectPublicKeyInfo of an uncompressed P-256 point (a Login's `svid_key`).
///
/// # Errors
/// A message if `point` is not `04 || x || y`.
pub fn p256_spki(point: &[u8]) -> Result<heapless::Vec<u8, SVID_KEY_MAX>> {
    let (x, y) = match point {
        [0x04, rest @ ..] if rest.len() == 64 => rest.split_at(32),
        _ => {
            return Err(Error::Keys(
                "SVID key is not an uncompressed P-256 point".into(),
            ));
        }
    };
    let key = PublicKey::Ecc {
        curve: EccCurve::NistP256,
        x,
        y,
    };
    let mut buf = [0u8; SPKI_MAX];
    let der = key
        .spki_der(&mut buf)
        .map_err(|e| Error::Keys(format!("SVID key SPKI: {e}")))?;
    heapless::Vec::from_slice(der).map_err(|_| Error::Keys("SVID key SPKI too long".into()))
}

/// The public point (uncompressed) of the P-256 CA certificate in PEM `text`.
///
/// # Errors
/// A message if it is not a PEM certificate with an EC public key.
pub fn ca_point(text: &[u8]) -> Result<Vec<u8>> {
    let pem = pem::parse(text).map_err(|e| Error::Keys(format!("CA certificate PEM: {e}")))?;
    let (_, cert) = x509_parser::parse_x509_certificate(pem.contents())
        .map_err(|e| Error::Keys(format!("CA certificate DER: {e}")))?;
    let point = cert.public_key().subject_public_key.data.to_vec();
    if point.len() != 65 || point.first() != Some(&0x04) {
        return Err(Error::Keys(
            "the SVID CA key is not an uncompressed P-256 point".into(),
        ));
    }
    Ok(point)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_document_parses_in_the_server_and_lists_every_hash() {
        let pool = KeyPool::generate(EkMix::Mixed, 2, 3, 2).unwrap();
        assert_eq!(pool.sizes(), (2, 3));
        let hashes = pool.hashes();
        let doc = policy_document(&hashes);
        assert_eq!(doc.len(), policy_len(hashes.len()));
        let parsed = ekattest_server::config::Document::parse(doc.as_bytes()).unwrap();
        let policy = &parsed.policies()[0];
        assert_eq!(policy.tpm_ek().unwrap().ek.allowed_hashes.len(), 5);
        for k in pool.rsa.iter().chain(&pool.p256) {
            assert!(
                policy
                    .tpm_ek()
                    .unwrap()
                    .ek
                    .allowed_hashes
                    .contains(k.ek.public_hash())
            );
        }
        // The largest document still parses; one more hash does not fit.
        assert!(policy_len(max_hashes()) <= MAX_DOCUMENT_BYTES);
        assert!(policy_len(max_hashes() + 1) > MAX_DOCUMENT_BYTES);
    }

    #[test]
    fn devices_map_onto_their_kind_of_key() {
        let pool = KeyPool::generate(EkMix::Mixed, 1, 2, 1).unwrap();
        for n in 0..10 {
            assert_eq!(pool.for_device(n).ek.alg(), EkMix::Mixed.alg_of(n), "{n}");
        }
        // Key ids cover both pools; a key is leased to one device at a time.
        let ids: std::collections::BTreeSet<usize> = (0..10).map(|n| pool.key_id(n)).collect();
        assert_eq!(ids.into_iter().collect::<Vec<_>>(), vec![0, 1, 2]);
        assert!(pool.try_lease(1));
        assert!(!pool.try_lease(1));
        assert!(pool.try_lease(2));
        let seen = pool.releases();
        pool.release(1);
        assert!(pool.releases() > seen);
        assert!(pool.try_lease(1));
        assert!(
            !pool.try_lease(99),
            "an id outside the pool is never leased"
        );
        assert_eq!(pool_sizes(EkMix::Mixed, 5, 64, 10_000), (3, 2));
        assert_eq!(pool_sizes(EkMix::P256, 100_000, 64, 10_000), (0, 10_000));
        assert_eq!(pool_sizes(EkMix::Rsa2048, 100_000, 64, 10_000), (64, 0));
    }

    #[test]
    fn svid_spki_is_91_bytes() {
        let key =
            aws_lc_rs::agreement::PrivateKey::generate(&aws_lc_rs::agreement::ECDH_P256).unwrap();
        let point = key.compute_public_key().unwrap();
        assert_eq!(p256_spki(point.as_ref()).unwrap().len(), 91);
        assert!(p256_spki(&point.as_ref()[1..]).is_err());
    }
}
