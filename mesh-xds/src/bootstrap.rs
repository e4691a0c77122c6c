//! The bootstrap file (gRFC A27): where the control plane is, who this node is, and where its
//! certificates come from.
//!
//! Read from the file named by `GRPC_XDS_BOOTSTRAP`, or inline from `GRPC_XDS_BOOTSTRAP_CONFIG`,
//! or from a path or a string given in code. The same file gRPC's proxyless clients read, so the
//! one Istio's `grpc-agent` injection template writes works as is.

use std::{collections::BTreeMap, path::PathBuf};

use serde::Deserialize;
use serde_json::Value;

/// A bootstrap that could not be read or that breaks a rule of gRFC A27: which field, and why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BootstrapError {
    /// Neither `GRPC_XDS_BOOTSTRAP` nor `GRPC_XDS_BOOTSTRAP_CONFIG` is set.
    #[error("no xDS bootstrap: set GRPC_XDS_BOOTSTRAP to a file or GRPC_XDS_BOOTSTRAP_CONFIG to its contents")]
    Missing,
    /// The file could not be read.
    #[error("cannot read the xDS bootstrap {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A field is missing, of the wrong type, or has a value we cannot use.
    #[error("invalid xDS bootstrap: {field}: {reason}")]
    Invalid {
        /// The path of the field, such as `xds_servers[0].server_uri`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl BootstrapError {
    fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid { field: field.into(), reason: reason.into() }
    }

    /// The offending field, for [`Invalid`](Self::Invalid) errors.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// A parsed, checked bootstrap.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Bootstrap {
    /// The control plane. gRFC A27 allows a list; the first server is used.
    pub server: XdsServer,
    /// This client, as the control plane sees it.
    pub node: Node,
    /// Certificate provider instances by name, which clusters' TLS contexts refer to.
    pub certificate_providers: BTreeMap<String, CertificateProvider>,
    /// `server_listener_resource_name_template` (gRFC A36): the name of a server's inbound
    /// Listener, `%s` standing for its `IP:port` (Istio: `xds.istio.io/grpc/lds/inbound/%s`).
    pub server_listener_resource_name_template: Option<String>,
}

/// Where the control plane is and how to reach it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct XdsServer {
    /// The address, as written: `host:port`, `dns:///host:port` or `unix:///path`.
    pub uri: String,
    /// The parsed address.
    pub target: ServerTarget,
    /// The channel credentials: the first of `channel_creds` we support.
    pub credentials: ChannelCredentials,
    /// `server_features` holds `ignore_resource_deletion` (gRFC A53): a Listener or Cluster left
    /// out of a response is kept rather than deleted.
    pub ignore_resource_deletion: bool,
}

/// A control plane address.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerTarget {
    /// A host name or IP address and a port.
    Tcp {
        /// The host.
        host: String,
        /// The port.
        port: u16,
    },
    /// A Unix domain socket.
    Unix(PathBuf),
}

/// How to secure the connection to the control plane.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChannelCredentials {
    /// Plaintext.
    Insecure,
    /// TLS, verifying the server with the given roots (`ca_certificate_file`), optionally
    /// presenting a client certificate.
    Tls {
        /// The PEM roots.
        ca_certificate_file: PathBuf,
        /// The client's PEM certificate chain, for mTLS.
        certificate_file: Option<PathBuf>,
        /// The client's PEM key, for mTLS.
        private_key_file: Option<PathBuf>,
    },
}

/// This client's node, sent in every discovery request.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Node {
    /// The node id (Istio: `sidecar~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local`).
    pub id: String,
    /// The node's cluster.
    pub cluster: String,
    /// Where the node runs.
    pub locality: Locality,
    /// Free-form metadata (a JSON object), sent as the node's `metadata` struct.
    pub metadata: serde_json::Map<String, Value>,
}

/// A region / zone / sub-zone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct Locality {
    /// The region.
    pub region: String,
    /// The zone.
    pub zone: String,
    /// The sub-zone.
    pub sub_zone: String,
}

