//! Benchmark on the harness's node and registry: `docker pull` of a 100 MB image from the
//! harness registry (TLS, htpasswd) through a DindDaemon (an injected build pod's daemon, which
//! trusts the registry through `registryCAs`), against the node's own containerd pulling the
//! same image (`ctr images pull`, unpacked as dockerd unpacks). Prints each pull and the ratio of
//! medians. Needs the cluster with its node and registry, and the test dockerd (it makes and
//! pushes the image): tests/docker/dockerd.sh up, tests/cluster/cluster.sh up.
//!
//!   cargo run --release -p dind-tests --bin bench-registry [-- RUNS]

use std::process::Command;
use std::time::Instant;

use anyhow::ensure;
use dind_tests::pods::CLIENT_IMAGE;
use dind_tests::{CHART, chart_image_sets, client, cluster_dir, kubectl_apply, registry_file, run_tool, suffix};
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;

fn sh(script: &str, env: &[(&str, &str)]) -> anyhow::Result<String> {
    let out = Command::new("/bin/sh").arg("-ec").arg(script).envs(env.iter().copied()).output()?;
    ensure!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let registry = registry_file("host")?;
    let password = registry_file("password")?;
    let user = registry_file("user")?;
    let image = format!("{registry}/bench/big:{}", suffix());
    let docker_config = cluster_dir().join("registry/docker-config");

    // The image: 100 MB of random bytes in one layer (nothing to compress), made and pushed by
    // the test dockerd, so no daemon under test holds its layer before the first pull.
    sh(
        r#"d=$(mktemp -d); head -c 100000000 /dev/urandom > "$d/big"; tar -C "$d" -c big | docker import - "$IMAGE" >/dev/null
           rm -rf "$d"; docker push -q "$IMAGE" >/dev/null; docker rmi "$IMAGE" >/dev/null"#,
        &[("IMAGE", &image), ("DOCKER_CONFIG", docker_config.to_str().unwrap_or_default())],
    )?;

    // Through the node's containerd (its certs.d trusts the registry), unpacked.
    let engine = std::fs::read_to_string(cluster_dir().join("engine"))?.trim().to_string();
    let hosts = cluster_dir().join("node/certs.d");
    let mut node = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        sh(
            r#"export CONTAINERD_ADDRESS=/run/dind-node/containerd.sock CONTAINERD_NAMESPACE=bench-pull
               "$CTR" images pull --hosts-dir "$HOSTS" --user "$USER_NAME:$PASSWORD" "$IMAGE" >/dev/null
               "$CTR" images rm --sync "$IMAGE" >/dev/null"#,
            &[
                ("CTR", &format!("{engine}/node/ctr")),
                ("HOSTS", hosts.to_str().unwrap_or_default()),
                ("PASSWORD", &password),
                ("USER_NAME", &user),
                ("IMAGE", &image),
            ],
        )?;
        node.push(start.elapsed().as_secs_f64());
    }

    // Through a DindDaemon: the build pod pulls (credentials as a dockerconfigjson Secret).
    let client = client().await?;
    let ns = format!("bench-registry-{}", suffix());
    let builds = format!("{ns}-builds");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for (name, labels) in [(&ns, json!({})), (&builds, json!({"dind.dev/injection": "enabled"}))] {
        namespaces.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))?).await?;
    }
    let result = async {
        let watch = format!("watchNamespaces={{{builds}}}");
        let images = chart_image_sets();
        let mut args = vec!["install", "op", CHART, "-n", &ns, "--set", &watch, "--wait", "--timeout", "180s"];
        for set in &images {
            args.extend(["--set", set.as_str()]);
        }
        run_tool("helm", &args).await?;
        let ca = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "registry-ca"}, "data": {"ca.crt": registry_file("ca.crt")?}});
        kubectl_apply(&builds, &ca.to_string()).await?;
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "regcred"}, "type": "kubernetes.io/dockerconfigjson",
            "stringData": {".dockerconfigjson": registry_file("docker-config/config.json")?}});
        kubectl_apply(&builds, &secret.to_string()).await?;
        let dd = json!({"apiVersion": "dind.dev/v1alpha1", "kind": "DindDaemon", "metadata": {"name": "pull"},
            "spec": {"storage": {"size": "2Gi"}, "daemon": {"registryCAs": [{"registry": registry, "configMap": "registry-ca"}]}}});
        kubectl_apply(&builds, &dd.to_string()).await?;
        run_tool("kubectl", &["wait", "-n", &builds, "--for=condition=Ready", "dind/pull", "--timeout=300s"]).await?;
        let script = format!(
            "for i in $(seq {runs}); do a=$(cut -d' ' -f1 /proc/uptime); docker pull -q \"$IMAGE\" >/dev/null; \
             b=$(cut -d' ' -f1 /proc/uptime); echo \"PULL $a $b\"; docker rmi \"$IMAGE\" >/dev/null; done"
        );
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "puller", "labels": {"dind.dev/inject": "pull"}},
            "spec": {"restartPolicy": "Never",
                "volumes": [{"name": "regcred", "secret": {"secretName": "regcred", "items": [{"key": ".dockerconfigjson", "path": "config.json"}]}}],
                "containers": [{"name": "b", "image": CLIENT_IMAGE, "imagePullPolicy": "Never", "env": [{"name": "IMAGE", "value": image}],
                    "volumeMounts": [{"name": "regcred", "mountPath": "/root/.docker", "readOnly": true}],
                    "command": ["/bin/sh", "-ec", script]}]}});
        kubectl_apply(&builds, &pod.to_string()).await?;
        run_tool("kubectl", &["wait", "-n", &builds, "--for=jsonpath={.status.phase}=Succeeded", "pod/puller", "--timeout=600s"]).await?;
        let log = run_tool("kubectl", &["logs", "-n", &builds, "puller"]).await?;
        let dind: Vec<f64> = log
            .lines()
            .filter_map(|l| {
                let v: Vec<f64> = l.strip_prefix("PULL ")?.split(' ').filter_map(|x| x.parse().ok()).collect();
                (v.len() == 2).then(|| v[1] - v[0])
            })
            .collect();
        ensure!(dind.len() == runs, "puller log:\n{log}");
        println!("pull of 100 MB from the harness registry, {runs} runs each:");
        println!("  node containerd (ctr pull + unpack): {}", node.iter().map(|s| format!("{s:.2} s")).collect::<Vec<_>>().join(", "));
        println!("  through DindDaemon (docker pull):    {}", dind.iter().map(|s| format!("{s:.2} s")).collect::<Vec<_>>().join(", "));
        println!("  median ratio DindDaemon / node: {:.2}x", median(dind) / median(node.clone()));
        Ok(())
    }
    .await;
    let _ = run_tool("helm", &["uninstall", "op", "-n", &ns]).await;
    for name in [&builds, &ns] {
        let _ = namespaces.delete(name, &DeleteParams::background()).await;
    }
    result
}
