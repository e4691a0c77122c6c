//! Where a workload's identity comes from, and how it changes.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError, Weak},
};

use arc_swap::ArcSwap;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::watch;

use super::{Credentials, InvalidIdentity, TrustBundle, TrustDomain};

/// A workload's credentials and the trust bundle it checks peers against.
#[derive(Clone, Debug)]
pub struct Identity {
    credentials: Credentials,
    bundle: TrustBundle,
}

impl Identity {
    /// Pairs credentials with a bundle. The bundle must cover the credentials' own trust domain,
    /// and the certificate must chain to it: peers check us against the same roots, so a pair
    /// that fails here (a new bundle with an old certificate, mid-rotation) would fail with them.
    pub fn new(credentials: Credentials, bundle: TrustBundle) -> Result<Self, InvalidIdentity> {
        let td = credentials.spiffe_id().trust_domain();
        let Some(roots) = bundle.roots(td.as_str()) else {
            return Err(InvalidIdentity::ForeignTrustDomain(td));
        };
        credentials.verify_chain(roots)?;
        Ok(Self { credentials, bundle })
    }

    /// The workload's credentials.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// The roots it trusts.
    pub fn bundle(&self) -> &TrustBundle {
        &self.bundle
    }
}

#[derive(Default, Clone)]
struct Status {
    generation: u64,
    error: Option<Arc<InvalidIdentity>>,
}

struct Shared {
    current: ArcSwap<Identity>,
    status: watch::Sender<Status>,
    /// Has one receiver per [`IdentitySource`] clone: closed when the last one is dropped, which
    /// ends whatever renews the identity ([`IdentityUpdater::closed`]).
    in_use: watch::Sender<()>,
}

/// A workload's current [`Identity`], and every renewal of it.
///
/// The TLS configurations mesh builds read it on every handshake (a lock-free load), so a renewed
/// certificate is used by the next handshake with no restart, while established connections carry
/// on. Cheap to clone.
///
/// - [`IdentitySource::fixed`]: one identity for the life of the process;
/// - [`IdentitySource::updatable`]: renewed by your code, or by a client of the SPIFFE Workload
///   API (`mesh-spiffe`, the facade's `spiffe` feature);
/// - [`IdentitySource::from_files`]: PEM files renewed on disk by a SPIRE agent, cert-manager's CSI
///   driver or any other tool, watched. A renewal that does not check out (unparsable, a key that
///   does not match, an expired certificate, a half-written pair) is refused: the current
///   identity stays and the error is reported ([`last_error`](Self::last_error) and the log).
#[derive(Clone)]
pub struct IdentitySource {
    shared: Arc<Shared>,
    _in_use: watch::Receiver<()>,
    _watcher: Option<Arc<notify::RecommendedWatcher>>,
}

/// Renews the identity of an [`IdentitySource::updatable`] source.
#[derive(Clone)]
pub struct IdentityUpdater {
    shared: Arc<Shared>,
}

/// Where [`IdentitySource::from_files`] finds a workload's identity.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct IdentityFiles {
    /// The PEM certificate chain, leaf first (`svid.pem`, `tls.crt`).
    pub cert: PathBuf,
    /// The PEM private key (`svid_key.pem`, `tls.key`).
    pub key: PathBuf,
    /// The PEM roots of the trust domain (`bundle.pem`, `ca.crt`).
    pub bundle: PathBuf,
    /// The trust domain the roots belong to.
    pub trust_domain: TrustDomain,
}

impl IdentityFiles {
    /// The three files and the bundle's trust domain.
    pub fn new(
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
        bundle: impl Into<PathBuf>,
        trust_domain: TrustDomain,
    ) -> Self {
        Self { cert: cert.into(), key: key.into(), bundle: bundle.into(), trust_domain }
    }

    fn load(&self) -> Result<Identity, InvalidIdentity> {
        let credentials = Credentials::from_pem_files(&self.cert, &self.key)?;
        let bundle = TrustBundle::from_pem_file(self.trust_domain.clone(), &self.bundle)?;
        Identity::new(credentials, bundle)
    }
}

impl IdentitySource {
    /// One identity, never renewed.
    pub fn fixed(identity: Identity) -> Self {
        Self::updatable(identity).0
    }

    /// An identity that `IdentityUpdater` renews.
    pub fn updatable(identity: Identity) -> (Self, IdentityUpdater) {
        let (status, _) = watch::channel(Status::default());
        let (in_use, in_use_rx) = watch::channel(());
        let shared = Arc::new(Shared { current: ArcSwap::from_pointee(identity), status, in_use });
        (Self { shared: shared.clone(), _in_use: in_use_rx, _watcher: None }, IdentityUpdater { shared })
    }

