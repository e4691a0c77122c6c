//! SPIFFE IDs, validated per the SPIFFE ID specification
//! (<https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md>).

use std::{fmt, str::FromStr, sync::Arc};

use serde::{Deserialize, Serialize};

const SCHEME: &str = "spiffe://";
/// The specification caps a SPIFFE ID at 2048 bytes and a trust domain at 255.
const MAX_ID_LEN: usize = 2048;
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// A SPIFFE trust domain such as `example.org`: lowercase letters, digits, `.`, `-` and `_`.
///
/// ```
/// use mesh_core::TrustDomain;
/// let td: TrustDomain = "example.org".parse()?;
/// assert_eq!(td.as_str(), "example.org");
/// assert!("Example.org".parse::<TrustDomain>().is_err());
/// # Ok::<_, mesh_core::InvalidTrustDomain>(())
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TrustDomain(Arc<str>);

/// A SPIFFE ID: `spiffe://<trust-domain>/<path>`.
///
/// Parsing follows the specification: the scheme is exactly `spiffe://`, the trust domain is
/// lowercase, there is no port, user info, query or fragment, path segments are not empty and not
/// `.` or `..`, and the whole ID is at most 2048 bytes.
///
/// ```
/// use mesh_core::SpiffeId;
/// let id: SpiffeId = "spiffe://example.org/ns/prod/sa/reviews".parse()?;
/// assert_eq!(id.trust_domain().as_str(), "example.org");
/// assert_eq!(id.path(), "/ns/prod/sa/reviews");
/// assert!("spiffe://example.org/ns//reviews".parse::<SpiffeId>().is_err());
/// # Ok::<_, mesh_core::InvalidSpiffeId>(())
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SpiffeId {
    id: Arc<str>,
    /// Byte offset where the path starts (== id.len() when the path is empty).
    path_start: usize,
}

/// A string that is not a valid SPIFFE trust domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid SPIFFE trust domain {input:?}: {reason}")]
pub struct InvalidTrustDomain {
    input: String,
    reason: &'static str,
}

/// A string that is not a valid SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid SPIFFE ID {input:?}: {reason}")]
pub struct InvalidSpiffeId {
    input: String,
    reason: &'static str,
}

impl InvalidSpiffeId {
    /// What was wrong with the input, in a few words.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

// === impl TrustDomain ===

impl TrustDomain {
    /// Parses and validates a trust domain name.
    pub fn new(name: &str) -> Result<Self, InvalidTrustDomain> {
        check_trust_domain(name).map_err(|reason| InvalidTrustDomain { input: name.to_owned(), reason })?;
        Ok(Self(name.into()))
    }

    /// The trust domain's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The SPIFFE ID of this trust domain with `path` appended (`path` starts with `/`).
    pub fn id(&self, path: &str) -> Result<SpiffeId, InvalidSpiffeId> {
        SpiffeId::new(&format!("{SCHEME}{}{path}", self.0))
    }
}

fn check_trust_domain(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("the trust domain is empty");
    }
    if name.len() > MAX_TRUST_DOMAIN_LEN {
        return Err("the trust domain is longer than 255 bytes");
    }
    for c in name.bytes() {
        match c {
            b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' => {}
            b'A'..=b'Z' => return Err("the trust domain must be lowercase"),
            b':' => return Err("a port is not allowed in the trust domain"),
            b'@' => return Err("user info is not allowed in the trust domain"),
            _ => return Err("the trust domain may hold only a-z, 0-9, '.', '-' and '_'"),
        }
    }
    Ok(())
}

impl FromStr for TrustDomain {
    type Err = InvalidTrustDomain;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for TrustDomain {
    type Error = InvalidTrustDomain;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<TrustDomain> for String {
    fn from(td: TrustDomain) -> String {
        td.0.to_string()
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.0)
    }
}

// === impl SpiffeId ===

impl SpiffeId {
    /// Parses and validates a SPIFFE ID.
    pub fn new(id: &str) -> Result<Self, InvalidSpiffeId> {
        let path_start = check_id(id).map_err(|reason| InvalidSpiffeId { input: truncate(id), reason })?;
        Ok(Self { id: id.into(), path_start })
    }

