//! What validation reports: one [`ConfigError`] per problem, every problem of a config in
//! [`ValidationErrors`]. A leaf: the checks and their callers both import it.

use std::fmt;

use crate::config;

/// One problem in a config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// `listener`, `route`, `cluster`.
    pub kind: &'static str,
    /// The resource's name, or `#index` when it has none.
    pub name: String,
    /// Field path inside the resource.
    pub field: String,
    /// Why it is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} '{}': {}: {}", self.kind, self.name, self.field, self.message)
    }
}

impl From<ConfigError> for config::ValidationError {
    fn from(e: ConfigError) -> Self {
        config::ValidationError { kind: e.kind.to_owned(), name: e.name, field: e.field, message: e.message }
    }
}

/// Every problem found in a config; never empty.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<ConfigError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ValidationErrors {
    /// The errors as wire messages (admin API details, NACKs).
    pub fn to_proto(&self) -> Vec<config::ValidationError> {
        self.0.iter().cloned().map(Into::into).collect()
    }
}
