//! Discovery from a YAML or JSON file, watched for changes.

use std::{
    collections::{BTreeMap, HashMap},
    fmt, io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, PoisonError, Weak},
};

use notify::{EventKind, RecursiveMode, Watcher};
use serde::Deserialize;

use super::{Discovery, DiscoveryError, SnapshotPublisher, SnapshotWatch};
use crate::{
    model::{CheckedSpec, ServiceSnapshot, ServiceSpec},
    name::ServiceName,
};

/// Discovery from a YAML or JSON file, reloaded whenever it changes on disk.
///
/// The file maps service names to their configuration ([`ServiceSpec`]); `.json` files are read
/// as JSON, anything else as YAML:
///
/// ```yaml
/// services:
///   reviews:
///     identity: spiffe://example.org/ns/prod/sa/reviews
///     endpoints:
///       - address: 10.0.0.7:9080
///         labels: { version: v1 }
///       - address: 10.0.0.8:9080
///         labels: { version: v2 }
///     subsets:
///       - { name: v1, labels: { version: v1 } }
///       - { name: v2, labels: { version: v2 } }
///     routes:
///       - name: default
///         targets: [ { subset: v1, weight: 90 }, { subset: v2, weight: 10 } ]
///         timeout: 2s
/// ```
///
/// A subset may name a DNS name instead of selecting listed endpoints
/// (`- { name: v1, dns: reviews-v1.default.svc.cluster.local, port: 9080 }`, or an SRV name without
/// `port`; see [`Subset`](crate::Subset)). Such a subset has no endpoints in this backend's
/// snapshots: put the file behind a [`ComposedDiscovery`](super::ComposedDiscovery) with a DNS
/// endpoint source to resolve it.
///
/// A change is published to the services it touches, and only to those. An edit that does not
/// parse or breaks a rule is refused as a whole: every service keeps its last good snapshot, and
/// the error — naming the file, the line and the field — goes to every watch
/// ([`SnapshotWatch::last_error`]), to [`FileDiscovery::last_error`] and to the `tracing` log.
/// A service removed from the file keeps its last snapshot too (with an error): emptying a
/// service takes an explicit `endpoints: []`.
///
/// Watching stops when the last clone of the `FileDiscovery` is dropped; watches keep their
/// last snapshot. Editors that save by renaming a new file over the old one (vim, Kubernetes
/// ConfigMap volumes) are handled: the whole directory is watched.
///
/// ```no_run
/// use mesh_core::{ServiceName, discovery::{Discovery, FileDiscovery}};
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// let discovery = FileDiscovery::open("/etc/mesh/services.yaml")?;
/// let mut reviews = discovery.watch(&"reviews".parse()?);
/// let snapshot = reviews.ready().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct FileDiscovery {
    inner: Arc<Inner>,
    // Held apart from `Inner` so the watcher thread, which only upgrades a `Weak<Inner>`, can
    // never be the one that drops (and joins) the watcher.
    _watcher: Arc<notify::RecommendedWatcher>,
}

struct Inner {
    path: PathBuf,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    specs: BTreeMap<ServiceName, ServiceSpec>,
    publishers: HashMap<ServiceName, SnapshotPublisher>,
    last_error: Option<FileDiscoveryError>,
}

/// A discovery file that could not be read, or whose content was refused.
#[derive(Debug, Clone)]
pub struct FileDiscoveryError {
    path: PathBuf,
    line: Option<usize>,
    column: Option<usize>,
    field: Option<String>,
    message: String,
    io: Option<Arc<io::Error>>,
}

impl FileDiscoveryError {
    fn io(path: &Path, error: io::Error) -> Self {
        Self {
            path: path.to_owned(),
            line: None,
            column: None,
            field: None,
            message: format!("cannot read the file: {error}"),
            io: Some(Arc::new(error)),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The line (1-based) where the error was found, when known. For a bad value in YAML this
    /// is the line where the entry holding it starts; [`field`](Self::field) names the value.
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// The column (1-based), when known.
    pub fn column(&self) -> Option<usize> {
        self.column
    }

    /// The offending field, such as `services.reviews.endpoints[0].weight`, when known.
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }

    /// What was wrong.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the file could not be read at all (missing, unreadable).
    pub fn is_io(&self) -> bool {
        self.io.is_some()
    }
}

impl fmt::Display for FileDiscoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "discovery file {}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ", line {line}")?;
            if let Some(column) = self.column {
                write!(f, ", column {column}")?;
            }
        }
        if let Some(field) = &self.field {
            write!(f, ", field `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for FileDiscoveryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.io.as_deref().map(|e| e as _)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    #[serde(default)]
    services: BTreeMap<ServiceName, CheckedSpec>,
}

/// Parses a discovery file's text; `json` picks the JSON syntax.
pub(crate) fn parse(
    path: &Path,
    text: &str,
    json: bool,
) -> Result<BTreeMap<ServiceName, ServiceSpec>, FileDiscoveryError> {
    let error = |field: String, line, column, message: String| FileDiscoveryError {
        path: path.to_owned(),
        line,
        column,
        field: (!field.is_empty() && field != ".").then_some(field),
        message,
        io: None,
    };
    let file: FileSpec = if json {
        let mut de = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            let (line, column) = (inner.line(), inner.column());
            // serde_json appends " at line L column C"; we print the position ourselves.
            let message = inner.to_string();
            let message = message.rsplit_once(" at line ").map_or(message.as_str(), |(m, _)| m).to_owned();
            error(field, Some(line), Some(column), message)
        })?
    } else {
        let de = serde_norway::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            let location = inner.location();
            let message = inner.to_string();
            // serde_norway prefixes the path and appends the position; keep the bare message.
            let message = message.rsplit_once(" at line ").map_or(message.as_str(), |(m, _)| m);
            let message = match message.split_once(": ") {
                Some((prefix, rest)) if field.starts_with(prefix) => rest,
                _ => message,
            }
            .to_owned();
            error(field, location.as_ref().map(|l| l.line()), location.as_ref().map(|l| l.column()), message)
        })?
    };
    Ok(file.services.into_iter().map(|(name, CheckedSpec(spec))| (name, spec)).collect())
}

