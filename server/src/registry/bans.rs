//! Bans: an EK (by public hash) or an agent id that the server refuses at Login, before any
//! signature check, and at Answer.
//!
//! [`BanList`] is the in-memory copy every worker reads (a read lock and one hash lookup per
//! check); the registry's [`Writer`](super::Writer) replaces it from the database every
//! `ban-refresh`, so a ban written on any node reaches every node within that bound.

use std::collections::HashMap;
use std::fmt;
use std::sync::{PoisonError, RwLock};

use serde::Serialize;

use super::{EkHash, UnixSeconds};

/// What a ban names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BanTarget {
    /// An EK, by its public hash: whatever agent id it comes under.
    Ek(EkHash),
    /// An agent id, whatever EK it presents.
    Agent(String),
}

impl BanTarget {
    /// `ek` or `agent`: the stored kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Ek(_) => "ek",
            Self::Agent(_) => "agent",
        }
    }

    /// The stored value: the hash in lowercase hex, or the agent id.
    pub fn value(&self) -> String {
        match self {
            Self::Ek(h) => hex::encode(h),
            Self::Agent(a) => a.clone(),
        }
    }

    /// The target from its stored kind and value.
    ///
    /// # Errors
    /// A message for an unknown kind or a malformed hash.
    pub fn from_stored(kind: &str, value: &str) -> Result<Self, String> {
        match kind {
            "ek" => super::parse_ek_hash(value).map(Self::Ek),
            "agent" => Ok(Self::Agent(value.to_owned())),
            other => Err(format!("unknown ban kind {other:?} (expected ek or agent)")),
        }
    }
}

impl fmt::Display for BanTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ek(h) => write!(f, "EK {}", hex::encode(h)),
            Self::Agent(a) => write!(f, "agent id {a}"),
        }
    }
}

/// One ban.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    /// What is banned.
    pub target: BanTarget,
    /// Why (`--reason`; may be empty).
    pub reason: String,
    /// When it was written.
    pub at: UnixSeconds,
    /// Who wrote it (`user@host` of the ekattestctl run).
    pub by: String,
}

/// A ban as `ekattestctl agent list --bans --json` prints it.
#[derive(Debug, Serialize)]
pub struct BanJson<'a> {
    /// `ek` or `agent`.
    pub kind: &'static str,
    /// The hash or agent id.
    pub value: String,
    /// Why.
    pub reason: &'a str,
    /// When (Unix seconds).
    pub at: UnixSeconds,
    /// Who.
    pub by: &'a str,
}

impl Ban {
    /// The JSON form.
    pub fn json(&self) -> BanJson<'_> {
        BanJson {
            kind: self.target.kind(),
            value: self.target.value(),
            reason: &self.reason,
            at: self.at,
            by: &self.by,
        }
    }

    /// The rejection reason logged when this ban refuses an agent.
    pub fn refusal(&self) -> String {
        let target = self.target.value();
        let reason = if self.reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.reason)
        };
        format!(
            "{} is banned{reason}; to let it attest again run `ekattestctl agent unban --{} {target}`",
            self.target,
            self.target.kind(),
        )
    }
}

#[derive(Debug, Default)]
struct Sets {
    eks: HashMap<EkHash, Ban>,
    agents: HashMap<String, Ban>,
}

/// The bans in memory, shared by the workers and the registry writer.
#[derive(Debug, Default)]
pub struct BanList {
    sets: RwLock<Sets>,
}

impl BanList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces every ban with `bans`.
    pub fn replace(&self, bans: Vec<Ban>) {
        let mut sets = Sets::default();
        for ban in bans {
            match &ban.target {
                BanTarget::Ek(h) => {
                    sets.eks.insert(*h, ban);
                }
                BanTarget::Agent(a) => {
                    sets.agents.insert(a.clone(), ban);
                }
            }
        }
        *self.sets.write().unwrap_or_else(PoisonError::into_inner) = sets;
    }

    /// The ban that refuses `agent` presenting `ek` (the EK's first), if any.
    pub fn check(&self, agent: &str, ek: Option<&EkHash>) -> Option<Ban> {
        let sets = self.sets.read().unwrap_or_else(PoisonError::into_inner);
        if sets.eks.is_empty() && sets.agents.is_empty() {
            return None;
        }
        ek.and_then(|h| sets.eks.get(h))
            .or_else(|| sets.agents.get(agent))
            .cloned()
    }

    /// How many bans are in force.
    pub fn len(&self) -> usize {
        let sets = self.sets.read().unwrap_or_else(PoisonError::into_inner);
        sets.eks.len() + sets.agents.len()
    }

    /// Whether no ban is in force.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
