//! The real `dind-operator` binary reconciling on the real apiserver, a fresh namespace per test:
//! owned objects, spec changes, drift, certificates, status.
//!
//! Without a node (tests/cluster/node.sh) no kubelet runs pods, so where readiness matters the
//! test sets the pods' Ready condition itself; those tests say so in their names.
//!
//! `objects`: what a DindDaemon owns, spec changes, refusals, drift. `ownership`: objects that are
//! not ours, names that collide. `status`: readiness, disks, volumes, pod security, drains,
//! network policy.

mod objects;
mod ownership;
mod status;
