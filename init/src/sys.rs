//! The few syscalls nix does not wrap. This is the only module of dind-init with `unsafe`.
#![allow(unsafe_code)]

use std::io;

/// Closes every fd from `first` up, with one `close_range(2)` (Linux ≥ 5.9).
pub fn close_range_from(first: u32) -> io::Result<()> {
    // SAFETY: close_range takes plain integers and touches only our fd table. Nothing in this
    // process holds an fd ≥ `first` that it relies on at this point (we run it before opening
    // any, except the signalfd which the caller re-creates afterwards).
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0u32) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Closes one fd, ignoring EBADF (the fallback path walks /proc/self/fd, which lists its own fd).
pub fn close_fd(fd: i32) {
    // SAFETY: closing an fd number we do not own as a Rust object: the caller walks inherited
    // fds only, which no Rust value in this process owns.
    unsafe {
        libc::close(fd);
    }
}

/// Sends signal number `signo` to `pid`: kill(2) for any signal, real-time ones included (nix's
/// `kill` takes only the signals it names).
pub fn kill_raw(pid: i32, signo: i32) -> io::Result<()> {
    // SAFETY: kill takes plain integers; it touches no memory of ours.
    let rc = unsafe { libc::kill(pid, signo) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}
