//! What a labelled pod gets, as a JSON Patch computed on the raw pod JSON (pure).
//!
//! The pod is never decoded into k8s-openapi types: a field this operator's k8s-openapi does
//! not know (a newer Kubernetes, a vendor extension) would be dropped by a round trip. The plan
//! edits a copy of the raw JSON and emits `add` operations for the few subtrees it touched.
//!
//! # Environment and context: why both
//! Docker clients disagree on where they look for the daemon:
//! - docker-py, Testcontainers (Go, Java, Python) and most SDKs read only `DOCKER_HOST`,
//!   `DOCKER_TLS_VERIFY` and `DOCKER_CERT_PATH`;
//! - the Docker CLI (and compose and buildx, its plugins) reads the same variables, and when
//!   `DOCKER_HOST` is set it uses them and ignores every context, `DOCKER_CONTEXT` included
//!   (cli/command/cli.go `resolveContextName`: `DOCKER_HOST` is checked before `DOCKER_CONTEXT`);
//! - `docker buildx create` (what docker/setup-buildx-action runs) refuses an endpoint whose
//!   TLS came from the environment: "could not create a builder instance with TLS data loaded
//!   from environment" (buildx builder/builder.go); it accepts a Docker context.
//!
//! So there is no single setting that serves all of them. The pod gets both:
//! - a Docker configuration (`DOCKER_CONFIG`, a writable emptyDir) holding the context `dind`
//!   (same replica, same certificates) as its current context, written by the init container;
//! - in mode `env` (the default) also `DOCKER_HOST`/`DOCKER_TLS_VERIFY`/`DOCKER_CERT_PATH`:
//!   SDKs, `docker build`, `docker buildx build`, compose and `docker run` work; `docker
//!   buildx create` needs the context as its endpoint (`docker buildx create --driver
//!   docker-container dind`, setup-buildx-action's `endpoint: dind`);
//! - in mode `context` (annotation `dind.dev/docker-env: context`) no `DOCKER_*` variable but
//!   `DOCKER_CONFIG`: every CLI command, `docker buildx create` without arguments included, and
//!   compose work; SDKs that read only the environment do not.
//!
//! # The job's own configuration
//! Registry credentials a container brings in a volume (`~/.docker/config.json` from a
//! `kubernetes.io/dockerconfigjson` Secret, or its own `DOCKER_CONFIG`) are merged into the
//! pod's configuration by the init container, so `docker login` state, `docker push` and a
//! private `FROM` keep working after injection (see [`super::job_config`]).

use std::collections::BTreeSet;

use dind_contract::{args, client_pod};
use serde_json::{Map, Value, json};

use super::job_config::{self, Own, Source};
use super::per_pod;
pub use super::per_pod::PerPod;
use crate::crd::DindDaemon;
use crate::model::names::{self, Names};
use crate::model::sticky;

/// What the webhook knows about the DindDaemon a pod asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub namespace: String,
    pub tls: bool,
    pub port: i32,
    /// Every replica's pod name, in ordinal order.
    pub replicas: Vec<String>,
    /// The replicas that answer (status.endpoints[].ready).
    pub ready: Vec<String>,
    pub client_secret: String,
    /// The dind-init image (the daemon's own `spec.initImage`, else the operator's default).
    pub init_image: String,
    /// Set: the pod gets a client certificate of its own from the operator (a grant, or
    /// `tls.clientCertificates: PerPod`), not the shared Secret.
    pub per_pod: Option<PerPod>,
}

impl Target {
    pub fn of(dd: &DindDaemon, namespace: &str, default_init_image: &str) -> Self {
        let name = kube::ResourceExt::name_any(dd);
        let names = Names::of(&name);
        let status = dd.status.clone().unwrap_or_default();
        Self {
            replicas: (0..dd.spec.replicas).map(|i| names.pod(i)).collect(),
            ready: status.endpoints.iter().filter(|e| e.ready).map(|e| e.name.clone()).collect(),
            tls: crate::objects::certificates_wanted(dd),
            port: dd.spec.port,
            client_secret: names.client_secret.clone(),
            init_image: dd.spec.init_image.clone().unwrap_or_else(|| default_init_image.to_string()),
            namespace: namespace.to_string(),
            name,
            per_pod: None,
        }
    }
}

/// How containers find the daemon (annotation `dind.dev/docker-env`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Env,
    Context,
}

/// The webhook's answer: a JSON Patch (possibly empty: nothing left to do) and what it chose.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub patch: Vec<Value>,
    pub docker_host: String,
    /// Containers that got the environment.
    pub injected: Vec<String>,
}

