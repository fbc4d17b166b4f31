//! A real registry (tests/registry/registry.sh: TLS from its own CA, htpasswd): the credentials a
//! job brings survive injection, a daemon trusts a private registry's CA (`registryCAs`), and a
//! registry mirror a DindDaemon sets serves its pulls (Testcontainers' Ryuk among them).

use super::*;
use dind_tests::registry_file;

/// What each build pod does against the registry `$R` (credentials from the job's own config).
const REGISTRY_SCRIPT: &str = r#"set -e
docker image inspect local/base >/dev/null 2>&1 || tar -C / -c bin etc lib lib64 usr 2>/dev/null | docker import - local/base >/dev/null
echo "step: docker push"; docker tag local/base "$R/team/base:$T"; docker push -q "$R/team/base:$T" >/dev/null && echo pushed
docker rmi "$R/team/base:$T" >/dev/null
echo "step: a private FROM"; mkdir -p /tmp/app && cd /tmp/app
printf 'FROM %s/team/base:%s\nRUN echo built > /built.txt\n' "$R" "$T" > Dockerfile
docker build -q -t "app:$T" . >/dev/null && echo from-private
echo "step: buildx build --push"; docker buildx build -q --push -t "$R/team/app:$T" . >/dev/null && echo buildx-pushed
echo "step: compose pull"; printf 'services:\n  app:\n    image: %s/team/app:%s\n' "$R" "$T" > compose.yaml
docker compose pull -q && echo compose-pulled
echo "step: docker login"; docker logout "$R" >/dev/null
if docker pull -q "$R/team/base:$T" >/dev/null 2>&1; then echo "pulled without credentials"; exit 1; fi
echo "$PASSWORD" | docker login -u "$USER_NAME" --password-stdin "$R" >/dev/null && docker pull -q "$R/team/base:$T" >/dev/null && echo login-pull
if [ -n "$MIRRORED" ]; then
  echo "step: a registry mirror"; docker tag local/base "$R/library/$MIRRORED"; docker push -q "$R/library/$MIRRORED" >/dev/null
  docker pull -q "$MIRRORED" >/dev/null && echo mirror-pull
fi
echo "registry done"
"#;

/// Testcontainers-go with Ryuk on (the default): one test that cleans up, one that leaves a
/// container behind, then a wait for Ryuk to remove it (reconnection timeout 2 s).
const RYUK_SCRIPT: &str = r#"set -e
docker image inspect local/base >/dev/null 2>&1 || tar -C / -c bin etc lib lib64 usr 2>/dev/null | docker import - local/base >/dev/null
echo "step: Testcontainers, Ryuk on"
out=$(RYUK_RECONNECTION_TIMEOUT=2s SDK_TEST_IMAGE=local/base sdk.test -test.run 'TestMappedPort|TestLeftBehind' 2>&1) || { echo "$out"; exit 1; }
echo "$out" | tail -n 2
id=$(echo "$out" | sed -n 's/^left-behind //p' | head -n 1)
[ -n "$id" ] || { echo "no container id printed"; exit 1; }
for i in $(seq 60); do
  if ! docker inspect "$id" >/dev/null 2>&1; then echo reaped; exit 0; fi
  sleep 1
done
echo "left running: $id"; docker ps -a; exit 1
"#;

/// buildx's docker-container driver: a BuildKit container started by the DindDaemon (privileged,
/// which Docker 28.5 runs in the daemon pod), its image pulled through the mirror, its own pulls
/// from the mirror with the CA given in its config; a RUN step, loaded back into the daemon.
const BUILDKIT_SCRIPT: &str = r#"set -e
printf '%s\n' "$CA" > /tmp/ca.crt
printf '[registry."%s"]\n  ca = ["/tmp/ca.crt"]\n' "$MIRROR" > /tmp/buildkitd.toml
echo "step: buildx create --driver docker-container --bootstrap"
docker buildx create --name dc --driver docker-container --buildkitd-config /tmp/buildkitd.toml --bootstrap dind >/dev/null 2>&1 \
  || docker buildx create --name dc2 --driver docker-container --buildkitd-config /tmp/buildkitd.toml --bootstrap dind
docker buildx inspect dc | grep -E '^(Driver|Status|BuildKit version)'
mkdir -p /tmp/app && cd /tmp/app
printf 'FROM %s/library/%s\nRUN echo from-buildkit > /b.txt\n' "$MIRROR" "$MIRRORED" > Dockerfile
echo "step: buildx build --builder dc --load"
docker buildx build -q --builder dc --load -t bk:1 . >/dev/null
docker run --rm bk:1 cat /b.txt
docker buildx rm dc >/dev/null && echo removed
"#;

