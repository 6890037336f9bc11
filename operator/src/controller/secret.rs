//! The dereference step of a reconcile: read the stack's connection Secret, and the CA
//! certificate `spec.database.caRef` names, before anything is built, so that the steps
//! after it get what connecting needs, or why it is missing, as a value. The database steps
//! turn a missing or unusable Secret or CA into `DatabaseReady`.

use std::fmt;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client, ResourceExt};
use sha2::{Digest as _, Sha256};

use crate::crd::{CaSource, MetricsStack, SecretKeyRef};

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

/// What the operator connects to a stack's database with: the URI, and the CA certificate
/// (PEM) when `spec.database.caRef` names one; and the URI the pods connect through when
/// `spec.database.pooler` names a pooler.
#[derive(Debug)]
pub struct Connection {
    /// The connection URI.
    pub uri: ConnectionUri,
    /// The CA certificate that signs the server's certificate.
    pub ca: Option<Vec<u8>>,
    /// The pooler's connection URI, which the collectors and the query service use.
    pub pooler_uri: Option<ConnectionUri>,
}

impl Connection {
    /// A digest of the URIs and the CA, for the pods' checksum: it changes when any does
    /// (a rotated pooler password rolls the pods as a rotated database password does), and
    /// reveals none.
    pub fn digest(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(self.uri.as_str().as_bytes());
        hasher.update([0]);
        if let Some(ca) = &self.ca {
            hasher.update(ca);
        }
        if let Some(pooler) = &self.pooler_uri {
            hasher.update([0]);
            hasher.update(pooler.as_str().as_bytes());
        }
        format!("{:x}", hasher.finalize())
    }
}

/// Why a stack's Secret gave no connection URI, or its CA no certificate.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The API server refused or failed the read: worth a retry with backoff.
    #[error(transparent)]
    Api(#[from] kube::Error),
    /// There is no such Secret.
    #[error(
        "Secret {secret} named by {field} not found: create it with the key {key:?} holding \
         the connection URI (postgres://user:password@host:port/database)"
    )]
    NotFound {
        /// `namespace/name` of the Secret.
        secret: String,
        /// The field naming it, `spec.database.secretRef` or `spec.database.pooler.secretRef`.
        field: &'static str,
        /// The key that should hold the URI.
        key: String,
    },
    /// The Secret has no UTF-8 value under the key.
    #[error(
        "Secret {secret} has no UTF-8 key {key:?}: set {field}.key to the key holding the \
         connection URI"
    )]
    NoUri {
        /// `namespace/name` of the Secret.
        secret: String,
        /// The field naming it.
        field: &'static str,
        /// The key that should hold the URI.
        key: String,
    },
    /// There is no such Secret or ConfigMap as `spec.database.caRef` names.
    #[error(
        "{kind} {object} named by {field} not found: create it with the key {key:?} holding \
         the database server's CA certificate (PEM), or correct {field}"
    )]
    CaNotFound {
        /// `Secret` or `ConfigMap`.
        kind: &'static str,
        /// `namespace/name` of the object.
        object: String,
        /// The field naming it, `spec.database.caRef.secretKeyRef` or `...configMapKeyRef`.
        field: &'static str,
        /// The key that should hold the CA.
        key: String,
    },
    /// The Secret or ConfigMap has no PEM certificate under the key.
    #[error(
        "{kind} {object} named by {field} has no PEM certificate under the key {key:?}: put \
         the database server's CA certificate there, or set {field}.key to the key holding it"
    )]
    NoCa {
        /// `Secret` or `ConfigMap`.
        kind: &'static str,
        /// `namespace/name` of the object.
        object: String,
        /// The field naming it.
        field: &'static str,
        /// The key that should hold the CA.
        key: String,
    },
}

