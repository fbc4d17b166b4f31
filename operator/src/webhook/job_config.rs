//! The Docker configuration a job brings (registry credentials, credential helpers, proxies),
//! found in the raw pod JSON (pure).
//!
//! The injected `DOCKER_CONFIG` (a writable emptyDir holding the daemon's context) would hide
//! the job's own `config.json`: `docker push`, a private `FROM` and compose pulls would lose
//! their credentials. So every configuration a container brings *from a volume* is mounted
//! read-only into the injected init container, which merges it into the pod's configuration
//! (`dind-init client-setup --merge`: every key but `currentContext`). Where it comes from:
//! - the container's own `DOCKER_CONFIG` (a literal value) under one of its volume mounts;
//! - else a mount at `…/.docker` or `…/.docker/config.json` (the usual way: a
//!   `kubernetes.io/dockerconfigjson` Secret at `~/.docker`, with `items` or `subPath`).
//!
//! A configuration baked into the image is invisible to the webhook; a container whose own
//! `DOCKER_CONFIG` no volume holds keeps it in mode `env` (DOCKER_HOST reaches the daemon) and
//! is refused in mode `context` (the daemon's context would not be in it).

use dind_contract::client_pod;
use serde_json::{Value, json};

/// One configuration file a container brings in a volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// The volume holding it.
    pub volume: String,
    /// The mount's `subPath`, if any.
    pub sub_path: Option<String>,
    /// `config.json`'s path inside the mount ("" when the mount is the file itself).
    pub file: String,
}

/// What a container's own DOCKER_CONFIG is, for the webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Own {
    /// The container sets none.
    None,
    /// It sets one that a volume holds (merged; the container's DOCKER_CONFIG is replaced).
    InVolume,
    /// It sets one no volume holds (its image's, or built at run time): its path.
    Elsewhere(String),
}

fn mounts(c: &Value) -> impl Iterator<Item = &Value> {
    c["volumeMounts"].as_array().into_iter().flatten()
}

fn source_at(m: &Value, file: &str) -> Option<Source> {
    // A subPathExpr names the container's own variables, which the init container lacks.
    if m.get("subPathExpr").is_some() {
        return None;
    }
    Some(Source {
        volume: m["name"].as_str()?.to_string(),
        sub_path: m["subPath"].as_str().filter(|s| !s.is_empty()).map(str::to_string),
        file: file.to_string(),
    })
}

/// The mount of `c` that holds `path` (a file), and the file's path inside it.
fn mount_holding<'a>(c: &'a Value, path: &str) -> Option<(&'a Value, String)> {
    mounts(c)
        .filter_map(|m| {
            let at = m["mountPath"].as_str()?.trim_end_matches('/');
            if path == at { Some((m, String::new())) } else { path.strip_prefix(&format!("{at}/")).map(|rest| (m, rest.to_string())) }
        })
        // The deepest mount wins, as in the container's filesystem.
        .max_by_key(|(m, _)| m["mountPath"].as_str().map_or(0, str::len))
}

/// The container's own `DOCKER_CONFIG` value, if it sets one (a literal value).
fn own_dir(c: &Value) -> Option<&str> {
    c["env"].as_array().into_iter().flatten().find(|e| e["name"] == "DOCKER_CONFIG").and_then(|e| e["value"].as_str())
}

/// Where container `c`'s Docker configuration comes from, and what its own DOCKER_CONFIG is.
pub fn of(c: &Value) -> (Option<Source>, Own) {
    if let Some(dir) = own_dir(c) {
        let dir = dir.trim_end_matches('/');
        if dir == client_pod::CONFIG_DIR {
            // Ours (a re-invocation): what it merged is already in the init container.
            return (None, Own::None);
        }
        return match mount_holding(c, &format!("{dir}/config.json")).and_then(|(m, file)| source_at(m, &file)) {
            Some(s) => (Some(s), Own::InVolume),
            None => (None, Own::Elsewhere(dir.to_string())),
        };
    }
    let found = mounts(c).find_map(|m| {
        let at = m["mountPath"].as_str()?.trim_end_matches('/');
        if at.ends_with("/.docker") {
            source_at(m, "config.json")
        } else if at.ends_with("/.docker/config.json") {
            source_at(m, "")
        } else {
            None
        }
    });
    (found, Own::None)
}

