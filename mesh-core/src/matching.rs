//! How a request is matched: its path ([`PathMatch`]) and its headers ([`HeaderMatch`]). Routes
//! (`crate::model`) and authorization rules (`crate::policy`) both match on them, so they sit
//! beneath both.

use serde::{Deserialize, Serialize};

use crate::name::HeaderName;

/// How a route matches the request path. Paths start with `/`.
///
/// In files: `path: { prefix: /api }` or `path: { exact: /healthz }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PathMatchRepr", into = "PathMatchRepr")]
#[non_exhaustive]
pub enum PathMatch {
    /// The path equals this string.
    Exact(String),
    /// The path starts with this string, compared segment by segment: `/api` takes `/api` and
    /// `/api/users` but not `/apis`.
    Prefix(String),
    /// The whole path matches this regular expression (as xDS's `safe_regex` does).
    Regex(HeaderRegex),
}

/// A path match that is not one path starting with `/`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid path match {input:?}: {reason}")]
pub struct InvalidPathMatch {
    input: String,
    reason: &'static str,
}

impl PathMatch {
    /// An exact path.
    pub fn exact(path: impl Into<String>) -> Result<Self, InvalidPathMatch> {
        check_path(path.into()).map(Self::Exact)
    }

    /// A path prefix, matched segment by segment.
    pub fn prefix(prefix: impl Into<String>) -> Result<Self, InvalidPathMatch> {
        check_path(prefix.into()).map(Self::Prefix)
    }

    /// A regular expression the whole path must match (it is anchored at both ends).
    ///
    /// ```
    /// use mesh_core::PathMatch;
    /// let say = PathMatch::regex("/helloworld\\.Greeter/Say.*")?;
    /// assert!(say.matches("/helloworld.Greeter/SayHello"));
    /// assert!(!say.matches("/x/helloworld.Greeter/SayHello"));
    /// # Ok::<_, mesh_core::InvalidRegex>(())
    /// ```
    pub fn regex(pattern: &str) -> Result<Self, InvalidRegex> {
        HeaderRegex::new(&format!("^(?:{pattern})$")).map(Self::Regex)
    }

    /// Whether `path` (without the query) matches.
    ///
    /// ```
    /// use mesh_core::PathMatch;
    /// let api = PathMatch::prefix("/api")?;
    /// assert!(api.matches("/api") && api.matches("/api/users"));
    /// assert!(!api.matches("/apis"));
    /// # Ok::<_, mesh_core::InvalidPathMatch>(())
    /// ```
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(exact) => path == exact,
            Self::Prefix(prefix) => {
                let prefix = prefix.trim_end_matches('/');
                match path.strip_prefix(prefix) {
                    Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.is_empty(),
                    None => false,
                }
            }
            Self::Regex(re) => re.0.is_match(path),
        }
    }
}

fn check_path(path: String) -> Result<String, InvalidPathMatch> {
    if path.starts_with('/') {
        Ok(path)
    } else {
        Err(InvalidPathMatch { input: path, reason: "a path starts with '/'" })
    }
}

/// The file form of a path match: a map with exactly one of `exact`, `prefix` and `regex`. (A
/// map rather than an enum so that YAML and JSON read the same, without YAML tags.)
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PathMatchRepr {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prefix: Option<String>,
    /// Stored anchored (`^(?:…)$`), as [`PathMatch::regex`] compiles it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    regex: Option<String>,
}

impl TryFrom<PathMatchRepr> for PathMatch {
    type Error = InvalidPathMatch;
    fn try_from(repr: PathMatchRepr) -> Result<Self, Self::Error> {
        match (repr.exact, repr.prefix, repr.regex) {
            (Some(p), None, None) => Self::exact(p),
            (None, Some(p), None) => Self::prefix(p),
            (None, None, Some(re)) => {
                let anchored = re.strip_prefix("^(?:").and_then(|r| r.strip_suffix(")$")).unwrap_or(&re);
                Self::regex(anchored).map_err(|_| InvalidPathMatch { input: re, reason: "the regex does not compile" })
            }
            _ => Err(InvalidPathMatch {
                input: String::new(),
                reason: "write exactly one of `exact`, `prefix` and `regex`",
            }),
        }
    }
}

impl From<PathMatch> for PathMatchRepr {
    fn from(m: PathMatch) -> Self {
        match m {
            PathMatch::Exact(p) => Self { exact: Some(p), prefix: None, regex: None },
            PathMatch::Prefix(p) => Self { exact: None, prefix: Some(p), regex: None },
            PathMatch::Regex(re) => Self { exact: None, prefix: None, regex: Some(re.as_str().to_owned()) },
        }
    }
}

