//! YAML alias-expansion budget for policy documents.
//!
//! serde_yaml expands anchors and aliases while deserializing, and its own repetition limit
//! counts alias jumps, not the nodes behind them: a list of a few thousand scalars aliased a
//! thousand times passes it and would materialize millions of strings in the typed document.
//! [`check`] walks the document once, following aliases, counting nodes and scalar bytes
//! without allocating per node, and stops as soon as either budget is spent. Never panics.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Visitor};

use super::{ConfigError, MAX_NODES, MAX_SCALAR_BYTES};

/// Walks the document once, following aliases, counting nodes and scalar bytes, without
/// allocating per node; fails as soon as either budget is spent.
pub(super) fn check(text: &str) -> Result<(), ConfigError> {
    let budget = Budget {
        nodes: &Cell::new(MAX_NODES),
        bytes: &Cell::new(MAX_SCALAR_BYTES),
        exhausted: &Cell::new(false),
    };
    let exhausted = budget.exhausted;
    match budget.deserialize(serde_norway::Deserializer::from_str(text)) {
        Ok(()) => Ok(()),
        Err(_) if exhausted.get() => Err(ConfigError::TooComplex),
        // A syntax error: the same message the typed parse would give.
        Err(e) => Err(ekattest_protocol::yaml::tab_in_indentation(text)
            .map_or(ConfigError::Yaml(e), ConfigError::Tab)),
    }
}

#[derive(Clone, Copy)]
struct Budget<'a> {
    nodes: &'a Cell<usize>,
    bytes: &'a Cell<usize>,
    exhausted: &'a Cell<bool>,
}

impl Budget<'_> {
    fn spend<E: de::Error>(self, bytes: usize) -> Result<(), E> {
        let nodes = self.nodes.get().checked_sub(1);
        let left = self.bytes.get().checked_sub(bytes);
        match (nodes, left) {
            (Some(n), Some(b)) => {
                self.nodes.set(n);
                self.bytes.set(b);
                Ok(())
            }
            _ => {
                self.exhausted.set(true);
                Err(E::custom("YAML expansion budget exceeded"))
            }
        }
    }
}

impl<'de> DeserializeSeed<'de> for Budget<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Budget<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.spend(1)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.spend(8)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.spend(8)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.spend(8)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.spend(v.len())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.spend(0)
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.spend(0)
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.deserialize(d)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.spend(0)?;
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.spend(0)?;
        while map.next_key_seed(self)?.is_some() {
            map.next_value_seed(self)?;
        }
        Ok(())
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        // A tagged node (`!tag value`): count the tag, then the value.
        use de::VariantAccess;
        let ((), variant) = data.variant_seed(self)?;
        variant.newtype_variant_seed(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fan_out(leaves: usize, aliases: usize) -> String {
        format!(
            "a: &a [{}]\nb: [{}]\n",
            vec!["x"; leaves].join(","),
            vec!["*a"; aliases].join(",")
        )
    }

    #[test]
    fn budget_allows_moderate_aliasing() {
        // 2,000 x 100 = 200,000 expanded nodes: within MAX_NODES.
        check(&fan_out(2000, 100)).unwrap();
    }

    #[test]
    fn budget_stops_a_wide_alias_fan_out() {
        // 2,000 x 1,000 = 2,000,000 expanded nodes: over MAX_NODES, well under serde_yaml's
        // own repetition limit (it counts alias jumps, not the nodes behind them).
        assert!(matches!(
            check(&fan_out(2000, 1000)),
            Err(ConfigError::TooComplex)
        ));
    }
}