/// Where the init container mounts source `i`, and the file it merges.
pub fn mount_of(i: usize, s: &Source) -> (Value, String) {
    let dir = format!("{}/{i}", client_pod::JOB_CONFIG_DIR);
    let (at, file) = if s.file.is_empty() {
        (format!("{dir}/config.json"), format!("{dir}/config.json"))
    } else {
        (dir.clone(), format!("{dir}/{}", s.file))
    };
    let mut m = json!({"name": s.volume, "mountPath": at, "readOnly": true});
    if let Some(sub) = &s.sub_path {
        m["subPath"] = json!(sub);
    }
    (m, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_at_dot_docker_is_found_with_items_or_sub_path() {
        let c = json!({"volumeMounts": [{"name": "work", "mountPath": "/work"}, {"name": "regcred", "mountPath": "/root/.docker/"}]});
        assert_eq!(of(&c), (Some(Source { volume: "regcred".into(), sub_path: None, file: "config.json".into() }), Own::None));
        let c = json!({"volumeMounts": [{"name": "regcred", "mountPath": "/home/u/.docker/config.json", "subPath": ".dockerconfigjson"}]});
        assert_eq!(
            of(&c),
            (Some(Source { volume: "regcred".into(), sub_path: Some(".dockerconfigjson".into()), file: String::new() }), Own::None)
        );
        let (m, file) = mount_of(1, &of(&c).0.unwrap());
        assert_eq!(
            m,
            json!({"name": "regcred", "mountPath": "/dind/job-docker-config/1/config.json", "readOnly": true, "subPath": ".dockerconfigjson"})
        );
        assert_eq!(file, "/dind/job-docker-config/1/config.json");
    }

    #[test]
    fn an_own_docker_config_is_found_under_the_deepest_mount_or_named_elsewhere() {
        let c = json!({
            "env": [{"name": "DOCKER_CONFIG", "value": "/cfg/docker/"}],
            "volumeMounts": [{"name": "all", "mountPath": "/cfg"}, {"name": "docker", "mountPath": "/cfg/docker"}]
        });
        let (s, own) = of(&c);
        assert_eq!(own, Own::InVolume);
        let s = s.unwrap();
        assert_eq!((s.volume.as_str(), s.file.as_str()), ("docker", "config.json"));
        assert_eq!(mount_of(0, &s).1, "/dind/job-docker-config/0/config.json");
        let c = json!({"env": [{"name": "DOCKER_CONFIG", "value": "/kaniko/.docker"}], "volumeMounts": [{"name": "x", "mountPath": "/root/.docker"}]});
        assert_eq!(of(&c), (None, Own::Elsewhere("/kaniko/.docker".into())));
        // Ours, after a first injection: nothing to merge again.
        let c = json!({"env": [{"name": "DOCKER_CONFIG", "value": "/dind/docker-config"}], "volumeMounts": [{"name": "x", "mountPath": "/root/.docker"}]});
        assert_eq!(of(&c), (None, Own::None));
    }

    #[test]
    fn nothing_docker_shaped_is_nothing() {
        for c in [
            json!({}),
            json!({"volumeMounts": [{"name": "w", "mountPath": "/workspace"}, {"name": "d", "mountPath": "/x/.dockerignore"}]}),
            json!({"volumeMounts": [{"name": "d", "mountPath": "/root/.docker", "subPathExpr": "$(POD)"}]}),
        ] {
            assert_eq!(of(&c), (None, Own::None), "{c}");
        }
    }
}
