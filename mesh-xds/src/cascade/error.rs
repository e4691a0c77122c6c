//! [`CascadeError`]: why a target has no (new) snapshot.

use crate::resource::{ResourceError, ResourceType};

/// Why a target has no (new) snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CascadeError {
    /// A resource of the cascade does not exist (the control plane said so, or did not send it in
    /// time: gRFC A57's does-not-exist timer).
    #[error("{kind} resource {name:?} does not exist")]
    DoesNotExist {
        /// Its type.
        kind: ResourceType,
        /// Its name.
        name: String,
    },
    /// A resource of the cascade was refused (NACKed) and there is no earlier good version of it.
    #[error(transparent)]
    Refused(#[from] ResourceError),
    /// The resources are each valid but together ask for something mesh cannot do.
    #[error("target {target}: {reason}")]
    Unsupported {
        /// The listener.
        target: String,
        /// Why.
        reason: String,
    },
}
