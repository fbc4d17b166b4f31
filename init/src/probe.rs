//! `dind-init probe`: readiness as dockerd itself answers it, `/_ping` over the unix socket.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// One `GET /_ping`; Ok only for an HTTP 200 with body `OK`.
pub fn ping(socket: &Path, timeout: Duration) -> io::Result<()> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")?;
    let mut response = Vec::with_capacity(512);
    stream.take(4096).read_to_end(&mut response)?;
    check_response(&response)
}

/// Asks `/_ping` every 20 ms until it answers or `timeout` has passed; how long it took, or
/// the last error.
pub fn wait(socket: &Path, timeout: Duration) -> io::Result<Duration> {
    let started = std::time::Instant::now();
    loop {
        let left = timeout.saturating_sub(started.elapsed());
        match ping(socket, left.clamp(Duration::from_millis(1), Duration::from_secs(1))) {
            Ok(()) => return Ok(started.elapsed()),
            Err(e) if started.elapsed() >= timeout => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20).min(left)),
        }
    }
}

fn check_response(response: &[u8]) -> io::Result<()> {
    let text = String::from_utf8_lossy(response);
    let status = text.lines().next().unwrap_or_default();
    let ok = status.starts_with("HTTP/1.") && status.split_whitespace().nth(1) == Some("200");
    if ok && text.ends_with("OK") { Ok(()) } else { Err(io::Error::other(format!("unexpected answer: {status:?}"))) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn serve_once(answer: &'static [u8]) -> (tempfile::TempDir, std::path::PathBuf, std::thread::JoinHandle<Vec<u8>>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docker.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let handle = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = [0u8; 256];
            let n = s.read(&mut req).unwrap();
            s.write_all(answer).unwrap();
            req[..n].to_vec()
        });
        (dir, path, handle)
    }

    #[test]
    fn ok_for_200_ok() {
        let (_d, path, h) = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK");
        ping(&path, Duration::from_secs(2)).unwrap();
        assert!(String::from_utf8(h.join().unwrap()).unwrap().starts_with("GET /_ping HTTP/1.0\r\n"));
    }

    #[test]
    fn fails_for_errors_and_missing_socket() {
        let (_d, path, _h) = serve_once(b"HTTP/1.1 500 Internal Server Error\r\n\r\n");
        assert!(ping(&path, Duration::from_secs(2)).is_err());
        assert!(ping(Path::new("/nonexistent/docker.sock"), Duration::from_millis(50)).is_err());
    }

    #[test]
    fn wait_returns_once_the_socket_answers_and_gives_up_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docker.sock");
        let late = path.clone();
        // dockerd "starts" 200 ms later.
        let server = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            let listener = UnixListener::bind(&late).unwrap();
            let (mut s, _) = listener.accept().unwrap();
            let mut req = [0u8; 256];
            let _ = s.read(&mut req).unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK").unwrap();
        });
        let waited = wait(&path, Duration::from_secs(5)).unwrap();
        assert!(waited >= Duration::from_millis(200) && waited < Duration::from_secs(2), "{waited:?}");
        server.join().unwrap();
        let started = std::time::Instant::now();
        assert!(wait(Path::new("/nonexistent/docker.sock"), Duration::from_millis(150)).is_err());
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