/// A condition on one request header.
///
/// In files: `{ name: x-canary, exact: "1" }`, `{ name: x-debug, present: true }` or
/// `{ name: x-user, regex: "^qa-" }` (a regex matches anywhere unless anchored).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "HeaderMatchRepr", into = "HeaderMatchRepr")]
pub struct HeaderMatch {
    /// The header's name.
    pub name: HeaderName,
    /// What its value must be.
    pub value: HeaderValueMatch,
}

impl HeaderMatch {
    /// The header equals `value`.
    pub fn exact(name: HeaderName, value: impl Into<String>) -> Self {
        Self { name, value: HeaderValueMatch::Exact(value.into()) }
    }

    /// The header is present, whatever its value.
    pub fn present(name: HeaderName) -> Self {
        Self { name, value: HeaderValueMatch::Present }
    }

    /// The header matches `regex`.
    pub fn regex(name: HeaderName, regex: &str) -> Result<Self, InvalidRegex> {
        Ok(Self { name, value: HeaderValueMatch::Regex(HeaderRegex::new(regex)?) })
    }

    /// The header is present and `inner` does not match its value (an absent header matches
    /// neither, as in gRPC's `invert_match`).
    pub fn inverted(self) -> Self {
        Self { name: self.name, value: HeaderValueMatch::Not(Box::new(self.value)) }
    }

    /// Whether `value` (the header's value, if present) satisfies the match.
    pub fn matches_value(&self, value: Option<&[u8]>) -> bool {
        value.is_some_and(|v| self.value.matches(v))
    }
}

impl HeaderValueMatch {
    /// Whether a present header's value `v` satisfies the match.
    fn matches(&self, v: &[u8]) -> bool {
        match self {
            Self::Present => true,
            Self::Exact(exact) => exact.as_bytes() == v,
            Self::Regex(re) => std::str::from_utf8(v).is_ok_and(|v| re.0.is_match(v)),
            Self::Not(inner) => !inner.matches(v),
        }
    }
}

/// A compiled regular expression for a header match; equal when the patterns are equal.
#[derive(Clone, Debug)]
pub struct HeaderRegex(regex::Regex);

/// A header match regex that does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid regex {pattern:?}: {reason}")]
pub struct InvalidRegex {
    pattern: String,
    reason: String,
}

impl HeaderRegex {
    /// Compiles `pattern` (size-limited, so a file cannot make the matcher huge).
    pub fn new(pattern: &str) -> Result<Self, InvalidRegex> {
        regex::RegexBuilder::new(pattern)
            .size_limit(1 << 20)
            .build()
            .map(Self)
            .map_err(|e| InvalidRegex { pattern: pattern.to_owned(), reason: e.to_string() })
    }

    /// The pattern.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// Whether the regex matches `text` (anywhere, unless the pattern is anchored).
    pub fn is_match(&self, text: &str) -> bool {
        self.0.is_match(text)
    }
}

impl PartialEq for HeaderRegex {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for HeaderRegex {}

/// What a header's value must be.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderValueMatch {
    /// Exactly this value.
    Exact(String),
    /// Any value.
    Present,
    /// A value the regex matches.
    Regex(HeaderRegex),
    /// A value the inner match does not match (the header must be present). In files:
    /// `invert: true` beside the match.
    Not(Box<HeaderValueMatch>),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderMatchRepr {
    name: HeaderName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exact: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    present: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    regex: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    invert: bool,
}

impl TryFrom<HeaderMatchRepr> for HeaderMatch {
    type Error = String;
    fn try_from(repr: HeaderMatchRepr) -> Result<Self, Self::Error> {
        let value = match (repr.exact, repr.present, repr.regex) {
            (Some(v), false, None) => HeaderValueMatch::Exact(v),
            (None, true, None) => HeaderValueMatch::Present,
            (None, false, Some(re)) => HeaderValueMatch::Regex(HeaderRegex::new(&re).map_err(|e| e.to_string())?),
            _ => {
                return Err(format!(
                    "header {}: write exactly one of `exact: VALUE`, `present: true` and `regex: PATTERN`",
                    repr.name
                ));
            }
        };
        let m = Self { name: repr.name, value };
        Ok(if repr.invert { m.inverted() } else { m })
    }
}

impl From<HeaderMatch> for HeaderMatchRepr {
    fn from(m: HeaderMatch) -> Self {
        let repr = |name, exact, present, regex, invert| Self { name, exact, present, regex, invert };
        let (value, invert) = match m.value {
            HeaderValueMatch::Not(inner) => (*inner, true),
            value => (value, false),
        };
        match value {
            HeaderValueMatch::Exact(v) => repr(m.name, Some(v), false, None, invert),
            HeaderValueMatch::Present => repr(m.name, None, true, None, invert),
            HeaderValueMatch::Regex(re) => repr(m.name, None, false, Some(re.as_str().to_owned()), invert),
            // A double inversion is the match itself.
            HeaderValueMatch::Not(inner) => Self::from(HeaderMatch { name: m.name, value: *inner }),
        }
    }
}