fn buildkit_pod(env: &[(&str, String)]) -> serde_json::Value {
    let env: Vec<_> = env.iter().map(|(k, v)| json!({"name": k, "value": v})).collect();
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "buildkit", "labels": {"dind.dev/inject": "ci"}},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "build", "image": CLIENT_IMAGE, "imagePullPolicy": "Never", "env": env, "command": ["/bin/sh", "-c", BUILDKIT_SCRIPT]}]},
    })
}

fn ryuk_pod() -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "ryuk", "labels": {"dind.dev/inject": "ci"}},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "build", "image": CLIENT_IMAGE, "imagePullPolicy": "Never", "command": ["/bin/sh", "-c", RYUK_SCRIPT]}]},
    })
}

/// A build pod labelled for `ci` whose container `build` gets the job's credentials from Secret
/// `regcred` as `how` says, runs [`REGISTRY_SCRIPT`] with `env`, in docker-env `mode`.
fn registry_pod(name: &str, mode: &str, how: &str, env: &[(&str, String)]) -> serde_json::Value {
    let mut env: Vec<_> = env.iter().map(|(k, v)| json!({"name": k, "value": v})).collect();
    let (mount, volume) = match how {
        // The usual: the dockerconfigjson Secret's key as ~/.docker/config.json (items).
        "home-items" => (
            json!({"name": "regcred", "mountPath": "/root/.docker", "readOnly": true}),
            json!({"name": "regcred", "secret": {"secretName": "regcred", "items": [{"key": ".dockerconfigjson", "path": "config.json"}]}}),
        ),
        // The key by subPath, straight at ~/.docker/config.json.
        "home-subpath" => (
            json!({"name": "regcred", "mountPath": "/root/.docker/config.json", "subPath": ".dockerconfigjson", "readOnly": true}),
            json!({"name": "regcred", "secret": {"secretName": "regcred"}}),
        ),
        // The job's own DOCKER_CONFIG, a directory from the Secret.
        _ => {
            env.push(json!({"name": "DOCKER_CONFIG", "value": "/job-docker"}));
            (
                json!({"name": "regcred", "mountPath": "/job-docker", "readOnly": true}),
                json!({"name": "regcred", "secret": {"secretName": "regcred", "items": [{"key": ".dockerconfigjson", "path": "config.json"}]}}),
            )
        }
    };
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"dind.dev/inject": "ci"}, "annotations": {"dind.dev/docker-env": mode}},
        "spec": {"restartPolicy": "Never", "volumes": [volume], "containers": [{
            "name": "build", "image": CLIENT_IMAGE, "imagePullPolicy": "Never", "env": env, "volumeMounts": [mount],
            "command": ["/bin/sh", "-c", REGISTRY_SCRIPT]}]},
    })
}

