//! TLS towards the database, against the test environment's PostgreSQL that accepts only
//! TLS (its certificate names `localhost` alone, signed by a CA of the run): the operator's
//! connection and the components' (collector, query service: the configuration file's
//! `database.tls` through `metricsstack_common`) connect with `VerifyFull` and the right CA,
//! and fail with a short, clear cause for a wrong CA, a host name the certificate does not
//! name (which `VerifyCa` accepts) and `Disable`; the reconciler puts that cause in the
//! stack's `DatabaseReady` condition, with the fix, never the URI or the password.

mod common;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::{Api, Client};
use metricsstack_common::config::{CollectorConfig, DatabaseConfig, TlsConfig};
use metricsstack_common::database::{
    CaCertificate, ConnectFailure, DatabaseTls, PoolSettings, Pooler, SearchPath, Session, TlsMode,
};
use metricsstack_operator::controller::{self, Context};
use metricsstack_operator::crd::MetricsStack;
use metricsstack_operator::database::{self, DatabaseError};
use metricsstack_operator::metrics::Metrics;
use metricsstack_operator::validate::{DATABASE_CA_FILE_NAME, DATABASE_CA_MOUNT};
use metricsstack_testkit::{TestNamespace, TlsPostgres, connection_secret, unique_name};
use serde_json::json;
use sqlx::PgPool;

/// A password in every URI the tests use: the server trusts loopback and never asks for
/// it, so it must appear in no message.
const PASSWORD: &str = "hunter2-tls-test";
const WAIT: Duration = Duration::from_secs(90);

fn schema() -> String {
    unique_name("tls").replace('-', "_")
}

/// The operator's own connection, as the reconciler opens it with the CA it read.
async fn operator_connect(
    url: &str,
    mode: TlsMode,
    ca: Option<Vec<u8>>,
) -> Result<PgPool, DatabaseError> {
    let tls = DatabaseTls {
        mode,
        ca: ca.map(CaCertificate::Pem),
    };
    let pool = database::connect(url, &tls, &PoolSettings::default(), &schema()).await?;
    database::probe(&pool).await?;
    Ok(pool)
}

/// A collector's or query service's connection: its configuration file's `database` section
/// (with the CA as a mounted file) applied to the URI from `DATABASE_URL`, set up as their
/// sessions are.
async fn component_connect(
    url: &str,
    mode: TlsMode,
    ca_file: Option<&std::path::Path>,
) -> Result<PgPool, sqlx::Error> {
    let database = DatabaseConfig {
        tls: Some(TlsConfig {
            mode,
            ca_file: ca_file.map(Into::into),
        }),
        pooler: Pooler::None,
    };
    let session = Session {
        application_name: "metricsstack-collector",
        schema: schema(),
        search_path: SearchPath::StackSchema,
        statement_timeout: None,
        pooler: Pooler::None,
    };
    let options = database.connect_options(url.parse().expect("the URL parses"));
    session.connect(options, &PoolSettings::default()).await
}

/// Whether the pool's connection is encrypted, as the server sees it.
async fn encrypted(pool: &PgPool) -> bool {
    sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(pool)
        .await
        .expect("pg_stat_ssl answers")
}

/// Checks that a message says `expected` and shows neither the password nor the URI.
fn assert_clear(message: &str, expected: &str, url: &str) {
    assert!(
        message.contains(expected),
        "{message:?} should say {expected:?}"
    );
    assert!(
        !message.contains(PASSWORD),
        "{message:?} shows the password"
    );
    assert!(!message.contains(url), "{message:?} shows the URI");
    assert!(!message.contains("postgres://"), "{message:?} shows a URI");
}

#[tokio::test]
async fn verify_full_with_the_right_ca_connects_the_operator_and_the_components_encrypted() {
    let tls = TlsPostgres::from_env();
    let url = tls.url_with("localhost", PASSWORD);
    let operator = operator_connect(&url, TlsMode::VerifyFull, Some(tls.ca_pem()))
        .await
        .expect("the operator connects with VerifyFull and the CA");
    assert!(encrypted(&operator).await);
    let component = component_connect(&url, TlsMode::VerifyFull, Some(&tls.ca))
        .await
        .expect("a component connects with VerifyFull and the mounted CA");
    assert!(encrypted(&component).await);
}

