//! The chart installed on the harness: install and uninstall, the chart's RBAC proven enough and
//! no wider, and the platform policy refusing a tenant.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use dind_tests::{CHART, Operator, chart_image_sets, chart_policy_only_in, eventually, kubeconfig_path, run_tool, suffix, with_namespace};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use super::helm;

/// `kubectl auth can-i VERB RESOURCE -n NAMESPACE --as WHO`: yes or no (it answers "no" with
/// exit status 1). `RESOURCE/SUB` is a subresource (kubectl reads `TYPE/NAME`, so it goes as
/// `--subresource`).
async fn can_i(who: &str, verb: &str, resource: &str, namespace: &str) -> anyhow::Result<bool> {
    let (resource, sub) = resource.split_once('/').map_or((resource, None), |(r, s)| (r, Some(s)));
    let sub = sub.map(|s| format!("--subresource={s}"));
    let mut args = vec!["auth", "can-i", verb, resource, "-n", namespace, "--as", who];
    args.extend(sub.as_deref());
    Ok(run_tool("kubectl", &args).await.is_ok_and(|o| o.trim() == "yes"))
}

#[tokio::test]
async fn install_then_uninstall_leaves_only_the_crd() {
    with_namespace("helm-install", |client: Client, ns: String| async move {
        let release = format!("dind-{}", suffix());
        let policy = chart_policy_only_in(&ns);
        let mut args = vec!["install", &release, CHART, "-n", &ns, "--set", &policy];
        let images = chart_image_sets();
        for set in &images {
            args.extend(["--set", set.as_str()]);
        }
        helm(&args).await?;
        let full = format!("{release}-dind-operator");
        let deploy = Api::<Deployment>::namespaced(client.clone(), &ns).get(&full).await?;
        let pod = deploy.spec.context("spec")?.template.spec.context("pod spec")?;
        let sc = pod.containers[0].security_context.clone().context("securityContext")?;
        ensure!(sc.read_only_root_filesystem == Some(true) && sc.allow_privilege_escalation == Some(false));
        ensure!(pod.security_context.and_then(|s| s.run_as_non_root) == Some(true));
        Api::<ServiceAccount>::namespaced(client.clone(), &ns).get(&full).await?;
        // Measured before: the default values gave a ClusterRole that could read every Secret
        // and create StatefulSets in any namespace. Now only the watched namespaces (default:
        // `default`) are within reach.
        ensure!(Api::<ClusterRole>::all(client.clone()).get_opt(&full).await?.is_none(), "the default values made a ClusterRole");
        let who = format!("system:serviceaccount:{ns}:{full}");
        let can = |verb: &'static str, resource: &'static str, namespace: &'static str| {
            let who = who.clone();
            async move { can_i(&who, verb, resource, namespace).await }
        };
        ensure!(!can("list", "secrets", "kube-system").await?, "the operator can list Secrets in kube-system");
        ensure!(!can("create", "statefulsets.apps", "kube-system").await?, "the operator can create StatefulSets in kube-system");
        ensure!(can("create", "statefulsets.apps", "default").await?, "the operator cannot work in its watched namespace");
        ensure!(can("get", "secrets", "default").await?, "the operator cannot read Secrets where its DindDaemons live");

        // Tenants: a team bound to the built-in `view` or `edit` may read DindDaemons (before:
        // neither could even list them); `edit` may manage them only with tenantRbac.editRights.
        for (user, role) in [("alice", "edit"), ("bob", "view")] {
            let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": format!("{user}-{role}"), "namespace": ns},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]});
            Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(client.clone(), &ns)
                .create(&Default::default(), &serde_json::from_value(binding)?)
                .await?;
        }
        let tenant_can = |verb: &'static str, resource: &'static str, user: &'static str| {
            let ns = ns.clone();
            async move { can_i(user, verb, resource, &ns).await }
        };
        // The controller-manager aggregates the chart's rules into the built-in roles.
        eventually("view aggregates the DindDaemon rules", Duration::from_secs(30), || async {
            Ok(tenant_can("list", "dinddaemons.dind.dev", "bob").await?.then_some(()))
        })
        .await?;
        ensure!(tenant_can("list", "dinddaemons.dind.dev", "alice").await?, "edit cannot list DindDaemons");
        ensure!(!tenant_can("create", "dinddaemons.dind.dev", "alice").await?, "edit can create DindDaemons by default");
        let mut upgrade = vec!["upgrade", &release, CHART, "-n", &ns, "--reuse-values", "--set", "tenantRbac.editRights=true"];
        upgrade.extend(["--set", "crds.upgrade=false"]);
        helm(&upgrade).await?;
        eventually("edit aggregates the DindDaemon rules", Duration::from_secs(30), || async {
            Ok(tenant_can("create", "dinddaemons.dind.dev", "alice").await?.then_some(()))
        })
        .await?;
        ensure!(tenant_can("patch", "dinddaemons.dind.dev/scale", "alice").await?, "edit cannot scale");
        ensure!(tenant_can("list", "dinddaemons.dind.dev", "bob").await?, "view cannot list DindDaemons");
        ensure!(!tenant_can("create", "dinddaemons.dind.dev", "bob").await?, "view can create DindDaemons");
        ensure!(!tenant_can("patch", "dinddaemons.dind.dev/status", "alice").await?, "edit can write status");
        helm(&["uninstall", &release, "-n", &ns, "--wait"]).await?;
        let tenant_roles = Api::<ClusterRole>::all(client.clone());
        ensure!(tenant_roles.get_opt(&format!("{full}-edit")).await?.is_none(), "the tenant ClusterRole left behind");
        ensure!(Api::<Deployment>::namespaced(client.clone(), &ns).get_opt(&full).await?.is_none(), "Deployment left behind");
        let roles: Api<k8s_openapi::api::rbac::v1::Role> = Api::namespaced(client.clone(), "default");
        ensure!(roles.get_opt(&full).await?.is_none(), "Role in the watched namespace left behind");
        let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
            Api::all(client.clone());
        ensure!(crds.get_opt("dinddaemons.dind.dev").await?.is_some(), "Helm keeps CRDs on uninstall; ours is gone");
        Ok(())
    })
    .await;
}

