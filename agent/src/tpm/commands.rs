//! Every TPM 2.0 command the agent sends, built with `tpm2-protocol` (the only module that
//! uses it), with response-code handling, retries and handle flushing.
//!
//! - One method per command on [`Tpm`] (TPM 2.0 Part 3 section numbers in each doc).
//! - The response code is read from bytes 6..10 before anything else is parsed: the crate's
//!   closed enums reject codes (and algorithms, properties) it does not know, and real chips
//!   return such values. Capability data and public areas are therefore sliced here with a
//!   small bounds-checked reader; simple fixed-shape responses go through the crate.
//! - TPM_RC_RETRY / YIELDED / TESTING are retried with bounded exponential backoff, resending
//!   the same bytes; the sleep is injectable so tests never wait.
//! - [`Scope`] flushes every transient object and session it tracked when dropped, on error
//!   paths too.
//!
//! Must never: panic on a response, allocate more than a frame per response, or let a
//! `tpm2_protocol` type escape this module.

use std::time::Duration;

use tpm2_protocol::basic::{TpmHandle, TpmUint16, TpmUint32};
use tpm2_protocol::data::{
    Tpm2bAuth, Tpm2bData, Tpm2bDigest, Tpm2bEncryptedSecret, Tpm2bIdObject, Tpm2bNonce,
    Tpm2bPrivate, Tpm2bPublic, Tpm2bSensitiveCreate, TpmAlgId, TpmCap, TpmSe, TpmSt, TpmSu,
    TpmaSession, TpmlPcrSelection, TpmsAuthCommand, TpmtSigScheme, TpmtSymDef, TpmtTkHashcheck,
};
use tpm2_protocol::frame::{
    TpmActivateCredentialCommand, TpmActivateCredentialResponse, TpmCertifyCommand,
    TpmCreateCommand, TpmCreatePrimaryCommand, TpmFlushContextCommand, TpmFrame,
    TpmGetCapabilityCommand, TpmLoadCommand, TpmNvReadCommand, TpmNvReadPublicCommand,
    TpmNvReadResponse, TpmPolicySecretCommand, TpmReadPublicCommand, TpmResponse, TpmSignCommand,
    TpmStartAuthSessionCommand, TpmStartAuthSessionResponse, TpmStartupCommand, TpmUnmarshalBody,
    tpm_marshal_command,
};
use tpm2_protocol::{TpmUnmarshal, TpmWriter};

use super::error::Error;
use super::rc::{self, ResponseCode};
pub use super::scope::Scope;
use super::session::{self, Session};
use super::{FRAME_MAX, HEADER_LEN, Transport};
use ekattest_protocol::tpm::marshal::{Reader, split};

/// `TPM_RH_OWNER`.
pub const RH_OWNER: u32 = 0x4000_0001;
/// `TPM_RH_ENDORSEMENT`.
pub const RH_ENDORSEMENT: u32 = 0x4000_000B;
const RH_NULL: u32 = 0x4000_0007;
const RS_PW: u32 = 0x4000_0009;
/// `TPM_CC_ActivateCredential`.
const CC_ACTIVATE_CREDENTIAL: u32 = 0x0000_0147;

/// `TPM_PT_MANUFACTURER`.
pub const PT_MANUFACTURER: u32 = 0x105;
/// `TPM_PT_NV_BUFFER_MAX`.
pub const PT_NV_BUFFER_MAX: u32 = 0x12C;
/// Largest NV_Read chunk the crate's TPM2B_MAX_NV_BUFFER holds.
pub const NV_CHUNK_CAP: u16 = 1024;

/// How many times a command is sent while the TPM answers RETRY/YIELDED/TESTING.
pub const MAX_ATTEMPTS: u32 = 8;
const BACKOFF_START: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Upper bound on handles collected from one capability walk (the TPM might lie).
const HANDLES_MAX: usize = 4096;

/// How a handle in a command is authorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// Password session (TPM_RS_PW) with an empty password.
    Password,
    /// A policy session already satisfied for this command (consumed on success).
    Policy(u32),
}

/// An NV index's public area (the fields we use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvPublic {
    /// The index handle.
    pub index: u32,
    /// TPMA_NV attributes.
    pub attributes: u32,
    /// Size of the data in bytes.
    pub data_size: u16,
}

/// A key created under a parent (TPM2_Create): both halves as the TPM marshalled them, size
/// prefixes included, ready for TPM2_Load or a `TSS2 PRIVATE KEY` file.
#[derive(Clone, PartialEq, Eq)]
pub struct CreatedKey {
    /// TPM2B_PUBLIC.
    pub public: Vec<u8>,
    /// TPM2B_PRIVATE: the sensitive area wrapped by the parent (useless without it).
    pub private: Vec<u8>,
}

impl std::fmt::Debug for CreatedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedKey")
            .field("public", &hex::encode(&self.public))
            .field("private", &format_args!("<{} bytes>", self.private.len()))
            .finish()
    }
}

/// TPM2_Certify's output, as the TPM marshalled it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certification {
    /// TPM2B_ATTEST (`certifyInfo`), size prefix included.
    pub attest: Vec<u8>,
    /// TPMT_SIGNATURE.
    pub signature: Vec<u8>,
}