#[tokio::test]
async fn a_wrong_ca_fails_with_unknown_ca() {
    let tls = TlsPostgres::from_env();
    let url = tls.url_with("localhost", PASSWORD);
    let error = operator_connect(&url, TlsMode::VerifyFull, Some(tls.wrong_ca_pem()))
        .await
        .expect_err("the server's certificate is not signed by the unrelated CA");
    assert!(error.is_tls_failure(), "{error:?}");
    let message = error.to_string();
    assert_clear(&message, "certificate verify failed: unknown CA", &url);
    assert_clear(&message, "spec.database.caRef", &url);

    for mode in [TlsMode::VerifyFull, TlsMode::VerifyCa] {
        let error = component_connect(&url, mode, Some(&tls.wrong_ca))
            .await
            .expect_err("the components refuse the certificate too");
        assert_eq!(
            ConnectFailure::of(&error),
            ConnectFailure::UnknownCa,
            "{mode:?}: {error}"
        );
    }
    // Without a CA only the built-in (public) roots are trusted: the test CA is not one.
    let error = component_connect(&url, TlsMode::VerifyFull, None)
        .await
        .expect_err("the test CA is no public root");
    assert_eq!(
        ConnectFailure::of(&error),
        ConnectFailure::UnknownCa,
        "{error}"
    );
}

#[tokio::test]
async fn a_host_name_the_certificate_does_not_name_fails_verify_full_but_passes_verify_ca() {
    let tls = TlsPostgres::from_env();
    let url = tls.url_with("127.0.0.1", PASSWORD);
    let error = operator_connect(&url, TlsMode::VerifyFull, Some(tls.ca_pem()))
        .await
        .expect_err("the certificate names localhost, not 127.0.0.1");
    assert!(error.is_tls_failure(), "{error:?}");
    let message = error.to_string();
    assert_clear(
        &message,
        "certificate verify failed: certificate not valid for name",
        &url,
    );
    assert_clear(&message, "VerifyCa", &url);
    let error = component_connect(&url, TlsMode::VerifyFull, Some(&tls.ca))
        .await
        .expect_err("the components check the host name too");
    assert!(
        matches!(ConnectFailure::of(&error), ConnectFailure::WrongHostName(_)),
        "{error}"
    );

    let operator = operator_connect(&url, TlsMode::VerifyCa, Some(tls.ca_pem()))
        .await
        .expect("VerifyCa checks the CA alone");
    assert!(encrypted(&operator).await);
    let component = component_connect(&url, TlsMode::VerifyCa, Some(&tls.ca))
        .await
        .expect("VerifyCa checks the CA alone, for the components too");
    assert!(encrypted(&component).await);
}

#[tokio::test]
async fn disable_against_a_server_that_requires_tls_fails_clearly() {
    let tls = TlsPostgres::from_env();
    let url = tls.url_with("localhost", PASSWORD);
    let error = operator_connect(&url, TlsMode::Disable, None)
        .await
        .expect_err("the server accepts only TLS");
    assert!(error.is_tls_failure(), "{error:?}");
    let message = error.to_string();
    assert_clear(&message, "the server refuses connections without TLS", &url);
    assert_clear(&message, "spec.database.tlsMode", &url);
    // PostgreSQL's own text names the user and the database: it stays in the log.
    assert!(!message.contains("pg_hba.conf"), "{message}");
    let error = component_connect(&url, TlsMode::Disable, None)
        .await
        .expect_err("the components are refused too");
    assert_eq!(
        ConnectFailure::of(&error),
        ConnectFailure::TlsRequired,
        "{error}"
    );
}

/// The operator, running in this test's process and watching only its namespace.
struct Operator(tokio::task::JoinHandle<()>);

impl Operator {
    fn start(ns: &TestNamespace) -> Self {
        let context = Arc::new(Context::new(
            ns.client.clone(),
            Arc::new(Metrics::default()),
            "test",
        ));
        let namespace = ns.name.clone();
        Self(tokio::spawn(async move {
            controller::run(context, Some(&namespace), || {}).await;
        }))
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn create_uri_secret(client: &Client, namespace: &str, uri: &str) {
    Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &connection_secret("db", uri))
        .await
        .expect("the connection Secret is created");
}

fn ca_secret(pem: Vec<u8>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some("db-ca".into()),
            ..ObjectMeta::default()
        },
        data: Some([("ca.crt".to_owned(), ByteString(pem))].into()),
        ..Secret::default()
    }
}

