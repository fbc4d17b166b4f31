//! What a pod with a client certificate of its own gets besides the wait container (pure): the
//! native sidecar `dind-certs` (`dind-init client-certs`) that makes the key, gets the
//! certificate from the operator with the pod's projected token, and renews it; the in-memory
//! emptyDir for the key and a token volume of our audience only. See `dind_contract::per_pod`.

use dind_contract::{args, client_pod};
use serde_json::{Value, json};

use crate::model::names;

/// Where a pod's `client-certs` sidecar asks for its certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PerPod {
    /// `https://SERVICE.NAMESPACE.svc:443`: the operator's webhook Service.
    pub operator: String,
    /// The CAs of the operator's serving certificate (PEM).
    pub operator_ca: String,
}

/// What an injected container of ours runs as: no privilege, and within Pod Security
/// `restricted` (non-root by number: the dind-init image is FROM scratch).
pub(super) fn restricted_security_context() -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": true,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

/// The injected native sidecar of a per-pod certificate: makes the key, gets the certificate
/// from the operator with the pod's projected token, renews it while the pod lives. No startup
/// probe: the wait container after it waits for the certificate itself (a probe would hold it
/// for the kubelet's probe and relist periods: 3.73 s instead of 2.82 s to the first `docker
/// version`, measured).
/// `daemon`: the DindDaemon, `NAMESPACE/NAME`; `init_image`: its dind-init image.
pub(super) fn sidecar(init_image: &str, daemon: &str, per_pod: &PerPod) -> Value {
    use base64::Engine as _;
    let certs = args::ClientCerts {
        operator: per_pod.operator.clone(),
        operator_ca: base64::engine::general_purpose::STANDARD.encode(&per_pod.operator_ca),
        daemon: daemon.to_string(),
        token: dind_contract::per_pod::TOKEN_DIR.to_string(),
        dir: client_pod::CERTS_DIR.to_string(),
    };
    json!({
        "name": names::CERTS_CONTAINER,
        "image": init_image,
        "restartPolicy": "Always",
        "args": certs.render(),
        "volumeMounts": [
            {"name": names::CERTS_VOLUME, "mountPath": client_pod::CERTS_DIR},
            {"name": names::TOKEN_VOLUME, "mountPath": dind_contract::per_pod::TOKEN_DIR, "readOnly": true},
            {"name": names::NO_TOKEN_VOLUME, "mountPath": names::TOKEN_DIR, "readOnly": true},
        ],
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "32Mi"}},
        "securityContext": restricted_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    })
}

/// How long the projected token lives (the kubelet renews it at 80%): the shortest the
/// apiserver issues.
const TOKEN_SECONDS: i64 = 600;

/// The volumes: the pod's own key and certificate, in memory; a token only the operator accepts.
pub(super) fn volumes() -> [Value; 2] {
    [
        json!({"name": names::CERTS_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}),
        json!({"name": names::TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": {
            "audience": dind_contract::per_pod::AUDIENCE,
            "expirationSeconds": TOKEN_SECONDS,
            "path": dind_contract::per_pod::TOKEN_FILE,
        }}]}}),
    ]
}
