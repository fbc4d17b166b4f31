//! `spec.daemon.registryCAs`: the projected volume dockerd reads private registries' CAs
//! from, and what is wrong with the ConfigMaps it names (pure: the caller reads them).

use std::collections::BTreeMap;

use dind_contract::REGISTRY_CERTS_DIR;
use k8s_openapi::api::core::v1::{ConfigMapProjection, KeyToPath, ProjectedVolumeSource, Volume, VolumeMount, VolumeProjection};

use crate::crd::{DindDaemon, RegistryCa};
use crate::model::names::REGISTRY_CAS_VOLUME;

/// `spec.daemon.registryCAs` as one projected volume (each ConfigMap key at `REGISTRY/ca.crt`)
/// and its read-only mount at dockerd's certs.d; None when there are none.
pub fn mounted(dd: &DindDaemon) -> Option<(Volume, VolumeMount)> {
    let cas = &dd.spec.daemon.registry_cas;
    if cas.is_empty() {
        return None;
    }
    let sources = cas
        .iter()
        .map(|ca| VolumeProjection {
            config_map: Some(ConfigMapProjection {
                name: ca.config_map.clone(),
                items: Some(vec![KeyToPath { key: ca.key.clone(), path: format!("{}/ca.crt", ca.registry), mode: None }]),
                optional: None,
            }),
            ..Default::default()
        })
        .collect();
    let volume = Volume {
        name: REGISTRY_CAS_VOLUME.into(),
        projected: Some(ProjectedVolumeSource { sources: Some(sources), default_mode: Some(0o444) }),
        ..Default::default()
    };
    let mount = VolumeMount {
        name: REGISTRY_CAS_VOLUME.into(),
        mount_path: REGISTRY_CERTS_DIR.into(),
        read_only: Some(true),
        ..Default::default()
    };
    Some((volume, mount))
}

/// The keys a ConfigMap holds (`data` and `binaryData`); `None`: there is no such ConfigMap.
pub type ConfigMapKeys = Option<Vec<String>>;

/// What is wrong with the ConfigMaps `registryCAs` names, as read (`found`, by ConfigMap
/// name; a name missing from `found` was not read and counts as fine), one message naming the
/// field of each entry; `None` when nothing is. A daemon pod whose projected volume names a
/// missing ConfigMap or key never starts (`ContainerCreating`, `FailedMount` events only), so
/// this is checked before a daemon is made to mount it.
pub fn problems(cas: &[RegistryCa], namespace: &str, found: &BTreeMap<String, ConfigMapKeys>) -> Option<String> {
    let wrong: Vec<String> = cas
        .iter()
        .enumerate()
        .filter_map(|(i, ca)| {
            let field = format!("spec.daemon.registryCAs[{i}]");
            match found.get(&ca.config_map)? {
                None => Some(format!(
                    "{field} (registry {}): ConfigMap {:?} not found in namespace {namespace:?}; create it with the registry's CA certificate under key {:?}",
                    ca.registry, ca.config_map, ca.key
                )),
                Some(keys) if !keys.contains(&ca.key) => Some(format!(
                    "{field}.key: ConfigMap {:?} has no key {:?} (it has: {}); set key to the one holding the registry's CA certificate",
                    ca.config_map,
                    ca.key,
                    if keys.is_empty() { "none".to_string() } else { keys.join(", ") }
                )),
                Some(_) => None,
            }
        })
        .collect();
    (!wrong.is_empty()).then(|| wrong.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca(registry: &str, config_map: &str, key: &str) -> RegistryCa {
        RegistryCa { registry: registry.into(), config_map: config_map.into(), key: key.into() }
    }

    #[test]
    fn a_missing_config_map_or_key_is_named_by_its_field_and_present_ones_pass() {
        let cas = [ca("reg.corp:5000", "corp-ca", "ca.crt"), ca("other.corp", "other-ca", "root.pem"), ca("third", "third-ca", "ca.crt")];
        let found: BTreeMap<String, ConfigMapKeys> = [
            ("corp-ca".to_string(), None),
            ("other-ca".to_string(), Some(vec!["ca.crt".to_string()])),
            ("third-ca".to_string(), Some(vec!["ca.crt".to_string()])),
        ]
        .into();
        let message = problems(&cas, "ci", &found).unwrap();
        assert!(
            message.contains("spec.daemon.registryCAs[0] (registry reg.corp:5000): ConfigMap \"corp-ca\" not found in namespace \"ci\""),
            "{message}"
        );
        assert!(
            message.contains("spec.daemon.registryCAs[1].key: ConfigMap \"other-ca\" has no key \"root.pem\" (it has: ca.crt)"),
            "{message}"
        );
        assert!(!message.contains("registryCAs[2]"), "{message}");
        let fine: BTreeMap<String, ConfigMapKeys> = [("corp-ca".to_string(), Some(vec!["ca.crt".to_string()]))].into();
        assert_eq!(problems(&cas[..1], "ci", &fine), None);
        assert_eq!(problems(&[], "ci", &BTreeMap::new()), None);
    }
}