/// Why a pod is refused; the message is shown by `kubectl apply`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal(pub String);

/// The daemon's DOCKER_HOST for this pod: the one chosen before (re-invocation, re-submission)
/// or one replica by the pod's sticky key.
pub fn docker_host_for(pod: &Value, target: &Target) -> Result<String, Refusal> {
    if let Some(chosen) = pod["metadata"]["annotations"][names::DOCKER_HOST_ANNOTATION].as_str() {
        return Ok(chosen.to_string());
    }
    let candidates = if target.ready.is_empty() { &target.replicas } else { &target.ready };
    let key = sticky::key_of(pod);
    let replica = sticky::choose(&key.value, candidates).ok_or_else(|| {
        Refusal(format!(
            "DindDaemon {:?} in namespace {:?} has 0 replicas: scale it up (spec.replicas) before creating pods labelled {}={}",
            target.name,
            target.namespace,
            names::INJECT_LABEL,
            target.name
        ))
    })?;
    Ok(names::docker_host(&Names::of(&target.name).pod_host(replica, &target.namespace), target.port))
}

fn mode_of(pod: &Value) -> Result<Mode, Refusal> {
    match pod["metadata"]["annotations"][names::DOCKER_ENV_ANNOTATION].as_str() {
        None | Some("env") => Ok(Mode::Env),
        Some("context") => Ok(Mode::Context),
        Some(other) => Err(Refusal(format!(
            "annotation {}: {other:?} is not a mode; use \"env\" (DOCKER_HOST and a Docker context, the default) or \"context\" (a Docker context only)",
            names::DOCKER_ENV_ANNOTATION
        ))),
    }
}

/// The containers a pod names in `dind.dev/opt-out-containers` (both webhooks leave them alone).
pub(super) fn opt_outs(pod: &Value) -> BTreeSet<String> {
    pod["metadata"]["annotations"][names::OPT_OUT_ANNOTATION]
        .as_str()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// The injected init container: writes the Docker context (merging the configurations the
/// job brings, `sources`), then waits for `/_ping`.
fn wait_container(target: &Target, docker_host: &str, wait_seconds: u32, sources: &[Source]) -> Value {
    let mut setup = args::ClientSetup {
        host: docker_host.to_string(),
        config: client_pod::CONFIG_DIR.to_string(),
        context: client_pod::CONTEXT.to_string(),
        certs: None,
        timeout_secs: wait_seconds,
        merge: Vec::new(),
    };
    // The DindDaemon's init image runs here: not with the pod's service-account token.
    let mut mounts = vec![
        json!({"name": names::CONFIG_VOLUME, "mountPath": client_pod::CONFIG_DIR}),
        json!({"name": names::NO_TOKEN_VOLUME, "mountPath": names::TOKEN_DIR, "readOnly": true}),
    ];
    if target.tls {
        setup.certs = Some(client_pod::CERTS_DIR.to_string());
        mounts.push(json!({"name": names::CERTS_VOLUME, "mountPath": client_pod::CERTS_DIR, "readOnly": true}));
    }
    for (i, source) in sources.iter().enumerate() {
        let (mount, file) = job_config::mount_of(i, source);
        setup.merge.push(file);
        mounts.push(mount);
    }
    let args = setup.render();
    json!({
        "name": names::WAIT_CONTAINER,
        "image": target.init_image,
        "args": args,
        "volumeMounts": mounts,
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "32Mi"}},
        "securityContext": per_pod::restricted_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    })
}

/// The environment a container gets (in this order), by mode.
fn env_for(target: &Target, mode: Mode, docker_host: &str) -> Vec<(&'static str, String)> {
    let mut env = Vec::new();
    if mode == Mode::Env {
        env.push(("DOCKER_HOST", docker_host.to_string()));
        if target.tls {
            env.push(("DOCKER_TLS_VERIFY", "1".to_string()));
            env.push(("DOCKER_CERT_PATH", client_pod::CERTS_DIR.to_string()));
        }
    }
    env.push(("DOCKER_CONFIG", client_pod::CONFIG_DIR.to_string()));
    env
}

/// Whether the webhook leaves container `c` alone: it is ours, opted out, or has its own
/// DOCKER_HOST.
fn left_alone(c: &Value, opt_out: &BTreeSet<String>) -> bool {
    let cname = c["name"].as_str().unwrap_or_default();
    cname == names::WAIT_CONTAINER
        || cname == names::CERTS_CONTAINER
        || opt_out.contains(cname)
        || c["env"].as_array().into_iter().flatten().any(|e| e["name"].as_str() == Some("DOCKER_HOST"))
}

