#!/bin/sh
# PID 1 of the lane's guest (after the stage-1 initramfs's switch_root): the filesystems every
# Linux node has, a pure cgroup v2 hierarchy, then the run's own script from the second disk
# (tests/vm/lane.sh puts it there), so that what a run does changes without a new guest image.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs shm /dev/shm
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
mount -t ext4 /dev/vdb /lane || { echo "LANE guest: no run disk"; echo o >/proc/sysrq-trigger; }
exec /bin/sh /lane/run.sh
