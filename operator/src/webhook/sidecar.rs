//! What a pod labelled `dind.dev/sidecar: NAME` gets, as a JSON Patch on the raw pod (pure):
//! the daemon of `Sidecar`-mode DindDaemon NAME as a native sidecar (`objects::sidecar`), and in
//! each of its containers what reaches it (`Sidecar::env`, `Sidecar::mounts`):
//! `DOCKER_HOST=unix:///dind/sock/docker.sock` and the socket's volume, or with
//! `spec.sidecar.tcp` `tcp://localhost:PORT` and, with TLS, the client certificates.
//!
//! The pod's workspace is the daemon's too: every writable volume the pod's containers mount
//! (emptyDir, PVC, hostPath, generic ephemeral, CSI, NFS) is mounted at the same path in the
//! daemon, so `docker run -v "$PWD":/src` and compose bind mounts see the job's files (the
//! daemon resolves bind-mount paths in its own filesystem).

use serde_json::{Value, json};

use super::inject::{Plan, Refusal, opt_outs, set};
use crate::model::names;
use crate::objects::Sidecar;

/// Tolerations Kubernetes adds to every pod itself (the DefaultTolerationSeconds admission
/// plugin: how long a pod stays on a node that stopped answering): always allowed.
const KUBERNETES_OWN_TOLERATIONS: [&str; 2] = ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"];

/// Volume kinds that hold a workspace (writable, shared within the pod).
const WORKSPACE_KINDS: &[&str] = &["emptyDir", "persistentVolumeClaim", "hostPath", "ephemeral", "csi", "nfs"];

/// Paths the daemon container uses itself (and their subtrees), or system directories that a
/// workspace mount would hide in the daemon image.
fn reserved(path: &str) -> bool {
    let path = path.trim_end_matches('/');
    let under = |root: &str| path == root || path.starts_with(&format!("{root}/"));
    ["/dind", "/var/lib/docker", "/proc", "/sys", "/dev"].iter().any(|r| under(r))
        || ["", "/etc", "/usr", "/bin", "/sbin", "/lib", "/run", "/var", "/var/run", "/tmp"].contains(&path)
}

/// Hosts a container's `DOCKER_HOST` may name for a daemon in its own pod: the loopback, and
/// `docker` (GitLab Runner's service alias, which the webhook maps to the loopback).
const IN_POD_HOSTS: &[&str] = &["localhost", "127.0.0.1", "[::1]", "docker"];

/// Where a container that keeps its own Docker environment expects its pod's daemon: the
/// conventions of CI systems whose jobs ran a dind service or sidecar of their own.
/// - GitLab Runner: `DOCKER_HOST=tcp://docker:2376`, `DOCKER_CERT_PATH=/certs/client` (an
///   emptyDir the dind service filled);
/// - Tekton's dind sidecar example: `tcp://localhost:2376`, certificates in `/certs/client`;
/// - actions-runner-controller's dind mode: `unix:///var/run/docker.sock`, `/var/run` an
///   emptyDir shared with the dind container.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Own {
    /// TCP to the pod itself; `docker`: by GitLab's alias; the certificate directory if any.
    Tcp { port: u16, docker_alias: bool, cert_path: Option<String> },
    /// A unix socket `DIR/docker.sock`.
    Socket { dir: String },
    /// Another daemon (or a socket of another name): left alone.
    Elsewhere,
}

fn own_environment(c: &Value) -> Own {
    let var = |name: &str| {
        c["env"].as_array().into_iter().flatten().find(|e| e["name"] == name).and_then(|e| e["value"].as_str()).map(str::to_string)
    };
    let Some(host) = var("DOCKER_HOST") else { return Own::Elsewhere };
    if let Some(path) = host.strip_prefix("unix://") {
        return match path.rsplit_once('/') {
            Some((dir, "docker.sock")) if dir.starts_with('/') && dir.len() > 1 => Own::Socket { dir: dir.to_string() },
            _ => Own::Elsewhere,
        };
    }
    let Some(authority) = host.strip_prefix("tcp://").map(|a| a.trim_end_matches('/')) else { return Own::Elsewhere };
    let Some((name, port)) = authority.rsplit_once(':') else { return Own::Elsewhere };
    match (IN_POD_HOSTS.contains(&name), port.parse::<u16>()) {
        (true, Ok(port)) => Own::Tcp { port, docker_alias: name == "docker", cert_path: var("DOCKER_CERT_PATH") },
        _ => Own::Elsewhere,
    }
}

