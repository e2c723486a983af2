//! The flush guard: transient objects and sessions created inside a [`Scope`] are flushed
//! when it is dropped, newest first, on success and on every error path (`?` included).
//!
//! Without a resource manager (swtpm, `/dev/tpm0`) a leaked handle survives the connection
//! and the TPM has only three object and three session slots, so nothing may bypass this.

use std::ops::{Deref, DerefMut};

use super::Transport;
use super::commands::{CreatedKey, ObjectPublic, Tpm};
use super::error::Error;

/// Flushes every handle it tracks when dropped, newest first, on success and error paths.
/// Derefs to the [`Tpm`], so commands run through it; scopes nest.
pub struct Scope<'a, T: Transport> {
    tpm: &'a mut Tpm<T>,
    handles: Vec<u32>,
}

impl<'a, T: Transport> Scope<'a, T> {
    /// A scope over `tpm` tracking nothing yet (see [`Tpm::scope`]).
    pub(crate) fn new(tpm: &'a mut Tpm<T>) -> Self {
        Self {
            tpm,
            handles: Vec::new(),
        }
    }

    /// Flushes `handle` when the scope ends.
    pub fn track(&mut self, handle: u32) {
        self.handles.push(handle);
    }

    /// Stops tracking `handle` (a command consumed it, e.g. a policy session on success).
    pub fn forget(&mut self, handle: u32) {
        self.handles.retain(|h| *h != handle);
    }

    /// TPM2_CreatePrimary, with the new object tracked for flushing.
    ///
    /// # Errors
    /// As [`Tpm::create_primary`].
    pub fn create_primary_tracked(
        &mut self,
        hierarchy: u32,
        template: &[u8],
    ) -> Result<(u32, ObjectPublic), Error> {
        let (h, public) = self.tpm.create_primary(hierarchy, template)?;
        self.track(h);
        Ok((h, public))
    }

    /// TPM2_Load, with the loaded key tracked for flushing.
    ///
    /// # Errors
    /// As [`Tpm::load`].
    pub fn load_tracked(&mut self, parent: u32, key: &CreatedKey) -> Result<(u32, Vec<u8>), Error> {
        let (h, name) = self.tpm.load(parent, key)?;
        self.track(h);
        Ok((h, name))
    }

    /// Flushes a tracked handle now (to free an object slot) and stops tracking it.
    ///
    /// # Errors
    /// As [`Tpm::flush_context`]; the handle is forgotten either way.
    pub fn flush_now(&mut self, handle: u32) -> Result<(), Error> {
        self.forget(handle);
        self.tpm.flush_context(handle)
    }

    /// TPM2_StartAuthSession (policy), with the session tracked for flushing.
    ///
    /// # Errors
    /// As [`Tpm::start_policy_session`].
    pub fn start_policy_session_tracked(&mut self, hash_alg: u16) -> Result<u32, Error> {
        let h = self.tpm.start_policy_session(hash_alg)?;
        self.track(h);
        Ok(h)
    }
}

impl<T: Transport> Deref for Scope<'_, T> {
    type Target = Tpm<T>;
    fn deref(&self) -> &Tpm<T> {
        self.tpm
    }
}

impl<T: Transport> DerefMut for Scope<'_, T> {
    fn deref_mut(&mut self) -> &mut Tpm<T> {
        self.tpm
    }
}

impl<T: Transport> Drop for Scope<'_, T> {
    fn drop(&mut self) {
        while let Some(h) = self.handles.pop() {
            if let Err(e) = self.tpm.flush_context(h) {
                log::debug!("flushing {h:#010x}: {e}");
            }
        }
    }
}

impl<T: Transport> Tpm<T> {
    /// Flushes every loaded transient object and session (swtpm has no resource manager,
    /// so a crashed client leaves them behind and the TPM runs out of its 3 slots). Returns
    /// how many were flushed.
    ///
    /// # Errors
    /// Failure to list handles; individual flush failures are logged and skipped.
    pub fn flush_leftovers(&mut self) -> Result<usize, Error> {
        let mut found = self.handles(0x8000_0000)?;
        found.extend(self.handles(0x0200_0000)?);
        found.extend(self.handles(0x0300_0000)?);
        found.sort_unstable();
        found.dedup();
        let mut flushed = 0;
        for h in found
            .into_iter()
            .filter(|h| matches!(h >> 24, 0x80 | 0x02 | 0x03))
        {
            match self.flush_context(h) {
                Ok(()) => flushed += 1,
                Err(e) => log::debug!("flushing leftover {h:#010x}: {e}"),
            }
        }
        Ok(flushed)
    }
}