// === impl FileDiscovery ===

impl FileDiscovery {
    /// Reads `path` and starts watching it.
    ///
    /// The first read must succeed: a missing or invalid file at start is an error here, not an
    /// empty mesh.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, FileDiscoveryError> {
        let path = path.as_ref().to_owned();
        let inner = Arc::new(Inner { path: path.clone(), state: Mutex::new(State::default()) });
        inner.reload()?;

        let weak: Weak<Inner> = Arc::downgrade(&inner);
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Some(inner) = weak.upgrade() else { return };
            match event {
                // Any change in the directory may be ours: a rename over the file, a symlink swap.
                // Reloading an unchanged file publishes nothing.
                Ok(event) if !matches!(event.kind, EventKind::Access(_)) => {
                    let _ = inner.reload();
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(file = %inner.path.display(), error = %e, "discovery file watch failed"),
            }
        })
        .map_err(|e| FileDiscoveryError::io(&path, io::Error::other(e)))?;
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|e| FileDiscoveryError::io(&path, io::Error::other(e)))?;
        // The file may have changed between the first read and the start of the watch.
        let _ = inner.reload();
        Ok(Self { inner, _watcher: Arc::new(watcher) })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Reads the file again now. Changes are picked up on their own; this is for callers that
    /// know better (a SIGHUP handler, a test). Returns the error that the watches also see.
    pub fn reload(&self) -> Result<(), FileDiscoveryError> {
        self.inner.reload()
    }

    /// The error of the last reload, if it failed.
    pub fn last_error(&self) -> Option<FileDiscoveryError> {
        self.inner.state().last_error.clone()
    }

    /// The services the file configures.
    pub fn services(&self) -> Vec<ServiceName> {
        self.inner.state().specs.keys().cloned().collect()
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn reload(&self) -> Result<(), FileDiscoveryError> {
        let parsed = std::fs::read_to_string(&self.path)
            .map_err(|e| FileDiscoveryError::io(&self.path, e))
            .and_then(|text| parse(&self.path, &text, self.path.extension().is_some_and(|e| e == "json")));
        // Reading and publishing under one lock keeps concurrent reloads in file order.
        let mut state = self.state();
        let specs = match parsed {
            Ok(specs) => specs,
            Err(error) => {
                tracing::warn!(%error, "discovery file refused; keeping the last good configuration");
                for publisher in state.publishers.values() {
                    publisher.report_error(DiscoveryError::File(error.clone()));
                }
                state.last_error = Some(error.clone());
                return Err(error);
            }
        };
        state.last_error = None;
        for (name, publisher) in &state.publishers {
            publish_if_changed(&self.path, publisher, specs.get(name));
        }
        state.specs = specs;
        Ok(())
    }
}

fn publish_if_changed(path: &Path, publisher: &SnapshotPublisher, spec: Option<&ServiceSpec>) {
    let name = publisher.service();
    let Some(spec) = spec else {
        publisher.report_error(DiscoveryError::File(FileDiscoveryError {
            path: path.to_owned(),
            line: None,
            column: None,
            field: Some(format!("services.{name}")),
            message: "the service is not in the file; it keeps its last configuration".into(),
            io: None,
        }));
        return;
    };
    if publisher.current().is_some_and(|current| current.spec() == spec) {
        return;
    }
    match ServiceSnapshot::new(name.clone(), spec.clone()) {
        Ok(snapshot) => {
            let snapshot = publisher.publish(snapshot).unwrap_or_else(|_| unreachable!("same service name"));
            tracing::debug!(service = %name, version = snapshot.version(), "discovery file change published");
        }
        // Specs were checked while parsing; this only guards against the two checks drifting apart.
        Err(invalid) => publisher.report_error(DiscoveryError::Invalid(invalid)),
    }
}

impl Discovery for FileDiscovery {
    fn watch(&self, service: &ServiceName) -> SnapshotWatch {
        let mut state = self.inner.state();
        if let Some(publisher) = state.publishers.get(service) {
            return publisher.subscribe();
        }
        let publisher = SnapshotPublisher::new(service.clone());
        publish_if_changed(&self.inner.path, &publisher, state.specs.get(service));
        if let Some(error) = &state.last_error {
            publisher.report_error(DiscoveryError::File(error.clone()));
        }
        let watch = publisher.subscribe();
        state.publishers.insert(service.clone(), publisher);
        watch
    }
}

impl fmt::Debug for FileDiscovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileDiscovery").field("path", &self.inner.path).finish()
    }
}

#[cfg(test)]
mod tests;
