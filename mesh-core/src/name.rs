//! Validated names: services, subsets, routes, header names and methods.

use std::{fmt, str::FromStr, sync::Arc};

use serde::{Deserialize, Serialize};

/// A name that breaks the rules of its kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {input:?}: {reason}")]
pub struct InvalidName {
    kind: &'static str,
    input: String,
    reason: &'static str,
}

impl InvalidName {
    /// What kind of name was expected (`"service name"`, `"subset name"`…).
    pub fn kind(&self) -> &'static str {
        self.kind
    }
}

/// Declares a cheap-to-clone validated name type.
macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $check:path) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates `name`.
            pub fn new(name: &str) -> Result<Self, InvalidName> {
                match $check(name) {
                    Ok(()) => Ok(Self(name.into())),
                    Err(reason) => Err(InvalidName { kind: $kind, input: name.to_owned(), reason }),
                }
            }

            /// The name as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = InvalidName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidName;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::new(&s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = InvalidName;
            fn try_from(s: &str) -> Result<Self, Self::Error> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0.to_string()
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }
    };
}

name_type!(
    /// The name a client calls a service by, such as `reviews` or `reviews.prod.svc`: 1 to 253
    /// lowercase letters, digits, `-` and `.`, starting and ending with a letter or digit (a DNS name).
    ///
    /// ```
    /// let name: mesh_core::ServiceName = "reviews.prod".parse()?;
    /// assert!("Reviews".parse::<mesh_core::ServiceName>().is_err());
    /// # Ok::<_, mesh_core::InvalidName>(())
    /// ```
    ServiceName,
    "service name",
    check_dns_name
);

name_type!(
    /// The name of a [`Subset`](crate::Subset), such as `v1` or `canary`: 1 to 63 letters, digits,
    /// `-`, `_` and `.`.
    SubsetName,
    "subset name",
    check_short_name
);

name_type!(
    /// The name of a [`Route`](crate::Route), used in metrics and traces: 1 to 63 letters, digits,
    /// `-`, `_` and `.`.
    RouteName,
    "route name",
    check_short_name
);

name_type!(
    /// A name to look up in DNS for a subset's endpoints, such as
    /// `reviews-v1.default.svc.cluster.local` (A/AAAA records) or
    /// `_http._tcp.reviews-v1.default.svc.cluster.local` (SRV records): 1 to 253 bytes of labels of
    /// 1 to 63 letters, digits, `-` and `_`, separated by `.`, with an optional final `.`.
    ///
    /// ```
    /// let name: mesh_core::DnsName = "_grpc._tcp.reviews.default.svc.cluster.local".parse()?;
    /// assert!("reviews..svc".parse::<mesh_core::DnsName>().is_err());
    /// # Ok::<_, mesh_core::InvalidName>(())
    /// ```
    DnsName,
    "DNS name",
    check_lookup_name
);

fn check_lookup_name(name: &str) -> Result<(), &'static str> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    if bare.is_empty() {
        return Err("it is empty");
    }
    if bare.len() > 253 {
        return Err("it is longer than 253 bytes");
    }
    for label in bare.split('.') {
        if label.is_empty() {
            return Err("it has an empty label ('..')");
        }
        if label.len() > 63 {
            return Err("a label is longer than 63 bytes");
        }
        if !label.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_')) {
            return Err("a label may hold only letters, digits, '-' and '_'");
        }
    }
    Ok(())
}

fn check_dns_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() > 253 {
        return Err("it is longer than 253 bytes");
    }
    if !name.bytes().all(|c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.')) {
        return Err("it may hold only lowercase letters, digits, '-' and '.'");
    }
    let edge_ok = |c: Option<u8>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !edge_ok(name.bytes().next()) || !edge_ok(name.bytes().last()) {
        return Err("it must start and end with a letter or digit");
    }
    if name.contains("..") {
        return Err("it has an empty label ('..')");
    }
    Ok(())
}

fn check_short_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() > 63 {
        return Err("it is longer than 63 bytes");
    }
    if !name.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')) {
        return Err("it may hold only letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

/// An HTTP token (RFC 9110 `tchar`), the syntax of header names and methods.
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
}

/// An HTTP header name in a route match, stored lowercase (header names are case-insensitive).
///
/// ```
/// let name: mesh_core::HeaderName = "X-Canary".parse()?;
/// assert_eq!(name.as_str(), "x-canary");
/// # Ok::<_, mesh_core::InvalidName>(())
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HeaderName(Arc<str>);

impl HeaderName {
    /// Validates `name` as an HTTP token and lowercases it.
    pub fn new(name: &str) -> Result<Self, InvalidName> {
        if !is_token(name) {
            return Err(InvalidName {
                kind: "header name",
                input: name.to_owned(),
                reason: "it must be a non-empty HTTP token (letters, digits and !#$%&'*+-.^_`|~)",
            });
        }
        Ok(Self(name.to_ascii_lowercase().into()))
    }

    /// The lowercase name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for HeaderName {
    type Err = InvalidName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for HeaderName {
    type Error = InvalidName;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<HeaderName> for String {
    fn from(n: HeaderName) -> String {
        n.0.to_string()
    }
}

impl fmt::Display for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// An HTTP method in a route or policy match, such as `GET`. Methods are case-sensitive.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Method(Arc<str>);

/// A string that is not an HTTP method.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid HTTP method {0:?}: it must be a non-empty HTTP token such as GET or POST")]
pub struct InvalidMethod(String);

impl Method {
    /// `GET`.
    pub fn get() -> Self {
        Self("GET".into())
    }

    /// `POST`.
    pub fn post() -> Self {
        Self("POST".into())
    }

    /// Validates `method` as an HTTP token.
    pub fn new(method: &str) -> Result<Self, InvalidMethod> {
        if is_token(method) { Ok(Self(method.into())) } else { Err(InvalidMethod(method.to_owned())) }
    }

    /// The method as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether RFC 9110 calls the method idempotent (safe to replay).
    pub fn is_idempotent(&self) -> bool {
        matches!(&*self.0, "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE")
    }
}

impl FromStr for Method {
    type Err = InvalidMethod;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for Method {
    type Error = InvalidMethod;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<Method> for String {
    fn from(m: Method) -> String {
        m.0.to_string()
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names() {
        for ok in ["a", "reviews", "reviews.prod.svc", "v-2", "0abc"] {
            ServiceName::new(ok).unwrap_or_else(|e| panic!("{e}"));
        }
        for (bad, why) in [
            ("", "empty"),
            ("Reviews", "lowercase"),
            ("-a", "start and end"),
            ("a.", "start and end"),
            ("a..b", "'..'"),
            ("a_b", "lowercase"),
        ] {
            let err = ServiceName::new(bad).expect_err(bad);
            assert!(err.to_string().contains(why), "{bad}: {err}");
            assert_eq!(err.kind(), "service name");
        }
        assert!(ServiceName::new(&"a".repeat(254)).is_err());
    }

    #[test]
    fn short_names_and_tokens() {
        assert!(SubsetName::new("v1").is_ok());
        assert!(SubsetName::new("v 1").is_err());
        assert!(RouteName::new(&"r".repeat(64)).is_err());
        assert_eq!(HeaderName::new("X-Mesh").unwrap().as_str(), "x-mesh");
        assert!(HeaderName::new("x mesh").is_err());
        assert!(Method::new("GET").unwrap().is_idempotent());
        assert!(!Method::post().is_idempotent());
        assert!(Method::new("").is_err());
        assert!(Method::new("GE T").is_err());
    }
}
