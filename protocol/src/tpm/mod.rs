//! TPM 2.0 structures both sides read: the bounded marshalling [`marshal::Reader`] and the
//! public areas ([`public::Public`]) of a Login.
//!
//! Layouts follow TPM 2.0 Library Part 2. Everything here borrows from its input, allocates
//! nothing and returns an error naming the field instead of panicking.

pub mod marshal;
pub mod public;
