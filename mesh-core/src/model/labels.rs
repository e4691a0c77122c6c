//! Endpoint labels, such as `version: v2`.

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};

/// Labels on an endpoint (`version: v2`, `zone: eu-west-1a`), and the selector of a subset.
///
/// Keys are 1 to 63 letters, digits, `-`, `_`, `.` and `/`; values are 0 to 63 letters, digits,
/// `-`, `_` and `.` (the Kubernetes label syntax, so labels can be copied from pods).
#[derive(Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "BTreeMap<String, String>", into = "BTreeMap<String, String>")]
pub struct Labels(BTreeMap<String, String>);

/// A label key or value that breaks the label syntax.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label {key:?}: {value:?}: {reason}")]
pub struct InvalidLabel {
    key: String,
    value: String,
    reason: &'static str,
}

impl Labels {
    /// No labels.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a label.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) -> Result<(), InvalidLabel> {
        let (key, value) = (key.into(), value.into());
        check(&key, &value)?;
        self.0.insert(key, value);
        Ok(())
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Whether every label of `selector` is present here with the same value.
    pub fn matches(&self, selector: &Labels) -> bool {
        selector.0.iter().all(|(k, v)| self.0.get(k) == Some(v))
    }

    /// The labels, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Whether there are no labels.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn check(key: &str, value: &str) -> Result<(), InvalidLabel> {
    let fail = |reason| Err(InvalidLabel { key: key.to_owned(), value: value.to_owned(), reason });
    if key.is_empty() || key.len() > 63 {
        return fail("a key is 1 to 63 bytes long");
    }
    if !key.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'/')) {
        return fail("a key may hold only letters, digits, '-', '_', '.' and '/'");
    }
    if value.len() > 63 {
        return fail("a value is at most 63 bytes long");
    }
    if !value.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')) {
        return fail("a value may hold only letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

impl TryFrom<BTreeMap<String, String>> for Labels {
    type Error = InvalidLabel;
    fn try_from(map: BTreeMap<String, String>) -> Result<Self, Self::Error> {
        for (k, v) in &map {
            check(k, v)?;
        }
        Ok(Self(map))
    }
}

impl From<Labels> for BTreeMap<String, String> {
    fn from(labels: Labels) -> Self {
        labels.0
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_matching() {
        let mut labels = Labels::new();
        labels.insert("version", "v2").unwrap();
        labels.insert("zone", "a").unwrap();
        let mut sel = Labels::new();
        assert!(labels.matches(&sel), "an empty selector matches everything");
        sel.insert("version", "v2").unwrap();
        assert!(labels.matches(&sel));
        sel.insert("zone", "b").unwrap();
        assert!(!labels.matches(&sel));
    }

    #[test]
    fn syntax_is_checked() {
        let mut labels = Labels::new();
        assert!(labels.insert("", "x").is_err());
        assert!(labels.insert("version", "v 2").is_err());
        assert!(labels.insert("app.kubernetes.io/version", "1.2.3").is_ok());
        let err = serde_json::from_str::<Labels>(r#"{"version": "a b"}"#).unwrap_err();
        assert!(err.to_string().contains("invalid label"), "{err}");
    }
}
