#!/usr/bin/env bash
# The cgroup v2 lane's guest (issue 23): Debian's stock kernel booted with a pure cgroup v2
# hierarchy under QEMU (TCG: this machine's /dev/kvm is nested PVM, which a stock kernel crawls
# under), a busybox stage-1 initramfs that mounts the root disk, and a minimal Debian root
# filesystem with what dind-init needs of a node (iptables, nftables, iproute2, kmod) and no
# Docker of its own. Our binaries (runc, the daemon image) come on a second disk each run
# (tests/vm/lane.sh), so this image depends only on this file and the guest's init.
#
# Cached in ~/.cache/dind-operator/vm/<key> (key: this file, guest-init.sh, the kernel version);
# prints that directory. Built from Debian's packages (apt, debootstrap) in about 3 minutes.
#
#   tests/vm/build.sh            # build if missing; print the directory
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { echo ">> [vm $(date +%T)] $*" >&2; }

need=()
for p in qemu-system-x86 qemu-utils busybox-static debootstrap cpio kmod e2fsprogs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if ((${#need[@]})); then
  log "installing ${need[*]}"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

kv="$(apt-cache depends linux-image-amd64 | sed -n 's/.*Depends: linux-image-\(.*\)/\1/p' | head -n1)"
[[ -n $kv ]] || { echo "vm: no kernel version from apt-cache depends linux-image-amd64 (apt-get update?)" >&2; exit 1; }
key="$(cat "$here/build.sh" "$here/guest-init.sh" <(echo "$kv") | sha256sum | cut -c1-16)"
out="$HOME/.cache/dind-operator/vm/$key"
if [[ -f $out/done ]]; then
  echo "$out"
  exit 0
fi
# Older guests: replaced by this one.
if [[ -d $HOME/.cache/dind-operator/vm ]]; then
  find "$HOME/.cache/dind-operator/vm" -mindepth 1 -maxdepth 1 -type d ! -name "$key" -exec rm -rf {} +
fi
work="$out.work"
rm -rf "$work"
mkdir -p "$work/debs" "$work/kernel"
log "guest $key: kernel $kv"
(cd "$work/debs" && apt-get download -q "linux-image-$kv" >/dev/null)
dpkg-deb -x "$work"/debs/linux-image-"$kv"_*.deb "$work/kernel"
cp "$work/kernel/boot/vmlinuz-$kv" "$work/vmlinuz"
/usr/sbin/depmod -b "$work/kernel" "$kv"

log "root filesystem (debootstrap, minbase)"
debootstrap --variant=minbase \
  --include=iptables,nftables,iproute2,kmod,procps,ca-certificates,netbase \
  bookworm "$work/rootfs" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 ||
  { tail -20 "$work/debootstrap.log" >&2; exit 1; }
m="$work/kernel/lib/modules/$kv" d="$work/rootfs/lib/modules/$kv"
rm -rf "$d"
mkdir -p "$d/kernel/drivers"
cp -a "$m"/modules.builtin* "$m/modules.order" "$d/"
for s in net fs lib crypto arch block mm virt; do cp -a "$m/kernel/$s" "$d/kernel/"; done
for s in virtio block net char; do cp -a "$m/kernel/drivers/$s" "$d/kernel/drivers/"; done
rm -rf "$d/kernel/drivers/net/wireless" "$d/kernel/drivers/net/ethernet"
/usr/sbin/depmod -b "$work/rootfs" "$kv"
install -m 0755 "$here/guest-init.sh" "$work/rootfs/sbin/lane-init"
mkdir -p "$work/rootfs/lane"
rm -rf "$work/rootfs/var/cache/apt/archives"/*.deb "$work/rootfs/usr/share/doc" "$work/rootfs/usr/share/man"

log "stage-1 initramfs (busybox: virtio and ext4 modules, then switch_root)"
i="$work/initramfs"
mkdir -p "$i"/{bin,proc,sys,dev,newroot,mods}
cp /bin/busybox "$i/bin/"
for mod in virtio_pci virtio_blk crc32c_generic ext4 virtio_net; do
  /usr/sbin/modprobe -d "$work/kernel" -S "$kv" --show-depends "$mod"
done | awk '{print $2}' | awk '!seen[$0]++' >"$work/initmods.txt"
{
  echo '#!/bin/busybox sh'
  echo '/bin/busybox --install -s /bin'
  echo 'mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev'
  while read -r f; do
    cp "$f" "$i/mods/"
    echo "insmod /mods/$(basename "$f") 2>/dev/null"
  done <"$work/initmods.txt"
  cat <<'EOI'
for n in $(seq 20); do [ -b /dev/vda ] && break; sleep 0.25; done
mount -t ext4 -o rw /dev/vda /newroot || { echo "LANE stage1: mount /dev/vda failed"; poweroff -f; }
umount /proc /sys; mount --move /dev /newroot/dev 2>/dev/null || umount /dev
exec switch_root /newroot /sbin/lane-init
EOI
} >"$i/init"
chmod +x "$i/init"
(cd "$i" && find . | cpio -o -H newc 2>/dev/null | gzip -1) >"$work/initrd.gz"

log "root disk image"
mkfs.ext4 -q -F -L laneroot -d "$work/rootfs" "$work/rootfs.img" 1G
rm -rf "$work/rootfs" "$work/kernel" "$work/debs" "$work/initramfs"
touch "$work/done"
rm -rf "$out"
mv "$work" "$out"
log "guest ready in $out"
echo "$out"