/// A certificate provider instance. Only `file_watcher` exists in gRPC, and here.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CertificateProvider {
    /// The PEM certificate chain, leaf first.
    pub certificate_file: PathBuf,
    /// The PEM private key.
    pub private_key_file: PathBuf,
    /// The PEM roots.
    pub ca_certificate_file: PathBuf,
}

impl Bootstrap {
    /// From `GRPC_XDS_BOOTSTRAP` (a file) or else `GRPC_XDS_BOOTSTRAP_CONFIG` (the JSON itself).
    pub fn from_env() -> Result<Self, BootstrapError> {
        if let Some(path) = std::env::var_os("GRPC_XDS_BOOTSTRAP").filter(|p| !p.is_empty()) {
            return Self::from_file(PathBuf::from(path));
        }
        match std::env::var("GRPC_XDS_BOOTSTRAP_CONFIG") {
            Ok(json) if !json.is_empty() => Self::from_json(&json),
            _ => Err(BootstrapError::Missing),
        }
    }

    /// From a file.
    pub fn from_file(path: impl Into<PathBuf>) -> Result<Self, BootstrapError> {
        let path = path.into();
        let json = std::fs::read_to_string(&path).map_err(|source| BootstrapError::Read { path, source })?;
        Self::from_json(&json)
    }

    /// From the JSON text.
    pub fn from_json(json: &str) -> Result<Self, BootstrapError> {
        let raw: Value = serde_json::from_str(json).map_err(|e| BootstrapError::invalid("$", e.to_string()))?;
        let root = raw.as_object().ok_or_else(|| BootstrapError::invalid("$", "the bootstrap is not a JSON object"))?;
        let servers = match root.get("xds_servers") {
            Some(Value::Array(servers)) if !servers.is_empty() => servers,
            Some(Value::Array(_)) => return Err(BootstrapError::invalid("xds_servers", "the list is empty")),
            Some(_) => return Err(BootstrapError::invalid("xds_servers", "not a list")),
            None => return Err(BootstrapError::invalid("xds_servers", "missing")),
        };
        let server = parse_server(&servers[0], "xds_servers[0]")?;
        let node = match root.get("node") {
            None => Node::default(),
            Some(node) => parse_node(node)?,
        };
        let mut certificate_providers = BTreeMap::new();
        match root.get("certificate_providers") {
            None | Some(Value::Null) => {}
            Some(Value::Object(providers)) => {
                for (name, provider) in providers {
                    let field = format!("certificate_providers.{name}");
                    certificate_providers.insert(name.clone(), parse_provider(provider, &field)?);
                }
            }
            Some(_) => return Err(BootstrapError::invalid("certificate_providers", "not an object")),
        }
        let template = string(root, "server_listener_resource_name_template", "$")
            .map_err(|_| BootstrapError::invalid("server_listener_resource_name_template", "not a string"))?;
        let server_listener_resource_name_template = template.map(str::to_owned);
        Ok(Self { server, node, certificate_providers, server_listener_resource_name_template })
    }

    /// The name of the inbound Listener of a server listening on `address`: the
    /// `server_listener_resource_name_template` with `%s` replaced by `IP:port` (`[IP]:port` for
    /// IPv6), as gRPC names it.
    pub fn server_listener_name(&self, address: std::net::SocketAddr) -> Result<String, BootstrapError> {
        let template = self.server_listener_resource_name_template.as_deref().ok_or_else(|| {
            BootstrapError::invalid("server_listener_resource_name_template", "missing: needed to serve from xDS")
        })?;
        if template.starts_with("xdstp:") {
            return Err(BootstrapError::invalid(
                "server_listener_resource_name_template",
                "xdstp:// names (federation) are not supported",
            ));
        }
        Ok(template.replace("%s", &address.to_string()))
    }
}

fn object<'a>(value: &'a Value, field: &str) -> Result<&'a serde_json::Map<String, Value>, BootstrapError> {
    value.as_object().ok_or_else(|| BootstrapError::invalid(field, "not an object"))
}

