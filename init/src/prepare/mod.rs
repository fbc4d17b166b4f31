//! Readying the container for dockerd: fds, mounts, cgroups, storage, the lock, iptables.
//! The data root's storage driver and lock are in [`data_root`].
//!
//! Each function is one step of the log. Steps that only improve things (securityfs, rshared)
//! warn and go on; steps without which dockerd would misbehave (storage, the lock) are errors.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::{MsFlags, mount};
use nix::unistd::{AccessFlags, access};
use tracing::warn;

mod data_root;

pub use data_root::{DataRootLock, lock_data_root, storage};

use crate::error::Error;
use crate::sys;

/// One line of /proc/self/mountinfo, the fields we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: String,
    pub options: Vec<String>,
    pub fs_type: String,
    pub super_options: Vec<String>,
}

impl Mount {
    pub fn read_only(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }
}

/// Parses /proc/self/mountinfo (see proc(5)); mount points have octal escapes (`\040`).
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fields: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            Some(Mount {
                mount_point: unescape_octal(fields.get(4)?),
                options: fields.get(5)?.split(',').map(str::to_string).collect(),
                fs_type: (*right.first()?).to_string(),
                super_options: right.get(2).map(|s| s.split(',').map(str::to_string).collect()).unwrap_or_default(),
            })
        })
        .collect()
}

fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn mounts() -> Result<Vec<Mount>, Error> {
    let text = fs::read_to_string("/proc/self/mountinfo").map_err(|e| Error::io("/proc/self/mountinfo", e))?;
    Ok(parse_mountinfo(&text))
}

/// Closes every inherited fd ≥ 3 (the seed's "FD leakage"): close_range, else /proc/self/fd.
/// Returns how many were open before, for the log.
pub fn close_inherited_fds() -> Result<usize, Error> {
    let open = fs::read_dir("/proc/self/fd").map(|d| d.count().saturating_sub(4)).unwrap_or(0);
    if let Err(e) = sys::close_range_from(3) {
        warn!(error = %e, "close_range failed; closing inherited fds one by one");
        let fds: Vec<i32> = fs::read_dir("/proc/self/fd")
            .map_err(|e| Error::io("/proc/self/fd", e))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|fd| *fd >= 3)
            .collect();
        for fd in fds {
            sys::close_fd(fd);
        }
    }
    Ok(open)
}

/// The mounts dockerd expects: securityfs, a shared root, a writable /tmp, and writable
/// /proc/sys and /sys (read-only in a non-privileged container; dockerd writes ip_forward).
pub fn kernel_mounts(mounts: &[Mount]) {
    let find = |mp: &str| mounts.iter().rev().find(|m| m.mount_point == mp);
    let security = Path::new("/sys/kernel/security");
    if security.is_dir()
        && find("/sys/kernel/security").is_none()
        && let Err(e) = mount(Some("securityfs"), security, Some("securityfs"), MsFlags::empty(), None::<&str>)
    {
        warn!(error = %e, "could not mount securityfs; LSM profiles stay unavailable to dockerd");
    }
    for mp in ["/sys", "/proc/sys"] {
        if find(mp).is_some_and(Mount::read_only) {
            remount_rw(mp);
        }
    }
    if let Err(e) = mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SHARED, None::<&str>) {
        warn!(error = %e, "could not make / rshared; volume propagation inside containers may not work");
    }
    if access("/tmp", AccessFlags::W_OK).is_err()
        && let Err(e) = mount(Some("tmpfs"), "/tmp", Some("tmpfs"), MsFlags::empty(), Some("mode=1777"))
    {
        warn!(error = %e, "/tmp is not writable and could not be made so");
    }
}

fn remount_rw(mp: &str) -> bool {
    // MS_BIND with MS_REMOUNT changes only this mount's flags; without MS_RDONLY it becomes rw.
    match mount(None::<&str>, mp, None::<&str>, MsFlags::MS_REMOUNT | MsFlags::MS_BIND, None::<&str>) {
        Ok(()) => true,
        Err(e) => {
            warn!(mount_point = mp, error = %e, "could not remount read-write");
            false
        }
    }
}

/// What the cgroup step did, for the log and for dockerd's flags.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Cgroups {
    pub version: u8,
    pub remounted: Vec<String>,
}

