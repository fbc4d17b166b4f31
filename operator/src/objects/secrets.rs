//! The certificate Secrets (CA, server, client) and reading pairs back from them. The file
//! names are the contract's: the server Secret is mounted for dind-init, the client Secret is a
//! DOCKER_CERT_PATH.

use dind_contract::{client_tls, server_tls};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::model::tls;

/// The CA Secret's key entry (never mounted anywhere).
pub const CA_KEY: &str = "ca.key";

pub(super) fn secret<const N: usize>(metadata: ObjectMeta, type_: Option<&str>, data: [(&str, &String); N]) -> Secret {
    Secret {
        metadata,
        type_: Some(type_.unwrap_or("Opaque").to_string()),
        data: Some(data.into_iter().map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec()))).collect()),
        ..Default::default()
    }
}

/// The certificate pair stored under `cert_key`/`key_key` of a Secret, if both are there.
pub fn pair_from_secret(secret: &Secret, cert_key: &str, key_key: &str) -> Option<tls::Pair> {
    let data = secret.data.as_ref()?;
    let text = |k: &str| data.get(k).and_then(|b| String::from_utf8(b.0.clone()).ok());
    Some(tls::Pair { cert_pem: text(cert_key)?, key_pem: text(key_key)? })
}

/// The pairs kept in a DindDaemon's CA, server and client Secrets (the inverse of `build`).
pub fn pairs_from_secrets(
    ca: Option<&Secret>,
    server: Option<&Secret>,
    client: Option<&Secret>,
) -> (Option<tls::Pair>, Option<tls::Pair>, Option<tls::Pair>) {
    (
        ca.and_then(|s| pair_from_secret(s, server_tls::CA, CA_KEY)),
        server.and_then(|s| pair_from_secret(s, server_tls::CERT, server_tls::KEY)),
        client.and_then(|s| pair_from_secret(s, client_tls::CERT, client_tls::KEY)),
    )
}
