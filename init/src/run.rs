//! `dind-init run`: check the files the settings name, ready the container, write daemon.json,
//! start dockerd and hand over to [`crate::supervise`].

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process;
use std::time::Instant;

use nix::sys::signal::SigSet;
use nix::sys::signalfd::{SfdFlags, SignalFd};
use tracing::{debug, error, info, warn};

use crate::config::{self, Config};
use crate::error::Error;
use crate::supervise::{spawn_dockerd, supervise};
use crate::{daemon, prepare};

/// Where dind-init keeps what it generates (daemon.json, iptables links).
const RUN_DIR: &str = "/run/dind-init";

/// Times one step and logs it: `step=cgroups ms=0.4 ...`.
fn step<T>(name: &'static str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let out = f();
    info!(step = name, ms = format_args!("{:.1}", t.elapsed().as_secs_f64() * 1e3), "done");
    out
}

pub fn run(cfg: &Config, mask: &SigSet) -> u8 {
    let started = Instant::now();
    if let Some(dir) = &cfg.tls_generate {
        match step("tls-generate", || crate::certs::ensure(dir)) {
            Ok(outcome) => info!(dir = %dir.display(), ?outcome, "TLS certificates of this pod"),
            Err(e) => {
                error!("{e}");
                return 1;
            }
        }
    }
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