fn string<'a>(
    object: &'a serde_json::Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<Option<&'a str>, BootstrapError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(BootstrapError::invalid(format!("{field}.{key}"), "not a string")),
    }
}

fn parse_server(value: &Value, field: &str) -> Result<XdsServer, BootstrapError> {
    let server = object(value, field)?;
    let uri = string(server, "server_uri", field)?
        .ok_or_else(|| BootstrapError::invalid(format!("{field}.server_uri"), "missing"))?;
    let target = parse_target(uri).map_err(|reason| BootstrapError::invalid(format!("{field}.server_uri"), reason))?;
    let creds = match server.get("channel_creds") {
        Some(Value::Array(creds)) if !creds.is_empty() => creds,
        Some(Value::Array(_)) | None => {
            return Err(BootstrapError::invalid(format!("{field}.channel_creds"), "missing or empty"));
        }
        Some(_) => return Err(BootstrapError::invalid(format!("{field}.channel_creds"), "not a list")),
    };
    let ignore_resource_deletion = match server.get("server_features") {
        None | Some(Value::Null) => false,
        Some(Value::Array(features)) => features.iter().any(|f| f.as_str() == Some("ignore_resource_deletion")),
        Some(_) => return Err(BootstrapError::invalid(format!("{field}.server_features"), "not a list")),
    };
    let server =
        |credentials| XdsServer { uri: uri.to_owned(), target: target.clone(), credentials, ignore_resource_deletion };
    let mut seen = Vec::new();
    for (i, cred) in creds.iter().enumerate() {
        let field = format!("{field}.channel_creds[{i}]");
        let cred = object(cred, &field)?;
        let kind =
            string(cred, "type", &field)?.ok_or_else(|| BootstrapError::invalid(format!("{field}.type"), "missing"))?;
        match kind {
            "insecure" => return Ok(server(ChannelCredentials::Insecure)),
            "tls" => return Ok(server(parse_tls_creds(cred.get("config"), &format!("{field}.config"))?)),
            other => seen.push(other.to_owned()),
        }
    }
    Err(BootstrapError::invalid(
        format!("{field}.channel_creds"),
        format!("none of the types {seen:?} is supported (supported: \"insecure\", \"tls\")"),
    ))
}

fn parse_tls_creds(config: Option<&Value>, field: &str) -> Result<ChannelCredentials, BootstrapError> {
    let config = match config {
        Some(config) => object(config, field)?,
        None => {
            return Err(BootstrapError::invalid(
                format!("{field}.ca_certificate_file"),
                "missing: mesh verifies the control plane against explicit roots",
            ));
        }
    };
    let file = |key: &str| string(config, key, field).map(|s| s.map(PathBuf::from));
    let ca_certificate_file = file("ca_certificate_file")?
        .ok_or_else(|| BootstrapError::invalid(format!("{field}.ca_certificate_file"), "missing"))?;
    let (certificate_file, private_key_file) = (file("certificate_file")?, file("private_key_file")?);
    if certificate_file.is_some() != private_key_file.is_some() {
        return Err(BootstrapError::invalid(
            format!("{field}.private_key_file"),
            "certificate_file and private_key_file go together",
        ));
    }
    Ok(ChannelCredentials::Tls { ca_certificate_file, certificate_file, private_key_file })
}

/// Parses `host:port`, `dns:///host:port` or `unix:///path`.
pub(crate) fn parse_target(uri: &str) -> Result<ServerTarget, String> {
    if let Some(path) = uri.strip_prefix("unix://") {
        if !path.starts_with('/') {
            return Err(format!("{uri:?}: a unix target is an absolute path, unix:///path"));
        }
        return Ok(ServerTarget::Unix(PathBuf::from(path)));
    }
    let rest = match uri.strip_prefix("dns:") {
        Some(rest) => rest.strip_prefix("///").ok_or_else(|| format!("{uri:?}: write dns:///host:port"))?,
        None if uri.contains("://") => {
            return Err(format!("{uri:?}: unknown scheme (use host:port, dns:/// or unix:///)"));
        }
        None => uri,
    };
    let (host, port) = rest.rsplit_once(':').ok_or_else(|| format!("{uri:?}: missing the port (host:port)"))?;
    let port: u16 = port.parse().map_err(|_| format!("{uri:?}: {port:?} is not a port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{uri:?}: missing the host"));
    }
    Ok(ServerTarget::Tcp { host: host.to_owned(), port })
}

