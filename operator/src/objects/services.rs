//! The two Services: headless (each daemon's own DNS name) and the client Service.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::meta;
use crate::crd::DindDaemon;
use crate::model::names::{Names, ROUTE_LABEL};

fn service_port(port: i32) -> ServicePort {
    ServicePort {
        name: Some("docker".into()),
        port,
        target_port: Some(IntOrString::String("docker".into())),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

/// Per-daemon DNS names (NAME-i.NAME-daemons.NS.svc), also for daemons not yet ready.
pub fn headless_service(dd: &DindDaemon, names: &Names, owner: &OwnerReference) -> Service {
    Service {
        metadata: meta(dd, names, &names.headless_service, owner),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(names.selector()),
            ports: Some(vec![service_port(dd.spec.port)]),
            ..Default::default()
        }),
        status: None,
    }
}

/// The client Service (NAME.NS.svc). Sticky per client so that, with several daemons, one
/// client's build and run land on the same daemon.
pub fn client_service(dd: &DindDaemon, names: &Names, owner: &OwnerReference) -> Service {
    let mut metadata = meta(dd, names, &names.client_service, owner);
    // Copied onto its EndpointSlices, which the operator watches to know what it routes to.
    metadata.labels.get_or_insert_with(Default::default).insert(ROUTE_LABEL.0.into(), ROUTE_LABEL.1.into());
    Service {
        metadata,
        spec: Some(ServiceSpec {
            selector: Some(names.selector()),
            ports: Some(vec![service_port(dd.spec.port)]),
            session_affinity: Some("ClientIP".into()),
            ..Default::default()
        }),
        status: None,
    }
}
