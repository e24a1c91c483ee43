#!/usr/bin/env bash
# Boot test of the appliance image under QEMU (OVMF, TCG): builds a test
# image with a test CA, boots it, and proves from outside that wardd reached
# READY, table inet ward is loaded, and wardctl status answers (serial console
# markers), and that the tunnel server answers TLS with the gateway's
# certificate on a forwarded port. Prints the serial log on failure.
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

echo "==> boot under QEMU (OVMF, TCG)"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cp /usr/share/OVMF/OVMF_VARS_4M.fd "$work/vars.fd"
serial="$work/serial.log"
qemu-system-x86_64 -machine q35 -accel tcg,thread=multi -smp 2 -m 1024 -nographic \
  -drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
  -drive if=pflash,format=raw,file="$work/vars.fd" \
  -drive file="$work/out/ward.img",format=raw,if=virtio \
  -netdev user,id=n0,hostfwd=tcp:127.0.0.1:${port}-10.0.2.15:4433 -device virtio-net-pci,netdev=n0 \
  -serial file:"$serial" -monitor none -display none </dev/null >/dev/null 2>&1 &
qemu_pid=$!
boot=$(date +%s)
fail() {
  echo "BOOT TEST FAILED: $*"
  echo "----- serial log -----"
  cat "$serial" 2>/dev/null | tail -200
  exit 1
}
until grep -q "WARD-REPORT-END" "$serial" 2>/dev/null; do
  kill -0 "$qemu_pid" 2>/dev/null || fail "qemu exited"
  (( $(date +%s) - boot > timeout_s )) && fail "no boot report within ${timeout_s} s"
  sleep 2
done
ready=$(( $(date +%s) - boot ))
grep -q "WARD-WARDD: active" "$serial" || fail "wardd is not active"
grep -q "WARD-NFT: table inet ward" "$serial" || fail "table inet ward is not loaded"
grep -q "WARD-STATUS: gateway      appliance-01 (spiffe://boot.example/gateway/appliance-01)" "$serial" || fail "wardctl status did not answer"
grep -q 'WARD-SBOM: "bomFormat": "CycloneDX"' "$serial" || fail "wardctl sbom did not print the shipped SBOM"
subject=$(timeout 20 openssl s_client -connect 127.0.0.1:$port -alpn ward/1 -tls1_3 </dev/null 2>/dev/null | grep -m1 "^subject=" || true)
[[ "$subject" == *appliance-01* ]] || fail "the tunnel server on the forwarded port did not present the gateway certificate (got: $subject)"
grep "^WARD-" "$serial" | sed 's/^/    /'
echo "    tunnel server via forwarded port: $subject"
echo "boot test: 1 passed, 0 failed (boot to report ${ready} s)"