/// A kubeconfig that authenticates with `token` instead of the admin certificate.
fn token_kubeconfig(token: &str) -> anyhow::Result<std::path::PathBuf> {
    let admin = std::fs::read_to_string(kubeconfig_path())?;
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&admin)?;
    doc["users"][0]["user"] = serde_yaml::to_value(json!({"token": token}))?;
    let path = std::env::temp_dir().join(format!("dind-sa-kubeconfig-{}", suffix()));
    std::fs::write(&path, serde_yaml::to_string(&doc)?)?;
    Ok(path)
}

#[tokio::test]
async fn the_charts_rbac_is_enough_for_the_operator_and_no_wider() {
    with_namespace("helm-rbac", |client: Client, ns: String| async move {
        let release = format!("dind-{}", suffix());
        let watch = format!("watchNamespaces={{{ns}}}");
        // No images of the harness here: the CRD hook (which would pull the operator's) is off.
        helm(&[
            "install",
            &release,
            CHART,
            "-n",
            &ns,
            "--set",
            &watch,
            "--set",
            "replicas=2",
            "--set",
            &chart_policy_only_in(&ns),
            "--set",
            "crds.upgrade=false",
        ])
        .await?;
        let full = format!("{release}-dind-operator");
        let token = Api::<ServiceAccount>::namespaced(client.clone(), &ns)
            .create_token_request(&full, &PostParams::default(), &TokenRequest::default())
            .await?
            .status
            .context("token")?
            .token;
        let kubeconfig = token_kubeconfig(&token)?;
        let result = async {
            // The operator, out of cluster, as the chart's ServiceAccount, with leader election
            // and the injection webhook (its Secret and the chart's configuration's caBundle).
            let webhook_addr = dind_tests::free_local_addr()?.to_string();
            let _op = Operator::start_with_kubeconfig(
                &kubeconfig,
                &ns,
                &[
                    "--leader-election",
                    "--lease-namespace",
                    &ns,
                    "--lease-name",
                    &full,
                    "--webhook-addr",
                    &webhook_addr,
                    "--webhook-configuration",
                    &full,
                    "--webhook-secret",
                    &format!("{full}-webhook-tls"),
                ],
            )?;
            let dd: dind_operator::crd::DindDaemon = serde_json::from_value(json!({
                "apiVersion": "dind.dev/v1alpha1", "kind": "DindDaemon", "metadata": {"name": "rbac"}, "spec": {}
            }))?;
            Api::<dind_operator::crd::DindDaemon>::namespaced(client.clone(), &ns).create(&PostParams::default(), &dd).await?;
            let status = eventually("reconciled as the chart's ServiceAccount", Duration::from_secs(60), || {
                let api: Api<dind_operator::crd::DindDaemon> = Api::namespaced(client.clone(), &ns);
                async move { Ok(api.get("rbac").await?.status.filter(|s| s.observed_generation == Some(1))) }
            })
            .await?;
            ensure!(status.client_secret_name.as_deref() == Some("rbac-client"));
            Api::<StatefulSet>::namespaced(client.clone(), &ns).get("rbac").await?;
            let mwcs: Api<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration> = Api::all(client.clone());
            eventually("the webhook's caBundle kept as the chart's ServiceAccount", Duration::from_secs(30), || {
                let mwcs = mwcs.clone();
                let full = full.clone();
                async move {
                    let mwc = mwcs.get(&full).await?;
                    Ok(mwc.webhooks.unwrap_or_default().first().and_then(|w| w.client_config.ca_bundle.clone()).map(|_| ()))
                }
            })
            .await?;
            Api::<Secret>::namespaced(client.clone(), &ns).get(&format!("{full}-webhook-tls")).await?;

            // Not wider: the same identity may not delete, nor read Secrets elsewhere.
            let sa_client = Client::try_from(
                kube::Config::from_custom_kubeconfig(kube::config::Kubeconfig::read_from(&kubeconfig)?, &Default::default()).await?,
            )?;
            let err =
                Api::<StatefulSet>::namespaced(sa_client.clone(), &ns).delete("rbac", &DeleteParams::default()).await.expect_err("delete");
            ensure!(matches!(&err, kube::Error::Api(s) if s.code == 403), "delete statefulset: {err}");
            let err = Api::<Secret>::namespaced(sa_client.clone(), "kube-system").list(&ListParams::default()).await.expect_err("list");
            ensure!(matches!(&err, kube::Error::Api(s) if s.code == 403), "secrets in kube-system: {err}");
            let err =
                Api::<Secret>::namespaced(sa_client, &ns).delete("rbac-client", &DeleteParams::default()).await.expect_err("delete secret");
            ensure!(matches!(&err, kube::Error::Api(s) if s.code == 403), "delete secret: {err}");
            Ok(())
        }
        .await;
        let _ = std::fs::remove_file(&kubeconfig);
        helm(&["uninstall", &release, "-n", &ns]).await?;
        result
    })
    .await;
}

