//! The data root (/var/lib/docker): the storage driver its filesystem allows, and the exclusive
//! lock that keeps a second daemon off it.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::statfs::statfs;

use crate::error::Error;

// statfs(2) magic numbers (linux/magic.h).
const OVERLAYFS_MAGIC: i64 = 0x794c_7630;
const AUFS_MAGIC: i64 = 0x6175_6673;
const EXT4_MAGIC: i64 = 0xef53;
const XFS_MAGIC: i64 = 0x5846_5342;
const BTRFS_MAGIC: i64 = 0x9123_683e;
const TMPFS_MAGIC: i64 = 0x0102_1994;
const ZFS_MAGIC: i64 = 0x2fc1_2fc1;

/// The filesystem kinds that matter for choosing a storage driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    Overlay,
    Aufs,
    Ext4,
    Xfs,
    Btrfs,
    Tmpfs,
    Zfs,
    Other(i64),
}

impl Backing {
    pub fn from_magic(magic: i64) -> Self {
        match magic {
            OVERLAYFS_MAGIC => Self::Overlay,
            AUFS_MAGIC => Self::Aufs,
            EXT4_MAGIC => Self::Ext4,
            XFS_MAGIC => Self::Xfs,
            BTRFS_MAGIC => Self::Btrfs,
            TMPFS_MAGIC => Self::Tmpfs,
            ZFS_MAGIC => Self::Zfs,
            other => Self::Other(other),
        }
    }
}

/// Chooses the storage driver for the data root's filesystem, or refuses a combination that
/// cannot work (the seed: "you cannot run AUFS on top of AUFS"; overlay on overlay likewise).
/// `None` means: let dockerd pick, the filesystem is not one we know.
pub fn choose_storage_driver(backing: Backing, chosen: Option<&str>, data_root: &Path) -> Result<Option<String>, Error> {
    let copy_on_write = matches!(backing, Backing::Overlay | Backing::Aufs);
    match chosen {
        Some(d @ ("vfs" | "fuse-overlayfs")) => Ok(Some(d.to_string())),
        Some(d) if copy_on_write => Err(Error::Storage(format!(
            "{} is on {:?}, a copy-on-write filesystem, and storage driver {d} cannot run on it: back {} with a volume (emptyDir or a PersistentVolumeClaim), or choose vfs or fuse-overlayfs",
            data_root.display(),
            backing,
            data_root.display()
        ))),
        Some(d) => Ok(Some(d.to_string())),
        None if copy_on_write => Err(Error::Storage(format!(
            "{} is on {:?}, the container's own copy-on-write layer: back it with a volume (emptyDir or a PersistentVolumeClaim), or set storage driver vfs or fuse-overlayfs",
            data_root.display(),
            backing
        ))),
        None => Ok(match backing {
            Backing::Ext4 | Backing::Xfs | Backing::Tmpfs => Some("overlay2".to_string()),
            Backing::Btrfs => Some("btrfs".to_string()),
            Backing::Zfs => Some("zfs".to_string()),
            _ => None,
        }),
    }
}

pub fn storage(data_root: &Path, chosen: Option<&str>) -> Result<(Backing, Option<String>), Error> {
    fs::create_dir_all(data_root).map_err(|e| Error::io(data_root, e))?;
    let st = statfs(data_root).map_err(|e| Error::io(data_root, e.into()))?;
    #[allow(clippy::useless_conversion)] // f_type is i64 on x86_64 glibc, other widths elsewhere
    let backing = Backing::from_magic(i64::from(st.filesystem_type().0));
    let driver = choose_storage_driver(backing, chosen, data_root)?;
    Ok((backing, driver))
}

/// The exclusive lock on the data root, held for as long as dind-init lives (the seed: "Docker
/// was designed to have exclusive access to /var/lib/docker"). Dropping it releases the lock.
#[derive(Debug)]
pub struct DataRootLock {
    _lock: Flock<File>,
    pub path: PathBuf,
}

pub const LOCK_FILE: &str = ".dind-init.lock";

pub fn lock_data_root(data_root: &Path) -> Result<DataRootLock, Error> {
    let path = data_root.join(LOCK_FILE);
    let file =
        OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o644).open(&path).map_err(|e| Error::io(&path, e))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((mut file, errno)) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let holder = if holder.is_empty() { "unknown holder".to_string() } else { holder.to_string() };
            return Err(Error::Locked { path, holder, errno: errno.to_string() });
        }
    };
    let host = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
    let me = format!("host {host} pid {}\n", std::process::id());
    lock.set_len(0).and_then(|()| lock.rewind()).and_then(|()| lock.write_all(me.as_bytes())).map_err(|e| Error::io(&path, e))?;
    tracing::debug!(fd = lock.as_raw_fd(), "lock held");
    Ok(DataRootLock { _lock: lock, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_driver_choice_follows_the_filesystem() {
        let root = Path::new("/var/lib/docker");
        assert_eq!(choose_storage_driver(Backing::Ext4, None, root).unwrap().as_deref(), Some("overlay2"));
        assert_eq!(choose_storage_driver(Backing::Xfs, None, root).unwrap().as_deref(), Some("overlay2"));
        assert_eq!(choose_storage_driver(Backing::Btrfs, None, root).unwrap().as_deref(), Some("btrfs"));
        assert_eq!(choose_storage_driver(Backing::Other(1), None, root).unwrap(), None);
        let err = choose_storage_driver(Backing::Overlay, None, root).unwrap_err().to_string();
        assert!(err.contains("back it with a volume"), "{err}");
        let err = choose_storage_driver(Backing::Aufs, Some("overlay2"), root).unwrap_err().to_string();
        assert!(err.contains("cannot run on it"), "{err}");
        assert_eq!(choose_storage_driver(Backing::Overlay, Some("vfs"), root).unwrap().as_deref(), Some("vfs"));
        assert_eq!(choose_storage_driver(Backing::Overlay, Some("fuse-overlayfs"), root).unwrap().as_deref(), Some("fuse-overlayfs"));
    }

    #[test]
    fn second_lock_names_the_holder_and_first_survives() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_data_root(dir.path()).unwrap();
        let err = lock_data_root(dir.path()).unwrap_err().to_string();
        assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
        assert!(err.contains("in use"), "{err}");
        drop(first);
        lock_data_root(dir.path()).expect("lock is free once the holder is gone");
    }
}
