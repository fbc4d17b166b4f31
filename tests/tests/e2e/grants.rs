//! Docker as a service for restricted namespaces: a pool DindDaemon in a platform namespace
//! serves the pods of the tenants' namespaces it grants (`spec.clients`), each with a client
//! certificate of its own, minted for it and renewed while it lives.

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::PostParams;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;
use dind_operator::model::grant;

/// The certificates' lifetime here: the CRD's least, so renewal and expiry happen within a test.
const LIFETIME_S: u64 = 60;

/// A pod as Pod Security `restricted` admits it: non-root, no privilege, the runtime's seccomp.
fn restricted_pod(name: &str, labels: Value, script: &str, extra_env: Value, volumes: Value, mounts: Value) -> Value {
    let env: Vec<Value> =
        std::iter::once(json!({"name": "HOME", "value": "/tmp"})).chain(extra_env.as_array().cloned().unwrap_or_default()).collect();
    // A writable /tmp, as non-root jobs bring one (the image's is root's).
    let volumes: Vec<Value> =
        std::iter::once(json!({"name": "tmp", "emptyDir": {}})).chain(volumes.as_array().cloned().unwrap_or_default()).collect();
    let mounts: Vec<Value> =
        std::iter::once(json!({"name": "tmp", "mountPath": "/tmp"})).chain(mounts.as_array().cloned().unwrap_or_default()).collect();
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "runAsGroup": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "volumes": volumes,
            "containers": [{
                "name": "build", "image": CLIENT_IMAGE, "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", script],
                "env": env,
                "volumeMounts": mounts,
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
            }],
        },
    })
}

fn granted_labels(platform: &str, extra: &[(&str, &str)]) -> Value {
    let mut labels = json!({"dind.dev/inject": "ci", "dind.dev/inject-namespace": platform});
    for (k, v) in extra {
        labels[*k] = json!(v);
    }
    labels
}

async fn create_namespace(client: &Client, name: &str, labels: Value) -> anyhow::Result<()> {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))?;
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await?;
    // Pods need the namespace's default ServiceAccount (the controller-manager makes it).
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), name);
    eventually("the default ServiceAccount", Duration::from_secs(30), || {
        let sas = sas.clone();
        async move { Ok(sas.get_opt("default").await?.map(|_| ())) }
    })
    .await
}

/// A token of `audience` for pod `pod` of `ns` (its ServiceAccount `default`), as the kubelet
/// projects one.
async fn pod_token(client: &Client, ns: &str, pod: &str, audience: &str) -> anyhow::Result<String> {
    let uid = Api::<Pod>::namespaced(client.clone(), ns).get(pod).await?.metadata.uid.context("pod uid")?;
    let request = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {
        "audiences": [audience], "expirationSeconds": 600,
        "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": uid}}});
    let answer: Value = Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create_subresource("token", "default", &PostParams::default(), &request)
        .await?;
    answer["status"]["token"].as_str().map(str::to_string).context("no token in the TokenRequest's answer")
}

/// POSTs a certificate request to the operator replica at `addr` (verified as `server_name`
/// against `ca`): the status and body.
async fn ask(
    addr: SocketAddr,
    server_name: &str,
    tls: &Arc<rustls::ClientConfig>,
    token: Option<&str>,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut s = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(rustls::pki_types::ServerName::try_from(server_name.to_string())?, tcp)
        .await?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!(
        "POST /certificates HTTP/1.1\r\nHost: {server_name}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").context("an HTTP answer")?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("an HTTP status")?;
    Ok((status, body.to_string()))
}

/// What the clients pod prints after CLIENTS_SCRIPT: it waits for its certificate to be renewed
/// (it was minted at the start, for LIFETIME_S), uses Docker with the renewed one, and prints
/// its certificate and key (the test then plays a thief with them).
const RENEWAL_SCRIPT: &str = r#"
echo "step: renewal"
for i in $(seq 90); do [ "$(md5sum < "$DOCKER_CERT_PATH/cert.pem")" != "$first" ] && break; sleep 1; done
[ "$(md5sum < "$DOCKER_CERT_PATH/cert.pem")" != "$first" ] && echo "certificate renewed"
docker version --format 'after renewal {{.Server.Version}}'
echo "---cert---"; cat "$DOCKER_CERT_PATH/cert.pem"; echo "---key---"; cat "$DOCKER_CERT_PATH/key.pem"; echo "---ca---"; cat "$DOCKER_CERT_PATH/ca.pem"; echo "---end---"
"#;

