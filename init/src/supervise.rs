//! PID 1's life after dockerd has started: forward signals, reap every zombie, wait for dockerd
//! and leave with its exit code. Nothing here may make PID 1 exit early: errors are logged.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsFd as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{self, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tracing::{debug, info, warn};

use crate::config::{Config, LogTarget};
use crate::probe;

/// Signals handed on to dockerd. SIGCHLD is ours: it tells us to reap.
pub const FORWARDED: &[Signal] =
    &[Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGQUIT, Signal::SIGUSR1, Signal::SIGUSR2, Signal::SIGWINCH];

pub fn spawn_dockerd(cfg: &Config, args: &[String], path_prefix: Option<&Path>) -> io::Result<Pid> {
    let mut cmd = process::Command::new(&cfg.dockerd);
    cmd.args(args).stdin(Stdio::null());
    if let Some(prefix) = path_prefix {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let joined =
            std::env::join_paths(std::iter::once(prefix.to_path_buf()).chain(std::env::split_paths(&path))).map_err(io::Error::other)?;
        cmd.env("PATH", joined);
    }
    if cfg.log == LogTarget::File {
        let log = OpenOptions::new().create(true).append(true).open("/var/log/docker.log")?;
        cmd.stdout(log.try_clone()?).stderr(log);
    }
    // dockerd leads its own process group so that a terminal's ^C reaches it only through us.
    cmd.process_group(0);
    // std resets the signal mask and dispositions in the child before exec.
    let child = cmd.spawn()?;
    Ok(Pid::from_raw(i32::try_from(child.id()).map_err(io::Error::other)?))
}

pub fn supervise(signals: &SignalFd, child: Pid, socket: &Path, started: Instant) -> u8 {
    let mut ready = false;
    loop {
        let timeout = if ready { PollTimeout::NONE } else { PollTimeout::from(20u16) };
        let mut fds = [PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => warn!(error = %e, "poll on signalfd failed"),
        }
        loop {
            match signals.read_signal() {
                Ok(Some(info)) => {
                    let Ok(sig) = Signal::try_from(i32::try_from(info.ssi_signo).unwrap_or(0)) else { continue };
                    if sig == Signal::SIGCHLD {
                        continue;
                    }
                    info!(signal = %sig, "forwarding to dockerd");
                    if let Err(e) = kill(child, sig) {
                        warn!(signal = %sig, error = %e, "could not forward");
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    warn!(error = %e, "reading signalfd failed");
                    break;
                }
            }
        }
        if let Some(code) = reap(child) {
            // dockerd is gone; reap whatever else finished with it, then leave with its code.
            let _ = reap(child);
            info!(code, uptime_s = started.elapsed().as_secs(), "dockerd exited");
            return code;
        }
        if !ready && probe::ping(socket, Duration::from_millis(200)).is_ok() {
            ready = true;
            info!(ms = started.elapsed().as_millis() as u64, "dockerd listening");
        }
    }
}

/// Reaps every finished child; returns dockerd's exit code (128+signal) once it is among them.
fn reap(child: Pid) -> Option<u8> {
    let mut exit = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == child => exit = Some(u8::try_from(code).unwrap_or(1)),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => exit = Some(128u8.saturating_add(sig as u8)),
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return exit,
            Ok(status) => debug!(?status, "reaped"),
            Err(Errno::EINTR) => {}
            Err(e) => {
                warn!(error = %e, "waitpid failed");
                return exit;
            }
        }
    }
}
