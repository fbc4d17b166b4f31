//! A labelled pod gets Docker with no setup, for today's clients.

use super::*;

/// What a pod with only the label `dind.dev/inject` does with today's clients (Docker CLI v29,
/// buildx v0.38, compose v2.40, Testcontainers-go v0.45), in a namespace that opted in; the
/// operator runs in another (its own namespace is never injected).
pub(super) const CLIENTS_SCRIPT: &str = r#"set -e
host=${DOCKER_HOST#tcp://}; host=${host%:*}
echo "step: docker version"; docker version --format 'client {{.Client.Version}} server {{.Server.Version}}'
docker image inspect local/base >/dev/null 2>&1 || tar -C / -c bin etc lib lib64 usr 2>/dev/null | docker import - local/base >/dev/null
mkdir -p /tmp/app && cd /tmp/app && echo one > one.txt
printf 'FROM local/base\nCOPY one.txt /one.txt\nRUN echo two > /two.txt\nCMD ["cat", "/one.txt", "/two.txt"]\n' > Dockerfile
echo "step: docker build (buildx)"; docker build -t app:1 . >/dev/null 2>&1 && docker run --rm app:1
echo "step: docker buildx build --load"; docker buildx build --load -t app:2 . >/dev/null 2>&1 && docker run --rm app:2 | grep -q two && echo loaded
echo "step: buildx create, docker-container driver, the context as endpoint"
docker buildx create --name dc --driver docker-container dind && docker buildx inspect dc | grep -q docker-container && echo created
echo "step: buildx create in context mode (no DOCKER_HOST)"
env -u DOCKER_HOST -u DOCKER_TLS_VERIFY -u DOCKER_CERT_PATH docker buildx create --name dc2 --driver docker-container && echo created-without-endpoint
echo "step: compose up with a published port"
cat > compose.yaml <<COMPOSE
services:
  web:
    image: local/base
    command: ["/bin/sh", "-c", "mkdir -p /www && echo compose-web > /www/index.html && exec busybox httpd -f -p 8080 -h /www"]
    ports: ["18080:8080"]
  worker:
    image: local/base
    command: ["sleep", "3600"]
COMPOSE
docker compose up -d >/dev/null 2>&1
for i in $(seq 100); do wget -q -O - "http://$host:18080/" 2>/dev/null && break; sleep 0.2; done
docker compose down -t 1 >/dev/null 2>&1
echo "step: docker run -p"
docker run -d --name web2 -p 18081:8080 local/base /bin/sh -c "mkdir -p /www && echo run-p > /www/index.html && exec busybox httpd -f -p 8080 -h /www" >/dev/null
for i in $(seq 100); do wget -q -O - "http://$host:18081/" 2>/dev/null && break; sleep 0.2; done
docker rm -f web2 >/dev/null
echo "step: Testcontainers"
# Ryuk off here: this DindDaemon (the example) has no registry mirror to pull the reaper image
# through; e2e registry.rs runs Testcontainers with Ryuk on, through its DindDaemon's mirror.
TESTCONTAINERS_RYUK_DISABLED=true SDK_TEST_IMAGE=local/base sdk.test -test.run TestMappedPort 2>&1 | tail -1
echo "all clients done"
"#;

#[tokio::test]
async fn e2e_a_labelled_pod_gets_docker_for_todays_clients() {
    require_node();
    with_namespace("e2e-inject", |client, ns| async move {
        with_builds_namespace(&client.clone(), &ns.clone(), |builds| async move {
            kubectl_apply(&builds, &std::fs::read_to_string(format!("{EXAMPLES}/dinddaemon.yaml"))?).await?;
            wait_ready(&builds, "ci").await?;

            // The example: one label, then docker build and run with the v29 CLI.
            let (log, _) = run_pod(&client, &builds, "build", &injected_build_pod("build", "ci")).await?;
            ensure!(log.contains("client 29.") && log.contains("one\ntwo\nthree"), "example build pod:\n{log}");
            // The daemon is the engine the chart ships (one source of truth: bump it, and the
            // harness builds that engine).
            let engine = format!("daemon {}", dind_operator::crd::DEFAULT_DOCKER_VERSION);
            ensure!(log.contains(&engine), "example build pod: {engine:?} missing:\n{log}");
            ensure!(!log.contains("Cannot connect"), "{log}");

            // Today's clients, one after the other.
            let pod = json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "clients", "labels": {"dind.dev/inject": "ci"}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "build", "image": CLIENT_IMAGE, "imagePullPolicy": "Never",
                    "command": ["/bin/sh", "-c", CLIENTS_SCRIPT]}]},
            });
            let (log, ran) = run_pod(&client, &builds, "clients", &pod.to_string()).await?;
            for want in [
                "client 29.",
                "one\ntwo",
                "loaded",
                "created\n",
                "created-without-endpoint",
                "compose-web",
                "run-p",
                "PASS",
                "all clients done",
            ] {
                ensure!(log.contains(want), "clients pod: {want:?} missing:\n{log}");
            }
            eprintln!("today's clients in an injected pod: all passed in {ran:?}");
            Ok(())
        })
        .await
    })
    .await;
}
