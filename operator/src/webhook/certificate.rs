//! The webhook's TLS certificates: a CA the operator creates (its certificate is the
//! `caBundle` the API server trusts) and a serving certificate it signs, both kept in one
//! Secret of the operator's namespace so that every replica serves the same. Pure: generation,
//! renewal and the Secret's form; reading and writing the Secret happens in
//! [`super::run`].
//!
//! The serving certificate is renewed, signed by the same CA, once two thirds of its life
//! have passed, which leaves `caBundle` unchanged. The CA is renewed (with a new serving
//! certificate) the same way, near the end of its ten years, or when the names to serve
//! change; `caBundle` then changes too, and a request the API server sends in between may
//! be refused by TLS, which `failurePolicy: Ignore` turns into a pod admitted without the
//! sidecar.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// Annotation on the Secret: when the serving certificate expires (RFC 3339).
pub const NOT_AFTER_ANNOTATION: &str = "metricsstack.dev/not-after";
/// Annotation on the Secret: when the CA certificate expires (RFC 3339).
pub const CA_NOT_AFTER_ANNOTATION: &str = "metricsstack.dev/ca-not-after";
/// Annotation on the Secret: the names the serving certificate is for, comma-separated.
pub const HOSTS_ANNOTATION: &str = "metricsstack.dev/hosts";

const CA_CERT_KEY: &str = "ca.crt";
const CA_KEY_KEY: &str = "ca.key";
const CERT_KEY: &str = "tls.crt";
const KEY_KEY: &str = "tls.key";
const CA_COMMON_NAME: &str = "metricsstack-operator webhook CA";

/// How long the certificates are valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetimes {
    /// The CA's.
    pub ca: chrono::Duration,
    /// The serving certificate's.
    pub serving: chrono::Duration,
}

impl Default for Lifetimes {
    /// Ten years for the CA, one for the serving certificate.
    fn default() -> Self {
        Self {
            ca: chrono::Duration::days(3650),
            serving: chrono::Duration::days(365),
        }
    }
}

/// The CA and serving certificate with their keys, as PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookCertificates {
    /// The CA certificate: the MutatingWebhookConfiguration's `caBundle`.
    pub ca_pem: String,
    ca_key_pem: String,
    /// The serving certificate.
    pub cert_pem: String,
    key_pem: String,
    /// When the CA expires.
    pub ca_not_after: DateTime<Utc>,
    /// When the serving certificate expires.
    pub not_after: DateTime<Utc>,
    /// The DNS names and IP addresses the serving certificate is for.
    pub hosts: Vec<String>,
}

impl std::fmt::Debug for WebhookCertificates {
    /// Without the keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookCertificates")
            .field("ca_not_after", &self.ca_not_after)
            .field("not_after", &self.not_after)
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

/// What is due for the certificates at a given time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// Nothing: they are good.
    None,
    /// A new serving certificate from the same CA.
    Serving,
    /// A new CA and serving certificate.
    All,
}

/// A certificate could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    /// rcgen refused (a bad name, a key it cannot use).
    #[error("cannot generate the webhook certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The key or certificate does not load into rustls.
    #[error("cannot load the webhook certificate: {0}")]
    Load(String),
    /// A time outside what certificates can carry.
    #[error("the webhook certificate's validity is out of range")]
    Time,
}

fn offset_time(time: DateTime<Utc>) -> Result<time::OffsetDateTime, CertificateError> {
    time::OffsetDateTime::from_unix_timestamp(time.timestamp()).map_err(|_| CertificateError::Time)
}

/// The CA's parameters: the same every time, so that the stored key signs certificates that
/// chain to the stored CA certificate.
fn ca_params(
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
) -> Result<CertificateParams, CertificateError> {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = offset_time(not_before)?;
    params.not_after = offset_time(not_after)?;
    Ok(params)
}

impl WebhookCertificates {
    /// A new CA and a serving certificate for `hosts` (DNS names or IP addresses), valid
    /// from `now` for `lifetimes`.
    pub fn generate(
        hosts: &[String],
        now: DateTime<Utc>,
        lifetimes: Lifetimes,
    ) -> Result<Self, CertificateError> {
        let ca_key = KeyPair::generate()?;
        let ca_not_after = now + lifetimes.ca;
        let ca_cert = ca_params(now, ca_not_after)?.self_signed(&ca_key)?;
        let ca = Self {
            ca_pem: ca_cert.pem(),
            ca_key_pem: ca_key.serialize_pem(),
            cert_pem: String::new(),
            key_pem: String::new(),
            ca_not_after,
            not_after: now,
            hosts: hosts.to_vec(),
        };
        ca.renew_serving(now, lifetimes)
    }