/// Measured before: a tenant could create a DindDaemon with any image, TLS off, tolerating every
/// taint (control-plane nodes included), any runtime class. The chart's policy (a
/// ValidatingAdmissionPolicy, the values written into its CEL) makes the apiserver refuse each,
/// naming the rule, to a tenant whose only right is to create DindDaemons in its namespace; a
/// spec within the policy is accepted; a narrowed policy applies at once.
#[tokio::test]
async fn the_platform_policy_refuses_a_tenant_each_forbidden_spec_naming_the_rule() {
    with_namespace("policy", |client: Client, ns: String| async move {
        let release = format!("pol-{}", suffix());
        let only_here = chart_policy_only_in(&ns);
        let render = |namespaces: &'static str, watched: Option<&'static str>| {
            let (release, ns, only_here) = (release.clone(), ns.clone(), only_here.clone());
            async move {
                // The operator watches this namespace unless the call says which.
                let watch = format!("watchNamespaces={{{}}}", watched.unwrap_or(&ns));
                let rendered = helm(&[
                    "template",
                    &release,
                    CHART,
                    "--namespace",
                    &ns,
                    "--show-only",
                    "templates/policy.yaml",
                    "--set",
                    &only_here,
                    "--set",
                    "policy.allowedImagePrefixes={registry.corp/}",
                    "--set",
                    "policy.allowedSecurityModes={Capabilities}",
                    "--set",
                    "placement.allowedTolerationKeys={dind.dev/pool}",
                    "--set",
                    namespaces,
                    "--set",
                    &watch,
                ])
                .await?;
                let file = std::env::temp_dir().join(format!("dind-policy-{}.yaml", suffix()));
                std::fs::write(&file, &rendered)?;
                anyhow::Ok(file.to_string_lossy().to_string())
            }
        };
        let file = render("policy.allowedNamespaces={*}", None).await?;
        run_tool("kubectl", &["apply", "-f", &file]).await?;
        let narrowed = render("policy.allowedNamespaces={builds}", None).await?;
        let unserved = render("policy.allowedNamespaces={*}", Some("elsewhere")).await?;
        let result = tenant_is_refused(&client, &ns, &narrowed, &unserved).await;
        let _ = run_tool("kubectl", &["delete", "--ignore-not-found", "-f", &file]).await;
        for f in [file, narrowed, unserved] {
            let _ = std::fs::remove_file(f);
        }
        result
    })
    .await;
}