async fn create_stack(
    client: &Client,
    namespace: &str,
    database: serde_json::Value,
) -> Api<MetricsStack> {
    common::install_crd(client).await;
    let mut database = database;
    database["secretRef"] = json!({ "name": "db" });
    database["schema"] = json!(schema());
    let stack: MetricsStack = serde_json::from_value(json!({
        "apiVersion": "metricsstack.dev/v1alpha1",
        "kind": "MetricsStack",
        "metadata": { "name": "stack", "namespace": namespace },
        "spec": {
            "database": database,
            "collector": { "image": "collector:test" },
            "queryService": { "image": "operator:test" },
            "deletionPolicy": "Retain"
        }
    }))
    .expect("a MetricsStack");
    let api: Api<MetricsStack> = Api::namespaced(client.clone(), namespace);
    api.create(&PostParams::default(), &stack)
        .await
        .expect("the MetricsStack is created");
    api
}

/// Waits until `DatabaseReady` has `status` and `reason`; returns its message.
async fn database_ready(api: &Api<MetricsStack>, status: &str, reason: &str) -> String {
    let wanted = (status.to_owned(), reason.to_owned());
    let condition = move |stack: &MetricsStack| {
        stack
            .status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == "DatabaseReady")
            .cloned()
    };
    let found = tokio::time::timeout(
        WAIT,
        await_condition(api.clone(), "stack", move |s: Option<&MetricsStack>| {
            s.and_then(condition)
                .is_some_and(|c| (c.status, c.reason) == wanted)
        }),
    )
    .await;
    match found {
        Ok(Ok(Some(stack))) => condition(&stack).expect("the condition").message,
        _ => {
            let now = api.get("stack").await.ok().and_then(|s| s.status);
            panic!(
                "timed out waiting until DatabaseReady is {status} ({reason}); status: {now:#?}"
            );
        }
    }
}

async fn patch_spec(api: &Api<MetricsStack>, database: serde_json::Value) {
    api.patch(
        "stack",
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "database": database } })),
    )
    .await
    .expect("the stack is patched");
}

#[tokio::test]
async fn a_stack_verifying_its_database_with_a_ca_secret_is_ready_and_a_wrong_ca_is_reported() {
    let tls = TlsPostgres::from_env();
    let ns = TestNamespace::create().await;
    let client = ns.client.clone();
    let url = tls.url_with("localhost", PASSWORD);
    create_uri_secret(&client, &ns.name, &url).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    secrets
        .create(&PostParams::default(), &ca_secret(tls.ca_pem()))
        .await
        .expect("the CA Secret is created");
    let _operator = Operator::start(&ns);
    let stacks = create_stack(
        &client,
        &ns.name,
        json!({ "tlsMode": "VerifyFull", "caRef": { "secretKeyRef": { "name": "db-ca" } } }),
    )
    .await;
    let message = database_ready(&stacks, "True", "AsExpected").await;
    assert!(message.starts_with("connected"), "{message}");

    // The components get the mode and the mounted CA.
    let config: CollectorConfig = {
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
        let config_map = config_maps
            .get("stack-collector")
            .await
            .expect("the ConfigMap");
        serde_yaml::from_str(&config_map.data.expect("data")["collector.yaml"]).expect("YAML")
    };
    let ca_file = format!("{DATABASE_CA_MOUNT}/{DATABASE_CA_FILE_NAME}");
    assert_eq!(
        config.database.tls,
        Some(TlsConfig {
            mode: TlsMode::VerifyFull,
            ca_file: Some(ca_file.into()),
        })
    );
    let daemon_sets: Api<DaemonSet> = Api::namespaced(client.clone(), &ns.name);
    let pod = (daemon_sets
        .get("stack-collector")
        .await
        .expect("the DaemonSet")
        .spec)
        .and_then(|s| s.template.spec)
        .expect("a pod spec");
    let volume = (pod.volumes.iter().flatten())
        .find(|v| v.name == "database-ca")
        .and_then(|v| v.secret.clone())
        .expect("the CA Secret's volume");
    assert_eq!(volume.secret_name.as_deref(), Some("db-ca"));

    // The CA replaced by an unrelated one: the operator reconnects and says why it cannot.
    secrets
        .replace(
            "db-ca",
            &PostParams::default(),
            &ca_secret(tls.wrong_ca_pem()),
        )
        .await
        .expect("the CA Secret is replaced");
    let message = database_ready(&stacks, "False", "TLSFailed").await;
    assert_clear(&message, "certificate verify failed: unknown CA", &url);
    assert_clear(&message, "spec.database.caRef", &url);
}