/// cgroups "mirrored": the inner daemon may create cgroups, all of them inside the pod's own.
///
/// v1: each hierarchy the runtime mounted (read-only, rooted at the pod's cgroup) is remounted
/// read-write in place. We never mount fresh hierarchies (the seed's wrapdocker did), because a
/// fresh mount is rooted at the host's top cgroup and escapes the pod's limits.
/// v2: the runtime mounts the cgroup filesystem read-only unless the container is privileged (as
/// containerd does for every other container); it is remounted read-write in place, which
/// needs CAP_SYS_ADMIN and no more, as on v1. Then our processes move into a leaf (`/init`) so
/// that the root may delegate controllers, and every available controller is enabled for
/// children. Only in a cgroup namespace of the container's own (containerd's default on v2): in
/// the host's, the root of the filesystem is the node's, and nesting there would escape the pod.
pub fn cgroups(mounts: &[Mount]) -> Result<Cgroups, Error> {
    let unified = mounts.iter().find(|m| m.mount_point == "/sys/fs/cgroup" && m.fs_type == "cgroup2");
    if let Some(m) = unified {
        let own = fs::read_to_string("/proc/self/cgroup").map_err(|e| Error::io("/proc/self/cgroup", e))?;
        check_own_namespace(&own)?;
        let mut remounted = Vec::new();
        if m.read_only() {
            if !remount_rw(&m.mount_point) {
                return Err(Error::Cgroups(
                    "/sys/fs/cgroup is read-only and could not be remounted read-write: dockerd could not make its containers' \
                     cgroups. The container needs CAP_SYS_ADMIN (spec.security.mode Privileged or Capabilities)"
                        .into(),
                ));
            }
            remounted.push(m.mount_point.clone());
        }
        cgroup_v2(Path::new("/sys/fs/cgroup"))?;
        return Ok(Cgroups { version: 2, remounted });
    }
    let mut done = Cgroups { version: 1, remounted: Vec::new() };
    for m in mounts.iter().filter(|m| m.fs_type == "cgroup" || (m.fs_type == "cgroup2" && m.mount_point.starts_with("/sys/fs/cgroup/"))) {
        if m.read_only() && remount_rw(&m.mount_point) {
            done.remounted.push(m.mount_point.clone());
        }
    }
    Ok(done)
}

/// On v2, `/proc/self/cgroup` is `0::/` in a cgroup namespace of the container's own; anything else
/// is the host's view, refused.
fn check_own_namespace(proc_self_cgroup: &str) -> Result<(), Error> {
    match proc_self_cgroup.lines().find_map(|l| l.strip_prefix("0::")) {
        Some("/") | None => Ok(()),
        Some(path) => Err(Error::Cgroups(format!(
            "this container is in cgroup {path} of the host's cgroup namespace: the cgroups dockerd would make for its \
             containers would escape the pod's. Run it with a cgroup namespace of its own (containerd's default on cgroup v2; \
             docker run --cgroupns=private)"
        ))),
    }
}