/// Adds what one container needs (it is not [`left_alone`]).
fn inject_container(c: &mut Value, target: &Target, mode: Mode, docker_host: &str) -> Result<(), Refusal> {
    let cname = c["name"].as_str().unwrap_or_default().to_string();
    let own = job_config::of(c).1;
    if let (Own::Elsewhere(dir), Mode::Context) = (&own, mode) {
        return Err(Refusal(format!(
            "container {cname:?} sets DOCKER_CONFIG={dir}, which none of its volumes holds: in mode {}: context the daemon's \
             Docker context must be in the configuration the CLI reads. Mount that configuration from a volume (it is merged \
             into the pod's), or use mode env (the default)",
            names::DOCKER_ENV_ANNOTATION
        )));
    }
    let mut mounts = vec![(names::CONFIG_VOLUME, client_pod::CONFIG_DIR, false)];
    if target.tls {
        mounts.push((names::CERTS_VOLUME, client_pod::CERTS_DIR, true));
    }
    for (volume, path, _) in &mounts {
        let taken = c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["mountPath"].as_str().map(|p| p.trim_end_matches('/')) == Some(path) && m["name"].as_str() != Some(volume));
        if let Some(m) = taken {
            return Err(Refusal(format!(
                "container {cname:?} already mounts volume {:?} at {path}, where the DindDaemon's {} goes; list it in annotation {} to leave it alone",
                m["name"].as_str().unwrap_or_default(),
                if *volume == names::CERTS_VOLUME { "client certificates" } else { "Docker configuration" },
                names::OPT_OUT_ANNOTATION
            )));
        }
    }
    let obj = c.as_object_mut().ok_or_else(|| Refusal(format!("container {cname:?} is not an object")))?;
    let env = obj.entry("env").or_insert_with(|| json!([]));
    let list = env.as_array_mut().ok_or_else(|| Refusal(format!("container {cname:?}: env is not a list")))?;
    for (name, value) in env_for(target, mode, docker_host) {
        match list.iter_mut().find(|e| e["name"].as_str() == Some(name)) {
            // Its own DOCKER_CONFIG in a volume: merged into ours by the init container.
            Some(e) if name == "DOCKER_CONFIG" && own == Own::InVolume => *e = json!({"name": name, "value": value}),
            // A variable the container sets itself is its own choice.
            Some(_) => {}
            None => list.push(json!({"name": name, "value": value})),
        }
    }
    let vm = obj.entry("volumeMounts").or_insert_with(|| json!([]));
    let list = vm.as_array_mut().ok_or_else(|| Refusal(format!("container {cname:?}: volumeMounts is not a list")))?;
    for (volume, path, read_only) in mounts {
        if !list.iter().any(|m| m["name"].as_str() == Some(volume)) {
            let mut m = json!({"name": volume, "mountPath": path});
            if read_only {
                m["readOnly"] = json!(true);
            }
            list.push(m);
        }
    }
    Ok(())
}

fn ensure_volume(volumes: &mut Vec<Value>, want: Value) -> Result<(), Refusal> {
    let name = want["name"].as_str().unwrap_or_default();
    match volumes.iter().find(|v| v["name"].as_str() == Some(name)) {
        None => {
            volumes.push(want);
            Ok(())
        }
        Some(have) if *have == want => Ok(()),
        Some(_) => Err(Refusal(format!(
            "the pod already has a volume named {name:?} that is not the DindDaemon's; rename it (the injection webhook adds its own)"
        ))),
    }
}

