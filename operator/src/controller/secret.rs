//! The dereference step of a reconcile: read the stack's connection Secret before anything
//! is built, so that the steps after it get the connection URI, or why there is none, as a
//! value. The database steps turn a missing or unusable Secret into `DatabaseReady`.

use std::fmt;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};

use crate::crd::MetricsStack;

/// The database connection URI a stack's Secret holds. Its `Debug` leaves the URI out: the
/// URI carries the password.
pub struct ConnectionUri {
    /// `namespace/name` of the Secret it was read from, for messages.
    pub secret: String,
    uri: String,
}

impl ConnectionUri {
    /// The URI, without surrounding white space.
    pub fn as_str(&self) -> &str {
        &self.uri
    }
}

impl fmt::Debug for ConnectionUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionUri")
            .field("secret", &self.secret)
            .finish_non_exhaustive()
    }
}

/// Why a stack's Secret gave no connection URI.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The API server refused or failed the read: worth a retry with backoff.
    #[error(transparent)]
    Api(#[from] kube::Error),
    /// There is no such Secret.
    #[error(
        "Secret {secret} not found: create it with the key {key:?} holding the connection URI \
         (postgres://user:password@host:port/database)"
    )]
    NotFound {
        /// `namespace/name` of the Secret.
        secret: String,
        /// The key that should hold the URI.
        key: String,
    },
    /// The Secret has no UTF-8 value under the key.
    #[error(
        "Secret {secret} has no UTF-8 key {key:?}: set database.secretRef.key to the key \
         holding the connection URI"
    )]
    NoUri {
        /// `namespace/name` of the Secret.
        secret: String,
        /// The key that should hold the URI.
        key: String,
    },
}

/// Reads the connection URI from the Secret that `spec.database.secretRef` names, in the
/// stack's namespace.
#[tracing::instrument(skip_all, fields(
    namespace = stack.metadata.namespace.as_deref(),
    name = stack.metadata.name.as_deref(),
))]
pub async fn read_secret(
    client: &Client,
    stack: &MetricsStack,
) -> Result<ConnectionUri, SecretError> {
    let namespace = stack.namespace().unwrap_or_default();
    let reference = &stack.spec.database.secret_ref;
    let secret_name = format!("{namespace}/{}", reference.name);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let Some(secret) = secrets.get_opt(&reference.name).await? else {
        return Err(SecretError::NotFound {
            secret: secret_name,
            key: reference.key.clone(),
        });
    };
    let value = secret
        .data
        .as_ref()
        .and_then(|data| data.get(&reference.key))
        .map(|bytes| String::from_utf8(bytes.0.clone()));
    match value {
        Some(Ok(uri)) => Ok(ConnectionUri {
            secret: secret_name,
            uri: uri.trim().to_owned(),
        }),
        _ => Err(SecretError::NoUri {
            secret: secret_name,
            key: reference.key.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_uri_keeps_its_password_out_of_debug_output() {
        let uri = ConnectionUri {
            secret: "monitoring/db".into(),
            uri: "postgres://operator:hunter2@db:5432/metrics".into(),
        };
        let debug = format!("{uri:?}");
        assert!(debug.contains("monitoring/db"), "{debug}");
        assert!(!debug.contains("hunter2"), "{debug}");
    }
}