/// An object's public area as the TPM reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectPublic {
    /// TPM2B_PUBLIC bytes (with the UINT16 size prefix).
    pub public: Vec<u8>,
    /// The object's Name as returned by the TPM.
    pub name: Vec<u8>,
}

/// A TPM reached over a [`Transport`], with the command buffers and retry policy.
pub struct Tpm<T> {
    transport: T,
    cmd: Box<[u8; FRAME_MAX]>,
    rsp: Box<[u8; FRAME_MAX]>,
    sleep: Box<dyn FnMut(Duration) + Send>,
    nv_chunk: Option<u16>,
    nv_buffer_max: Option<u16>,
}

impl<T> std::fmt::Debug for Tpm<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tpm")
            .field("nv_chunk", &self.nv_chunk)
            .finish_non_exhaustive()
    }
}

impl<T: Transport> Tpm<T> {
    /// Wraps a transport. Retries sleep with `std::thread::sleep`.
    pub fn new(transport: T) -> Self {
        Self {
            transport,
            cmd: Box::new([0; FRAME_MAX]),
            rsp: Box::new([0; FRAME_MAX]),
            sleep: Box::new(std::thread::sleep),
            nv_chunk: None,
            nv_buffer_max: None,
        }
    }

    /// Replaces the sleep used between retries (tests record instead of sleeping).
    #[must_use]
    pub fn with_sleep(mut self, sleep: impl FnMut(Duration) + Send + 'static) -> Self {
        self.sleep = Box::new(sleep);
        self
    }

    /// Forces NV reads into chunks of at most `chunk` bytes (tests; `None` = TPM's maximum).
    pub fn set_nv_chunk(&mut self, chunk: Option<u16>) {
        self.nv_chunk = chunk.map(|c| c.max(1));
    }