async fn tenant_is_refused(client: &Client, ns: &str, narrowed: &str, unserved: &str) -> anyhow::Result<()> {
    use dind_operator::crd::DindDaemon;
    // The tenant: may create (and read) DindDaemons in its namespace, nothing else.
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "tenant"}}))?;
    Api::<ServiceAccount>::namespaced(client.clone(), ns).create(&PostParams::default(), &sa).await?;
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "tenant", "namespace": ns},
        "rules": [{"apiGroups": ["dind.dev"], "resources": ["dinddaemons"], "verbs": ["create", "get"]}]});
    let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "tenant", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tenant"},
        "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": ns}]});
    let pp = PostParams::default();
    Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(client.clone(), ns).create(&pp, &serde_json::from_value(role)?).await?;
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(client.clone(), ns).create(&pp, &serde_json::from_value(binding)?).await?;
    let token = Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create_token_request("tenant", &pp, &TokenRequest::default())
        .await?
        .status
        .context("token")?
        .token;
    let kubeconfig = token_kubeconfig(&token)?;
    let tenant = Client::try_from(
        kube::Config::from_custom_kubeconfig(kube::config::Kubeconfig::read_from(&kubeconfig)?, &Default::default()).await?,
    )?;
    let _ = std::fs::remove_file(&kubeconfig);
    let api: Api<DindDaemon> = Api::namespaced(tenant, ns);
    let n = std::sync::atomic::AtomicU32::new(0);
    let try_create = |spec: serde_json::Value| {
        let api = api.clone();
        let name = format!("t{}", n.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        async move {
            let dd: DindDaemon = serde_json::from_value(json!({"apiVersion": "dind.dev/v1alpha1", "kind": "DindDaemon",
                "metadata": {"name": name}, "spec": spec}))?;
            anyhow::Ok(api.create(&PostParams::default(), &dd).await)
        }
    };
    let capabilities = json!({"mode": "Capabilities"});
    // The apiserver loads a new policy within a second or so: wait until a refusal that only
    // this test's parameters make (another test's chart install may bind its defaults too).
    eventually("the policy in force", Duration::from_secs(30), || {
        let attempt = try_create(json!({}));
        async move { Ok(attempt.await?.err().filter(|e| e.to_string().contains("allowedSecurityModes")).map(|_| ())) }
    })
    .await?;
    let forbidden = [
        (json!({"image": "evil.example/docker:dind", "security": capabilities}), "allowedImagePrefixes"),
        (json!({"initImage": "evil.example/dind-init", "security": capabilities}), "allowedImagePrefixes"),
        (json!({"tls": {"enabled": false}, "port": 2375, "security": capabilities}), "allowTlsDisabled"),
        (json!({"tolerations": [{"operator": "Exists"}], "security": capabilities}), "forbiddenNodeLabels"),
        (
            json!({"tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}], "security": capabilities}),
            "forbiddenNodeLabels",
        ),
        (json!({"nodeSelector": {"node-role.kubernetes.io/control-plane": ""}, "security": capabilities}), "forbiddenNodeLabels"),
        // A taint key not in the platform's list (issue 24: before, only the forbidden labels' keys were checked).
        (
            json!({"tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}], "security": capabilities}),
            "placement.allowedTolerationKeys",
        ),
        (
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "node-role.kubernetes.io/master", "operator": "Exists"}]}]}}}, "security": capabilities}),
            "forbiddenNodeLabels",
        ),
        (json!({"security": {"mode": "Capabilities", "runtimeClassName": "unsafe"}}), "allowedRuntimeClasses"),
        (json!({}), "allowedSecurityModes"),
    ];
    for (spec, rule) in forbidden {
        match try_create(spec.clone()).await? {
            Err(kube::Error::Api(s)) if s.message.contains(&format!("dind-operator policy {rule}:")) => {}
            other => anyhow::bail!("{spec}: wanted a refusal naming {rule}, got {other:?}"),
        }
    }
    // Within the policy: accepted (and a node affinity that keeps away from control planes).
    let fine = json!({"image": "registry.corp/docker:28-dind", "security": capabilities,
        "tolerations": [{"key": "dind.dev/pool", "operator": "Exists", "effect": "NoSchedule"}], "affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "node-role.kubernetes.io/control-plane", "operator": "DoesNotExist"}]}]}}}});
    try_create(fine).await?.context("a spec within the policy")?;
    // The platform team narrows the policy (helm upgrade): no more DindDaemons here.
    run_tool("kubectl", &["apply", "-f", narrowed]).await?;
    eventually("the edited policy in force", Duration::from_secs(30), || {
        let attempt = try_create(json!({"security": capabilities}));
        async move {
            Ok(match attempt.await? {
                Err(kube::Error::Api(s)) if s.message.contains("dind-operator policy allowedNamespaces:") => Some(()),
                Err(e) => anyhow::bail!("refused for another reason: {e}"),
                Ok(_) => None,
            })
        }
    })
    .await?;
    // An operator that watches another namespace (before: created, then never a status or an
    // event): refused at once, naming watchNamespaces and what to ask for.
    run_tool("kubectl", &["apply", "-f", unserved]).await?;
    let message = eventually("the policy of an operator watching elsewhere in force", Duration::from_secs(30), || {
        let attempt = try_create(json!({"security": capabilities}));
        async move {
            Ok(match attempt.await? {
                Err(kube::Error::Api(s)) if s.message.contains("dind-operator policy watchNamespaces:") => Some(s.message),
                Err(kube::Error::Api(s)) if s.message.contains("allowedNamespaces") => None,
                Err(e) => anyhow::bail!("refused for another reason: {e}"),
                Ok(_) => anyhow::bail!("created in a namespace no operator serves"),
            })
        }
    })
    .await?;
    ensure!(message.contains(&format!("no dind-operator serves namespace {ns} (it watches: elsewhere)")), "{message}");
    Ok(())
}
