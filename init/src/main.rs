//! dind-init: PID 1 of a Docker-in-Docker container.
//!
//! Order matters and follows tini/catatonit: block signals first, then close inherited fds,
//! then check every setting (a bad one exits 2 before anything is touched), ready the container
//! (cgroups, mounts, storage, the exclusive lock, iptables), start dockerd, and from then on only
//! forward signals, reap zombies and wait: nothing after the start may make PID 1 exit early.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod config;
mod daemon;
mod prepare;
mod probe;
mod sys;

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::fd::AsFd as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{self, ExitCode, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tracing::{debug, error, info, warn};

use config::{Command, Config, LogTarget};

/// Signals handed on to dockerd. SIGCHLD is ours: it tells us to reap.
const FORWARDED: &[Signal] =
    &[Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGQUIT, Signal::SIGUSR1, Signal::SIGUSR2, Signal::SIGWINCH];

/// Where dind-init keeps what it generates (daemon.json, iptables links).
const RUN_DIR: &str = "/run/dind-init";

/// dind-init's errors; each says what to do about it where there is something to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("storage: {0}")]
    Storage(String),
    #[error(
        "{} is in use by another daemon ({holder}): dockerd needs exclusive access to its data root, so this one will not start ({errno})",
        path.display()
    )]
    Locked { path: PathBuf, holder: String, errno: String },
}

impl Error {
    pub fn io(path: impl AsRef<Path>, source: io::Error) -> Self {
        Self::Io { path: path.as_ref().display().to_string(), source }
    }
}

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
        Command::Run(cfg) => ExitCode::from(run(&cfg, &mask)),
    }
}

/// Times one step and logs it: `step=cgroups ms=0.4 ...`.
fn step<T>(name: &'static str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let out = f();
    info!(step = name, ms = format_args!("{:.1}", t.elapsed().as_secs_f64() * 1e3), "done");
    out
}

fn run(cfg: &Config, mask: &SigSet) -> u8 {
    let started = Instant::now();
    // The last check of the settings: the files they name must exist.
    if let Err(e) = config::check_files(cfg) {
        eprintln!("dind-init: {e}");
        return 2;
    }
    if process::id() != 1 {
        // Orphans of dockerd's tree must come to us, not to the real init, for reaping.
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            warn!(error = %e, "could not become child subreaper; orphans will go to the real init");
        }
    }
    // The seed's "FD leakage": nothing the parent left open may reach dockerd.
    match step("close-fds", prepare::close_inherited_fds) {
        Ok(n) => debug!(inherited = n, "closed inherited fds"),
        Err(e) => warn!("{e}"),
    }
    let signals = match SignalFd::with_flags(mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC) {
        Ok(fd) => fd,
        Err(e) => {
            error!(error = %e, "cannot create signalfd");
            return 1;
        }
    };

    let prepared = match prepare_container(cfg) {
        Ok(p) => p,
        Err(e) => {
            error!("{e}");
            return 1;
        }
    };

    let config_file = Path::new(RUN_DIR).join("daemon.json");
    let doc = daemon::daemon_json(cfg, prepared.mtu, prepared.driver.as_deref());
    let written = serde_json::to_vec_pretty(&doc).map_err(io::Error::other).and_then(|bytes| fs::write(&config_file, bytes));
    if let Err(e) = written {
        error!("{}", Error::io(&config_file, e));
        return 1;
    }
    let args = daemon::dockerd_args(cfg, &config_file);
    info!(
        dockerd = %cfg.dockerd,
        port = cfg.port,
        tls = cfg.tls.is_some(),
        storage_driver = prepared.driver.as_deref().unwrap_or("auto (dockerd's choice)"),
        mtu = ?prepared.mtu,
        log = %cfg.log,
        "starting dockerd"
    );
    let child = match spawn_dockerd(cfg, &args, prepared.path_prefix.as_deref()) {
        Ok(pid) => pid,
        Err(e) => {
            error!(dockerd = %cfg.dockerd, error = %e, "cannot start dockerd");
            return match e.kind() {
                io::ErrorKind::NotFound => 127,
                _ => 126,
            };
        }
    };
    // From here on, PID 1 only forwards, reaps and waits; errors are logged, never fatal.
    let code = supervise(&signals, child, &cfg.socket, started);
    drop(prepared.lock);
    code
}

/// What readying the container produced for the start of dockerd.
struct Prepared {
    lock: prepare::DataRootLock,
    driver: Option<String>,
    mtu: Option<u32>,
    path_prefix: Option<PathBuf>,
}

fn prepare_container(cfg: &Config) -> Result<Prepared, Error> {
    let mounts = prepare::mounts()?;
    step("kernel-mounts", || prepare::kernel_mounts(&mounts));
    let cg = step("cgroups", || prepare::cgroups(&mounts))?;
    info!(version = cg.version, remounted = ?cg.remounted, "cgroups ready");
    let removed = step("stale-pidfiles", || prepare::remove_stale_pidfiles(&cfg.exec_root));
    if removed > 0 {
        info!(removed, "removed stale pid files");
    }
    let (backing, driver) = step("storage", || prepare::storage(&cfg.data_root, cfg.storage_driver.as_deref()))?;
    info!(data_root = %cfg.data_root.display(), filesystem = ?backing, driver = driver.as_deref().unwrap_or("auto"), "storage driver chosen");
    let lock = step("lock", || prepare::lock_data_root(&cfg.data_root))?;
    info!(lock = %lock.path.display(), "holding exclusive lock on the data root");
    fs::create_dir_all(RUN_DIR).map_err(|e| Error::io(RUN_DIR, e))?;
    let links = Path::new(RUN_DIR).join("bin");
    let backend = step("iptables", || prepare::iptables(cfg.iptables, &links))?;
    if let Some(b) = backend {
        info!(backend = b, "iptables backend chosen");
    }
    let mtu = cfg.mtu.or_else(prepare::detect_mtu);
    Ok(Prepared { lock, driver, mtu, path_prefix: backend.map(|_| links) })
}

fn spawn_dockerd(cfg: &Config, args: &[String], path_prefix: Option<&Path>) -> io::Result<Pid> {
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

fn supervise(signals: &SignalFd, child: Pid, socket: &Path, started: Instant) -> u8 {
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