/// Points the mount of `c` at `path` to our `volume` (`sub_path`): replaces a mount of an
/// emptyDir there (the directory the job's own dind used to fill), adds one where there is
/// none; a mount of anything else there is the job's own and stays.
fn provide_at(c: &mut Value, path: &str, volume: &str, sub_path: Option<&str>, read_only: bool, emptydirs: &[String]) {
    let mut want = json!({"name": volume, "mountPath": path});
    if let Some(sub) = sub_path {
        want["subPath"] = json!(sub);
    }
    if read_only {
        want["readOnly"] = json!(true);
    }
    if !c["volumeMounts"].is_array() {
        c["volumeMounts"] = json!([]);
    }
    let Some(mounts) = c["volumeMounts"].as_array_mut() else { return };
    match mounts.iter_mut().find(|m| m["mountPath"].as_str().map(|p| p.trim_end_matches('/')) == Some(path)) {
        None => mounts.push(want),
        Some(m) if m["name"] == volume => {}
        Some(m) if m["name"].as_str().is_some_and(|n| emptydirs.iter().any(|e| e == n)) => *m = want,
        Some(_) => {}
    }
}

/// Rewires a container that keeps its own Docker environment to this pod's daemon (see
/// [`Own`]); `Some(true)`: it needs the `docker` alias; `None`: its daemon is elsewhere (left
/// alone). Refuses what cannot work, naming it.
fn rewire_own(c: &mut Value, daemon: &str, parts: &Sidecar, emptydirs: &[String]) -> Result<Option<bool>, Refusal> {
    let cname = c["name"].as_str().unwrap_or_default().to_string();
    let ours = parts.env.iter().find(|e| e.name == "DOCKER_HOST").and_then(|e| e.value.clone()).unwrap_or_default();
    let tls = parts.env.iter().any(|e| e.name == "DOCKER_CERT_PATH");
    match own_environment(c) {
        Own::Elsewhere => Ok(None),
        Own::Socket { dir } => {
            provide_at(c, &dir, names::SIDECAR_SOCKET_VOLUME, None, false, emptydirs);
            Ok(Some(false))
        }
        Own::Tcp { port, docker_alias, cert_path } => {
            let Some(our_port) = ours.strip_prefix("tcp://localhost:").and_then(|p| p.parse::<u16>().ok()) else {
                return Err(Refusal(format!(
                    "container {cname:?} sets DOCKER_HOST to TCP in its own pod, but DindDaemon {daemon:?} listens on its unix socket only: \
                     set spec.sidecar.tcp: true on it (for GitLab Runner's and Tekton's conventions), or remove the container's DOCKER_HOST"
                )));
            };
            if port != our_port {
                return Err(Refusal(format!(
                    "container {cname:?} sets DOCKER_HOST to port {port}, but DindDaemon {daemon:?} listens on port {our_port} (spec.port)"
                )));
            }
            if let (true, Some(path)) = (tls, cert_path.as_deref().filter(|p| p.starts_with('/'))) {
                provide_at(
                    c,
                    path.trim_end_matches('/'),
                    names::SIDECAR_CERTS_VOLUME,
                    Some(dind_contract::generated_tls::CLIENT),
                    true,
                    emptydirs,
                );
            }
            Ok(Some(docker_alias))
        }
    }
}