fn parse_node(value: &Value) -> Result<Node, BootstrapError> {
    let node = object(value, "node")?;
    let id = string(node, "id", "node")?.unwrap_or_default().to_owned();
    let cluster = string(node, "cluster", "node")?.unwrap_or_default().to_owned();
    let locality = match node.get("locality") {
        None | Some(Value::Null) => Locality::default(),
        Some(l) => Locality::deserialize(l).map_err(|e| BootstrapError::invalid("node.locality", e.to_string()))?,
    };
    let metadata = match node.get("metadata") {
        None | Some(Value::Null) => serde_json::Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(BootstrapError::invalid("node.metadata", "not an object")),
    };
    Ok(Node { id, cluster, locality, metadata })
}

fn parse_provider(value: &Value, field: &str) -> Result<CertificateProvider, BootstrapError> {
    let provider = object(value, field)?;
    let plugin = string(provider, "plugin_name", field)?
        .ok_or_else(|| BootstrapError::invalid(format!("{field}.plugin_name"), "missing"))?;
    if plugin != "file_watcher" {
        return Err(BootstrapError::invalid(
            format!("{field}.plugin_name"),
            format!("{plugin:?} is not supported (supported: \"file_watcher\")"),
        ));
    }
    let field = format!("{field}.config");
    let config = object(provider.get("config").unwrap_or(&Value::Null), &field)?;
    let file = |key: &str| -> Result<PathBuf, BootstrapError> {
        string(config, key, &field)?
            .map(PathBuf::from)
            .ok_or_else(|| BootstrapError::invalid(format!("{field}.{key}"), "missing"))
    };
    Ok(CertificateProvider {
        certificate_file: file("certificate_file")?,
        private_key_file: file("private_key_file")?,
        ca_certificate_file: file("ca_certificate_file")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISTIO: &str = r#"{
      "xds_servers": [{"server_uri": "unix:///etc/istio/proxy/XDS", "channel_creds": [{"type": "insecure"}],
                       "server_features": ["xds_v3"]}],
      "node": {"id": "sidecar~10.0.0.7~reviews-v1-1.default~default.svc.cluster.local",
               "cluster": "reviews.default", "locality": {"region": "eu", "zone": "eu-1"},
               "metadata": {"GENERATOR": "grpc", "NAMESPACE": "default"}},
      "certificate_providers": {"default": {"plugin_name": "file_watcher", "config": {
          "certificate_file": "/var/lib/istio/data/cert-chain.pem",
          "private_key_file": "/var/lib/istio/data/key.pem",
          "ca_certificate_file": "/var/lib/istio/data/root-cert.pem",
          "refresh_interval": "900s"}}},
      "server_listener_resource_name_template": "xds.istio.io/grpc/lds/inbound/%s"
    }"#;

    #[test]
    fn reads_what_istio_writes() {
        let b = Bootstrap::from_json(ISTIO).unwrap();
        assert_eq!(b.server.target, ServerTarget::Unix("/etc/istio/proxy/XDS".into()));
        assert_eq!(b.server.credentials, ChannelCredentials::Insecure);
        assert!(!b.server.ignore_resource_deletion);
        assert_eq!(b.node.cluster, "reviews.default");
        assert_eq!(b.node.locality.zone, "eu-1");
        assert_eq!(b.node.metadata["GENERATOR"], "grpc");
        assert_eq!(
            b.certificate_providers["default"].ca_certificate_file,
            PathBuf::from("/var/lib/istio/data/root-cert.pem")
        );
    }

    #[test]
    fn server_uris() {
        assert_eq!(
            parse_target("istiod.istio-system.svc:15010").unwrap(),
            ServerTarget::Tcp { host: "istiod.istio-system.svc".into(), port: 15010 }
        );
        assert_eq!(
            parse_target("dns:///127.0.0.1:1").unwrap(),
            ServerTarget::Tcp { host: "127.0.0.1".into(), port: 1 }
        );
        assert_eq!(parse_target("[::1]:9").unwrap(), ServerTarget::Tcp { host: "::1".into(), port: 9 });
        assert!(parse_target("unix://relative").is_err());
        assert!(parse_target("http://x:1").is_err());
        assert!(parse_target("x").unwrap_err().contains("port"));
        assert!(parse_target("x:http").is_err());
    }

    #[test]
    fn errors_name_the_field() {
        let field = |json: &str| Bootstrap::from_json(json).unwrap_err().field().map(str::to_owned);
        assert_eq!(field("[]").as_deref(), Some("$"));
        assert_eq!(field("{").as_deref(), Some("$"));
        assert_eq!(field("{}").as_deref(), Some("xds_servers"));
        assert_eq!(field(r#"{"xds_servers": []}"#).as_deref(), Some("xds_servers"));
        assert_eq!(
            field(r#"{"xds_servers": [{"channel_creds": [{"type": "insecure"}]}]}"#).as_deref(),
            Some("xds_servers[0].server_uri")
        );
        assert_eq!(
            field(r#"{"xds_servers": [{"server_uri": "a:1"}]}"#).as_deref(),
            Some("xds_servers[0].channel_creds")
        );
        let err = Bootstrap::from_json(
            r#"{"xds_servers": [{"server_uri": "a:1", "channel_creds": [{"type": "google_default"}]}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("google_default"), "{err}");
        assert_eq!(
            field(r#"{"xds_servers": [{"server_uri": "a:1", "channel_creds": [{"type": "tls", "config": {}}]}]}"#)
                .as_deref(),
            Some("xds_servers[0].channel_creds[0].config.ca_certificate_file")
        );
        let base = r#"{"xds_servers": [{"server_uri": "a:1", "channel_creds": [{"type": "insecure"}]}], "#;
        assert_eq!(field(&format!(r#"{base}"node": {{"id": 7}}}}"#)).as_deref(), Some("node.id"));
        assert_eq!(
            field(&format!(r#"{base}"certificate_providers": {{"p": {{"plugin_name": "spiffe"}}}}}}"#)).as_deref(),
            Some("certificate_providers.p.plugin_name")
        );
        assert_eq!(field(&format!(r#"{base}"certificate_providers": {{"p": {{"plugin_name": "file_watcher", "config": {{"certificate_file": "c", "private_key_file": "k"}}}}}}}}"#)).as_deref(),
            Some("certificate_providers.p.config.ca_certificate_file"));
    }

    #[test]
    fn server_features() {
        let b = Bootstrap::from_json(
            r#"{"xds_servers": [{"server_uri": "a:1", "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3", "ignore_resource_deletion"]}]}"#,
        )
        .unwrap();
        assert!(b.server.ignore_resource_deletion);
        let err = Bootstrap::from_json(
            r#"{"xds_servers": [{"server_uri": "a:1", "channel_creds": [{"type": "insecure"}], "server_features": "x"}]}"#,
        )
        .unwrap_err();
        assert_eq!(err.field(), Some("xds_servers[0].server_features"));
    }

    #[test]
    fn skips_unsupported_creds_for_a_later_supported_one() {
        let b = Bootstrap::from_json(
            r#"{"xds_servers": [{"server_uri": "a:1", "channel_creds": [{"type": "google_default"},
            {"type": "tls", "config": {"ca_certificate_file": "/ca.pem"}}]}]}"#,
        )
        .unwrap();
        assert_eq!(
            b.server.credentials,
            ChannelCredentials::Tls {
                ca_certificate_file: "/ca.pem".into(),
                certificate_file: None,
                private_key_file: None
            }
        );
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let err = Bootstrap::from_file("/nonexistent/bootstrap.json").unwrap_err();
        assert!(matches!(err, BootstrapError::Read { .. }), "{err}");
    }
}
