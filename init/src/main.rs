//! dind-init: PID 1 of a Docker-in-Docker container.
//!
//! Order matters and follows tini/catatonit: block signals first, then close inherited fds,
//! then check every setting (a bad one exits 2 before anything is touched), ready the container
//! (cgroups, mounts, storage, the exclusive lock, iptables), start dockerd, and from then on only
//! forward signals, reap zombies and wait: nothing after the start may make PID 1 exit early.

#![cfg_attr(test, allow(clippy::unwrap_used))]
mod certs;
mod client;
mod config;
mod daemon;
mod error;
mod prepare;
mod probe;
mod run;
mod supervise;
mod sys;

use std::collections::BTreeMap;
use std::io;
use std::process::ExitCode;
use std::time::Duration;

use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use tracing::{error, info};

use config::Command;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(dind_contract::client_pod::SUBCOMMAND) {
        return client_setup(&args[1..]);
    }
    if args.first().map(String::as_str) == Some(dind_contract::per_pod::SUBCOMMAND) {
        return client_certs(&args[1..]);
    }
    // 1. Signals first: from here on every asynchronous one queues for our signalfd instead of
    // killing us (or being lost: PID 1 has no default actions), as in tini.
    let mask = supervise::blocked();
    if let Err(e) = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None) {
        eprintln!("dind-init: cannot block signals: {e}");
        return ExitCode::from(1);
    }

    tracing_subscriber::fmt().with_writer(io::stderr).with_target(false).with_ansi(false).init();

    let env: BTreeMap<String, String> =
        std::env::vars_os().map(|(k, v)| (k.to_string_lossy().into_owned(), v.to_string_lossy().into_owned())).collect();
    let command = match config::parse(&args, &env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dind-init: {e}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Help => {
            print!("{}", config::usage());
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("dind-init {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Probe { socket, timeout_ms } => match probe::ping(&socket, Duration::from_millis(timeout_ms)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("dind-init probe: {}: {e}", socket.display());
                ExitCode::from(1)
            }
        },
        Command::Wait { socket, timeout_ms } => match probe::wait(&socket, Duration::from_millis(timeout_ms)) {
            Ok(waited) => {
                info!(ms = waited.as_millis() as u64, "dockerd answers /_ping");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("dind-init wait: dockerd did not answer /_ping on {} within {timeout_ms} ms: {e}", socket.display());
                ExitCode::from(1)
            }
        },
        Command::Install { dir } => match prepare::install(&dir) {
            Ok(target) => {
                info!(target = %target.display(), "installed");
                ExitCode::SUCCESS
            }
            Err(e) => {
                error!("{e}");
                ExitCode::from(1)
            }
        },
        Command::Run(cfg) => ExitCode::from(run::run(&cfg, &mask)),
    }
}

/// `dind-init client-setup`: the injected init container of a build pod (see `client`).
/// PID 1 of its container ignores signals it has no handler for: without this, a pod deleted
/// while a client subcommand waits would hang for the whole grace period. A thread takes
/// TERM/INT and exits with `code(signal)`.
fn exit_on_stop(what: &'static str, code: fn(i32) -> i32) {
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGTERM);
    stop.add(Signal::SIGINT);
    if sigprocmask(SigmaskHow::SIG_BLOCK, Some(&stop), None).is_ok() {
        std::thread::spawn(move || {
            if let Ok(sig) = stop.wait() {
                eprintln!("dind-init {what}: {sig}, stopping");
                std::process::exit(code(sig as i32));
            }
        });
    }
}

/// `client-certs`: the native sidecar that keeps the pod's own client certificate (or, with
/// `--check`, its startup probe).
fn client_certs(args: &[String]) -> ExitCode {
    let parsed = match dind_contract::args::ClientCerts::parse(args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("dind-init client-certs: {e}");
            return ExitCode::from(2);
        }
    };
    let settings = match parsed {
        Err(dir) => {
            return match client::mint::check(std::path::Path::new(&dir)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("dind-init client-certs --check: {e}");
                    ExitCode::from(1)
                }
            };
        }
        Ok(s) => s,
    };
    tracing_subscriber::fmt().with_writer(io::stderr).with_target(false).with_ansi(false).init();
    // A sidecar is stopped when the pod's containers have ended: that is success.
    exit_on_stop("client-certs", |_| 0);
    match client::mint::run(&settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dind-init client-certs: {e}");
            ExitCode::from(1)
        }
    }
}

fn client_setup(args: &[String]) -> ExitCode {
    tracing_subscriber::fmt().with_writer(io::stderr).with_target(false).with_ansi(false).init();
    exit_on_stop("client-setup", |sig| 128 + sig);
    let setup = match client::parse(args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dind-init client-setup: {e}");
            return ExitCode::from(2);
        }
    };
    match client::run(&setup) {
        Ok(waited) => {
            info!(host = %setup.host, context = %setup.context, ms = waited.as_millis() as u64, "Docker answers; context written");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dind-init client-setup: {e}");
            ExitCode::from(1)
        }
    }
}