/// The patch for `pod`: labels, volumes, the wait container and every container's
/// environment. Empty when the pod already has all of it (re-invocation or re-submission).
pub fn plan(pod: &Value, target: &Target, wait_seconds: u32) -> Result<Plan, Refusal> {
    let mode = mode_of(pod)?;
    let docker_host = docker_host_for(pod, target)?;
    let opt_out = opt_outs(pod);
    let mut new = pod.clone();

    // Labels: the NetworkPolicy admits pods labelled as this daemon's clients.
    let labels = new["metadata"]["labels"].as_object().cloned().unwrap_or_default();
    match labels.get(names::CLIENT_LABEL).and_then(Value::as_str) {
        Some(other) if other != target.name => {
            return Err(Refusal(format!(
                "label {}={other} names another DindDaemon than {}={}: a pod can be the client of one",
                names::CLIENT_LABEL,
                names::INJECT_LABEL,
                target.name
            )));
        }
        _ => {}
    }
    set(&mut new["metadata"], "labels", names::CLIENT_LABEL, &target.name);
    set(&mut new["metadata"], "annotations", names::DOCKER_HOST_ANNOTATION, &docker_host);

    // Volumes.
    let mut volumes = new["spec"]["volumes"].as_array().cloned().unwrap_or_default();
    ensure_volume(&mut volumes, json!({"name": names::CONFIG_VOLUME, "emptyDir": {"sizeLimit": "64Mi"}}))?;
    ensure_volume(&mut volumes, json!({"name": names::NO_TOKEN_VOLUME, "emptyDir": {"sizeLimit": "1Mi"}}))?;
    match (&target.per_pod, target.tls) {
        (Some(_), _) => {
            for v in per_pod::volumes() {
                ensure_volume(&mut volumes, v)?;
            }
        }
        (None, true) => ensure_volume(
            &mut volumes,
            json!({"name": names::CERTS_VOLUME, "secret": {"secretName": target.client_secret, "defaultMode": 0o444}}),
        )?,
        (None, false) => {}
    }
    new["spec"]["volumes"] = Value::Array(volumes);

    // The configurations the job's containers bring, merged by the wait container.
    let mut inits = new["spec"]["initContainers"].as_array().cloned().unwrap_or_default();
    let mut containers = new["spec"]["containers"].as_array().cloned().unwrap_or_default();
    let mut sources: Vec<Source> = Vec::new();
    for c in inits.iter().chain(containers.iter()).filter(|c| !left_alone(c, &opt_out)) {
        if let Some(s) = job_config::of(c).0.filter(|s| !sources.contains(s)) {
            sources.push(s);
        }
    }

    // The wait container, first of the init containers: containers that use Docker start
    // only once it answers.
    match inits.iter().find(|c| c["name"].as_str() == Some(names::WAIT_CONTAINER)) {
        None => inits.insert(0, wait_container(target, &docker_host, wait_seconds, &sources)),
        Some(c) if c["args"][0].as_str() == Some(client_pod::SUBCOMMAND) => {}
        Some(_) => {
            return Err(Refusal(format!(
                "the pod already has an init container named {:?}: the injection webhook adds one of that name; rename yours",
                names::WAIT_CONTAINER
            )));
        }
    }
    // Before it, the certificate's sidecar (the wait needs the certificate).
    if let Some(wanted) = &target.per_pod {
        match inits.iter().find(|c| c["name"].as_str() == Some(names::CERTS_CONTAINER)) {
            None => inits.insert(0, per_pod::sidecar(&target.init_image, &format!("{}/{}", target.namespace, target.name), wanted)),
            Some(c) if c["args"][0].as_str() == Some(dind_contract::per_pod::SUBCOMMAND) => {}
            Some(_) => {
                return Err(Refusal(format!(
                    "the pod already has an init container named {:?}: the injection webhook adds one of that name; rename yours",
                    names::CERTS_CONTAINER
                )));
            }
        }
    }

    let mut injected = Vec::new();
    for c in inits.iter_mut().filter(|c| !left_alone(c, &opt_out)) {
        inject_container(c, target, mode, &docker_host)?;
        injected.push(format!("initContainers/{}", c["name"].as_str().unwrap_or_default()));
    }
    new["spec"]["initContainers"] = Value::Array(inits);
    for c in containers.iter_mut().filter(|c| !left_alone(c, &opt_out)) {
        inject_container(c, target, mode, &docker_host)?;
        injected.push(c["name"].as_str().unwrap_or_default().to_string());
    }
    new["spec"]["containers"] = Value::Array(containers);

    let mut patch = Vec::new();
    for (parent, key) in [("metadata", "labels"), ("metadata", "annotations"), ("spec", "volumes"), ("spec", "initContainers")] {
        if pod[parent].get(key) != new[parent].get(key) {
            patch.push(json!({"op": "add", "path": format!("/{parent}/{key}"), "value": new[parent][key]}));
        }
    }
    for (i, c) in new["spec"]["containers"].as_array().into_iter().flatten().enumerate() {
        for key in ["env", "volumeMounts"] {
            if pod["spec"]["containers"][i].get(key) != c.get(key) {
                patch.push(json!({"op": "add", "path": format!("/spec/containers/{i}/{key}"), "value": c[key]}));
            }
        }
    }
    Ok(Plan { patch, docker_host, injected })
}

/// Sets `parent[map][key] = value`, making the map if it is missing.
pub(super) fn set(parent: &mut Value, map: &str, key: &str, value: &str) {
    if !parent[map].is_object() {
        parent[map] = Value::Object(Map::new());
    }
    parent[map][key] = json!(value);
}

#[cfg(test)]
#[path = "inject_tests.rs"]
mod tests;
