//! What discovery expects a peer to prove: one SPIFFE ID, or any identity one of several matchers
//! accepts (an xDS cluster's `match_subject_alt_names`, gRFC A29).

use std::{
    fmt,
    hash::{Hash, Hasher},
};

use serde::{Deserialize, Serialize};

use super::SpiffeId;
use crate::matching::{HeaderRegex, InvalidRegex};

/// The identity a peer must present: the SPIFFE ID in its certificate (its URI SAN) is checked
/// against it after the chain verifies against the bundle of the peer's trust domain.
///
/// In files, a SPIFFE ID (`identity: spiffe://example.org/ns/prod/sa/reviews`) or a list of
/// matchers of which one must accept the peer's ID
/// (`identity: [{ exact: spiffe://example.org/ns/prod/sa/reviews }, { prefix: spiffe://example.org/ns/canary/ }]`).
///
/// ```
/// use mesh_core::{ExpectedIdentity, SanMatcher, SpiffeId};
/// let reviews: SpiffeId = "spiffe://cluster.local/ns/default/sa/reviews".parse()?;
/// let either = ExpectedIdentity::any_of([
///     SanMatcher::exact(reviews.as_str()),
///     SanMatcher::prefix("spiffe://cluster.local/ns/canary/"),
/// ]);
/// assert!(either.accepts(&reviews));
/// assert!(either.accepts(&"spiffe://cluster.local/ns/canary/sa/x".parse()?));
/// assert!(!either.accepts(&"spiffe://cluster.local/ns/default/sa/other".parse()?));
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ExpectedIdentity {
    /// Exactly this SPIFFE ID.
    Exact(SpiffeId),
    /// Any SPIFFE ID one of the matchers accepts (none accepts nothing).
    AnyOf(Vec<SanMatcher>),
}

impl ExpectedIdentity {
    /// Any SPIFFE ID one of `matchers` accepts. The order does not matter: the matchers are
    /// kept sorted, without repeats, so two lists of the same matchers are equal.
    pub fn any_of(matchers: impl IntoIterator<Item = SanMatcher>) -> Self {
        let mut matchers: Vec<SanMatcher> = matchers.into_iter().collect();
        matchers.sort_by(|a, b| (a.parts(), a.ignore_case).cmp(&(b.parts(), b.ignore_case)));
        matchers.dedup();
        Self::AnyOf(matchers)
    }

    /// Whether a peer that proved `presented` is the one expected.
    pub fn accepts(&self, presented: &SpiffeId) -> bool {
        match self {
            Self::Exact(id) => id == presented,
            Self::AnyOf(matchers) => matchers.iter().any(|m| m.matches(presented.as_str())),
        }
    }

    /// The one SPIFFE ID expected, when that is what is expected.
    pub fn as_exact(&self) -> Option<&SpiffeId> {
        match self {
            Self::Exact(id) => Some(id),
            Self::AnyOf(_) => None,
        }
    }
}

impl From<SpiffeId> for ExpectedIdentity {
    fn from(id: SpiffeId) -> Self {
        Self::Exact(id)
    }
}

impl fmt::Display for ExpectedIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(id) => write!(f, "{id}"),
            Self::AnyOf(matchers) => {
                f.write_str("an identity matching one of [")?;
                for (i, m) in matchers.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{m}")?;
                }
                f.write_str("]")
            }
        }
    }
}

impl fmt::Debug for ExpectedIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// One matcher of a peer's SPIFFE ID, as xDS's `StringMatcher` (gRFC A29): exact, prefix, suffix
/// or contains, each optionally ignoring ASCII case, or a regex that must match the whole ID.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawMatcher", into = "RawMatcher")]
pub struct SanMatcher {
    pattern: SanPattern,
    ignore_case: bool,
}

#[derive(Clone, PartialEq, Eq)]
enum SanPattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(HeaderRegex),
}

impl SanMatcher {
    /// The ID is `value`.
    pub fn exact(value: impl Into<String>) -> Self {
        Self { pattern: SanPattern::Exact(value.into()), ignore_case: false }
    }

    /// The ID starts with `value`.
    pub fn prefix(value: impl Into<String>) -> Self {
        Self { pattern: SanPattern::Prefix(value.into()), ignore_case: false }
    }

    /// The ID ends with `value`.
    pub fn suffix(value: impl Into<String>) -> Self {
        Self { pattern: SanPattern::Suffix(value.into()), ignore_case: false }
    }

    /// The ID contains `value`.
    pub fn contains(value: impl Into<String>) -> Self {
        Self { pattern: SanPattern::Contains(value.into()), ignore_case: false }
    }

    /// The whole ID matches the regex `pattern` (it is anchored at both ends).
    pub fn regex(pattern: &str) -> Result<Self, InvalidRegex> {
        let regex = HeaderRegex::new(&format!("^(?:{pattern})$"))?;
        Ok(Self { pattern: SanPattern::Regex(regex), ignore_case: false })
    }

    /// Compares ignoring ASCII case (no effect on a regex, as in xDS).
    pub fn ignoring_case(mut self) -> Self {
        self.ignore_case = true;
        self
    }

    /// Whether `id` matches.
    pub fn matches(&self, id: &str) -> bool {
        let (id, value) = match &self.pattern {
            SanPattern::Regex(re) => return re.is_match(id),
            SanPattern::Exact(v) | SanPattern::Prefix(v) | SanPattern::Suffix(v) | SanPattern::Contains(v) => {
                if self.ignore_case {
                    (id.to_ascii_lowercase(), v.to_ascii_lowercase())
                } else {
                    (id.to_owned(), v.clone())
                }
            }
        };
        match &self.pattern {
            SanPattern::Exact(_) => id == value,
            SanPattern::Prefix(_) => id.starts_with(&value),
            SanPattern::Suffix(_) => id.ends_with(&value),
            _ => id.contains(&value),
        }
    }

