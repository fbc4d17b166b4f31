//! Every test of the harness but the end-to-end ones, in one binary (linking one test binary per
//! file cost CI a link of the whole dependency tree each, on two cores). One module a theme:
//!
//! - `harness`: the real control plane itself (apiserver, admission, tokens, CRDs).
//! - `docs`: every command the README and docs/ show is run by a test or marked.
//! - `operator_api`: the CRD's schema and CEL rules, at the real apiserver.
//! - `operator_reconcile`, `operator_lifecycle`: the operator against the real control plane.
//! - `webhook`: the injection webhook at the real apiserver.
//! - `chart`: the Helm chart, rendered, installed, and checked with kubeconform for each minor.
//! - `dind_init`: dind-init as PID 1 of real containers on the test dockerd.
//! - `release`: the release the workflow published (tests/release/run.sh), checked as users do.
//!
//! tests/run.sh runs them with the unit tests (`--skip e2e_`). Two binaries stay apart:
//! `crd_upgrade` (it replaces the cluster-wide CRD for a moment, which must not happen while
//! these tests use it; cargo runs test binaries one after another) and `e2e` (run after, one
//! at a time).

mod chart;
mod dind_init;
mod docs;
mod harness;
mod operator_api;
mod operator_lifecycle;
mod operator_reconcile;
mod release;
mod webhook;
