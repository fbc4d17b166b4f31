//! The pure core's small parts: what the operator decides with no client, no clock of its
//! own and no randomness, each unit-tested whole. (The larger pure steps are wings of their
//! own: `objects` builds, `status` judges, `disk` plans pruning.)
//!
//! - [`names`]: every generated name, label and annotation, and the field manager;
//! - [`kinds`]: the one list of kinds a DindDaemon owns;
//! - [`ownership`]: whether an object of a generated name is ours, handed over, or in the way;
//! - [`tls`]: the certificates, and when they are renewed; [`cert_roll`]: which daemon restarts
//!   to serve a renewed one;
//! - [`sticky`]: which replica a client pod gets; [`volume_pool`]: which pool volume;
//! - [`grant`]: which pods of other namespaces a DindDaemon serves (`spec.clients`), and for
//!   how long a pod's own client certificate lives;
//! - [`rbac`]: the operator's RBAC rules (the chart is generated from them).

pub mod cert_roll;
pub mod grant;
pub mod kinds;
pub mod names;
pub mod ownership;
pub mod rbac;
pub mod sticky;
pub mod tls;
pub mod volume_pool;