    fn parts(&self) -> (&'static str, &str) {
        match &self.pattern {
            SanPattern::Exact(v) => ("exact", v),
            SanPattern::Prefix(v) => ("prefix", v),
            SanPattern::Suffix(v) => ("suffix", v),
            SanPattern::Contains(v) => ("contains", v),
            // The anchors `regex` added are not the user's.
            SanPattern::Regex(re) => {
                ("regex", re.as_str().strip_prefix("^(?:").and_then(|p| p.strip_suffix(")$")).unwrap_or(re.as_str()))
            }
        }
    }
}

impl Hash for SanMatcher {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.parts().hash(state);
        self.ignore_case.hash(state);
    }
}

impl fmt::Display for SanMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, value) = self.parts();
        write!(f, "{kind} {value}")?;
        if self.ignore_case {
            f.write_str(" (ignoring case)")?;
        }
        Ok(())
    }
}

impl fmt::Debug for SanMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// [`SanMatcher`] as files spell it: exactly one of the patterns.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatcher {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    suffix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    contains: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    regex: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    ignore_case: bool,
}

impl TryFrom<RawMatcher> for SanMatcher {
    type Error = String;

    fn try_from(raw: RawMatcher) -> Result<Self, String> {
        let m = match (raw.exact, raw.prefix, raw.suffix, raw.contains, raw.regex) {
            (Some(v), None, None, None, None) => Self::exact(v),
            (None, Some(v), None, None, None) => Self::prefix(v),
            (None, None, Some(v), None, None) => Self::suffix(v),
            (None, None, None, Some(v), None) => Self::contains(v),
            (None, None, None, None, Some(p)) => Self::regex(&p).map_err(|e| e.to_string())?,
            _ => return Err("a SAN matcher takes exactly one of exact, prefix, suffix, contains, regex".into()),
        };
        Ok(if raw.ignore_case { m.ignoring_case() } else { m })
    }
}

impl From<SanMatcher> for RawMatcher {
    fn from(m: SanMatcher) -> Self {
        let (kind, value) = m.parts();
        let value = Some(value.to_owned());
        let mut raw =
            Self { exact: None, prefix: None, suffix: None, contains: None, regex: None, ignore_case: m.ignore_case };
        match kind {
            "exact" => raw.exact = value,
            "prefix" => raw.prefix = value,
            "suffix" => raw.suffix = value,
            "contains" => raw.contains = value,
            _ => raw.regex = value,
        }
        raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        s.parse().unwrap()
    }

    #[test]
    fn each_matcher_kind_and_any_of() {
        let reviews = id("spiffe://cluster.local/ns/default/sa/reviews");
        for (m, hit) in [
            (SanMatcher::exact("spiffe://cluster.local/ns/default/sa/reviews"), true),
            (SanMatcher::exact("spiffe://cluster.local/ns/default/sa/REVIEWS"), false),
            (SanMatcher::exact("spiffe://cluster.local/ns/default/sa/REVIEWS").ignoring_case(), true),
            (SanMatcher::prefix("spiffe://cluster.local/ns/default/"), true),
            (SanMatcher::suffix("/sa/reviews"), true),
            (SanMatcher::suffix("/sa/review"), false),
            (SanMatcher::contains("/ns/default/"), true),
            (SanMatcher::regex("spiffe://cluster\\.local/ns/[a-z]+/sa/reviews").unwrap(), true),
            // The regex must match the whole ID.
            (SanMatcher::regex("/sa/reviews").unwrap(), false),
        ] {
            assert_eq!(m.matches(reviews.as_str()), hit, "{m}");
        }
        let none = ExpectedIdentity::any_of([]);
        assert!(!none.accepts(&reviews), "no matcher accepts nothing");
        let two = ExpectedIdentity::any_of([SanMatcher::exact("spiffe://x/a"), SanMatcher::suffix("/sa/reviews")]);
        assert!(two.accepts(&reviews) && two.accepts(&id("spiffe://x/a")) && !two.accepts(&id("spiffe://x/b")));
        assert_eq!(two.to_string(), "an identity matching one of [exact spiffe://x/a, suffix /sa/reviews]");
        let reversed = ExpectedIdentity::any_of([
            SanMatcher::suffix("/sa/reviews"),
            SanMatcher::exact("spiffe://x/a"),
            SanMatcher::exact("spiffe://x/a"),
        ]);
        assert_eq!(reversed, two, "the same matchers in any order, repeated or not, are the same expectation");
        assert!(ExpectedIdentity::from(reviews.clone()).accepts(&reviews));
    }

    #[test]
    fn files_spell_an_id_or_a_list_of_matchers() {
        let exact: ExpectedIdentity = serde_json::from_str(r#""spiffe://x/a""#).unwrap();
        assert_eq!(exact, ExpectedIdentity::Exact(id("spiffe://x/a")));
        let json = r#"[{"exact":"spiffe://x/a"},{"regex":"spiffe://x/[ab]","ignore_case":true}]"#;
        let list: ExpectedIdentity = serde_json::from_str(json).unwrap();
        assert!(list.accepts(&id("spiffe://x/b")));
        assert_eq!(serde_json::to_string(&list).unwrap(), json);
        assert!(serde_json::from_str::<ExpectedIdentity>(r#"[{"exact":"a","prefix":"b"}]"#).is_err());
        assert!(serde_json::from_str::<ExpectedIdentity>(r#""not a spiffe id""#).is_err());
    }
}