#[tokio::test]
async fn e2e_jobs_keep_their_registry_credentials_and_daemons_trust_the_registry_ca_and_mirror() {
    require_node();
    let registry = registry_file("host").unwrap();
    let mirror = registry_file("mirror").unwrap();
    let ca = registry_file("ca.crt").unwrap();
    let password = registry_file("password").unwrap();
    let user = registry_file("user").unwrap();
    let config = registry_file("docker-config/config.json").unwrap();
    with_namespace("e2e-registry", |client, ns| async move {
        with_builds_namespace(&client.clone(), &ns.clone(), |builds| async move {
            // The registry's CA as a platform team ships it, and the job's credentials as a
            // kubernetes.io/dockerconfigjson Secret.
            let ca_map = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "registry-ca"}, "data": {"ca.crt": ca}});
            kubectl_apply(&builds, &ca_map.to_string()).await?;
            let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "regcred"},
                "type": "kubernetes.io/dockerconfigjson", "stringData": {".dockerconfigjson": config}});
            kubectl_apply(&builds, &secret.to_string()).await?;
            let daemon = json!({"apiVersion": "dind.dev/v1alpha1", "kind": "DindDaemon", "metadata": {"name": "ci"},
                "spec": {"storage": {"size": "2Gi"}, "daemon": {
                    "registryCAs": [{"registry": registry, "configMap": "registry-ca"}, {"registry": mirror, "configMap": "registry-ca"}],
                    "registryMirrors": [format!("https://{mirror}")]}}});
            kubectl_apply(&builds, &daemon.to_string()).await?;
            wait_ready(&builds, "ci").await?;

            let tag = suffix();
            let mirrored = format!("mirrored-{tag}:1");
            for (i, (mode, how)) in [("env", "home-items"), ("context", "home-subpath"), ("env", "own-docker-config")].iter().enumerate() {
                let name = format!("registry-{i}");
                let mut env = vec![("R", registry.clone()), ("T", format!("{tag}-{i}")), ("PASSWORD", password.clone()), ("USER_NAME", user.clone())];
                if i == 0 {
                    env.push(("MIRRORED", mirrored.clone()));
                }
                let (log, ran) = run_pod(&client, &builds, &name, &registry_pod(&name, mode, how, &env).to_string()).await?;
                let mirror_step = if i == 0 { "mirror-pull" } else { "registry done" };
                for want in ["pushed", "from-private", "buildx-pushed", "compose-pulled", "login-pull", mirror_step, "registry done"] {
                    ensure!(log.contains(want), "{name} ({mode}, credentials {how}): {want:?} missing:\n{log}");
                }
                eprintln!("{name} ({mode}, credentials {how}): push, private FROM, buildx --push, compose pull, login in {ran:?}");
            }
            // The mirror saw the pull (its access log names the repository).
            let mirror_log = registry_file("mirror.log")?;
            ensure!(mirror_log.contains(&format!("library/mirrored-{tag}")), "the mirror did not serve the pull:\n{mirror_log}");

            // Testcontainers with Ryuk on, as users run it: the reaper image is pulled through
            // the DindDaemon's registry mirror (a Hub mirror for users; here the harness mirror,
            // which holds the Ryuk stand-in under the name Testcontainers runs), runs in the
            // daemon with its socket bound in, and removes what a test left behind once the
            // test's connection is gone.
            let (log, ran) = run_pod(&client, &builds, "ryuk", &ryuk_pod().to_string()).await?;
            for want in ["PASS", "reaped"] {
                ensure!(log.contains(want), "ryuk: {want:?} missing:\n{log}");
            }
            ensure!(!log.contains("left running"), "ryuk:\n{log}");
            let mirror_log = registry_file("mirror.log")?;
            ensure!(mirror_log.contains("testcontainers/ryuk"), "the reaper image did not come through the mirror:\n{mirror_log}");
            eprintln!("ryuk: Testcontainers with Ryuk on, a left-behind container reaped, in {ran:?}");

            // buildx's docker-container driver boots in the DindDaemon and builds.
            let env = [("CA", ca.clone()), ("MIRROR", mirror.clone()), ("MIRRORED", mirrored.clone())];
            let (log, ran) = run_pod(&client, &builds, "buildkit", &buildkit_pod(&env).to_string()).await?;
            for want in ["docker-container", "running", "from-buildkit", "removed"] {
                ensure!(log.contains(want), "buildkit: {want:?} missing:\n{log}");
            }
            let mirror_log = registry_file("mirror.log")?;
            ensure!(mirror_log.contains("moby/buildkit"), "the BuildKit image did not come through the mirror:\n{mirror_log}");
            eprintln!("buildkit: buildx docker-container driver booted, built with a RUN step and loaded, in {ran:?}");

            // A daemon that does not trust the registry's CA reaches it only as an insecure
            // registry (`insecureRegistries`: TLS unchecked), and refuses it otherwise.
            for (name, insecure) in [("untrusting", false), ("insecure", true)] {
                let mut spec = json!({"storage": {"size": "1Gi"}});
                if insecure {
                    spec["daemon"] = json!({"insecureRegistries": [registry]});
                }
                let daemon = json!({"apiVersion": "dind.dev/v1alpha1", "kind": "DindDaemon", "metadata": {"name": name}, "spec": spec});
                kubectl_apply(&builds, &daemon.to_string()).await?;
                wait_ready(&builds, name).await?;
                let pod = format!("pull-{name}");
                let script = format!("docker pull -q {registry}/team/base:{tag}-0 >/dev/null 2>&1 && echo pulled || echo refused");
                let manifest = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "labels": {"dind.dev/inject": name}},
                    "spec": {"restartPolicy": "Never",
                        "volumes": [{"name": "regcred", "secret": {"secretName": "regcred", "items": [{"key": ".dockerconfigjson", "path": "config.json"}]}}],
                        "containers": [{"name": "build", "image": CLIENT_IMAGE, "imagePullPolicy": "Never",
                            "volumeMounts": [{"name": "regcred", "mountPath": "/root/.docker", "readOnly": true}],
                            "command": ["/bin/sh", "-c", script]}]}});
                let (log, _) = run_pod(&client, &builds, &pod, &manifest.to_string()).await?;
                let want = if insecure { "pulled" } else { "refused" };
                ensure!(log.trim() == want, "{name}: {want:?} expected:\n{log}");
            }
            Ok(())
        })
        .await
    })
    .await;
}