/// Reads the connection URI from the Secret that `spec.database.secretRef` names and the CA
/// certificate from the Secret or ConfigMap that `spec.database.caRef` names, in the stack's
/// namespace.
#[tracing::instrument(skip_all, fields(
    namespace = stack.metadata.namespace.as_deref(),
    name = stack.metadata.name.as_deref(),
))]
pub async fn read_connection(
    client: &Client,
    stack: &MetricsStack,
) -> Result<Connection, SecretError> {
    let database = &stack.spec.database;
    let uri = read_uri(
        client,
        stack,
        &database.secret_ref,
        "spec.database.secretRef",
    )
    .await?;
    let pooler_uri = match &database.pooler {
        Some(pooler) => Some(
            read_uri(
                client,
                stack,
                &pooler.secret_ref,
                "spec.database.pooler.secretRef",
            )
            .await?,
        ),
        None => None,
    };
    let source = (stack.spec.database.ca_ref.as_ref()).and_then(|ca_ref| ca_ref.source());
    let ca = match source {
        Some(source) => Some(read_ca(client, stack, source).await?),
        None => None,
    };
    Ok(Connection {
        uri,
        ca,
        pooler_uri,
    })
}

/// Reads the CA certificate from its Secret's or ConfigMap's key; checks only that it is PEM
/// with a certificate (the TLS handshake checks the rest).
async fn read_ca(
    client: &Client,
    stack: &MetricsStack,
    source: CaSource<'_>,
) -> Result<Vec<u8>, SecretError> {
    let namespace = stack.namespace().unwrap_or_default();
    let reference = source.key_ref();
    let object = format!("{namespace}/{}", reference.name);
    let value = match source {
        CaSource::Secret(_) => Api::<Secret>::namespaced(client.clone(), &namespace)
            .get_opt(&reference.name)
            .await?
            .map(|secret| {
                let data = secret.data.unwrap_or_default();
                data.get(&reference.key).map(|bytes| bytes.0.clone())
            }),
        CaSource::ConfigMap(_) => Api::<ConfigMap>::namespaced(client.clone(), &namespace)
            .get_opt(&reference.name)
            .await?
            .map(|config_map| {
                let text = config_map.data.unwrap_or_default();
                let binary = config_map.binary_data.unwrap_or_default();
                (text
                    .get(&reference.key)
                    .map(|text| text.clone().into_bytes()))
                .or_else(|| binary.get(&reference.key).map(|bytes| bytes.0.clone()))
            }),
    };
    let pem_certificate =
        |pem: &Vec<u8>| String::from_utf8_lossy(pem).contains("-----BEGIN CERTIFICATE-----");
    match value {
        None => Err(SecretError::CaNotFound {
            kind: source.kind(),
            object,
            field: source.field(),
            key: reference.key.clone(),
        }),
        Some(Some(pem)) if pem_certificate(&pem) => Ok(pem),
        Some(_) => Err(SecretError::NoCa {
            kind: source.kind(),
            object,
            field: source.field(),
            key: reference.key.clone(),
        }),
    }
}

/// Reads the connection URI from the Secret that `reference` (the stack's `field`) names.
async fn read_uri(
    client: &Client,
    stack: &MetricsStack,
    reference: &SecretKeyRef,
    field: &'static str,
) -> Result<ConnectionUri, SecretError> {
    let namespace = stack.namespace().unwrap_or_default();
    let secret_name = format!("{namespace}/{}", reference.name);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let Some(secret) = secrets.get_opt(&reference.name).await? else {
        return Err(SecretError::NotFound {
            secret: secret_name,
            field,
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
            field,
            key: reference.key.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(text: &str) -> ConnectionUri {
        ConnectionUri {
            secret: "monitoring/db".into(),
            uri: text.into(),
        }
    }

    #[test]
    fn the_digest_changes_with_the_database_uri_the_ca_and_the_pooler_uri() {
        let connection = |database: &str, ca: Option<&str>, pooler: Option<&str>| Connection {
            uri: uri(database),
            ca: ca.map(|ca| ca.as_bytes().to_vec()),
            pooler_uri: pooler.map(uri),
        };
        let base = connection(
            "postgres://a:one@db/m",
            None,
            Some("postgres://a:one@pgb/m"),
        );
        let digests = [
            connection(
                "postgres://a:two@db/m",
                None,
                Some("postgres://a:one@pgb/m"),
            ),
            connection(
                "postgres://a:one@db/m",
                Some("PEM"),
                Some("postgres://a:one@pgb/m"),
            ),
            connection(
                "postgres://a:one@db/m",
                None,
                Some("postgres://a:two@pgb/m"),
            ),
            connection("postgres://a:one@db/m", None, None),
        ]
        .map(|other| other.digest());
        for digest in &digests {
            assert_ne!(*digest, base.digest());
        }
    }

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
