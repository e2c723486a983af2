//! Where MakeCredential and the session store get their random bytes.
//!
//! Production uses [`SystemRandom`] (aws-lc-rs's CSPRNG). Tests pass a [`FixedRandom`] that
//! hands out preset byte strings in order, so known-answer vectors are reproduced byte for
//! byte. Nothing here ever falls back to a weaker source: a failure is an error.

use std::collections::VecDeque;

/// A source of random bytes for MakeCredential and sessions.
pub trait Random {
    /// Fills `out` completely with fresh random bytes.
    ///
    /// # Errors
    /// [`RandomError`] if no bytes are available; the caller must then abort its operation.
    fn fill(&mut self, out: &mut [u8]) -> Result<(), RandomError>;

    /// `true` only for the system CSPRNG: library primitives (aws-lc-rs RSA-OAEP and ECDH key
    /// generation) may then draw their own randomness, which is the fast path. A source that
    /// returns `false` is asked for every random input (the OAEP seed and the ECC ephemeral
    /// scalar included), so the output is a function of what it returned.
    fn is_system(&self) -> bool {
        false
    }
}

impl<R: Random + ?Sized> Random for &mut R {
    fn fill(&mut self, out: &mut [u8]) -> Result<(), RandomError> {
        (**self).fill(out)
    }

    fn is_system(&self) -> bool {
        (**self).is_system()
    }
}

/// Why random bytes could not be produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RandomError {
    /// The system CSPRNG (aws-lc-rs) failed.
    #[error("the system random generator failed")]
    System,
    /// A [`FixedRandom`] ran out of preset values.
    #[error("fixed random source exhausted: {wanted} more bytes requested")]
    Exhausted {
        /// Bytes requested.
        wanted: usize,
    },
    /// A [`FixedRandom`]'s next preset value has a different length from the request.
    #[error("fixed random source: {wanted} bytes requested, next preset value has {have}")]
    Length {
        /// Bytes requested.
        wanted: usize,
        /// Length of the preset value.
        have: usize,
    },
}

/// The system CSPRNG ([`aws_lc_rs::rand::fill`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemRandom;

impl Random for SystemRandom {
    fn fill(&mut self, out: &mut [u8]) -> Result<(), RandomError> {
        aws_lc_rs::rand::fill(out).map_err(|_| RandomError::System)
    }

    fn is_system(&self) -> bool {
        true
    }
}

/// Preset values handed out in order, one per [`Random::fill`] call; each request must ask for
/// exactly the next value's length. For tests and known-answer vectors only.
///
/// MakeCredential draws, in order: RSA: the seed (|H| bytes), then the OAEP seed (|H|); ECC:
/// the ephemeral scalar (field size). [`crate::session::SessionStore::begin`] draws the secret
/// (32 bytes), then the session id (16).
#[derive(Debug, Clone, Default)]
pub struct FixedRandom {
    values: VecDeque<Vec<u8>>,
}

impl FixedRandom {
    /// A source that returns `values` in order.
    #[must_use]
    pub fn new<I, V>(values: I) -> Self
    where
        I: IntoIterator<Item = V>,
        V: Into<Vec<u8>>,
    {
        Self {
            values: values.into_iter().map(Into::into).collect(),
        }
    }

    /// Preset values not yet handed out.
    #[must_use]
    pub fn remaining(&self) -> usize {
        self.values.len()
    }
}

impl Random for FixedRandom {
    fn fill(&mut self, out: &mut [u8]) -> Result<(), RandomError> {
        let next = self
            .values
            .front()
            .ok_or(RandomError::Exhausted { wanted: out.len() })?;
        if next.len() != out.len() {
            return Err(RandomError::Length {
                wanted: out.len(),
                have: next.len(),
            });
        }
        out.copy_from_slice(next);
        self.values.pop_front();
        Ok(())
    }
}
