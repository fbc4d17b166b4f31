//! Proof that the harness is a real Kubernetes: each test would pass against a permissive mock
//! but checks behaviour only a real apiserver, RBAC and controller-manager enforce.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use dind_tests::{admin_config, eventually, suffix, with_namespace};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Api, Client};
use serde_json::json;

/// A throwaway CRD with a structural schema and one CEL rule; its group is unique per run.
fn widget_crd(group: &str) -> anyhow::Result<CustomResourceDefinition> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("widgets.{group}")},
        "spec": {
            "group": group,
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {"spec": {
                        "type": "object",
                        "properties": {"min": {"type": "integer"}, "max": {"type": "integer"}},
                        "x-kubernetes-validations": [{"rule": "self.min <= self.max", "message": "spec.min must not exceed spec.max"}]
                    }}
                }}
            }]
        }
    }))?)
}

async fn established(crds: &Api<CustomResourceDefinition>, name: &str) -> anyhow::Result<Option<()>> {
    let crd = crds.get(name).await?;
    let ok = crd.status.and_then(|s| s.conditions).unwrap_or_default().iter().any(|c| c.type_ == "Established" && c.status == "True");
    Ok(ok.then_some(()))
}

#[tokio::test]
async fn crd_is_established_and_cel_rule_refuses_with_its_message() {
    with_namespace("crd-cel", |client: Client, ns: String| async move {
        let group = format!("h{}.harness.dind.dev", suffix());
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        let crd = crds.create(&PostParams::default(), &widget_crd(&group)?).await?;
        let name = crd.metadata.name.clone().context("crd name")?;
        let result = async {
            eventually("CRD Established", Duration::from_secs(30), || established(&crds, &name)).await?;
            let gvk = GroupVersionKind::gvk(&group, "v1", "Widget");
            let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ApiResource::from_gvk(&gvk));
            // The CRD is served a moment after Established; retry the first write briefly.
            let good = eventually("valid Widget accepted", Duration::from_secs(15), || {
                let (widgets, group) = (widgets.clone(), group.clone());
                async move {
                    let obj: DynamicObject = serde_json::from_value(json!({
                        "apiVersion": format!("{group}/v1"), "kind": "Widget",
                        "metadata": {"name": "good"}, "spec": {"min": 1, "max": 2}
                    }))?;
                    Ok(Some(widgets.create(&PostParams::default(), &obj).await?))
                }
            })
            .await?;
            ensure!(good.metadata.uid.is_some(), "created Widget has no uid");
            let bad: DynamicObject = serde_json::from_value(json!({
                "apiVersion": format!("{group}/v1"), "kind": "Widget",
                "metadata": {"name": "bad"}, "spec": {"min": 5, "max": 2}
            }))?;
            let err = widgets.create(&PostParams::default(), &bad).await.expect_err("CEL rule must refuse min > max");
            let kube::Error::Api(status) = &err else { anyhow::bail!("expected an API error, got {err:?}") };
            ensure!(status.code == 422, "expected 422 Invalid, got {}", status.code);
            ensure!(status.message.contains("spec.min must not exceed spec.max"), "message lacks the rule's text: {}", status.message);
            Ok(())
        }
        .await;
        crds.delete(&name, &DeleteParams::default()).await?;
        result
    })
    .await;
}

#[tokio::test]
async fn service_account_without_a_grant_is_forbidden() {
    with_namespace("rbac", |client: Client, ns: String| async move {
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
        sas.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "nobody"}}))?).await?;
        // Grant exactly one verb, so the test also shows the token works where granted.
        let roles: Api<k8s_openapi::api::rbac::v1::Role> = Api::namespaced(client.clone(), &ns);
        roles
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": "list-pods"},
                    "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]
                }))?,
            )
            .await?;
        let bindings: Api<k8s_openapi::api::rbac::v1::RoleBinding> = Api::namespaced(client.clone(), &ns);
        bindings
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": "nobody-list-pods"},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "list-pods"},
                    "subjects": [{"kind": "ServiceAccount", "name": "nobody", "namespace": ns}]
                }))?,
            )
            .await?;
        let request = TokenRequest {
            spec: TokenRequestSpec { audiences: vec![], expiration_seconds: Some(600), ..Default::default() },
            ..Default::default()
        };
        let token = sas
            .create_token_request("nobody", &PostParams::default(), &request)
            .await?
            .status
            .context("token request has no status")?
            .token;
        let sa_client = client_with_token(&token).await?;
        // Allowed: RBAC is evaluated per verb and resource, not all-or-nothing.
        eventually("granted list pods", Duration::from_secs(10), || {
            let pods: Api<Pod> = Api::namespaced(sa_client.clone(), &ns);
            async move { Ok(Some(pods.list(&ListParams::default()).await?)) }
        })
        .await?;
        let secrets: Api<Secret> = Api::namespaced(sa_client.clone(), &ns);
        let err = secrets.list(&ListParams::default()).await.expect_err("listing secrets was never granted");
        let kube::Error::Api(status) = &err else { anyhow::bail!("expected an API error, got {err:?}") };
        ensure!(status.code == 403, "expected 403, got {}: {}", status.code, status.message);
        ensure!(status.message.contains(&format!("system:serviceaccount:{ns}:nobody")), "{}", status.message);
        Ok(())
    })
    .await;
}

async fn client_with_token(token: &str) -> anyhow::Result<Client> {
    let mut config = admin_config().await?;
    config.auth_info = kube::config::AuthInfo { token: Some(token.to_string().into()), ..Default::default() };
    Ok(Client::try_from(config)?)
}

#[tokio::test]
async fn conflicting_server_side_apply_needs_force() {
    with_namespace("ssa", |client: Client, ns: String| async move {
        let cms: Api<ConfigMap> = Api::namespaced(client, &ns);
        let doc = |v: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shared"}, "data": {"owner": v}});
        cms.patch("shared", &PatchParams::apply("manager-a"), &Patch::Apply(doc("a"))).await?;
        let err = cms
            .patch("shared", &PatchParams::apply("manager-b"), &Patch::Apply(doc("b")))
            .await
            .expect_err("a second manager's conflicting apply must be refused");
        let kube::Error::Api(status) = &err else { anyhow::bail!("expected an API error, got {err:?}") };
        ensure!(status.code == 409, "expected 409 Conflict, got {}", status.code);
        ensure!(status.message.contains("manager-a"), "conflict should name the owning manager: {}", status.message);
        let forced = cms.patch("shared", &PatchParams::apply("manager-b").force(), &Patch::Apply(doc("b"))).await?;
        ensure!(forced.data.unwrap_or_default().get("owner").map(String::as_str) == Some("b"));
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn deleting_an_owner_garbage_collects_what_it_owns() {
    with_namespace("gc", |client: Client, ns: String| async move {
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let owner = cms.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "owner"}}))?).await?;
        let uid = owner.metadata.uid.context("owner uid")?;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        secrets
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": "owned", "ownerReferences": [{
                        "apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid
                    }]},
                    "stringData": {"k": "v"}
                }))?,
            )
            .await?;
        cms.delete("owner", &DeleteParams::background()).await?;
        eventually("owned Secret collected", Duration::from_secs(60), || {
            let secrets = secrets.clone();
            async move { Ok(secrets.get_opt("owned").await?.is_none().then_some(())) }
        })
        .await?;
        Ok(())
    })
    .await;
}
