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
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tracing::{debug, info, warn};

use crate::config::{Config, LogTarget};
use crate::probe;

/// Signals PID 1 leaves unblocked, as tini and catatonit do: the synchronous ones (a fault of
/// this very process, which must not queue) and the terminal's stop signals. Every other
/// signal, real-time ones included, is blocked from the start and read from a signalfd:
/// SIGCHLD tells us to reap, and all the rest is handed on to dockerd.
pub const NOT_BLOCKED: &[Signal] = &[
    Signal::SIGFPE,
    Signal::SIGILL,
    Signal::SIGSEGV,
    Signal::SIGBUS,
    Signal::SIGABRT,
    Signal::SIGTRAP,
    Signal::SIGSYS,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
];

/// The signals PID 1 blocks (and so reads from its signalfd): every asynchronous one.
pub fn blocked() -> SigSet {
    let mut mask = SigSet::all();
    for sig in NOT_BLOCKED {
        mask.remove(*sig);
    }
    mask
}

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
                    let signo = i32::try_from(info.ssi_signo).unwrap_or(0);
                    if signo == Signal::SIGCHLD as i32 {
                        continue;
                    }
                    // Real-time signals have no `Signal` of their own: forwarded by number.
                    let name = Signal::try_from(signo).map_or_else(|_| format!("signal {signo}"), |s| s.to_string());
                    info!(signal = %name, "forwarding to dockerd");
                    if let Err(e) = crate::sys::kill_raw(child.as_raw(), signo) {
                        warn!(signal = %name, error = %e, "could not forward");
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

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::pthread::{pthread_kill, pthread_self};
    use nix::sys::signal::{SigmaskHow, pthread_sigmask};
    use nix::sys::signalfd::{SfdFlags, SignalFd};

    #[test]
    fn every_asynchronous_signal_is_blocked_and_faults_are_not() {
        let mask = blocked();
        for sig in Signal::iterator().filter(|s| !NOT_BLOCKED.contains(s) && *s != Signal::SIGKILL && *s != Signal::SIGSTOP) {
            assert!(mask.contains(sig), "{sig} is not blocked");
        }
        for sig in NOT_BLOCKED {
            assert!(!mask.contains(*sig), "{sig} is blocked: a fault would queue instead of stopping us");
        }
    }

    #[test]
    fn a_signal_the_old_list_lacked_reaches_dockerd() {
        // SIGALRM was not among the 7 signals dind-init forwarded before (nor SIGPIPE, SIGURG,
        // SIGPWR, real-time ones): PID 1 silently dropped them.
        let mask = blocked();
        let mut old = SigSet::empty();
        pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&mask), Some(&mut old)).unwrap();
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ready = dir.path().join("ready");
        // Reaped by `supervise` (waitpid), as dockerd is.
        #[allow(clippy::zombie_processes)]
        let child = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("trap 'exit 7' ALRM; touch {}; while :; do sleep 0.05; done", ready.display()))
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ready.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        // To this thread only: the test binary's other threads do not block it.
        pthread_kill(pthread_self(), Signal::SIGALRM).unwrap();
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
        let code = supervise(&signals, pid, &dir.path().join("no.sock"), Instant::now());
        pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None).unwrap();
        assert_eq!(code, 7, "the child did not get SIGALRM");
    }
}