    /// These certificates with a new serving certificate, signed by the same CA, valid from
    /// `now` for the serving lifetime (never past the CA's end).
    pub fn renew_serving(
        &self,
        now: DateTime<Utc>,
        lifetimes: Lifetimes,
    ) -> Result<Self, CertificateError> {
        let ca_key = KeyPair::from_pem(&self.ca_key_pem)?;
        let issuer = Issuer::new(ca_params(now, self.ca_not_after)?, ca_key);
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(
            DnType::CommonName,
            self.hosts.first().cloned().unwrap_or_default(),
        );
        params.distinguished_name = name;
        params.subject_alt_names = (self.hosts.iter())
            .map(|host| match host.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => host.clone().try_into().map(SanType::DnsName),
            })
            .collect::<Result<_, _>>()?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let not_after = (now + lifetimes.serving).min(self.ca_not_after);
        params.not_before = offset_time(now)?;
        params.not_after = offset_time(not_after)?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after,
            ..self.clone()
        })
    }

    /// What is due at `now` for certificates that should serve `hosts`: everything when
    /// the hosts changed or the CA has passed two thirds of its life, a serving certificate
    /// when it has.
    pub fn renewal(&self, now: DateTime<Utc>, hosts: &[String], lifetimes: Lifetimes) -> Renewal {
        let due =
            |not_after: DateTime<Utc>, lifetime: chrono::Duration| now >= not_after - lifetime / 3;
        if self.hosts != hosts || due(self.ca_not_after, lifetimes.ca) {
            Renewal::All
        } else if due(self.not_after, lifetimes.serving) {
            Renewal::Serving
        } else {
            Renewal::None
        }
    }

    /// When the next renewal is due.
    pub fn next_renewal(&self, lifetimes: Lifetimes) -> DateTime<Utc> {
        (self.not_after - lifetimes.serving / 3).min(self.ca_not_after - lifetimes.ca / 3)
    }

    /// The Secret `name` in `namespace` holding the certificates.
    pub fn to_secret(&self, name: &str, namespace: &str) -> Secret {
        let bytes = |text: &str| ByteString(text.as_bytes().to_vec());
        Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                annotations: Some(BTreeMap::from([
                    (NOT_AFTER_ANNOTATION.to_owned(), self.not_after.to_rfc3339()),
                    (
                        CA_NOT_AFTER_ANNOTATION.to_owned(),
                        self.ca_not_after.to_rfc3339(),
                    ),
                    (HOSTS_ANNOTATION.to_owned(), self.hosts.join(",")),
                ])),
                ..ObjectMeta::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(BTreeMap::from([
                (CA_CERT_KEY.to_owned(), bytes(&self.ca_pem)),
                (CA_KEY_KEY.to_owned(), bytes(&self.ca_key_pem)),
                (CERT_KEY.to_owned(), bytes(&self.cert_pem)),
                (KEY_KEY.to_owned(), bytes(&self.key_pem)),
            ])),
            ..Secret::default()
        }
    }

    /// The certificates a Secret holds, if it holds all of them (else the operator makes
    /// new ones).
    pub fn from_secret(secret: &Secret) -> Option<Self> {
        let data = secret.data.as_ref()?;
        let text = |key: &str| String::from_utf8(data.get(key)?.0.clone()).ok();
        let annotations = secret.metadata.annotations.as_ref()?;
        let time = |key: &str| {
            DateTime::parse_from_rfc3339(annotations.get(key)?)
                .ok()
                .map(|t| t.with_timezone(&Utc))
        };
        let certificates = Self {
            ca_pem: text(CA_CERT_KEY)?,
            ca_key_pem: text(CA_KEY_KEY)?,
            cert_pem: text(CERT_KEY)?,
            key_pem: text(KEY_KEY)?,
            ca_not_after: time(CA_NOT_AFTER_ANNOTATION)?,
            not_after: time(NOT_AFTER_ANNOTATION)?,
            hosts: (annotations.get(HOSTS_ANNOTATION)?.split(','))
                .filter(|h| !h.is_empty())
                .map(str::to_owned)
                .collect(),
        };
        certificates.certified_key().ok().map(|_| certificates)
    }

    /// The serving certificate and key, as rustls serves them.
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>, CertificateError> {
        let load = |e: &dyn std::fmt::Display| CertificateError::Load(e.to_string());
        let chain =
            vec![CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).map_err(|e| load(&e))?];
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| load(&e))?;
        let key = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| load(&e))?;
        Ok(Arc::new(CertifiedKey::new(chain, key)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> Vec<String> {
        vec![
            "metricsstack-operator-webhook.metricsstack.svc".into(),
            "127.0.0.1".into(),
        ]
    }

    fn verify(certificates: &WebhookCertificates, now: DateTime<Utc>) {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(certificates.ca_pem.as_bytes()).expect("CA"))
            .expect("a CA rustls takes");
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .expect("a verifier");
        let cert = CertificateDer::from_pem_slice(certificates.cert_pem.as_bytes()).expect("cert");
        for host in hosts() {
            let name = rustls::pki_types::ServerName::try_from(host.clone()).expect("a name");
            let at = rustls::pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(
                now.timestamp().try_into().expect("after 1970"),
            ));
            rustls::client::danger::ServerCertVerifier::verify_server_cert(
                &*verifier,
                &cert,
                &[],
                &name,
                &[],
                at,
            )
            .unwrap_or_else(|e| panic!("{host}: {e}"));
        }
    }

    #[test]
    fn the_serving_certificate_chains_to_the_ca_for_every_host() {
        let now = Utc::now();
        let certificates =
            WebhookCertificates::generate(&hosts(), now, Lifetimes::default()).expect("made");
        verify(&certificates, now);
        assert!(certificates.certified_key().is_ok());
    }

    #[test]
    fn a_renewed_serving_certificate_chains_to_the_same_ca() {
        let lifetimes = Lifetimes::default();
        let start = Utc::now();
        let certificates = WebhookCertificates::generate(&hosts(), start, lifetimes).expect("made");
        let later = start + chrono::Duration::days(250);
        assert_eq!(
            certificates.renewal(later, &hosts(), lifetimes),
            Renewal::Serving
        );
        let renewed = certificates
            .renew_serving(later, lifetimes)
            .expect("renewed");
        assert_eq!(renewed.ca_pem, certificates.ca_pem, "caBundle unchanged");
        assert_ne!(renewed.cert_pem, certificates.cert_pem);
        verify(&renewed, later + chrono::Duration::days(200));
        assert_eq!(renewed.renewal(later, &hosts(), lifetimes), Renewal::None);
    }

    #[test]
    fn other_hosts_or_an_old_ca_renew_everything() {
        let lifetimes = Lifetimes::default();
        let start = Utc::now();
        let certificates = WebhookCertificates::generate(&hosts(), start, lifetimes).expect("made");
        assert_eq!(
            certificates.renewal(start, &hosts(), lifetimes),
            Renewal::None
        );
        assert_eq!(
            certificates.renewal(start, &["other.svc".into()], lifetimes),
            Renewal::All
        );
        let years = start + chrono::Duration::days(2500);
        assert_eq!(
            certificates.renewal(years, &hosts(), lifetimes),
            Renewal::All
        );
    }

    #[test]
    fn the_secret_round_trips_and_debug_shows_no_key() {
        let certificates =
            WebhookCertificates::generate(&hosts(), Utc::now(), Lifetimes::default())
                .expect("made");
        let secret = certificates.to_secret("webhook-tls", "metricsstack");
        let read = WebhookCertificates::from_secret(&secret).expect("read back");
        assert_eq!(read.ca_pem, certificates.ca_pem);
        assert_eq!(read.hosts, hosts());
        assert_eq!(
            read.not_after.timestamp(),
            certificates.not_after.timestamp()
        );
        assert!(!format!("{read:?}").contains("PRIVATE KEY"));
        let mut broken = secret.clone();
        broken.data.as_mut().expect("data").remove("tls.key");
        assert!(WebhookCertificates::from_secret(&broken).is_none());
    }
}
