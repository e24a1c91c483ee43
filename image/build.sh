#!/usr/bin/env bash
# Build the Ward appliance image: a GPT disk (UEFI, systemd-boot) with a
# minimal Debian 12, wardd, wardctl, nftables, the hardened unit, hardened
# sysctl, networkd, and a first-boot step that creates the gateway's key.
#
# The root filesystem is mounted read-only through dm-verity: nothing that
# runs can change the software, and a block changed on the disk fails to
# read instead of being used. What changes lives on its own partition, /var (journal, wardd's
# state and audit trail, and the site configuration: /var/lib/ward-config is
# bind-mounted on /etc/ward). /tmp is a tmpfs. The ward user is created at
# build time, so nothing needs to write /etc at boot.
#
#   image/build.sh [OUT_DIR]        (root; needs mmdebstrap, mtools, dosfstools,
#                                    e2fsprogs, fdisk, systemd-boot-efi)
#
# Nothing is mounted: mkfs.ext4 -d fills the root filesystem from a directory,
# mtools fills the EFI partition, sfdisk and dd assemble the disk.
#
# For the boot test, WARD_IMAGE_TEST_PKI=DIR provisions a test gateway
# certificate (DIR/{ca.crt,gateway.crt,gateway.key}) and a one-gateway policy;
# a production image is enrolled on first boot instead.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-target/image}")
mkdir -p "$out"
work=$(mktemp -d /var/tmp/ward-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
root="$work/root"
esp_mib=96; root_mib=1100; var_mib=320

echo "==> build wardd and wardctl (release)"
cargo build --release --locked --quiet -p ward-gateway -p ward-ctl --bins

echo "==> root tree (mmdebstrap, Debian 12)"
mmdebstrap --quiet --variant=minbase \
  --include=systemd,systemd-sysv,systemd-timesyncd,udev,dbus,kmod,linux-image-amd64,initramfs-tools,cryptsetup-bin,nftables,iproute2,openssl,ca-certificates \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
  --customize-hook='install -D -m 0755 image/files/initramfs/ward-verity-hook "$1/etc/initramfs-tools/hooks/ward-verity"' \
  --customize-hook='install -D -m 0755 image/files/initramfs/ward-verity-local-top "$1/etc/initramfs-tools/scripts/local-top/ward-verity"' \
  --customize-hook='chroot "$1" update-initramfs -u -k all >/dev/null' \
  bookworm "$root" http://deb.debian.org/debian

echo "==> ward files"
install -D -m 0755 target/release/wardd "$root/usr/bin/wardd"
install -D -m 0755 target/release/wardctl "$root/usr/bin/wardctl"
install -D -m 0644 systemd/wardd.service "$root/usr/lib/systemd/system/wardd.service"
install -D -m 0644 systemd/ward.sysusers.conf "$root/usr/lib/sysusers.d/ward.conf"
install -D -m 0644 systemd/ward.tmpfiles.conf "$root/usr/lib/tmpfiles.d/ward.conf"
install -D -m 0644 image/files/ward-firstboot.service "$root/usr/lib/systemd/system/ward-firstboot.service"
install -D -m 0755 image/files/ward-firstboot "$root/usr/lib/ward/ward-firstboot"
install -D -m 0644 image/files/ward-boot-report.service "$root/usr/lib/systemd/system/ward-boot-report.service"
install -D -m 0755 image/files/ward-boot-report "$root/usr/lib/ward/ward-boot-report"
install -D -m 0644 image/files/ward-networkd.service "$root/usr/lib/systemd/system/ward-networkd.service"
install -D -m 0755 image/files/ward-networkd "$root/usr/lib/ward/ward-networkd"
install -D -m 0644 image/files/90-ward.conf "$root/etc/sysctl.d/90-ward.conf"
install -D -m 0644 image/files/ward-no-br-netfilter.conf "$root/etc/modprobe.d/ward-no-br-netfilter.conf"
install -D -m 0644 image/files/50-lan.network "$root/etc/systemd/network/50-lan.network"
install -D -m 0644 policy/examples/hospital.toml "$root/usr/share/ward/examples/hospital.toml"
echo "ward" > "$root/etc/hostname"

if [[ -n "${WARD_IMAGE_TEST_PKI:-}" ]]; then
  echo "==> test provisioning (gateway appliance-01)"
  install -D -m 0644 "$WARD_IMAGE_TEST_PKI/ca.crt" "$root/etc/ward/pki/ca.crt"
  install -D -m 0644 "$WARD_IMAGE_TEST_PKI/gateway.crt" "$root/etc/ward/tls/gateway.crt"
  install -D -m 0600 "$WARD_IMAGE_TEST_PKI/gateway.key" "$root/etc/ward/tls/gateway.key"
  install -D -m 0644 image/files/test-policy.toml "$root/etc/ward/policy.toml"
  install -D -m 0644 image/files/test-ward.toml "$root/etc/ward/ward.toml"
fi

echo "==> SBOM (CycloneDX: the Rust components in wardd and wardctl, the image's Debian packages)"
cargo metadata --format-version 1 --locked --filter-platform x86_64-unknown-linux-gnu > "$work/cargo-metadata.json"
target/release/wardctl sbom generate --cargo-metadata "$work/cargo-metadata.json" \
  --dpkg-status "$root/var/lib/dpkg/status" --doc-root "$root" > "$work/sbom.cdx.json"
install -D -m 0644 "$work/sbom.cdx.json" "$root/usr/share/ward/sbom.cdx.json"
cp "$work/sbom.cdx.json" "$out/sbom.cdx.json"

echo "==> users (created now: /etc is read-only at run time)"
systemd-sysusers --root="$root" >/dev/null

echo "==> enable units"
systemctl --root="$root" enable systemd-networkd.service systemd-networkd-wait-online.service wardd.service ward-firstboot.service ward-boot-report.service ward-networkd.service >/dev/null 2>&1
# Root may log in on the serial console in this development image.
passwd --root "$root" -d root >/dev/null

echo "==> filesystems (read-only root; /var on its own partition)"
kernel=$(ls "$root"/boot/vmlinuz-* | head -1)
initrd=$(ls "$root"/boot/initrd.img-* | head -1)
uuid=$(cat /proc/sys/kernel/random/uuid)
var_uuid=$(cat /proc/sys/kernel/random/uuid)
ward_gid=$(awk -F: '$1 == "ward" { print $3 }' "$root/etc/group")
# The site configuration moves to /var; /etc/ward stays as its mount point.
mkdir -p "$root/etc/ward"
mv "$root/etc/ward" "$root/var/lib/ward-config"
install -d -m 0750 -o 0 -g "$ward_gid" "$root/etc/ward" "$root/var/lib/ward-config"
cat > "$root/etc/fstab" <<EOT
/dev/mapper/wardroot / ext4 ro 0 0
UUID=$var_uuid /var ext4 rw,nodev,nosuid,errors=remount-ro 0 2
/var/lib/ward-config /etc/ward none bind,nodev,nosuid,noexec 0 0
tmpfs /tmp tmpfs rw,nodev,nosuid,mode=1777,size=64M 0 0
EOT
mkfs.ext4 -q -F -L wardvar -U "$var_uuid" -d "$root/var" "$work/var.img" ${var_mib}M
find "$root/var" -mindepth 1 -delete
mkfs.ext4 -q -F -L wardroot -U "$uuid" -d "$root" "$work/root.img" ${root_mib}M
# dm-verity: a hash tree over every block of the root filesystem; its root
# hash goes on the kernel command line (signed together with the kernel once
# the image uses Secure Boot with a unified kernel image).
roothash=$(veritysetup format "$work/root.img" "$work/verity.img" | awk '/^Root hash:/ { print $3 }')
[[ "$roothash" =~ ^[0-9a-f]{64}$ ]] || { echo "veritysetup gave no root hash" >&2; exit 1; }
verity_mib=$(( ($(stat -c %s "$work/verity.img") + (1 << 20) - 1) >> 20 ))
esp="$work/esp.img"
rm -f "$esp"
mkfs.vfat -C -n WARDESP "$esp" $((96 * 1024)) >/dev/null
mmd -i "$esp" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries
mcopy -i "$esp" /usr/lib/systemd/boot/efi/systemd-bootx64.efi ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$esp" "$kernel" ::/vmlinuz
mcopy -i "$esp" "$initrd" ::/initrd.img
printf 'default ward.conf\ntimeout 0\n' > "$work/loader.conf"
printf 'title Ward\nlinux /vmlinuz\ninitrd /initrd.img\noptions root=/dev/mapper/wardroot ward.verity=%s ro console=ttyS0,115200 quiet systemd.show_status=1\n' "$roothash" > "$work/ward.conf"
mcopy -i "$esp" "$work/loader.conf" ::/loader/loader.conf
mcopy -i "$esp" "$work/ward.conf" ::/loader/entries/ward.conf

echo "==> disk (GPT: EFI system partition, root, its verity hash tree, var)"
disk="$out/ward.img"
rm -f "$disk"
truncate -s $((1 + esp_mib + root_mib + verity_mib + var_mib + 1))M "$disk"
sfdisk --quiet "$disk" <<EOT
label: gpt
start=1MiB, size=${esp_mib}MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=esp
start=$((1 + esp_mib))MiB, size=${root_mib}MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=ward-root
start=$((1 + esp_mib + root_mib))MiB, size=${verity_mib}MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=ward-verity
start=$((1 + esp_mib + root_mib + verity_mib))MiB, size=${var_mib}MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=var
EOT
dd if="$esp" of="$disk" bs=1M seek=1 conv=notrunc status=none
dd if="$work/root.img" of="$disk" bs=1M seek=$((1 + esp_mib)) conv=notrunc status=none
dd if="$work/verity.img" of="$disk" bs=1M seek=$((1 + esp_mib + root_mib)) conv=notrunc status=none
dd if="$work/var.img" of="$disk" bs=1M seek=$((1 + esp_mib + root_mib + verity_mib)) conv=notrunc status=none
echo "root_mib=$root_mib esp_mib=$esp_mib roothash=$roothash" > "$out/layout"
echo "==> $disk ($(du -h --apparent-size "$disk" | cut -f1))"