/// The patch for `pod` (DindDaemon `daemon`, whose sidecar is `parts`). Empty when the pod
/// already has everything (re-invocation, re-submission).
pub fn plan(pod: &Value, daemon: &str, parts: &Sidecar) -> Result<Plan, Refusal> {
    let injected_before = pod["metadata"]["annotations"][names::SIDECAR_ANNOTATION].as_str();
    if injected_before.is_some_and(|d| d != daemon) {
        return Err(Refusal(format!("the pod already has the sidecar of DindDaemon {:?}", injected_before.unwrap_or_default())));
    }
    // In a hostNetwork pod dockerd would run in the node's network namespace: its bridge,
    // iptables rules and published ports on the node itself (seen before: injected anyway).
    if pod["spec"]["hostNetwork"].as_bool() == Some(true) {
        return Err(Refusal(format!(
            "the pod sets hostNetwork: true, so the sidecar of DindDaemon {daemon:?} would run dockerd in the node's network namespace (its bridge, iptables rules and published ports on the node); run the job without hostNetwork"
        )));
    }
    let ours = [names::SIDECAR_INSTALL, names::SIDECAR_DAEMON];
    let mut new = pod.clone();
    let mut inits = new["spec"]["initContainers"].as_array().cloned().unwrap_or_default();
    let mut containers = new["spec"]["containers"].as_array().cloned().unwrap_or_default();
    if injected_before.is_none() {
        // A container named like ours is someone else's: refuse rather than overwrite it.
        for c in inits.iter().chain(containers.iter()) {
            let name = c["name"].as_str().unwrap_or_default();
            if ours.contains(&name) {
                return Err(Refusal(format!(
                    "the pod already has a container named {name:?}; the sidecar webhook adds its own of that name: rename yours"
                )));
            }
        }
        let mut volumes = new["spec"]["volumes"].as_array().cloned().unwrap_or_default();
        for v in &parts.volumes {
            if volumes.iter().any(|have| have["name"].as_str() == Some(v.name.as_str())) {
                return Err(Refusal(format!(
                    "the pod already has a volume named {:?}; the sidecar webhook adds its own: rename yours",
                    v.name
                )));
            }
            volumes.push(serde_json::to_value(v).map_err(|e| Refusal(e.to_string()))?);
        }
        new["spec"]["volumes"] = Value::Array(volumes);
        let added: Vec<Value> =
            parts.init_containers.iter().map(serde_json::to_value).collect::<Result<_, _>>().map_err(|e| Refusal(e.to_string()))?;
        inits.splice(0..0, added);
        annotate(&mut new, daemon);
    }

    let opt_out = opt_outs(pod);
    let volume_kinds: Vec<(String, bool)> = new["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| (v["name"].as_str().unwrap_or_default().to_string(), WORKSPACE_KINDS.iter().any(|k| v.get(*k).is_some())))
        .collect();
    let is_workspace = |volume: &str| volume_kinds.iter().any(|(n, w)| n == volume && *w) && !volume.starts_with("dind-");
    let mut injected = Vec::new();
    let mut workspace: Vec<Value> = Vec::new();
    let mut docker_alias = false;
    let emptydirs: Vec<String> = new["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v.get("emptyDir").is_some())
        .filter_map(|v| v["name"].as_str().map(str::to_string))
        .filter(|n| !parts.volumes.iter().any(|ours| &ours.name == n))
        .collect();
    let mut inject = |c: &mut Value, label: String| -> Result<(), Refusal> {
        let cname = c["name"].as_str().unwrap_or_default().to_string();
        if ours.contains(&cname.as_str()) || opt_out.contains(&cname) {
            return Ok(());
        }
        let obj = c.as_object_mut().ok_or_else(|| Refusal(format!("container {cname:?} is not an object")))?;
        let env = obj.entry("env").or_insert_with(|| json!([]));
        let env = env.as_array_mut().ok_or_else(|| Refusal(format!("container {cname:?}: env is not a list")))?;
        // A container with a DOCKER_HOST of its own keeps its whole Docker environment; one
        // that names a daemon in its own pod (a CI system's convention) gets the daemon there.
        if !env.iter().any(|e| e["name"] == "DOCKER_HOST") {
            for var in &parts.env {
                env.retain(|e| e["name"].as_str() != Some(var.name.as_str()));
                env.push(serde_json::to_value(var).map_err(|e| Refusal(e.to_string()))?);
            }
            injected.push(label);
        } else if let Some(alias) = rewire_own(c, daemon, parts, &emptydirs)? {
            docker_alias |= alias;
            injected.push(format!("{label} (its own DOCKER_HOST)"));
        }
        // After the rewiring: a directory the job's own dind filled is not a workspace.
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let (volume, path) = (m["name"].as_str().unwrap_or_default(), m["mountPath"].as_str().unwrap_or_default());
            if is_workspace(volume) && !reserved(path) && !workspace.iter().any(|w| w["mountPath"] == path) {
                let mut w = json!({"name": volume, "mountPath": path});
                for key in ["subPath", "subPathExpr", "readOnly"] {
                    if let Some(v) = m.get(key) {
                        w[key] = v.clone();
                    }
                }
                workspace.push(w);
            }
        }
        let obj = c.as_object_mut().ok_or_else(|| Refusal(format!("container {cname:?} is not an object")))?;
        let mounts = obj.entry("volumeMounts").or_insert_with(|| json!([]));
        let mounts = mounts.as_array_mut().ok_or_else(|| Refusal(format!("container {cname:?}: volumeMounts is not a list")))?;
        for want in &parts.mounts {
            if mounts.iter().any(|m| m["name"] == want.name.as_str() && m["mountPath"] == want.mount_path.as_str()) {
                continue;
            }
            let path = want.mount_path.as_str();
            if let Some(m) = mounts.iter().find(|m| m["mountPath"].as_str().map(|p| p.trim_end_matches('/')) == Some(path)) {
                return Err(Refusal(format!(
                    "container {cname:?} already mounts {:?} at {path}, where the daemon's {} go",
                    m["name"],
                    if want.name == names::SIDECAR_SOCKET_VOLUME { "socket" } else { "client certificates" }
                )));
            }
            mounts.push(serde_json::to_value(want).map_err(|e| Refusal(e.to_string()))?);
        }
        Ok(())
    };
    for c in &mut inits {
        let label = format!("initContainers/{}", c["name"].as_str().unwrap_or_default());
        inject(c, label)?;
    }
    for c in &mut containers {
        let label = c["name"].as_str().unwrap_or_default().to_string();
        inject(c, label)?;
    }
    // The daemon sees the workspace at the same paths.
    if let Some(daemon_c) = inits.iter_mut().find(|c| c["name"] == names::SIDECAR_DAEMON) {
        let mounts = daemon_c["volumeMounts"].as_array_mut().ok_or_else(|| Refusal("the sidecar has no volumeMounts".into()))?;
        for w in workspace {
            if !mounts.iter().any(|m| m["mountPath"] == w["mountPath"]) {
                mounts.push(w);
            }
        }
    }
    new["spec"]["initContainers"] = Value::Array(inits);
    new["spec"]["containers"] = Value::Array(containers);
    // GitLab Runner's `docker` host: the service alias it gave the dind service, now the pod.
    let aliased = new["spec"]["hostAliases"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|a| a["hostnames"].as_array().into_iter().flatten().any(|h| h == "docker"));
    if docker_alias && !aliased {
        let aliases = &mut new["spec"]["hostAliases"];
        if !aliases.is_array() {
            *aliases = json!([]);
        }
        if let Some(list) = aliases.as_array_mut() {
            list.push(json!({"ip": "127.0.0.1", "hostnames": ["docker"]}));
        }
    }
    // The socket's group is every container's (a supplemental group of the pod), so a job of
    // any uid may use it (before: root and the docker group only; a `runAsUser: 1001`
    // container got "permission denied"). The socket lives in the pod's own emptyDir.
    if !new["spec"]["securityContext"].is_object() {
        new["spec"]["securityContext"] = json!({});
    }
    let gid = json!(dind_contract::client_pod::SOCKET_GID);
    let groups = &mut new["spec"]["securityContext"]["supplementalGroups"];
    match groups.as_array_mut() {
        Some(list) if list.contains(&gid) => {}
        Some(list) => list.push(gid),
        None => *groups = json!([gid]),
    }
    // The platform's placement is the pod's (its daemon runs on the node the pod does): laid
    // over the pod's nodeSelector; a pod that asks for another value of one of its labels is
    // refused (before: sidecar pods were placed wherever the job asked, control planes included).
    for (key, value) in &parts.placement {
        match new["spec"]["nodeSelector"][key.as_str()].as_str() {
            Some(have) if have != value => {
                return Err(Refusal(format!(
                    "the pod's nodeSelector asks for {key}={have}, but daemons run only on nodes labelled {key}={value} (the platform's placement)"
                )));
            }
            Some(_) => {}
            None => set(&mut new["spec"], "nodeSelector", key, value),
        }
    }
    // The platform's allowed toleration keys are the pod's too: a pod that tolerates another
    // taint (or every taint) would take its privileged daemon onto nodes kept from daemons.
    if let Some(allowed) = &parts.toleration_keys {
        for t in pod["spec"]["tolerations"].as_array().into_iter().flatten() {
            let key = t["key"].as_str().unwrap_or_default();
            if key.is_empty() && t["operator"] == "Exists" {
                return Err(Refusal(format!(
                    "the pod tolerates every taint (operator Exists without a key), but daemons may tolerate only taints {} (the platform's placement.allowedTolerationKeys)",
                    allowed.join(", ")
                )));
            }
            if !key.is_empty() && !allowed.iter().any(|a| a == key) && !KUBERNETES_OWN_TOLERATIONS.contains(&key) {
                return Err(Refusal(format!(
                    "the pod tolerates taint {key:?}, but daemons may tolerate only taints {} (the platform's placement.allowedTolerationKeys)",
                    if allowed.is_empty() { "of no key".to_string() } else { allowed.join(", ") }
                )));
            }
        }
    }
    // The daemon's runtime class is the pod's (a pod-level field): set it, or refuse a pod that
    // asks for another (before: dropped, so a daemon meant for sysbox ran privileged under runc).
    if let Some(wanted) = &parts.runtime_class_name {
        match pod["spec"]["runtimeClassName"].as_str() {
            None => new["spec"]["runtimeClassName"] = json!(wanted),
            Some(have) if have == wanted => {}
            Some(have) => {
                return Err(Refusal(format!(
                    "the pod asks for runtimeClassName {have:?}, but DindDaemon {daemon:?}'s daemon runs under {wanted:?} (spec.security.runtimeClassName), which is the whole pod's: drop the pod's, or use a DindDaemon of that runtime class"
                )));
            }
        }
    }

    let mut patch = Vec::new();
    for (parent, key) in [
        ("metadata", "annotations"),
        ("spec", "volumes"),
        ("spec", "initContainers"),
        ("spec", "containers"),
        ("spec", "hostAliases"),
        ("spec", "runtimeClassName"),
        ("spec", "securityContext"),
        ("spec", "nodeSelector"),
    ] {
        if pod[parent].get(key) != new[parent].get(key) {
            patch.push(json!({"op": "add", "path": format!("/{parent}/{key}"), "value": new[parent][key]}));
        }
    }
    let docker_host = parts.env.iter().find(|e| e.name == "DOCKER_HOST").and_then(|e| e.value.clone()).unwrap_or_default();
    Ok(Plan { patch, docker_host, injected })
}

fn annotate(pod: &mut Value, daemon: &str) {
    if !pod["metadata"]["annotations"].is_object() {
        pod["metadata"]["annotations"] = json!({});
    }
    pod["metadata"]["annotations"][names::SIDECAR_ANNOTATION] = json!(daemon);
}

#[cfg(test)]
#[path = "sidecar_tests.rs"]
mod tests;
