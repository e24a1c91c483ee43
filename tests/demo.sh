#!/usr/bin/env bash
# Ward demo, one command, as root on one machine (Debian 12):
#   sudo tests/demo.sh
# Installs what it needs, builds Ward, then runs the example hospital in
# network namespaces: a CT scanner, two infusion pumps and a patient monitor
# behind an edge gateway; a PACS and an HL7 engine behind a hub gateway; a
# LAN between them. Two real wardd processes apply the example policy's
# nftables rulesets and carry a DICOM study and an HL7 message through mutual
# TLS tunnels (QUIC and TCP); the demo then shows direct, lateral and foreign
# attempts dropped and prints what the gateways report. Then transparent
# insertion with unchanged devices: edge-01 routed (it holds the devices'
# router addresses), learning mode (monitor, observe, suggest, simulate,
# apply with commit-confirm), and a segment whose cable is split into a
# bridge gateway (bump in the wire). It ends by writing the compensating-
# control report of the example hospital (wardctl report, with the gateways'
# evidence) to target/ward-report.html. Everything else it creates is
# removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $EUID -ne 0 ]]; then
  echo "demo: run as root (it creates network namespaces and loads nftables rules)" >&2
  exit 1
fi

echo "==> setup: system packages"
bash tests/setup.sh
echo "==> build"
cargo build --locked --quiet --bins
echo "==> check the site policy"
target/debug/wardctl policy check policy/examples/hospital.toml
exec target/debug/ward-demo