    /// The trust domain part.
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.id[SCHEME.len()..self.path_start].into())
    }

    /// The trust domain's name, without allocating.
    pub fn trust_domain_name(&self) -> &str {
        &self.id[SCHEME.len()..self.path_start]
    }

    /// The path, starting with `/`, or empty for the trust domain's own ID.
    pub fn path(&self) -> &str {
        &self.id[self.path_start..]
    }

    /// The whole ID as a string.
    pub fn as_str(&self) -> &str {
        &self.id
    }
}

/// Keeps error messages readable when someone feeds us a megabyte.
fn truncate(input: &str) -> String {
    const SHOWN: usize = 128;
    if input.len() <= SHOWN {
        return input.to_owned();
    }
    let mut end = SHOWN;
    while !input.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &input[..end])
}

fn check_id(id: &str) -> Result<usize, &'static str> {
    if id.is_empty() {
        return Err("the ID is empty");
    }
    if id.len() > MAX_ID_LEN {
        return Err("the ID is longer than 2048 bytes");
    }
    let Some(rest) = id.strip_prefix(SCHEME) else {
        return Err("the scheme must be \"spiffe://\" (lowercase)");
    };
    let td_end = rest.find('/').unwrap_or(rest.len());
    let (td, path) = rest.split_at(td_end);
    if td.is_empty() {
        return Err("the trust domain is missing");
    }
    check_trust_domain(td)?;
    if !path.is_empty() {
        if path.ends_with('/') {
            return Err("the path must not end with '/'");
        }
        for segment in path[1..].split('/') {
            match segment {
                "" => return Err("the path has an empty segment"),
                "." | ".." => return Err("the path has a '.' or '..' segment"),
                _ => {}
            }
            for c in segment.bytes() {
                match c {
                    b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' => {}
                    b'?' => return Err("a query is not allowed"),
                    b'#' => return Err("a fragment is not allowed"),
                    _ => return Err("the path may hold only a-z, A-Z, 0-9, '.', '-' and '_'"),
                }
            }
        }
    }
    Ok(SCHEME.len() + td_end)
}

impl FromStr for SpiffeId {
    type Err = InvalidSpiffeId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for SpiffeId {
    type Error = InvalidSpiffeId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<SpiffeId> for String {
    fn from(id: SpiffeId) -> String {
        id.id.to_string()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_ids() {
        for ok in ["spiffe://example.org", "spiffe://example.org/ns/prod/sa/reviews", "spiffe://a-b_c.d/x.y/Z_9"] {
            let id = SpiffeId::new(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(id.as_str(), ok);
        }
        let id = SpiffeId::new("spiffe://example.org/a/b").unwrap();
        assert_eq!(id.trust_domain_name(), "example.org");
        assert_eq!(id.path(), "/a/b");
        assert_eq!(SpiffeId::new("spiffe://example.org").unwrap().path(), "");
    }

    #[test]
    fn rejects_invalid_ids_with_the_reason() {
        let cases = [
            ("", "empty"),
            ("https://example.org/a", "scheme"),
            ("SPIFFE://example.org/a", "scheme"),
            ("spiffe:///a", "missing"),
            ("spiffe://Example.org/a", "lowercase"),
            ("spiffe://example.org:8443/a", "port"),
            ("spiffe://user@example.org/a", "user info"),
            ("spiffe://example.org/a?x=1", "query"),
            ("spiffe://example.org/a#frag", "fragment"),
            ("spiffe://example.org/a//b", "empty segment"),
            ("spiffe://example.org/a/./b", "'.'"),
            ("spiffe://example.org/a/../b", "'.'"),
            ("spiffe://example.org/a/", "end with"),
            ("spiffe://example.org/a%20b", "path may hold"),
        ];
        for (input, reason) in cases {
            let err = SpiffeId::new(input).expect_err(input);
            assert!(err.to_string().contains(reason), "{input}: {err}");
        }
        let long = format!("spiffe://example.org/{}", "a".repeat(MAX_ID_LEN));
        assert!(SpiffeId::new(&long).unwrap_err().to_string().contains("2048"));
        let long_td = format!("spiffe://{}/a", "a".repeat(256));
        assert!(SpiffeId::new(&long_td).unwrap_err().to_string().contains("255"));
    }

    #[test]
    fn serde_validates() {
        let id: SpiffeId = serde_json::from_str("\"spiffe://example.org/x\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"spiffe://example.org/x\"");
        assert!(serde_json::from_str::<SpiffeId>("\"spiffe://example.org/x/\"").is_err());
    }
}
