//! The experiments a tenant may write to: ids, and names or `*`/`?` globs.

use std::collections::HashSet;

use crate::config::is_experiment_id;
use crate::vocab::{ExperimentRef, glob_matches};

#[derive(Debug, Clone, Default)]
pub struct ExperimentScope {
    ids: HashSet<String>,
    names: Vec<String>,
}

impl ExperimentScope {
    /// Entries that are all digits are ids; the others are names or globs.
    pub fn new(entries: &[String]) -> Self {
        let mut scope = Self::default();
        for e in entries.iter().map(|e| e.trim()) {
            if is_experiment_id(e) {
                scope.ids.insert(e.to_string());
            } else {
                scope.names.push(e.to_string());
            }
        }
        scope
    }

    /// Whether an experiment id is listed as such.
    pub fn allows_id(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    /// Whether an experiment name matches a listed name or glob.
    pub fn allows_name(&self, name: &str) -> bool {
        self.names.iter().any(|g| glob_matches(g, name))
    }

    /// Whether the experiment is allowed by what the reference itself says; an id not listed
    /// may still be allowed by its name (`allows_name`), which only MLflow knows.
    pub fn allows_ref(&self, exp: &ExperimentRef) -> bool {
        match exp {
            ExperimentRef::Id(id) => self.allows_id(id),
            ExperimentRef::Name(name) => self.allows_name(name),
        }
    }

    /// The ids listed as such.
    pub fn ids(&self) -> impl Iterator<Item = &String> {
        self.ids.iter()
    }

    /// Whether names are listed, so that an unlisted id is worth looking up by name.
    pub fn has_names(&self) -> bool {
        !self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_globs() {
        let s = ExperimentScope::new(&["team-a-*".into(), "7".into(), "shared".into()]);
        assert!(s.allows_id("7"));
        assert!(!s.allows_id("8"));
        assert!(s.allows_name("team-a-prod"));
        assert!(s.allows_name("shared"));
        assert!(!s.allows_name("team-b-prod"));
        assert!(s.allows_ref(&ExperimentRef::Id("7".into())));
        assert!(!s.allows_ref(&ExperimentRef::Name("7x".into())));
        assert!(s.has_names());
        assert!(!ExperimentScope::new(&["1".into()]).has_names());
    }
}
