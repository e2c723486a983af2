//! The agent's half of an attestation: the Login it sends and the Answer to a Challenge.
//!
//! Sans-IO apart from the TPM: the MQTT loop (a later issue) and the fleet demo move the
//! messages; this module only turns TPM state into protocol messages and back. It never
//! logs the recovered secret.

use ekattest_protocol::heapless;
use ekattest_protocol::limits::EK_CHAIN_MAX;
use ekattest_protocol::msg::{Answer, Challenge, Login, Method};

use crate::tpm::Transport;
use crate::tpm::activate::{self, Credential, CredentialError};
use crate::tpm::ak::{Ak, AkOptions};
use crate::tpm::commands::Tpm;
use crate::tpm::ek::Ek;

/// Why a Login could not be built or a Challenge not answered.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// A TPM structure or certificate is larger than the protocol carries.
    #[error("{what} is {len} bytes, more than the protocol's {limit}-byte limit")]
    TooLarge {
        /// Which field.
        what: &'static str,
        /// Its size.
        len: usize,
        /// The limit in `ekattest_protocol::limits`.
        limit: usize,
    },
    /// The Challenge's credential is malformed (a broken or hostile server or broker).
    #[error("the server's challenge is malformed")]
    Challenge(#[source] CredentialError),
    /// The TPM refused the credential or failed.
    #[error("ActivateCredential failed")]
    Tpm(#[source] crate::tpm::Error),
}

fn bounded<const N: usize>(
    what: &'static str,
    bytes: &[u8],
) -> Result<heapless::Vec<u8, N>, AttestError> {
    heapless::Vec::from_slice(bytes).map_err(|_| AttestError::TooLarge {
        what,
        len: bytes.len(),
        limit: N,
    })
}

/// Builds the Login for `ek` (with the chain certificates found in NV) and `ak`.
///
/// # Errors
/// [`AttestError::TooLarge`] if a structure exceeds the protocol's limits.
pub fn login(ek: &Ek, chain: &[Vec<u8>], ak: &Ak) -> Result<Login, AttestError> {
    let chain_len: usize = chain.iter().map(Vec::len).sum();
    if chain_len > EK_CHAIN_MAX {
        return Err(AttestError::TooLarge {
            what: "EK certificate chain",
            len: chain_len,
            limit: EK_CHAIN_MAX,
        });
    }
    let mut ek_chain = heapless::Vec::new();
    for cert in chain {
        // Cannot fail: the total was checked above.
        let _ = ek_chain.extend_from_slice(cert);
    }
    let mut methods = heapless::Vec::new();
    let _ = methods.push(Method::TpmEk);
    Ok(Login {
        methods,
        ek_public: bounded("EK public area", &ek.public)?,
        ek_cert: ek
            .certificate
            .as_deref()
            .map(|c| bounded("EK certificate", c))
            .transpose()?,
        ek_chain,
        ak_public: bounded("AK public area", &ak.public)?,
        svid_key: None,
    })
}

/// Opens `challenge` with the TPM (ActivateCredential with this AK and `ek`) and returns the
/// Answer carrying the recovered secret.
///
/// # Errors
/// [`AttestError::Challenge`] for a malformed credential, [`AttestError::Tpm`] if the TPM
/// refuses it (`TPM_RC_INTEGRITY (0x1df)`: made for another AK or EK).
pub fn answer<T: Transport>(
    tpm: &mut Tpm<T>,
    ek: &Ek,
    ak: &AkOptions,
    challenge: &Challenge,
) -> Result<Answer, AttestError> {
    let credential =
        Credential::from_tpm2b(&challenge.credential_blob, &challenge.encrypted_secret)
            .map_err(AttestError::Challenge)?;
    let secret = activate::activate(tpm, ek, ak, &credential).map_err(AttestError::Tpm)?;
    Ok(Answer {
        session: challenge.session,
        secret: bounded("recovered secret", &secret)?,
        pop: None,
    })
}
