//! The Docker CLI configuration of a client pod: `config.json` whose `currentContext` is the
//! daemon, and the context itself in the CLI's context store:
//!
//! ```text
//! DOCKER_CONFIG/config.json                                 {"currentContext": "dind"}
//! DOCKER_CONFIG/contexts/meta/<sha256(name)>/meta.json      name, endpoint host, TLS verification
//! DOCKER_CONFIG/contexts/tls/<sha256(name)>/docker/*.pem    links to the mounted client Secret
//! ```
//!
//! The layout is the Docker CLI's (cli/context/store: the directory is the hex SHA-256 of the
//! context name). The TLS files are symbolic links into the Secret's mount, so a renewed client
//! certificate reaches the context with the Secret and no copy of the key is made. Directories
//! are world-writable and `config.json` world-writable: the pod's containers may run as any user
//! and the CLI writes there (buildx keeps its builders under `DOCKER_CONFIG/buildx`, `docker
//! login` writes `config.json`). The emptyDir is the pod's own.
//!
//! The job's own configurations (`--merge`: registry credentials from a
//! `kubernetes.io/dockerconfigjson` Secret at `~/.docker`, its own `DOCKER_CONFIG`) are merged
//! in: every key but `currentContext`; maps (`auths`, `credHelpers`, `proxies`, `HttpHeaders`,
//! ...) entry by entry, a later file winning an entry two files name; anything else as a whole.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use dind_contract::client_tls;
use serde_json::{Value, json};

use super::Setup;

/// The context store's directory name for a context: hex SHA-256 of its name.
pub fn context_id(name: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, name.as_bytes()).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The context's meta.json.
pub fn meta(setup: &Setup) -> Value {
    json!({
        "Name": setup.context,
        "Metadata": {"Description": "DindDaemon (written by dind-init client-setup)"},
        "Endpoints": {"docker": {"Host": setup.host, "SkipTLSVerify": false}},
    })
}

/// Makes `path` world-writable if this process creates it; an existing directory (the emptyDir
/// itself, owned by root and already 0777) is left as it is.
fn dir(path: &Path) -> io::Result<()> {
    match fs::create_dir(path) {
        Ok(()) => fs::set_permissions(path, fs::Permissions::from_mode(0o777)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

fn file(path: &Path, content: &str, mode: u32) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, content)?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, path)
}

/// Merges the job's configuration at `path` into `config` (a missing file is skipped: an
/// optional Secret; one that is not a JSON object is an error naming it).
fn merge_file(config: &mut Value, path: &Path) -> io::Result<()> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            tracing::warn!(path = %path.display(), "the job's Docker configuration is not there; nothing merged from it");
            return Ok(());
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "reading the job's Docker configuration {}: {e}; this init container runs as uid {}: give the volume a \
                     readable mode (a Secret's defaultMode or items mode 0444) or the pod an fsGroup",
                    path.display(),
                    nix::unistd::getuid()
                ),
            ));
        }
        Err(e) => return Err(io::Error::new(e.kind(), format!("reading the job's Docker configuration {}: {e}", path.display()))),
    };
    let theirs: Value = serde_json::from_slice(&bytes).ok().filter(Value::is_object).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, format!("{}: not a JSON object (a Docker config.json)", path.display()))
    })?;
    merge(config, &theirs);
    Ok(())
}

/// Merges `theirs` into `config`: every key but `currentContext`, objects entry by entry.
pub fn merge(config: &mut Value, theirs: &Value) {
    for (key, value) in theirs.as_object().into_iter().flatten() {
        if key == "currentContext" {
            continue;
        }
        match (config.get_mut(key), value) {
            (Some(Value::Object(have)), Value::Object(add)) => {
                for (k, v) in add {
                    have.insert(k.clone(), v.clone());
                }
            }
            _ => config[key] = value.clone(),
        }
    }
}

