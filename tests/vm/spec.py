#!/usr/bin/env python3
"""The OCI runtime spec (runc's config.json) of the daemon container in the lane's guest, as
containerd's CRI plugin gives a Kubernetes pod's container on a cgroup v2 node:

- privileged: every capability, no seccomp, no masked or read-only paths, /sys and the cgroup
  filesystem read-write, its own cgroup namespace (containerd's default on cgroup v2);
- capabilities: dind-init's Capabilities mode (the operator's objects::CAPABILITIES added to
  containerd's defaults, seccomp and AppArmor unconfined), /sys and the cgroup filesystem
  read-only, containerd's masked paths, its own cgroup namespace;
- bare: the privileged spec, but dockerd itself as the process (no dind-init): the yardstick of
  dind-init's start time.

Usage: spec.py MODE CGROUP_PATH [ADDED_CAPS] > config.json
"""
import json
import sys

mode, cgroup_path = sys.argv[1], sys.argv[2]

ALL_CAPS = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
    "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
]
# containerd's default set, plus what the operator adds in Capabilities mode: argv[3], the
# operator's own objects::CAPABILITIES (the test passes it), comma-separated, without CAP_.
DEFAULT_CAPS = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]
ADDED_CAPS = [c for c in sys.argv[3].split(",") if c] if len(sys.argv) > 3 else []
privileged = mode in ("privileged", "bare")
caps = ALL_CAPS if privileged else sorted(set(DEFAULT_CAPS + ["CAP_" + c for c in ADDED_CAPS]))

args = ["/usr/local/bin/dind-init"]
if mode == "bare":
    args = ["dockerd", "--host=unix:///var/run/docker.sock", "--data-root=/var/lib/docker",
            "--storage-driver=overlay2", "--tlsverify", "--tlscacert=/certs/server/ca.crt",
            "--tlscert=/certs/server/tls.crt", "--tlskey=/certs/server/tls.key", "--host=tcp://0.0.0.0:2376"]

ro_sys = [] if privileged else ["ro"]
mounts = [
    {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
     "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev"] + ro_sys},
    {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
     "options": ["nosuid", "noexec", "nodev", "relatime"] + (["rw"] if privileged else ["ro"])},
    {"destination": "/certs/server", "type": "bind", "source": "/lane/certs/server", "options": ["rbind", "ro"]},
    {"destination": "/var/lib/docker", "type": "bind", "source": "/lane/data/" + mode, "options": ["rbind", "rw"]},
    {"destination": "/lib/modules", "type": "bind", "source": "/lib/modules", "options": ["rbind", "ro"]},
    {"destination": "/etc/resolv.conf", "type": "bind", "source": "/etc/resolv.conf", "options": ["rbind", "ro"]},
]

spec = {
    "ociVersion": "1.0.2",
    "process": {
        "terminal": False,
        "user": {"uid": 0, "gid": 0},
        "args": args,
        "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOSTNAME=lane"],
        "cwd": "/",
        "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
        "noNewPrivileges": False,
        "oomScoreAdj": 0,
    },
    "root": {"path": "rootfs", "readonly": False},
    "hostname": "lane",
    "mounts": mounts,
    "linux": {
        "cgroupsPath": cgroup_path,
        "resources": {"memory": {"limit": 640 * 1024 * 1024}, "pids": {"limit": 4096},
                      "devices": [{"allow": True, "access": "rwm"}] if privileged else [
                          {"allow": False, "access": "rwm"},
                          {"allow": True, "type": "c", "major": 10, "minor": 200, "access": "rwm"}]},
        # The guest's network namespace (as a hostNetwork pod): QEMU forwards the host's port to it.
        "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "cgroup")],
        "maskedPaths": [] if privileged else [
            "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
            "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware"],
        "readonlyPaths": [] if privileged else [
            "/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
    },
}
if privileged:
    spec["linux"]["devices"] = []
json.dump(spec, sys.stdout, indent=1)
