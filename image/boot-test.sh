#!/usr/bin/env bash
# Boot test of the appliance image under QEMU (OVMF, TCG): builds a test
# image with a test CA, boots it, and proves from outside that wardd reached
# READY, table inet ward is loaded, and wardctl status answers (serial console
# markers), and that the tunnel server answers TLS with the gateway's
# certificate on a forwarded port, that the root filesystem is read-only with
# /var and /etc/ward writable, and that no unit failed; then that the same
# image with a changed root partition stops at dm-verity. Prints the serial log
# on failure.
#   image/boot-test.sh            (root; ~5 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
timeout_s=${WARD_BOOT_TIMEOUT:-400}
work=$(mktemp -d /var/tmp/ward-boot.XXXXXX)
qemu_pid=
cleanup() { [[ -n "$qemu_pid" ]] && kill "$qemu_pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

echo "==> test PKI (trust domain boot.example, gateway appliance-01)"
cargo build --release --locked --quiet -p ward-ctl --bins
target/release/wardctl ca init --trust-domain boot.example --dir "$work/pki" >/dev/null
target/release/wardctl ca issue gateway appliance-01 --days 2 --dir "$work/pki" >/dev/null
mkdir -p "$work/prov"
cp "$work/pki/ca.crt" "$work/prov/ca.crt"
cp "$work/pki/issued/gateway-appliance-01.crt" "$work/prov/gateway.crt"
cp "$work/pki/issued/gateway-appliance-01.key" "$work/prov/gateway.key"

echo "==> build the image"
start=$(date +%s)
WARD_IMAGE_TEST_PKI="$work/prov" image/build.sh "$work/out"
echo "    built in $(( $(date +%s) - start )) s"

boot_image() { # IMAGE SERIAL [HOSTFWD]
  cp /usr/share/OVMF/OVMF_VARS_4M.fd "$work/vars.fd"
  qemu-system-x86_64 -machine q35 -accel tcg,thread=multi -smp 2 -m 1024 -nographic \
    -drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
    -drive if=pflash,format=raw,file="$work/vars.fd" \
    -drive file="$1",format=raw,if=virtio \
    -netdev user,id=n0${3:+,hostfwd=$3} -device virtio-net-pci,netdev=n0 \
    -serial file:"$2" -monitor none -display none </dev/null >/dev/null 2>&1 &
  qemu_pid=$!
}
fail() {
  echo "BOOT TEST FAILED: $*"
  echo "----- serial log -----"
  tail -200 "$serial" 2>/dev/null
  exit 1
}
wait_serial() { # MARKER
  local boot
  boot=$(date +%s)
  until grep -q -- "$1" "$serial" 2>/dev/null; do
    kill -0 "$qemu_pid" 2>/dev/null || fail "qemu exited"
    (( $(date +%s) - boot > timeout_s )) && fail "no \"$1\" on the console within ${timeout_s} s"
    sleep 2
  done
  echo $(( $(date +%s) - boot ))
}

echo "==> boot the provisioned image under QEMU (OVMF, TCG)"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
serial="$work/serial.log"
boot_image "$work/out/ward.img" "$serial" "tcp:127.0.0.1:${port}-10.0.2.15:4433"
ready=$(wait_serial "WARD-REPORT-END")
grep -q "WARD-WARDD: active" "$serial" || fail "wardd is not active"
grep -q "WARD-NFT: table inet ward" "$serial" || fail "table inet ward is not loaded"
grep -q "WARD-STATUS: gateway      appliance-01 (spiffe://boot.example/gateway/appliance-01)" "$serial" || fail "wardctl status did not answer"
grep -q 'WARD-SBOM: "bomFormat": "CycloneDX"' "$serial" || fail "wardctl sbom did not print the shipped SBOM"
grep -q "WARD-ROOT: ro" "$serial" || fail "the root filesystem is not mounted read-only"
grep -q "WARD-ROOT-DEV: /dev/mapper/wardroot" "$serial" || fail "the root filesystem is not the dm-verity device"
grep -q "WARD-VERITY: verified" "$serial" || fail "dm-verity does not report the root filesystem verified"
grep -q "WARD-ROOT-WRITE: refused" "$serial" || fail "a file could be created under /usr"
grep -q "WARD-VAR: rw" "$serial" || fail "/var is not mounted read-write"
grep -q "WARD-ETC-WARD: .*ward-config" "$serial" || fail "/etc/ward is not the configuration on /var"
! grep -q "WARD-FAILED:" "$serial" || fail "units failed: $(grep WARD-FAILED: "$serial" | tr -d '\r' | tr '\n' ' ')"
subject=$(timeout 20 openssl s_client -connect 127.0.0.1:$port -alpn ward/1 -tls1_3 </dev/null 2>/dev/null | grep -m1 "^subject=" || true)
[[ "$subject" == *appliance-01* ]] || fail "the tunnel server on the forwarded port did not present the gateway certificate (got: $subject)"
grep "^WARD-" "$serial" | sed 's/^/    /'
echo "    tunnel server via forwarded port: $subject"
echo "    boot to report: ${ready} s"
kill "$qemu_pid"; wait "$qemu_pid" 2>/dev/null || true; qemu_pid=

echo "==> a root partition changed on the disk does not boot"
cp --sparse=always "$work/out/ward.img" "$work/tampered.img"
. "$work/out/layout"
# Flip 16 bytes of the root filesystem's superblock (partition offset 1024).
printf 'TAMPERED-BY-TEST' | dd of="$work/tampered.img" bs=1 seek=$(( ((1 + esp_mib) << 20) + 1024 )) conv=notrunc status=none
serial="$work/serial-tampered.log"
boot_image "$work/tampered.img" "$serial"
caught=$(wait_serial "is corrupted")
sleep 5
! grep -q "WARD-REPORT-END" "$serial" || fail "the tampered image booted to the report"
grep -m1 "is corrupted" "$serial" | tr -d '\r' | sed 's/^/    /'
echo "    dm-verity refused the tampered root after ${caught} s"
kill "$qemu_pid"; wait "$qemu_pid" 2>/dev/null || true; qemu_pid=

echo "==> first boot of an unprovisioned image: the gateway key and its certificate request"
image/build.sh "$work/plain" >/dev/null
serial="$work/serial-firstboot.log"
boot_image "$work/plain/ward.img" "$serial"
first=$(wait_serial "END CERTIFICATE REQUEST")
# The console shows journal lines: "[  16.5] ward-firstboot[261]: <line>".
tr -d '\r' < "$serial" | sed -n 's/^.*ward-firstboot\[[0-9]*\]: //p' \
  | sed -n '/BEGIN CERTIFICATE REQUEST/,/END CERTIFICATE REQUEST/p' > "$work/gateway.csr"
openssl req -in "$work/gateway.csr" -noout -verify 2>&1 | grep -q "verify OK" || fail "the first-boot certificate request does not verify"
openssl req -in "$work/gateway.csr" -noout -text | grep -q "prime256v1\|P-256" || fail "the first-boot key is not P-256"
echo "    first boot printed a valid P-256 certificate request after ${first} s"
echo "boot test: 1 passed, 0 failed (boot to report ${ready} s, tampered root refused after ${caught} s, first-boot request ${first} s)"