/// Writes (or rewrites: an init container may run twice) the configuration.
pub fn write(setup: &Setup) -> io::Result<()> {
    let root = &setup.config;
    fs::create_dir_all(root)?;
    let config_path = root.join("config.json");
    // Keep whatever else a config.json already holds (a restarted init container).
    let mut config: Value = fs::read(&config_path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_else(|| json!({}));
    if !config.is_object() {
        config = json!({});
    }
    for path in &setup.merge {
        merge_file(&mut config, path)?;
    }
    config["currentContext"] = json!(setup.context);
    let id = context_id(&setup.context);
    let meta_dir = root.join("contexts/meta").join(&id);
    dir(&root.join("contexts"))?;
    dir(&root.join("contexts/meta"))?;
    dir(&meta_dir)?;
    file(&meta_dir.join("meta.json"), &meta(setup).to_string(), 0o644)?;
    if let Some(certs) = &setup.certs {
        let tls_dir = root.join("contexts/tls").join(&id).join("docker");
        dir(&root.join("contexts/tls"))?;
        dir(&root.join("contexts/tls").join(&id))?;
        dir(&tls_dir)?;
        for (link, target) in [("ca.pem", client_tls::CA), ("cert.pem", client_tls::CERT), ("key.pem", client_tls::KEY)] {
            let path = tls_dir.join(link);
            let _ = fs::remove_file(&path);
            std::os::unix::fs::symlink(certs.join(target), &path)?;
        }
    }
    file(&config_path, &serde_json::to_string_pretty(&config).unwrap_or_default(), 0o666)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Duration;

    #[test]
    fn the_context_id_is_the_clis() {
        // `docker context create dind` makes contexts/meta/<this>/ (sha256 of "dind").
        assert_eq!(context_id("dind"), "2a8c227a0a7b0a51085cc500f33f757f2914b554a13497f86c55a9519e2012e6");
        assert_eq!(context_id("default").len(), 64);
    }

    #[test]
    fn writes_config_meta_and_links_and_keeps_other_settings() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("config.json"), r#"{"auths": {"r.example": {}}, "currentContext": "old"}"#).unwrap();
        let setup = Setup {
            host: "tcp://ci-0.ci-daemons.b.svc:2376".into(),
            config: dir.path().to_path_buf(),
            context: "dind".into(),
            certs: Some(PathBuf::from("/dind/client-certs")),
            timeout: Duration::from_secs(1),
            merge: vec![],
        };
        write(&setup).unwrap();
        write(&setup).unwrap(); // twice: a restarted init container
        let config: Value = serde_json::from_slice(&fs::read(dir.path().join("config.json")).unwrap()).unwrap();
        assert_eq!(config["currentContext"], "dind");
        assert!(config["auths"]["r.example"].is_object());
        let id = context_id("dind");
        let meta: Value = serde_json::from_slice(&fs::read(dir.path().join("contexts/meta").join(&id).join("meta.json")).unwrap()).unwrap();
        assert_eq!(meta["Endpoints"]["docker"]["Host"], "tcp://ci-0.ci-daemons.b.svc:2376");
        let key = fs::read_link(dir.path().join("contexts/tls").join(&id).join("docker/key.pem")).unwrap();
        assert_eq!(key, PathBuf::from("/dind/client-certs/key.pem"));
        let mode = fs::metadata(dir.path().join("config.json")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666);
    }

    #[test]
    fn the_jobs_configurations_are_merged_and_the_context_stays_ours() {
        let dir = tempfile::tempdir().unwrap();
        let job = tempfile::tempdir().unwrap();
        let a = job.path().join("a.json");
        let b = job.path().join("b.json");
        fs::write(&a, r#"{"auths": {"reg.a:5000": {"auth": "dTpw"}}, "credHelpers": {"ecr.x": "ecr-login"}, "currentContext": "theirs"}"#)
            .unwrap();
        fs::write(&b, r#"{"auths": {"reg.b": {"auth": "eDp5"}, "reg.a:5000": {"auth": "bmV3"}}, "credsStore": "pass"}"#).unwrap();
        let mut setup = Setup {
            host: "tcp://h:2376".into(),
            config: dir.path().join("cfg"),
            context: "dind".into(),
            certs: None,
            timeout: Duration::from_secs(1),
            merge: vec![a, job.path().join("missing.json"), b],
        };
        write(&setup).unwrap();
        let config: Value = serde_json::from_slice(&fs::read(dir.path().join("cfg/config.json")).unwrap()).unwrap();
        assert_eq!(config["currentContext"], "dind");
        assert_eq!(config["auths"]["reg.a:5000"]["auth"], "bmV3", "the later file wins an entry");
        assert_eq!(config["auths"]["reg.b"]["auth"], "eDp5");
        assert_eq!(config["credHelpers"]["ecr.x"], "ecr-login");
        assert_eq!(config["credsStore"], "pass");
        let bad = job.path().join("bad.json");
        fs::write(&bad, "[1]").unwrap();
        setup.merge = vec![bad];
        let err = write(&setup).unwrap_err().to_string();
        assert!(err.contains("bad.json") && err.contains("JSON object"), "{err}");
    }
}
