//! Reading the ConfigMaps a spec names (`spec.daemon.registryCAs`), for the controller and
//! the webhook alike: only which keys each holds, never kept.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client};

/// The keys (`data` and `binaryData`) of each named ConfigMap in `namespace`, `None` for one
/// that does not exist. Read from the apiserver's watch cache (`resourceVersion=0`).
pub async fn keys<'a>(
    client: &Client,
    namespace: &str,
    names: impl IntoIterator<Item = &'a str>,
) -> Result<BTreeMap<String, Option<Vec<String>>>, kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let mut wanted: Vec<&str> = names.into_iter().collect();
    wanted.sort_unstable();
    wanted.dedup();
    let reads = wanted.into_iter().map(|name| {
        let api = api.clone();
        async move {
            let cm = match api.get_with(name, &kube::api::GetParams::any()).await {
                Ok(cm) => Some(cm),
                Err(kube::Error::Api(e)) if e.code == 404 => None,
                Err(e) => return Err(e),
            };
            let keys = cm.map(|cm| {
                cm.data.into_iter().flat_map(|d| d.into_keys()).chain(cm.binary_data.into_iter().flat_map(|d| d.into_keys())).collect()
            });
            Ok((name.to_string(), keys))
        }
    });
    futures::future::try_join_all(reads).await.map(|found| found.into_iter().collect())
}