fn between<'a>(log: &'a str, from: &str, to: &str) -> anyhow::Result<&'a str> {
    let rest = log.split_once(from).with_context(|| format!("{from} in the log"))?.1;
    Ok(rest.split_once(to).with_context(|| format!("{to} in the log"))?.0.trim_start_matches('\n'))
}

/// A pod of namespace `ns` with a stolen certificate (a ConfigMap) and nothing of ours: does the
/// daemon answer it?
async fn thief(client: &Client, ns: &str, name: &str, platform: &str, stolen: &[(&str, &str)]) -> anyhow::Result<String> {
    let data: serde_json::Map<String, Value> = stolen.iter().map(|(k, v)| ((*k).to_string(), json!(v))).collect();
    let cm: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(json!({"metadata": {"name": name}, "data": data}))?;
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), ns).create(&PostParams::default(), &cm).await?;
    let host = format!("tcp://ci-0.ci-daemons.{platform}.svc:2376");
    let pod = restricted_pod(
        name,
        json!({}),
        "docker version --format 'server {{.Server.Version}}' 2>&1 && echo REACHED || echo REFUSED",
        json!([{"name": "DOCKER_HOST", "value": host}, {"name": "DOCKER_TLS_VERIFY", "value": "1"}, {"name": "DOCKER_CERT_PATH", "value": "/stolen"}]),
        json!([{"name": "stolen", "configMap": {"name": name}}]),
        json!([{"name": "stolen", "mountPath": "/stolen", "readOnly": true}]),
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.create(&PostParams::default(), &serde_json::from_value(pod)?).await?;
    pod_ended(client, ns, name).await?;
    kubectl(&["logs", "-n", ns, name, "-c", "build"]).await
}

/// The kernel's uptime in seconds (10 ms steps): one clock for this machine and its pods (the
/// node is this machine, and uptime is not namespaced).
fn uptime() -> anyhow::Result<f64> {
    Ok(std::fs::read_to_string("/proc/uptime")?.split_whitespace().next().context("uptime")?.parse()?)
}

