//! The database step of a reconcile: read the connection URI from the referenced Secret,
//! connect with the operator's pool settings (one pool per stack, kept across reconciles),
//! and converge the schema.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, ResourceExt};
use sqlx::PgPool;

use super::conditions::Outcome;
use crate::crd::{ConditionReason, ConditionType, DatabaseStatus, MetricsStack};
use crate::database::{self, DatabaseError};
use crate::validate::ValidSpec;

/// Database pools, one per stack.
#[derive(Default)]
pub struct Pools {
    pools: Mutex<HashMap<ObjectRef<MetricsStack>, (u64, PgPool)>>,
}

impl Pools {
    /// The stack's pool, opened anew when the URI or the pool settings changed.
    async fn get(
        &self,
        stack: &MetricsStack,
        uri: &str,
        valid: &ValidSpec,
    ) -> Result<PgPool, DatabaseError> {
        let key = ObjectRef::from_obj(stack);
        let mut hasher = DefaultHasher::new();
        let database = &stack.spec.database;
        (
            uri,
            database.tls_mode,
            &database.schema,
            &valid.operator_pool,
        )
            .hash(&mut hasher);
        let fingerprint = hasher.finish();
        let cached = self.lock().get(&key).cloned();
        if let Some((existing, pool)) = cached
            && existing == fingerprint
        {
            return Ok(pool);
        }
        let pool = database::connect(
            uri,
            stack.spec.database.tls_mode,
            &valid.operator_pool,
            &stack.spec.database.schema,
        )
        .await?;
        let replaced = self.lock().insert(key, (fingerprint, pool.clone()));
        if let Some((_, old)) = replaced {
            old.close().await;
        }
        Ok(pool)
    }

    /// Closes and forgets the stack's pool.
    pub async fn remove(&self, stack: &MetricsStack) {
        let removed = self.lock().remove(&ObjectRef::from_obj(stack));
        if let Some((_, pool)) = removed {
            pool.close().await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<MetricsStack>, (u64, PgPool)>> {
        self.pools.lock().expect("the pool map is not poisoned")
    }
}

/// What the database step found: two conditions, the database status, and whether the
/// failure (if any) is transient and worth a retry with backoff.
pub struct DatabaseOutcome {
    /// `DatabaseReady`.
    pub ready: Outcome,
    /// `PoliciesApplied`.
    pub policies: Outcome,
    /// For `status.database`.
    pub status: Option<DatabaseStatus>,
    /// A transient error to retry with backoff.
    pub retry: Option<DatabaseError>,
}

impl DatabaseOutcome {
    fn not_ready(reason: ConditionReason, message: String, retry: Option<DatabaseError>) -> Self {
        Self {
            ready: Outcome::failed(ConditionType::DatabaseReady, reason, message),
            policies: Outcome::failed(
                ConditionType::PoliciesApplied,
                ConditionReason::Waiting,
                "waiting for the database",
            ),
            status: None,
            retry,
        }
    }
}

/// Reads the Secret, connects and converges the database.
pub async fn reconcile_database(
    client: &Client,
    pools: &Pools,
    stack: &MetricsStack,
    valid: &ValidSpec,
) -> Result<DatabaseOutcome, kube::Error> {
    let namespace = stack.namespace().unwrap_or_default();
    let reference = &stack.spec.database.secret_ref;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let Some(secret) = secrets.get_opt(&reference.name).await? else {
        return Ok(DatabaseOutcome::not_ready(
            ConditionReason::SecretNotFound,
            format!(
                "Secret {namespace}/{} not found: create it with the key {:?} holding the \
                 connection URI (postgres://user:password@host:port/database)",
                reference.name, reference.key
            ),
            None,
        ));
    };
    let value = secret
        .data
        .as_ref()
        .and_then(|data| data.get(&reference.key))
        .map(|bytes| String::from_utf8(bytes.0.clone()));
    let uri = match value {
        Some(Ok(uri)) => uri,
        Some(Err(_)) | None => {
            return Ok(DatabaseOutcome::not_ready(
                ConditionReason::SecretInvalid,
                format!(
                    "Secret {namespace}/{} has no UTF-8 key {:?}: set database.secretRef.key to \
                     the key holding the connection URI",
                    reference.name, reference.key
                ),
                None,
            ));
        }
    };
    let pool = match pools.get(stack, uri.trim(), valid).await {
        Ok(pool) => pool,
        Err(error @ DatabaseError::InvalidUri) => {
            return Ok(DatabaseOutcome::not_ready(
                ConditionReason::SecretInvalid,
                format!("Secret {namespace}/{}: {error}", reference.name),
                None,
            ));
        }
        Err(error) => {
            return Ok(DatabaseOutcome::not_ready(
                ConditionReason::DatabaseUnreachable,
                error.to_string(),
                Some(error),
            ));
        }
    };
    let info = match database::probe(&pool).await {
        Ok(info) => info,
        Err(error) => {
            return Ok(DatabaseOutcome::not_ready(
                ConditionReason::DatabaseUnreachable,
                error.to_string(),
                Some(error),
            ));
        }
    };
    let ready = Outcome::ok(
        ConditionType::DatabaseReady,
        match &info.timescaledb_version {
            Some(version) => format!("connected; TimescaleDB {version}"),
            None => "connected; PostgreSQL without TimescaleDB".to_owned(),
        },
    );
    Ok(match database::migrate(&pool).await {
        Ok(applied) => DatabaseOutcome {
            ready,
            policies: Outcome::ok(
                ConditionType::PoliciesApplied,
                format!("schema at migration {applied}"),
            ),
            status: Some(DatabaseStatus {
                timescaledb_version: info.timescaledb_version,
                ..DatabaseStatus::default()
            }),
            retry: None,
        },
        Err(error) => DatabaseOutcome {
            ready,
            policies: Outcome::failed(
                ConditionType::PoliciesApplied,
                ConditionReason::DatabaseError,
                error.to_string(),
            ),
            status: None,
            retry: Some(error),
        },
    })
}
