//! The runtime: what keeps the operator process up and visible, beside its controller and
//! webhook (`main` wires them together).
//!
//! - [`leader`]: leader election (only the leader reconciles; every replica admits pods);
//! - [`server`]: `/healthz`, `/readyz` and `/metrics`; [`metrics`]: what they count;
//! - [`api_client`]: the Kubernetes client, with its timeouts; [`config_maps`]: the ConfigMaps a spec names;
//! - [`watch_map`]: a watch-fed map the controller's caches are made of;
//! - [`crd_apply`]: `apply-crd`, the chart's hook that moves the CRD on `helm upgrade`;
//! - [`events`]: the one helper that publishes events, for controller and webhook.

pub mod api_client;
pub mod config_maps;
pub mod crd_apply;
pub mod events;
pub mod leader;
pub mod metrics;
pub mod server;
pub mod watch_map;