    /// The underlying transport.
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Starts a scope whose tracked handles are flushed when it is dropped.
    pub fn scope(&mut self) -> Scope<'_, T> {
        Scope::new(self)
    }

    /// Marshals `command` with `sessions`, sends it (retrying while busy) and returns the
    /// response length. The response code is checked here: only success returns `Ok`.
    fn call<C: TpmFrame>(
        &mut self,
        name: &'static str,
        command: &C,
        auths: &[Auth],
    ) -> Result<usize, Error> {
        let sessions: Vec<TpmsAuthCommand> = auths.iter().map(|a| auth_command(*a)).collect();
        self.call_with(name, command, &sessions)
    }

    /// [`Tpm::call`] with the authorization area given as built sessions.
    fn call_with<C: TpmFrame>(
        &mut self,
        name: &'static str,
        command: &C,
        sessions: &[TpmsAuthCommand],
    ) -> Result<usize, Error> {
        let tag = if sessions.is_empty() {
            TpmSt::NoSessions
        } else {
            TpmSt::Sessions
        };
        let len = {
            let mut w = TpmWriter::new(&mut self.cmd[..]);
            tpm_marshal_command(command, tag, sessions, &mut w).map_err(|e| Error::Build {
                command: name,
                detail: format!("{e:?}"),
            })?;
            w.len()
        };
        let mut backoff = BACKOFF_START;
        let mut attempt = 1;
        loop {
            let cmd = self.cmd.get(..len).unwrap_or_default();
            // Responses are not traced: ActivateCredential's carries the secret.
            log::trace!("TPM2_{name} command {}", hex::encode(cmd));
            let n = self
                .transport
                .transact(cmd, &mut self.rsp)
                .map_err(|source| Error::Transport {
                    command: name,
                    source,
                })?;
            let code = self
                .rsp
                .get(6..HEADER_LEN)
                .filter(|_| (HEADER_LEN..=FRAME_MAX).contains(&n));
            let Some(code) = code else {
                return Err(Error::Malformed {
                    command: name,
                    detail: format!("response of {n} bytes is shorter than its header"),
                });
            };
            let rc = ResponseCode(u32::from_be_bytes([code[0], code[1], code[2], code[3]]));
            log::trace!("TPM2_{name} response: {n} bytes, {rc}");
            if rc.0 == 0 {
                return Ok(n);
            }
            if !rc.is_retry() {
                return Err(Error::Response { command: name, rc });
            }
            if attempt >= MAX_ATTEMPTS {
                return Err(Error::Busy {
                    command: name,
                    rc,
                    attempts: attempt,
                });
            }
            log::debug!("TPM2_{name}: {rc}, retrying in {backoff:?}");
            (self.sleep)(backoff);
            backoff = (backoff * 2).min(BACKOFF_MAX);
            attempt += 1;
        }
    }

    /// Parses a successful response with the crate's typed unmarshaller.
    fn typed<R: TpmUnmarshalBody>(&self, name: &'static str, n: usize) -> Result<R, Error> {
        let bytes = self.rsp.get(..n).unwrap_or_default();
        TpmResponse::cast(bytes)
            .and_then(TpmResponse::unmarshal::<R>)
            .map_err(|e| Error::Malformed {
                command: name,
                detail: format!("{e:?}"),
            })
    }

    /// Splits a successful response into its handle area and parameter area.
    fn areas(&self, name: &'static str, n: usize, handles: usize) -> Result<Areas<'_>, Error> {
        let bytes = self.rsp.get(..n).unwrap_or_default();
        let bad = |detail: &str| Error::Malformed {
            command: name,
            detail: detail.to_owned(),
        };
        let tag = bytes.get(..2).map(|t| u16::from_be_bytes([t[0], t[1]]));
        let body = bytes.get(HEADER_LEN..).unwrap_or_default();
        let (handle_area, rest) =
            split(body, handles * 4).ok_or_else(|| bad("handle area truncated"))?;
        let params = match tag {
            Some(0x8001) => rest,
            Some(0x8002) => {
                let mut r = Reader::new(rest);
                let size = r
                    .u32("parameter size missing")
                    .map_err(|e| bad(e.field()))?;
                let size = usize::try_from(size).map_err(|_| bad("parameter size too large"))?;
                r.take(size, "parameter area truncated")
                    .map_err(|e| bad(e.field()))?
            }
            _ => return Err(bad("unknown response tag")),
        };
        Ok(Areas {
            handles: handle_area,
            params,
            name,
        })
    }

    /// TPM2_Startup(CLEAR) (Part 3, 9.3). `TPM_RC_INITIALIZE` (already started) is success.
    ///
    /// # Errors
    /// Any other response code, or a transport failure.
    pub fn startup_clear(&mut self) -> Result<(), Error> {
        let cmd = TpmStartupCommand {
            handles: [],
            startup_type: TpmSu::Clear,
        };
        match self.call("Startup", &cmd, &[]) {
            Ok(_) => Ok(()),
            Err(Error::Response { rc, .. }) if rc.0 == rc::INITIALIZE => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// TPM2_GetCapability(TPM_CAP_HANDLES) (Part 3, 30.2): every handle from `first` up to
    /// the end of its handle type, following `moreData`.
    ///
    /// # Errors
    /// Response code, transport failure or malformed capability data.
    pub fn handles(&mut self, first: u32) -> Result<Vec<u32>, Error> {
        let name = "GetCapability";
        let mut out = Vec::new();
        let mut next = first;
        loop {
            let cmd = TpmGetCapabilityCommand {
                handles: [],
                cap: TpmCap::Handles,
                property: TpmUint32::new(next),
                property_count: TpmUint32::new(254),
            };
            let n = self.call(name, &cmd, &[])?;
            let a = self.areas(name, n, 0)?;
            let mut r = Reader::new(a.params);
            let more = r.u8("moreData missing").map_err(|e| a.bad(e.field()))?;
            let cap = r.u32("capability missing").map_err(|e| a.bad(e.field()))?;
            if cap != 1 {
                return Err(a.bad(&format!("asked for handles, got capability {cap:#x}")));
            }
            let count = r
                .u32("handle count missing")
                .map_err(|e| a.bad(e.field()))?;
            let mut last = None;
            for _ in 0..count {
                let h = r
                    .u32("handle list truncated")
                    .map_err(|e| a.bad(e.field()))?;
                if out.len() >= HANDLES_MAX {
                    return Err(a.bad("more than 4096 handles"));
                }
                out.push(h);
                last = Some(h);
            }
            match (more, last) {
                (0, _) | (_, None) => return Ok(out),
                (_, Some(h)) if h >= next => next = h.saturating_add(1),
                _ => return Err(a.bad("handle list does not advance")),
            }
        }
    }

    /// TPM2_GetCapability(TPM_CAP_TPM_PROPERTIES) for one property (Part 3, 30.2). Returns
    /// `None` if the TPM does not report it. Unknown properties in the reply are skipped.
    ///
    /// # Errors
    /// Response code, transport failure or malformed capability data.
    pub fn property(&mut self, property: u32) -> Result<Option<u32>, Error> {
        let name = "GetCapability";
        let cmd = TpmGetCapabilityCommand {
            handles: [],
            cap: TpmCap::TpmProperties,
            property: TpmUint32::new(property),
            property_count: TpmUint32::new(1),
        };
        let n = self.call(name, &cmd, &[])?;
        let a = self.areas(name, n, 0)?;
        let mut r = Reader::new(a.params);
        r.u8("moreData missing").map_err(|e| a.bad(e.field()))?;
        let cap = r.u32("capability missing").map_err(|e| a.bad(e.field()))?;
        if cap != 6 {
            return Err(a.bad(&format!("asked for properties, got capability {cap:#x}")));
        }
        let count = r
            .u32("property count missing")
            .map_err(|e| a.bad(e.field()))?;
        for _ in 0..count {
            let p = r
                .u32("property list truncated")
                .map_err(|e| a.bad(e.field()))?;
            let v = r
                .u32("property list truncated")
                .map_err(|e| a.bad(e.field()))?;
            if p == property {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// TPM2_NV_ReadPublic (Part 3, 31.6).
    ///
    /// # Errors
    /// Response code (e.g. `TPM_RC_HANDLE` if the index does not exist), transport failure,
    /// malformed response.
    pub fn nv_read_public(&mut self, index: u32) -> Result<NvPublic, Error> {
        let name = "NV_ReadPublic";
        let cmd = TpmNvReadPublicCommand {
            handles: [TpmHandle::new(index)],
        };
        let n = self.call(name, &cmd, &[])?;
        let a = self.areas(name, n, 0)?;
        let mut r = Reader::new(a.params);
        let nv = r
            .tpm2b("nvPublic truncated")
            .map_err(|e| a.bad(e.field()))?;
        let mut p = Reader::new(nv);
        let got_index = p.u32("nvIndex missing").map_err(|e| a.bad(e.field()))?;
        p.u16("nameAlg missing").map_err(|e| a.bad(e.field()))?;
        let attributes = p.u32("attributes missing").map_err(|e| a.bad(e.field()))?;
        p.tpm2b("authPolicy truncated")
            .map_err(|e| a.bad(e.field()))?;
        let data_size = p.u16("dataSize missing").map_err(|e| a.bad(e.field()))?;
        if got_index != index {
            return Err(a.bad(&format!("asked for {index:#010x}, got {got_index:#010x}")));
        }
        Ok(NvPublic {
            index,
            attributes,
            data_size,
        })
    }

    /// The NV_Read chunk size: the override, else min(TPM_PT_NV_BUFFER_MAX, 1024).
    fn nv_chunk(&mut self) -> Result<u16, Error> {
        if let Some(c) = self.nv_chunk {
            return Ok(c.min(NV_CHUNK_CAP));
        }
        if let Some(c) = self.nv_buffer_max {
            return Ok(c);
        }
        let max = self.property(PT_NV_BUFFER_MAX)?.unwrap_or(512);
        let chunk = u16::try_from(max)
            .unwrap_or(NV_CHUNK_CAP)
            .clamp(1, NV_CHUNK_CAP);
        self.nv_buffer_max = Some(chunk);
        Ok(chunk)
    }

    /// Reads `size` bytes of NV index `index` with TPM2_NV_Read (Part 3, 31.13), in chunks of
    /// at most TPM_PT_NV_BUFFER_MAX, authorized by the index itself (empty password).
    ///
    /// # Errors
    /// Response code, transport failure, or a chunk of the wrong length.
    pub fn nv_read(&mut self, index: u32, size: u16) -> Result<Vec<u8>, Error> {
        let name = "NV_Read";
        let chunk = self.nv_chunk()?;
        let mut out = Vec::with_capacity(usize::from(size));
        while out.len() < usize::from(size) {
            let offset = u16::try_from(out.len()).unwrap_or(u16::MAX);
            let want = chunk.min(size - offset);
            let cmd = TpmNvReadCommand {
                handles: [TpmHandle::new(index), TpmHandle::new(index)],
                size: TpmUint16::new(want),
                offset: TpmUint16::new(offset),
            };
            let n = self.call(name, &cmd, &[Auth::Password])?;
            let rsp: TpmNvReadResponse = self.typed(name, n)?;
            let data: &[u8] = &rsp.data;
            if data.len() != usize::from(want) {
                return Err(Error::Malformed {
                    command: name,
                    detail: format!("asked for {want} bytes at {offset}, got {}", data.len()),
                });
            }
            out.extend_from_slice(data);
        }
        Ok(out)
    }

    /// TPM2_ReadPublic (Part 3, 12.4).
    ///
    /// # Errors
    /// Response code (`TPM_RC_HANDLE` if absent), transport failure, malformed response.
    pub fn read_public(&mut self, handle: u32) -> Result<ObjectPublic, Error> {
        let name = "ReadPublic";
        let cmd = TpmReadPublicCommand {
            handles: [TpmHandle::new(handle)],
        };
        let n = self.call(name, &cmd, &[])?;
        let a = self.areas(name, n, 0)?;
        let mut r = Reader::new(a.params);
        let public = r
            .tpm2b_whole("outPublic truncated")
            .map_err(|e| a.bad(e.field()))?;
        let obj_name = r.tpm2b("name truncated").map_err(|e| a.bad(e.field()))?;
        Ok(ObjectPublic {
            public: public.to_vec(),
            name: obj_name.to_vec(),
        })
    }

    /// TPM2_CreatePrimary (Part 3, 24.1) in `hierarchy` (empty auth) from a TPMT_PUBLIC
    /// template. Returns the transient handle, which the caller must flush (track it in a
    /// [`Scope`]).
    ///
    /// # Errors
    /// Response code, transport failure, a template the crate cannot marshal, or a malformed
    /// response.
    pub fn create_primary(
        &mut self,
        hierarchy: u32,
        template: &[u8],
    ) -> Result<(u32, ObjectPublic), Error> {
        let name = "CreatePrimary";
        let cmd = TpmCreatePrimaryCommand {
            handles: [TpmHandle::new(hierarchy)],
            in_sensitive: Tpm2bSensitiveCreate::default(),
            in_public: template_public(name, template)?,
            outside_info: Tpm2bData::default(),
            creation_pcr: TpmlPcrSelection::default(),
        };
        let n = self.call(name, &cmd, &[Auth::Password])?;
        let a = self.areas(name, n, 1)?;
        let handle = Reader::new(a.handles)
            .u32("objectHandle missing")
            .map_err(|e| a.bad(e.field()))?;
        let mut r = Reader::new(a.params);
        let public = r
            .tpm2b_whole("outPublic truncated")
            .map_err(|e| a.bad(e.field()))?;
        r.tpm2b("creationData truncated")
            .map_err(|e| a.bad(e.field()))?;
        r.tpm2b("creationHash truncated")
            .map_err(|e| a.bad(e.field()))?;
        r.u16("creationTicket truncated")
            .map_err(|e| a.bad(e.field()))?;
        r.u32("creationTicket truncated")
            .map_err(|e| a.bad(e.field()))?;
        r.tpm2b("creationTicket truncated")
            .map_err(|e| a.bad(e.field()))?;
        let obj_name = r.tpm2b("name truncated").map_err(|e| a.bad(e.field()))?;
        Ok((
            handle,
            ObjectPublic {
                public: public.to_vec(),
                name: obj_name.to_vec(),
            },
        ))
    }

    /// TPM2_StartAuthSession (Part 3, 11.1) for an unsalted, unbound policy session with
    /// `hash_alg` (the authorized object's nameAlg) and no symmetric parameter encryption.
    /// Returns the session handle; the caller must flush it unless a command consumes it.
    ///
    /// # Errors
    /// Response code, transport failure, malformed response.
    pub fn start_policy_session(&mut self, hash_alg: u16) -> Result<u32, Error> {
        let name = "StartAuthSession";
        let hash = TpmAlgId::try_from(hash_alg).map_err(|_| Error::Build {
            command: name,
            detail: format!("unsupported session hash {hash_alg:#06x}"),
        })?;
        let nonce = nonce_caller();
        let (symmetric, _) = TpmtSymDef::unmarshal(&[0x00, 0x10]).map_err(|e| Error::Build {
            command: name,
            detail: format!("{e:?}"),
        })?;
        let cmd = TpmStartAuthSessionCommand {
            handles: [TpmHandle::new(RH_NULL), TpmHandle::new(RH_NULL)],
            nonce_caller: Tpm2bNonce::try_from(&nonce[..]).map_err(|e| Error::Build {
                command: name,
                detail: format!("{e:?}"),
            })?,
            encrypted_salt: Tpm2bEncryptedSecret::default(),
            session_type: TpmSe::Policy,
            symmetric,
            auth_hash: hash,
        };
        let n = self.call(name, &cmd, &[])?;
        let rsp: TpmStartAuthSessionResponse = self.typed(name, n)?;
        Ok(rsp.handles[0].value())
    }

    /// TPM2_PolicySecret (Part 3, 23.3) on `session` with `auth_entity` (a hierarchy, empty
    /// password), no nonce, cpHash, policyRef or expiration.
    ///
    /// # Errors
    /// Response code, transport failure.
    pub fn policy_secret(&mut self, auth_entity: u32, session: u32) -> Result<(), Error> {
        let cmd = TpmPolicySecretCommand {
            handles: [TpmHandle::new(auth_entity), TpmHandle::new(session)],
            ..TpmPolicySecretCommand::default()
        };
        self.call("PolicySecret", &cmd, &[Auth::Password])?;
        Ok(())
    }

    /// TPM2_ActivateCredential (Part 3, 12.5): `activate` is the object the credential names
    /// (the AK), `key` the EK. `id_object` and `secret` are the TPM2B contents (no size
    /// prefix). Returns the recovered credential.
    ///
    /// # Errors
    /// `TPM_RC_INTEGRITY` for a credential made for another AK Name or EK, other response
    /// codes, transport failure, buffers over the crate's caps.
    pub fn activate_credential(
        &mut self,
        activate: (u32, Auth),
        key: (u32, Auth),
        id_object: &[u8],
        secret: &[u8],
    ) -> Result<Vec<u8>, Error> {
        let name = "ActivateCredential";
        let build = |what: &str, e: tpm2_protocol::TpmError| Error::Build {
            command: name,
            detail: format!("{what}: {e:?}"),
        };
        let cmd = TpmActivateCredentialCommand {
            handles: [TpmHandle::new(activate.0), TpmHandle::new(key.0)],
            credential_blob: Tpm2bIdObject::try_from(id_object)
                .map_err(|e| build("credentialBlob", e))?,
            secret: Tpm2bEncryptedSecret::try_from(secret).map_err(|e| build("secret", e))?,
        };
        let n = self.call(name, &cmd, &[activate.1, key.1])?;
        let rsp: TpmActivateCredentialResponse = self.typed(name, n)?;
        let cert_info: &Tpm2bDigest = &rsp.cert_info;
        Ok(cert_info.to_vec())
    }

    /// TPM2_StartAuthSession (Part 3, 11.1) for a salted, unbound HMAC session with
    /// AES-128-CFB parameter encryption and SHA-256: tpmKey = `tpm_key` (the EK, whose
    /// public area is `tpm_key_public`, TPM2B_PUBLIC), bind = TPM_RH_NULL, encryptedSalt =
    /// the salt encrypted to the EK ([`session::salt_for`]). The caller must flush the
    /// session unless a command consumes it.
    ///
    /// # Errors
    /// Response code (e.g. `TPM_RC_VALUE` or `TPM_RC_ECC_POINT` for a salt the EK cannot
    /// decrypt), transport failure, malformed response, salt generation failure.
    pub fn start_salted_session(
        &mut self,
        tpm_key: u32,
        tpm_key_public: &[u8],
    ) -> Result<Session, Error> {
        let name = "StartAuthSession";
        let fault = |detail: &str| Error::Session {
            command: name,
            detail: detail.to_owned(),
        };
        let build = |what: &str, e: tpm2_protocol::TpmError| Error::Build {
            command: name,
            detail: format!("{what}: {e:?}"),
        };
        let salt = session::salt_for(tpm_key_public).map_err(fault)?;
        let mut nonce = [0u8; session::NONCE_LEN];
        session::random(&mut nonce).map_err(fault)?;
        let (symmetric, _) = TpmtSymDef::unmarshal(&session::SYMMETRIC_AES128_CFB)
            .map_err(|e| build("symmetric", e))?;
        let cmd = TpmStartAuthSessionCommand {
            handles: [TpmHandle::new(tpm_key), TpmHandle::new(RH_NULL)],
            nonce_caller: Tpm2bNonce::try_from(&nonce[..]).map_err(|e| build("nonceCaller", e))?,
            encrypted_salt: Tpm2bEncryptedSecret::try_from(&salt.encrypted[..])
                .map_err(|e| build("encryptedSalt", e))?,
            session_type: TpmSe::Hmac,
            symmetric,
            auth_hash: TpmAlgId::Sha256,
        };
        let n = self.call(name, &cmd, &[])?;
        let rsp: TpmStartAuthSessionResponse = self.typed(name, n)?;
        let handle = rsp.handles[0].value();
        let nonce_tpm: &[u8] = &rsp.nonce_tpm;
        // nonceTPM is at least 16 bytes (Part 1, 19.6.3); a session we cannot use is flushed
        // here, since the caller never learns its handle.
        let session = if nonce_tpm.len() < 16 {
            Err(Error::Malformed {
                command: name,
                detail: format!("nonceTPM of {} bytes (at least 16)", nonce_tpm.len()),
            })
        } else {
            Session::new(handle, &salt.secret, nonce_tpm, &nonce).map_err(fault)
        };
        if session.is_err()
            && let Err(e) = self.flush_context(handle)
        {
            log::debug!("flushing {handle:#010x}: {e}");
        }
        session
    }

    /// TPM2_ActivateCredential (Part 3, 12.5) with the AK authorized through `session`, a
    /// salted HMAC session carrying the encrypt attribute (continueSession clear, so the TPM
    /// flushes it on success), and the EK through `key.2`. The response HMAC is verified
    /// before certInfo is decrypted, so the secret never crosses the bus in clear.
    /// `activate` and `key` carry each handle's Name for cpHash.
    ///
    /// # Errors
    /// As [`Tpm::activate_credential`]; [`Error::Session`] if the response HMAC does not
    /// verify (a tampered response, or a TPM that derived another session key) or the TPM
    /// did not encrypt; [`Error::Malformed`] for a response whose areas do not parse.
    pub fn activate_credential_encrypted(
        &mut self,
        activate: (u32, &[u8]),
        key: (u32, &[u8], Auth),
        session: &Session,
        id_object: &[u8],
        secret: &[u8],
    ) -> Result<Vec<u8>, Error> {
        let name = "ActivateCredential";
        let build = |what: &str, e: tpm2_protocol::TpmError| Error::Build {
            command: name,
            detail: format!("{what}: {e:?}"),
        };
        let fault = |detail: &str| Error::Session {
            command: name,
            detail: detail.to_owned(),
        };
        let cmd = TpmActivateCredentialCommand {
            handles: [TpmHandle::new(activate.0), TpmHandle::new(key.0)],
            credential_blob: Tpm2bIdObject::try_from(id_object)
                .map_err(|e| build("credentialBlob", e))?,
            secret: Tpm2bEncryptedSecret::try_from(secret).map_err(|e| build("secret", e))?,
        };
        // The parameter area as marshalled without sessions: header and two handles first.
        let params = {
            let mut buf = [0u8; FRAME_MAX];
            let mut w = TpmWriter::new(&mut buf[..]);
            tpm_marshal_command(&cmd, TpmSt::NoSessions, &[], &mut w)
                .map_err(|e| build("parameters", e))?;
            let len = w.len();
            buf.get(HEADER_LEN + 8..len)
                .ok_or_else(|| fault("command shorter than its handles"))?
                .to_vec()
        };
        let cp = session::cp_hash(
            session::SESSION_HASH,
            CC_ACTIVATE_CREDENTIAL,
            &[activate.1, key.1],
            &params,
        )
        .map_err(fault)?;
        let mut nonce = [0u8; session::NONCE_LEN];
        session::random(&mut nonce).map_err(fault)?;
        let attrs = session::ATTR_ENCRYPT;
        let hmac = session.command_hmac(&cp, &nonce, attrs).map_err(fault)?;
        let sessions = [
            TpmsAuthCommand {
                session_handle: TpmHandle::new(session.handle),
                nonce: Tpm2bNonce::try_from(&nonce[..]).map_err(|e| build("nonceCaller", e))?,
                session_attributes: TpmaSession::ENCRYPT,
                hmac: Tpm2bAuth::try_from(&hmac[..]).map_err(|e| build("hmac", e))?,
            },
            auth_command(key.2),
        ];
        let n = self.call_with(name, &cmd, &sessions)?;
        let a = self.areas(name, n, 0)?;
        let mut params = a.params.to_vec();
        // The authorization area follows the parameters: one TPMS_AUTH_RESPONSE per session.
        let bytes = self.rsp.get(..n).unwrap_or_default();
        let auth_area = bytes
            .get(HEADER_LEN + 4 + params.len()..)
            .ok_or_else(|| a.bad("authorization area missing"))?;
        let mut r = Reader::new(auth_area);
        let nonce_tpm = r
            .tpm2b("AK session nonceTPM truncated")
            .map_err(|e| a.bad(e.field()))?;
        let rsp_attrs = r
            .u8("AK session attributes missing")
            .map_err(|e| a.bad(e.field()))?;
        let rsp_hmac = r
            .tpm2b("AK session HMAC truncated")
            .map_err(|e| a.bad(e.field()))?;
        session
            .open_response(
                CC_ACTIVATE_CREDENTIAL,
                &mut params,
                nonce_tpm,
                &nonce,
                rsp_attrs,
                rsp_hmac,
            )
            .map_err(fault)?;
        let mut p = Reader::new(&params);
        let cert_info = p
            .tpm2b("certInfo truncated")
            .map_err(|e| Error::Malformed {
                command: name,
                detail: e.field().into(),
            })?
            .to_vec();
        if !p.is_empty() {
            return Err(Error::Malformed {
                command: name,
                detail: "bytes after certInfo".into(),
            });
        }
        if cert_info.len() > 64 {
            return Err(Error::Malformed {
                command: name,
                detail: format!("certInfo of {} bytes exceeds TPM2B_DIGEST", cert_info.len()),
            });
        }
        Ok(cert_info)
    }

    /// TPM2_Create (Part 3, 12.1) under `parent` (empty auth) from a TPMT_PUBLIC template,
    /// with an empty authValue and no sensitive data: the TPM generates the key.
    ///
    /// # Errors
    /// Response code, transport failure, a template the crate cannot marshal, or a malformed
    /// response.
    pub fn create(&mut self, parent: u32, template: &[u8]) -> Result<CreatedKey, Error> {
        let name = "Create";
        let cmd = TpmCreateCommand {
            handles: [TpmHandle::new(parent)],
            in_sensitive: Tpm2bSensitiveCreate::default(),
            in_public: template_public(name, template)?,
            outside_info: Tpm2bData::default(),
            creation_pcr: TpmlPcrSelection::default(),
        };
        let n = self.call(name, &cmd, &[Auth::Password])?;
        let a = self.areas(name, n, 0)?;
        let mut r = Reader::new(a.params);
        let private = r
            .tpm2b_whole("outPrivate truncated")
            .map_err(|e| a.bad(e.field()))?;
        let public = r
            .tpm2b_whole("outPublic truncated")
            .map_err(|e| a.bad(e.field()))?;
        Ok(CreatedKey {
            public: public.to_vec(),
            private: private.to_vec(),
        })
    }

    /// TPM2_Load (Part 3, 12.2) of `key` under `parent` (empty auth). Returns the transient
    /// handle (the caller flushes it: track it in a [`Scope`]) and the Name the TPM computed.
    ///
    /// # Errors
    /// Response code (`TPM_RC_INTEGRITY` for a key wrapped by another parent or another
    /// TPM), transport failure, malformed blobs or response.
    pub fn load(&mut self, parent: u32, key: &CreatedKey) -> Result<(u32, Vec<u8>), Error> {
        let name = "Load";
        let build = |what: &str, e: tpm2_protocol::TpmError| Error::Build {
            command: name,
            detail: format!("{what}: {e:?}"),
        };
        let (in_private, rest) =
            Tpm2bPrivate::unmarshal(&key.private).map_err(|e| build("inPrivate", e))?;
        let (in_public, tail) =
            Tpm2bPublic::unmarshal(&key.public).map_err(|e| build("inPublic", e))?;
        if !rest.is_empty() || !tail.is_empty() {
            return Err(Error::Build {
                command: name,
                detail: "key blob has trailing bytes".into(),
            });
        }
        let cmd = TpmLoadCommand {
            handles: [TpmHandle::new(parent)],
            in_private,
            in_public,
        };
        let n = self.call(name, &cmd, &[Auth::Password])?;
        let a = self.areas(name, n, 1)?;
        let handle = Reader::new(a.handles)
            .u32("objectHandle missing")
            .map_err(|e| a.bad(e.field()))?;
        let obj_name = Reader::new(a.params)
            .tpm2b("name truncated")
            .map_err(|e| a.bad(e.field()))?
            .to_vec();
        Ok((handle, obj_name))
    }

    /// TPM2_Certify (Part 3, 18.2): `signer` (the AK, its own scheme) attests that `object`
    /// is loaded in this TPM, with `qualifying` as extraData. Both are authorized by empty
    /// password.
    ///
    /// # Errors
    /// Response code (`TPM_RC_AUTH_UNAVAILABLE` for an object loaded without its private
    /// part), transport failure, malformed response.
    pub fn certify(
        &mut self,
        object: u32,
        signer: u32,
        qualifying: &[u8],
    ) -> Result<Certification, Error> {
        let name = "Certify";
        let build = |what: &str, e: tpm2_protocol::TpmError| Error::Build {
            command: name,
            detail: format!("{what}: {e:?}"),
        };
        let (in_scheme, _) =
            TpmtSigScheme::unmarshal(&SIG_SCHEME_NULL).map_err(|e| build("inScheme", e))?;
        let cmd = TpmCertifyCommand {
            handles: [TpmHandle::new(object), TpmHandle::new(signer)],
            qualifying_data: Tpm2bData::try_from(qualifying)
                .map_err(|e| build("qualifyingData", e))?,
            in_scheme,
        };
        let n = self.call(name, &cmd, &[Auth::Password, Auth::Password])?;
        let a = self.areas(name, n, 0)?;
        let mut r = Reader::new(a.params);
        let attest = r
            .tpm2b_whole("certifyInfo truncated")
            .map_err(|e| a.bad(e.field()))?
            .to_vec();
        let signature = r.rest().to_vec();
        if signature.len() < 2 {
            return Err(a.bad("signature truncated"));
        }
        Ok(Certification { attest, signature })
    }

    /// TPM2_Sign (Part 3, 20.2) of a SHA-256 `digest` with the unrestricted ECDSA key
    /// `key` (empty password, no hash check ticket). Returns the TPMT_SIGNATURE.
    ///
    /// # Errors
    /// Response code, transport failure, malformed response.
    pub fn sign_ecdsa_sha256(&mut self, key: u32, digest: &[u8; 32]) -> Result<Vec<u8>, Error> {
        let name = "Sign";
        let build = |what: &str, e: tpm2_protocol::TpmError| Error::Build {
            command: name,
            detail: format!("{what}: {e:?}"),
        };
        let (in_scheme, _) =
            TpmtSigScheme::unmarshal(&SIG_SCHEME_ECDSA_SHA256).map_err(|e| build("inScheme", e))?;
        let (validation, _) =
            TpmtTkHashcheck::unmarshal(&TICKET_NULL).map_err(|e| build("validation", e))?;
        let cmd = TpmSignCommand {
            handles: [TpmHandle::new(key)],
            digest: Tpm2bDigest::try_from(&digest[..]).map_err(|e| build("digest", e))?,
            in_scheme,
            validation,
        };
        let n = self.call(name, &cmd, &[Auth::Password])?;
        let a = self.areas(name, n, 0)?;
        Ok(a.params.to_vec())
    }

    /// TPM2_FlushContext (Part 3, 28.4); the handle is a parameter, not a handle.
    ///
    /// # Errors
    /// Response code (`TPM_RC_HANDLE` if not loaded), transport failure.
    pub fn flush_context(&mut self, handle: u32) -> Result<(), Error> {
        let cmd = TpmFlushContextCommand {
            handles: [],
            flush_handle: TpmHandle::new(handle),
        };
        self.call("FlushContext", &cmd, &[])?;
        Ok(())
    }
}

/// TPMT_SIG_SCHEME TPM_ALG_NULL: the signing key's own scheme.
const SIG_SCHEME_NULL: [u8; 2] = [0x00, 0x10];
/// TPMT_SIG_SCHEME ECDSA with SHA-256.
const SIG_SCHEME_ECDSA_SHA256: [u8; 4] = [0x00, 0x18, 0x00, 0x0B];
/// TPMT_TK_HASHCHECK for an unrestricted key: TPM_ST_HASHCHECK, TPM_RH_NULL, empty digest.
const TICKET_NULL: [u8; 8] = [0x80, 0x24, 0x40, 0x00, 0x00, 0x07, 0x00, 0x00];

/// A TPMT_PUBLIC template as the crate's TPM2B_PUBLIC, for `command`'s error messages.
fn template_public(command: &'static str, template: &[u8]) -> Result<Tpm2bPublic, Error> {
    let mut sized = Vec::with_capacity(template.len() + 2);
    let len = u16::try_from(template.len()).map_err(|_| Error::Build {
        command,
        detail: "template too large".into(),
    })?;
    sized.extend_from_slice(&len.to_be_bytes());
    sized.extend_from_slice(template);
    let (in_public, rest) = Tpm2bPublic::unmarshal(&sized).map_err(|e| Error::Build {
        command,
        detail: format!("template: {e:?}"),
    })?;
    if !rest.is_empty() {
        return Err(Error::Build {
            command,
            detail: "template has trailing bytes".into(),
        });
    }
    Ok(in_public)
}

fn auth_command(auth: Auth) -> TpmsAuthCommand {
    match auth {
        Auth::Password => TpmsAuthCommand {
            session_handle: TpmHandle::new(RS_PW),
            session_attributes: TpmaSession::CONTINUE_SESSION,
            ..TpmsAuthCommand::default()
        },
        // continueSession clear: the TPM flushes the policy session when the command
        // succeeds; on failure our Scope flushes it.
        Auth::Policy(h) => TpmsAuthCommand {
            session_handle: TpmHandle::new(h),
            ..TpmsAuthCommand::default()
        },
    }
}

/// A 16-byte nonceCaller. The spec requires 16+ bytes; without HMAC, salting or parameter
/// encryption (none are used) it only needs to differ between sessions, so a hash of the
/// time, the process id and a counter is enough and avoids a randomness dependency.
fn nonce_caller() -> [u8; 16] {
    use sha2::{Digest, Sha256};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = Sha256::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.update(now.as_nanos().to_be_bytes());
    h.update(std::process::id().to_be_bytes());
    h.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    let d = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(d.get(..16).unwrap_or(&[0; 16]));
    out
}

/// Handle and parameter areas of a successful response.
struct Areas<'a> {
    handles: &'a [u8],
    params: &'a [u8],
    name: &'static str,
}

impl Areas<'_> {
    fn bad(&self, detail: &str) -> Error {
        Error::Malformed {
            command: self.name,
            detail: detail.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests;
