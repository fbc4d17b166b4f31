//! dind-init: PID 1 of a Docker-in-Docker container.
//!
//! Order matters and follows tini/catatonit: block signals first, then close inherited fds,
//! then check every setting (a bad one exits 2 before anything is touched), ready the container
//! (cgroups, mounts, storage, the exclusive lock, iptables), start dockerd, and from then on only
//! forward signals, reap zombies and wait: nothing after the start may make PID 1 exit early.

#![cfg_attr(test, allow(clippy::unwrap_used))]
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
use supervise::FORWARDED;

fn main() -> ExitCode {
    // 1. Signals first: from here on they queue for our signalfd instead of killing us.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    for sig in FORWARDED {
        mask.add(*sig);
    }
    if let Err(e) = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None) {
        eprintln!("dind-init: cannot block signals: {e}");
        return ExitCode::from(1);
    }

    tracing_subscriber::fmt().with_writer(io::stderr).with_target(false).with_ansi(false).init();

    let args: Vec<String> = std::env::args().skip(1).collect();
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