    /// An identity read from PEM files and re-read whenever they change. The first read must
    /// succeed. Watching stops when the last clone of the source is dropped.
    pub fn from_files(files: IdentityFiles) -> Result<Self, InvalidIdentity> {
        let (source, updater) = Self::updatable(files.load()?);
        let files = Arc::new(files);
        let weak: Weak<Shared> = Arc::downgrade(&updater.shared);
        let loader = files.clone();
        // Several events arrive per renewal; reloading is serialized so results land in order.
        let reloading = Mutex::new(());
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Some(shared) = weak.upgrade() else { return };
            match event {
                Ok(event) if !matches!(event.kind, EventKind::Access(_)) => {
                    let _serial = reloading.lock().unwrap_or_else(PoisonError::into_inner);
                    let updater = IdentityUpdater { shared };
                    match loader.load() {
                        Ok(identity) => {
                            updater.update_if_changed(identity);
                        }
                        Err(error) => {
                            tracing::warn!(%error, "renewed identity refused; keeping the current one");
                            updater.report_error(error);
                        }
                    }
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "identity file watch failed"),
            }
        })
        .map_err(|e| InvalidIdentity::Io { path: files.cert.clone(), message: e.to_string() })?;
        let mut dirs: Vec<&Path> = [&files.cert, &files.key, &files.bundle].into_iter().map(|p| parent(p)).collect();
        dirs.sort();
        dirs.dedup();
        for dir in dirs {
            watcher
                .watch(dir, RecursiveMode::NonRecursive)
                .map_err(|e| InvalidIdentity::Io { path: dir.to_owned(), message: e.to_string() })?;
        }
        // The files may have changed between the first read and the start of the watch.
        if let Ok(identity) = files.load() {
            updater.update_if_changed(identity);
        }
        Ok(Self { _watcher: Some(Arc::new(watcher)), ..source })
    }

    /// The current identity. Lock-free.
    pub fn current(&self) -> Arc<Identity> {
        self.shared.current.load_full()
    }

    /// The error of the last renewal, if it was refused.
    pub fn last_error(&self) -> Option<Arc<InvalidIdentity>> {
        self.shared.status.borrow().error.clone()
    }

    /// Waits until the current identity satisfies `condition` (checks the current one first).
    pub async fn wait_for(&self, mut condition: impl FnMut(&Identity) -> bool) -> Arc<Identity> {
        let mut status = self.shared.status.subscribe();
        loop {
            let current = self.current();
            if condition(&current) {
                return current;
            }
            // The sender lives in `self`, so this only ends when a change arrives.
            let _ = status.changed().await;
        }
    }

    /// Follows renewals and refusals from now on.
    pub fn changes(&self) -> IdentityChanges {
        let mut status = self.shared.status.subscribe();
        status.borrow_and_update();
        IdentityChanges { status }
    }
}

/// Renewals and refusals of an [`IdentitySource`], from [`IdentitySource::changes`].
#[derive(Debug)]
pub struct IdentityChanges {
    status: watch::Receiver<Status>,
}

impl IdentityChanges {
    /// Waits for the next renewal or refusal; returns the refusal's error, or `None` for a
    /// renewal (or when the source is gone).
    pub async fn next(&mut self) -> Option<Arc<InvalidIdentity>> {
        self.status.changed().await.ok()?;
        self.status.borrow_and_update().error.clone()
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Status").field("generation", &self.generation).field("error", &self.error).finish()
    }
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

impl IdentityUpdater {
    /// The identity in use now.
    pub fn current(&self) -> Arc<Identity> {
        self.shared.current.load_full()
    }

    /// Makes `identity` current; the next handshake uses it.
    pub fn update(&self, identity: Identity) {
        self.shared.current.store(Arc::new(identity));
        self.shared.status.send_modify(|s| {
            s.generation += 1;
            s.error = None;
        });
    }

    /// Makes `identity` current unless it holds the same certificate and bundle as the current
    /// one, and returns whether it did. Either way a reported error is cleared: the source that
    /// failed delivered again (a Workload API stream re-established, a file pair completed).
    pub fn update_if_changed(&self, identity: Identity) -> bool {
        let current = self.shared.current.load();
        let same_cert = current.credentials().serial() == identity.credentials().serial();
        let (old, new) = (current.bundle(), identity.bundle());
        let same_bundle = old.trust_domains().eq(new.trust_domains())
            && old.trust_domains().all(|td| match (old.roots(td.as_str()), new.roots(td.as_str())) {
                (Some(a), Some(b)) => a.roots == b.roots,
                _ => false,
            });
        if !(same_cert && same_bundle) {
            self.update(identity);
            return true;
        }
        self.shared.status.send_if_modified(|s| s.error.take().is_some());
        false
    }

    /// Whether every clone of the source this updater renews has been dropped.
    pub fn is_closed(&self) -> bool {
        self.shared.in_use.is_closed()
    }

    /// Resolves once every clone of the source this updater renews has been dropped: a task that
    /// renews the identity stops then.
    pub async fn closed(&self) {
        self.shared.in_use.closed().await;
    }

    /// Reports a refused renewal; the current identity stays.
    pub fn report_error(&self, error: InvalidIdentity) {
        let error = Arc::new(error);
        self.shared.status.send_modify(|s| s.error = Some(error));
    }
}

impl fmt::Debug for IdentitySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentitySource").field("current", &self.current().credentials()).finish()
    }
}

impl fmt::Debug for IdentityUpdater {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityUpdater").finish_non_exhaustive()
    }
}