#[tokio::test]
async fn a_missing_ca_config_map_or_key_is_reported_and_disable_against_a_tls_only_server_fails() {
    let tls = TlsPostgres::from_env();
    let ns = TestNamespace::create().await;
    let client = ns.client.clone();
    let url = tls.url_with("localhost", PASSWORD);
    create_uri_secret(&client, &ns.name, &url).await;
    let _operator = Operator::start(&ns);
    let stacks = create_stack(
        &client,
        &ns.name,
        json!({ "tlsMode": "VerifyFull", "caRef": { "configMapKeyRef": { "name": "db-ca", "key": "root.pem" } } }),
    )
    .await;
    let message = database_ready(&stacks, "False", "CANotFound").await;
    assert_clear(&message, &format!("ConfigMap {}/db-ca", ns.name), &url);
    assert_clear(&message, "spec.database.caRef.configMapKeyRef", &url);
    assert_clear(&message, "\"root.pem\"", &url);

    // The ConfigMap appears with the CA under another key than the stack names.
    let pem = String::from_utf8(tls.ca_pem()).expect("PEM is text");
    let config_map = ConfigMap {
        metadata: ObjectMeta {
            name: Some("db-ca".into()),
            ..ObjectMeta::default()
        },
        data: Some([("ca.crt".to_owned(), pem)].into()),
        ..ConfigMap::default()
    };
    Api::<ConfigMap>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &config_map)
        .await
        .expect("the CA ConfigMap is created");
    let message = database_ready(&stacks, "False", "CAInvalid").await;
    assert_clear(
        &message,
        "no PEM certificate under the key \"root.pem\"",
        &url,
    );
    assert_clear(&message, "spec.database.caRef.configMapKeyRef.key", &url);

    patch_spec(
        &stacks,
        json!({ "caRef": { "configMapKeyRef": { "name": "db-ca", "key": "ca.crt" } } }),
    )
    .await;
    database_ready(&stacks, "True", "AsExpected").await;

    patch_spec(&stacks, json!({ "tlsMode": "Disable", "caRef": null })).await;
    let message = database_ready(&stacks, "False", "TLSFailed").await;
    assert_clear(&message, "the server refuses connections without TLS", &url);
    assert_clear(&message, "spec.database.tlsMode", &url);
}

#[tokio::test]
async fn a_host_name_outside_the_certificate_is_reported_under_verify_full_and_accepted_by_verify_ca()
 {
    let tls = TlsPostgres::from_env();
    let ns = TestNamespace::create().await;
    let client = ns.client.clone();
    let url = tls.url_with("127.0.0.1", PASSWORD);
    create_uri_secret(&client, &ns.name, &url).await;
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &ca_secret(tls.ca_pem()))
        .await
        .expect("the CA Secret is created");
    let _operator = Operator::start(&ns);
    let ca_ref = json!({ "secretKeyRef": { "name": "db-ca" } });
    let stacks = create_stack(
        &client,
        &ns.name,
        json!({ "tlsMode": "VerifyFull", "caRef": ca_ref }),
    )
    .await;
    let message = database_ready(&stacks, "False", "TLSFailed").await;
    assert_clear(
        &message,
        "certificate not valid for name \"127.0.0.1\"",
        &url,
    );
    assert_clear(&message, "VerifyCa", &url);

    patch_spec(&stacks, json!({ "tlsMode": "VerifyCa" })).await;
    database_ready(&stacks, "True", "AsExpected").await;
}
