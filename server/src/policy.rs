//! Policy matching: which policy of the document authorizes an agent.
//!
//! Sits between the parsed [`config::Document`](crate::config::Document) and the login
//! handler: [`Document::select`] picks the policy that authorizes an agent's provided
//! attestors. The SPIFFE ID templates a policy carries live in [`crate::spiffe`]; their
//! items are re-exported here under their former paths. Nothing here logs or panics.

use crate::config::{Document, Method, Policy};
pub use crate::spiffe::{
    Attribute, DEFAULT_SPIFFE_ID_TEMPLATE, PolicyError, SPIFFE_ID_MAX, SpiffeIdTemplate,
    TemplateError, validate_path,
};

impl Document {
    /// The first policy, in document order, whose requiredAttestors are all among `provided`.
    ///
    /// # Errors
    /// [`PolicyError::NoPolicy`] (`no cluster policy authorizes the provided attestors`).
    pub fn select(&self, provided: &[Method]) -> Result<&Policy, PolicyError> {
        self.policies()
            .iter()
            .find(|p| p.attestors.iter().all(|a| provided.contains(&a.method())))
            .ok_or_else(|| PolicyError::NoPolicy {
                provided: provided.to_vec(),
            })
    }
}
