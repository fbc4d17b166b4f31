//! The table of dind-init's settings: each flag, its environment names and its help.

use dind_contract::args::flag;

/// One setting: its flag, its environment names (first wins after the flag), and its help.
pub(super) struct Setting {
    pub flag: &'static str,
    pub env: &'static [&'static str],
    pub repeatable: bool,
    pub help: &'static str,
}

pub(super) const SETTINGS: &[Setting] = &[
    Setting {
        flag: flag::PORT,
        env: &["PORT", "DIND_INIT_PORT"],
        repeatable: false,
        help: "TCP port of dockerd (default 2376, or 2375 with --tls=false)",
    },
    Setting {
        flag: flag::TCP,
        env: &["DIND_INIT_TCP"],
        repeatable: false,
        help: "listen on TCP: true (default) or false (only the unix socket, e.g. a sidecar)",
    },
    Setting { flag: flag::TLS, env: &["DIND_INIT_TLS"], repeatable: false, help: "mutual TLS on the TCP port: true (default) or false" },
    Setting {
        flag: flag::TLS_DIR,
        env: &["DIND_INIT_TLS_DIR"],
        repeatable: false,
        help: "directory of ca.crt, tls.crt, tls.key (default /certs/server)",
    },
    Setting {
        flag: "tls-ca",
        env: &["DIND_INIT_TLS_CA"],
        repeatable: false,
        help: "CA that client certificates must chain to (default TLS_DIR/ca.crt)",
    },
    Setting {
        flag: flag::TLS_GENERATE,
        env: &["DIND_INIT_TLS_GENERATE"],
        repeatable: false,
        help: "make a CA, a server certificate for localhost and a client certificate in DIR (DIR/server, DIR/client) unless there, and serve with them",
    },
    Setting { flag: "tls-cert", env: &["DIND_INIT_TLS_CERT"], repeatable: false, help: "server certificate (default TLS_DIR/tls.crt)" },
    Setting { flag: "tls-key", env: &["DIND_INIT_TLS_KEY"], repeatable: false, help: "server key (default TLS_DIR/tls.key)" },
    Setting {
        flag: flag::SOCKET_GROUP,
        env: &["DIND_INIT_SOCKET_GROUP"],
        repeatable: false,
        help: "numeric group of the unix socket, mode 0660 (default: dockerd's, the docker group)",
    },
    Setting { flag: flag::MTU, env: &["DIND_INIT_MTU"], repeatable: false, help: "MTU of dockerd's networks, 576-9000 (default: eth0's)" },
    Setting {
        flag: flag::STORAGE_DRIVER,
        env: &["DIND_INIT_STORAGE_DRIVER"],
        repeatable: false,
        help: "overlay2, fuse-overlayfs, btrfs, zfs or vfs (default: from the filesystem)",
    },
    Setting {
        flag: flag::REGISTRY_MIRROR,
        env: &["DIND_INIT_REGISTRY_MIRRORS"],
        repeatable: true,
        help: "registry mirror URL, http(s)://; repeat, or comma-separate in the env",
    },
    Setting {
        flag: flag::INSECURE_REGISTRY,
        env: &["DIND_INIT_INSECURE_REGISTRIES"],
        repeatable: true,
        help: "registry host[:port] or CIDR reached without TLS checks; repeatable",
    },
    Setting {
        flag: flag::DAEMON_CONFIG,
        env: &["DIND_INIT_DAEMON_CONFIG"],
        repeatable: false,
        help: "daemon.json passthrough, a JSON object",
    },
    Setting {
        flag: "data-root",
        env: &["DIND_INIT_DATA_ROOT"],
        repeatable: false,
        help: "dockerd's data root; back it with a volume (default /var/lib/docker)",
    },
    Setting { flag: "exec-root", env: &["DIND_INIT_EXEC_ROOT"], repeatable: false, help: "dockerd's exec root (default /var/run/docker)" },
    Setting {
        flag: flag::SOCKET,
        env: &["DIND_INIT_SOCKET"],
        repeatable: false,
        help: "dockerd's unix socket (default /var/run/docker.sock)",
    },
    Setting {
        flag: "log",
        env: &["LOG", "DIND_INIT_LOG"],
        repeatable: false,
        help: "dockerd output: stdout (default) or file (/var/log/docker.log)",
    },
    Setting { flag: "iptables", env: &["DIND_INIT_IPTABLES"], repeatable: false, help: "iptables backend: auto (default), nft or legacy" },
    Setting { flag: "dockerd", env: &["DIND_INIT_DOCKERD"], repeatable: false, help: "dockerd binary (default: dockerd from PATH)" },
    Setting {
        flag: flag::SHUTDOWN_TIMEOUT,
        env: &["DIND_INIT_SHUTDOWN_TIMEOUT"],
        repeatable: false,
        help: "seconds dockerd gives containers to stop, 1-3600 (default 15)",
    },
    Setting {
        flag: flag::TIMEOUT_MS,
        env: &["DIND_INIT_PROBE_TIMEOUT_MS"],
        repeatable: false,
        help: "probe: give up after this many milliseconds (default 1000); wait: (default 120000)",
    },
];

/// The usage text, printed by `--help`.
pub fn usage() -> String {
    let mut s = String::from(
        "dind-init: PID 1 for Docker-in-Docker containers\n\n\
         usage: dind-init [run] [FLAGS] [-- DOCKERD_ARGS...]\n       \
         dind-init probe [--socket PATH] [--timeout-ms N]\n       \
         dind-init wait [--socket PATH] [--timeout-ms N]   (until dockerd answers)\n       \
         dind-init install DIR\n\nflags (each also read from the environment):\n",
    );
    for set in SETTINGS {
        s.push_str(&format!("  --{:<20} {}  [{}]\n", set.flag, set.help, set.env.join(", ")));
    }
    s.push_str("\nDOCKER_DAEMON_ARGS: extra dockerd arguments, split like a shell would\n");
    s
}
