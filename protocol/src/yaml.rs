//! A diagnostic for the YAML files the agent and the server read (agent.yaml, server.yaml,
//! AgentAttestation documents): YAML forbids tabs in indentation, and serde_yaml reports one
//! as "found character that cannot start any token", which sends operators looking for a
//! bad character they cannot see. Callers check this only after the YAML parser failed
//! (a tab inside a value is legal).

use core::fmt;

/// A line whose indentation holds a tab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TabIndent {
    /// 1-based line number.
    pub line: usize,
}

impl fmt::Display for TabIndent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}: a tab in the indentation; YAML indents with spaces only (replace the \
             tab with spaces)",
            self.line
        )
    }
}

/// The first non-blank line whose leading whitespace contains a tab, if any.
#[must_use]
pub fn tab_in_indentation(text: &str) -> Option<TabIndent> {
    text.lines().enumerate().find_map(|(i, line)| {
        // Blank lines do not count: whitespace there is not indentation.
        let end = line.find(|c: char| c != ' ' && c != '\t')?;
        let indent = line.get(..end).unwrap_or_default();
        indent.contains('\t').then_some(TabIndent { line: i + 1 })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_tabs_in_indentation_only() {
        assert_eq!(tab_in_indentation("a: 1\nb:\n  c: 2\n"), None);
        assert_eq!(tab_in_indentation("a: \"x\ty\"\n"), None);
        assert_eq!(
            tab_in_indentation("a: 1\nb:\n\tc: 2\n"),
            Some(TabIndent { line: 3 })
        );
        assert_eq!(
            tab_in_indentation("a:\n  \t- x\n"),
            Some(TabIndent { line: 2 })
        );
        assert_eq!(tab_in_indentation("a: 1\n\t\n"), None, "blank line");
    }
}