fn cgroup_v2(root: &Path) -> Result<(), Error> {
    let leaf = root.join("init");
    fs::create_dir_all(&leaf).map_err(|e| Error::io(&leaf, e))?;
    let procs_path = root.join("cgroup.procs");
    // Processes may appear while we move them (exec races), so go until the root is empty.
    for _ in 0..50 {
        let procs = fs::read_to_string(&procs_path).map_err(|e| Error::io(&procs_path, e))?;
        let pids: Vec<&str> = procs.split_whitespace().collect();
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            // A pid that exited meanwhile gives ESRCH; the next round re-reads.
            let _ = fs::write(leaf.join("cgroup.procs"), pid);
        }
    }
    let controllers = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    let enable: String = controllers.split_whitespace().map(|c| format!("+{c} ")).collect();
    let control = root.join("cgroup.subtree_control");
    let mut last = None;
    for _ in 0..20 {
        match fs::write(&control, enable.trim()) {
            Ok(()) => return Ok(()),
            // EBUSY: a process slipped into the root between our move and the write.
            Err(e) => {
                last = Some(e);
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    Err(Error::io(&control, last.unwrap_or_else(|| io::Error::other("subtree_control write failed"))))
}

/// Removes pid files a previous dockerd/containerd left on a restarted container's filesystem.
pub fn remove_stale_pidfiles(exec_root: &Path) -> usize {
    let mut removed = 0;
    let dirs = [PathBuf::from("/var/run"), PathBuf::from("/run"), exec_root.to_path_buf(), exec_root.join("containerd")];
    for dir in dirs {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let stale = (name.starts_with("docker") || name.starts_with("containerd")) && name.ends_with(".pid");
            if stale && fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

/// Points `iptables` at the backend the kernel needs, by a PATH entry of symlinks (no shell).
/// Returns the backend chosen, or None when the image has only one iptables.
pub fn iptables(mode: crate::config::Iptables, link_dir: &Path) -> Result<Option<&'static str>, Error> {
    use crate::config::Iptables;
    let find = |name: &str| -> Option<PathBuf> {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .find(|p| p.is_file())
    };
    let (Some(nft), Some(legacy)) = (find("iptables-nft"), find("iptables-legacy")) else {
        return Ok(None);
    };
    let backend = match mode {
        Iptables::Nft => "nft",
        Iptables::Legacy => "legacy",
        Iptables::Auto => {
            // The host kernel decides: if nf_tables does not answer, only legacy can work.
            let nft_works = std::process::Command::new(&nft)
                .args(["-w", "-t", "filter", "-n", "-L"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if nft_works { "nft" } else { "legacy" }
        }
    };
    let chosen = if backend == "nft" { nft } else { legacy };
    let dir = chosen.parent().unwrap_or(Path::new("/usr/sbin"));
    fs::create_dir_all(link_dir).map_err(|e| Error::io(link_dir, e))?;
    for tool in ["iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"] {
        let target = dir.join(format!("{tool}-{backend}"));
        if !target.exists() {
            continue;
        }
        let link = link_dir.join(tool);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link).map_err(|e| Error::io(&link, e))?;
    }
    Ok(Some(backend))
}

/// MTU of the pod's eth0, if there is one.
pub fn detect_mtu() -> Option<u32> {
    fs::read_to_string("/sys/class/net/eth0/mtu").ok()?.trim().parse().ok()
}

/// `dind-init install DIR`: copy ourselves there, executable, atomically.
pub fn install(dir: &Path) -> Result<PathBuf, Error> {
    let me = std::env::current_exe().map_err(|e| Error::io("/proc/self/exe", e))?;
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let target = dir.join("dind-init");
    let tmp = dir.join(".dind-init.tmp");
    fs::copy(&me, &tmp).map_err(|e| Error::io(&tmp, e))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, &target).map_err(|e| Error::io(&target, e))?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_v2_nests_only_in_a_namespace_of_its_own() {
        assert!(check_own_namespace("0::/\n").is_ok());
        let refused = check_own_namespace("0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-ab.scope\n").unwrap_err();
        assert!(refused.to_string().contains("host's cgroup namespace"), "{refused}");
    }

    const MOUNTINFO: &str = "\
1 0 0:1 / / rw,relatime - overlay overlay rw,lowerdir=/l
2 1 0:2 / /sys ro,nosuid - sysfs sysfs ro
3 2 0:3 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
4 3 0:4 /docker/abc /sys/fs/cgroup/cpu,cpuacct ro,nosuid shared:5 - cgroup cgroup rw,cpu,cpuacct
5 3 0:5 /docker/abc /sys/fs/cgroup/systemd ro - cgroup cgroup rw,name=systemd
6 1 0:6 / /var/lib/docker rw - ext4 /dev/vda rw
7 1 0:7 / /with\\040space rw - tmpfs tmpfs rw
";

    #[test]
    fn mountinfo_is_parsed_with_escapes_and_optional_fields() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(m.len(), 7);
        assert_eq!(m[3].mount_point, "/sys/fs/cgroup/cpu,cpuacct");
        assert_eq!(m[3].fs_type, "cgroup");
        assert!(m[3].read_only());
        assert!(m[3].super_options.contains(&"cpuacct".to_string()));
        assert_eq!(m[4].super_options, vec!["rw", "name=systemd"]);
        assert_eq!(m[6].mount_point, "/with space");
        assert!(!m[5].read_only());
    }

    #[test]
    fn install_copies_an_executable() {
        let dir = tempfile::tempdir().unwrap();
        let target = install(&dir.path().join("sub")).unwrap();
        let meta = fs::metadata(&target).unwrap();
        assert!(meta.permissions().mode() & 0o111 != 0);
        assert_eq!(meta.len(), fs::metadata(std::env::current_exe().unwrap()).unwrap().len());
    }
}