/// Milliseconds from creating the pod to its first `docker version` answered (the pod prints
/// the kernel's uptime then).
async fn to_first_answer(client: &Client, ns: &str, name: &str, labels: Value) -> anyhow::Result<f64> {
    let pod = restricted_pod(name, labels, "docker version >/dev/null && cut -d' ' -f1 /proc/uptime", json!([]), json!([]), json!([]));
    let created = uptime()?;
    let (log, _) = run_pod(client, ns, name, &pod.to_string()).await?;
    let answered: f64 = log.trim().lines().last().unwrap_or_default().parse().with_context(|| format!("an uptime in {log:?}"))?;
    Api::<Pod>::namespaced(client.clone(), ns).delete(name, &DeleteParams::background()).await?;
    Ok((answered - created) * 1000.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// The operator's container: its process's CPU seconds so far (utime + stime, from the host).
async fn operator_cpu_seconds(client: &Client, ns: &str, pod: &str) -> anyhow::Result<f64> {
    let p = Api::<Pod>::namespaced(client.clone(), ns).get(pod).await?;
    let id = p
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|cs| cs.into_iter().find(|c| c.name == "operator"))
        .and_then(|c| c.container_id)
        .context("the operator's container id")?;
    let id = id.trim_start_matches("containerd://");
    let tasks = ctr(&["task", "ls"])?;
    let pid = tasks.lines().find(|l| l.starts_with(id)).and_then(|l| l.split_whitespace().nth(1)).context("the operator's task")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat.rsplit_once(')').context("stat")?.1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

#[tokio::test]
async fn e2e_a_restricted_namespace_gets_docker_from_a_granted_pool_with_certificates_of_its_own() {
    require_node();
    with_namespace("e2e-grants", |client, ns| async move {
        let platform = format!("{ns}-dind");
        let team = format!("{ns}-team");
        let other = format!("{ns}-other");
        let restricted = |extra: (&str, &str)| {
            let mut labels = json!({"pod-security.kubernetes.io/enforce": "restricted"});
            labels[extra.0] = json!(extra.1);
            labels
        };
        let outcome = async {
            // The platform's namespace admits privileged pods (its daemons'); the tenants' stay
            // `restricted`. The platform's own pods get Docker the usual way (opted in).
            create_namespace(&client, &platform, json!({"dind.dev/injection": "enabled"})).await?;
            create_namespace(&client, &team, restricted(("dind.dev/tenant", "true"))).await?;
            create_namespace(&client, &other, restricted(("dind.dev/tenant", "no"))).await?;
            install_operator_with(&client, &ns, &platform, &[]).await?;
            let dd = json!({"apiVersion": "dind.dev/v1alpha1", "kind": "DindDaemon", "metadata": {"name": "ci"}, "spec": {
                "storage": {"size": "2Gi"},
                "tls": {"clientCertificateLifetimeSeconds": LIFETIME_S},
                "clients": {"namespaceSelector": {"matchLabels": {"dind.dev/tenant": "true"}}}}});
            kubectl_apply(&platform, &dd.to_string()).await?;
            wait_ready(&platform, "ci").await?;

            // 1. Figures: pod created -> first `docker version` answered, with the shared
            // Secret (a pod of the platform's namespace) and with a minted certificate (a
            // tenant's pod: the CSR round trip and the sidecar's start).
            let (mut shared, mut minted) = (Vec::new(), Vec::new());
            for i in 0..3 {
                shared.push(to_first_answer(&client, &platform, &format!("shared-{i}"), json!({"dind.dev/inject": "ci"})).await?);
                minted.push(to_first_answer(&client, &team, &format!("minted-{i}"), granted_labels(&platform, &[])).await?);
            }
            let (s, m) = (median(shared.clone()), median(minted.clone()));
            eprintln!(
                "BENCH pod create -> first docker version: shared Secret {s:.0} ms (runs {shared:.0?}), minted certificate {m:.0} ms (runs {minted:.0?}); ratio {:.2}",
                m / s
            );

            // 2. Today's clients as a `restricted` tenant (uid 1000, no privilege): build, run,
            // buildx, compose, -p, Testcontainers; then the certificate is renewed under it.
            let script = format!(
                "first=$(md5sum < \"$DOCKER_CERT_PATH/cert.pem\")\n{}{RENEWAL_SCRIPT}",
                super::clients::CLIENTS_SCRIPT
            );
            let pod = restricted_pod("clients", granted_labels(&platform, &[]), &script, json!([]), json!([]), json!([]));
            let (log, ran) = run_pod(&client, &team, "clients", &pod.to_string()).await?;
            for want in ["client 29.", "one\ntwo", "loaded", "created\n", "compose-web", "run-p", "PASS", "all clients done", "certificate renewed", "after renewal"] {
                ensure!(log.contains(want), "the tenant's clients pod: {want:?} missing:\n{log}");
            }
            eprintln!("today's clients in a restricted tenant namespace, over a minted certificate: all passed in {ran:?}");
            let injected = Api::<Pod>::namespaced(client.clone(), &team).get("clients").await?;
            let spec = serde_json::to_value(injected.spec.as_ref().context("spec")?)?;
            let volumes = spec["volumes"].to_string();
            ensure!(!volumes.contains("\"secret\""), "no Secret reaches a tenant's pod: {volumes}");
            let sidecar_log = kubectl(&["logs", "-n", &team, "clients", "-c", "dind-certs"]).await?;
            ensure!(sidecar_log.contains("client certificate minted") && sidecar_log.contains("client certificate renewed"), "{sidecar_log}");
            let stolen_cert = between(&log, "---cert---", "---key---")?.to_string();
            let stolen_key = between(&log, "---key---", "---ca---")?.to_string();
            let stolen_ca = between(&log, "---ca---", "---end---")?.to_string();
            let info = dind_operator::model::tls::inspect(&stolen_cert)?;
            let subject = String::from_utf8_lossy(&info.subject_der).into_owned();
            ensure!(subject.contains(&format!("{team}/clients")), "the certificate names the pod: {subject:?}");
            let life = info.not_after - info.not_before;
            ensure!(life <= time::Duration::seconds(LIFETIME_S as i64 + 60), "a certificate of {life} (bound: {LIFETIME_S} s)");
            let stolen = [("ca.pem", stolen_ca.as_str()), ("cert.pem", stolen_cert.as_str()), ("key.pem", stolen_key.as_str())];

            // 3. Another namespace, not granted: its labelled pod is refused, naming the grant.
            let refused = kubectl_apply(&other, &restricted_pod("nope", granted_labels(&platform, &[]), "true", json!([]), json!([]), json!([])).to_string()).await;
            let words = format!("{:#}", refused.err().context("a pod of an ungranted namespace was admitted")?);
            ensure!(words.contains(&format!("namespace \"{other}\" is not granted by DindDaemon {platform}/ci")), "{words}");

            // 4. The daemon's NetworkPolicy admits the granted namespace's client pods, not the
            // other's (asserted on the object: this cluster's network plugin does not enforce).
            let np = Api::<NetworkPolicy>::namespaced(client.clone(), &platform).get("ci").await?;
            let ingress = np.spec.context("spec")?.ingress.context("ingress")?;
            let ns_labels = |n: &str, tenant: &str| grant::Labels::from([("kubernetes.io/metadata.name".into(), n.to_string()), ("dind.dev/tenant".into(), tenant.to_string())]);
            let pod_labels = injected.metadata.labels.clone().unwrap_or_default();
            let admits = |namespace: &grant::Labels, pod: &grant::Labels| {
                ingress[0].from.iter().flatten().any(|peer| {
                    peer.namespace_selector.as_ref().is_some_and(|s| grant::matches(s, namespace))
                        && peer.pod_selector.as_ref().is_some_and(|s| grant::matches(s, pod))
                })
            };
            ensure!(admits(&ns_labels(&team, "true"), &pod_labels), "the granted namespace's client pod is admitted: {ingress:?}");
            ensure!(!admits(&ns_labels(&other, "no"), &pod_labels), "the other namespace is not: {ingress:?}");
            ensure!(!admits(&ns_labels(&team, "true"), &grant::Labels::new()), "an unlabelled pod of the granted namespace is not");

            // 5. The stolen certificate from a pod of the other namespace: valid for now (only the
            // NetworkPolicy stands in its way, which this cluster does not enforce)...
            let log = thief(&client, &other, "thief-early", &platform, &stolen).await?;
            ensure!(log.contains("REACHED"), "a valid certificate should reach the daemon where nothing enforces the policy:\n{log}");

            // 6. The certificate endpoint, as a forger would call it (straight to a replica).
            let ip = Api::<Pod>::namespaced(client.clone(), &ns)
                .list(&ListParams::default().labels("app.kubernetes.io/name=dind-operator"))
                .await?
                .items
                .into_iter()
                .find_map(|p| Some((p.metadata.name.clone()?, p.status.as_ref()?.pod_ip.clone()?)))
                .context("an operator pod")?;
            let (operator_pod, operator_ip) = ip;
            let addr: SocketAddr = format!("{operator_ip}:9443").parse()?;
            let args = spec["initContainers"][0]["args"].as_array().context("the sidecar's args")?;
            let ca_b64 = args.iter().filter_map(Value::as_str).find_map(|a| a.strip_prefix("--operator-ca=")).context("--operator-ca")?;
            let mut roots = rustls::RootCertStore::empty();
            use rustls::pki_types::pem::PemObject as _;
            for c in rustls::pki_types::CertificateDer::pem_slice_iter(&base64::engine::general_purpose::STANDARD.decode(ca_b64)?) {
                roots.add(c?)?;
            }
            let tls = Arc::new(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth());
            let server_name = format!("op-dind-operator-webhook.{ns}.svc");
            let key = rcgen::KeyPair::generate()?;
            let csr = rcgen::CertificateParams::default().serialize_request(&key)?.pem()?;
            let body = json!({"daemon": format!("{platform}/ci"), "csr": csr}).to_string();
            // A pod that runs a build for a while, granted: the control (its token is answered).
            let long = "fails=0; for i in $(seq 80); do docker version --format ok >/dev/null 2>&1 || fails=$((fails+1)); sleep 1; done; echo \"failures: $fails\"";
            let sleeper = restricted_pod("long-build", granted_labels(&platform, &[]), long, json!([]), json!([]), json!([]));
            let pods: Api<Pod> = Api::namespaced(client.clone(), &team);
            pods.create(&PostParams::default(), &serde_json::from_value(sleeper)?).await?;
            eventually("the long build running", READY, || {
                let pods = pods.clone();
                async move { Ok(pods.get("long-build").await?.status.and_then(|s| s.phase).filter(|p| p == "Running")) }
            })
            .await?;
            let good = pod_token(&client, &team, "long-build", "dind.dev/client-certificates").await?;
            let (status, answer) = ask(addr, &server_name, &tls, Some(&good), &body).await?;
            ensure!(status == 200 && answer.contains("BEGIN CERTIFICATE"), "the granted pod's own token: {status} {answer}");
            let wrong_audience = pod_token(&client, &team, "long-build", "https://kubernetes.default.svc").await?;
            let thief_token = pod_token(&client, &other, "thief-early", "dind.dev/client-certificates").await?;
            let mut forged = good.clone();
            forged.truncate(forged.len() - 4);
            forged.push_str("AAAA");
            for (what, token, want_status, want_words) in [
                ("no token", None, 401, "no bearer token"),
                ("a forged token", Some(forged.as_str()), 401, "not valid"),
                ("a token of another audience", Some(wrong_audience.as_str()), 401, "not valid"),
                ("a token of an ungranted namespace's pod", Some(thief_token.as_str()), 403, &*format!("pod {other}/thief-early")),
            ] {
                let (status, answer) = ask(addr, &server_name, &tls, token, &body).await?;
                ensure!(status == want_status && answer.contains(want_words) && !answer.contains("BEGIN CERTIFICATE"), "{what}: {status} {answer}");
            }

            // 7. Figures: the operator minting at 50 requests a second (200 requests, each with
            // a token of its own, all bound to the running pod), against one replica.
            let mut tokens = Vec::new();
            for _ in 0..200 {
                tokens.push(pod_token(&client, &team, "long-build", "dind.dev/client-certificates").await?);
            }
            let cpu_before = operator_cpu_seconds(&client, &ns, &operator_pod).await?;
            let started = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for (i, token) in tokens.into_iter().enumerate() {
                let (tls, server_name, body) = (tls.clone(), server_name.clone(), body.clone());
                tasks.spawn(async move {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(started + Duration::from_millis(20 * i as u64))).await;
                    let t = Instant::now();
                    let (status, _) = ask(addr, &server_name, &tls, Some(&token), &body).await?;
                    anyhow::Ok((status, t.elapsed().as_secs_f64() * 1000.0))
                });
            }
            let mut latencies = Vec::new();
            while let Some(done) = tasks.join_next().await {
                let (status, ms) = done??;
                ensure!(status == 200, "a minting request answered {status}");
                latencies.push(ms);
            }
            let wall = started.elapsed().as_secs_f64();
            let cpu = operator_cpu_seconds(&client, &ns, &operator_pod).await? - cpu_before;
            eprintln!(
                "BENCH minting at 50/s: {} certificates in {wall:.1} s; per certificate p50 {:.1} ms, p99 {:.1} ms; operator CPU {cpu:.2} s ({:.1} ms per certificate, {:.0}% of a core)",
                latencies.len(),
                percentile(&mut latencies, 0.5),
                percentile(&mut latencies, 0.99),
                cpu * 1000.0 / 200.0,
                cpu / wall * 100.0
            );

            // 8. The operator restarts (both replicas roll) while the long build renews its
            // certificate: no `docker version` of it fails, and it renews after the restart.
            kubectl(&["rollout", "restart", "deployment/op-dind-operator", "-n", &ns]).await?;
            kubectl(&["rollout", "status", "deployment/op-dind-operator", "-n", &ns, "--timeout=180s"]).await?;
            let restarted = Instant::now();
            let phase = pod_ended(&client, &team, "long-build").await?;
            let log = kubectl(&["logs", "-n", &team, "long-build", "-c", "build"]).await?;
            ensure!(phase == "Succeeded" && log.contains("failures: 0"), "the long build across the operator's restart ({phase}):\n{log}");
            let renewals = kubectl(&["logs", "-n", &team, "long-build", "-c", "dind-certs"]).await?;
            ensure!(renewals.matches("client certificate renewed").count() >= 1, "{renewals}");
            eprintln!("the long build: 80 s, 0 failures, across an operator restart ({:?} before its end)", restarted.elapsed());

            // 9. The stolen certificate once its pod is gone and it has expired: refused.
            pods.delete("clients", &DeleteParams::background()).await?;
            let left = info.not_after - time::OffsetDateTime::now_utc();
            if left.is_positive() {
                tokio::time::sleep(Duration::from_secs_f64(left.as_seconds_f64()) + Duration::from_secs(2)).await;
            }
            let log = thief(&client, &other, "thief-late", &platform, &stolen).await?;
            ensure!(log.contains("REFUSED") && !log.contains("REACHED"), "an expired certificate of a deleted pod:\n{log}");
            ensure!(log.contains("expired") || log.contains("bad certificate"), "{log}");
            Ok(())
        }
        .await;
        for n in [&platform, &team, &other] {
            let _ = Api::<Namespace>::all(client.clone()).delete(n, &DeleteParams::background()).await;
        }
        outcome
    })
    .await;
}
