#!/usr/bin/env bash
# Install the system packages Ward's demo and tests use (Debian 12), only the
# missing ones, so reruns are fast. Needs root.
set -euo pipefail

packages=(
  nftables
  iproute2
  iputils-ping
  iputils-arping
  netcat-openbsd
  dcmtk
  orthanc
  socat
  stunnel4
  openssl
  tcpdump
  nmap
  python3-pip
  systemd
  rsyslog
  rsyslog-gnutls
  mmdebstrap
  qemu-system-x86
  ovmf
  mtools
  dosfstools
  e2fsprogs
  fdisk
  systemd-boot-efi
  cryptsetup-bin
  chromium
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "==> installing: ${missing[*]}"
  apt-get update
  apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "${missing[@]}"
else
  echo "==> system packages present: ${packages[*]}"
fi

# The hl7 package's mllp_send and MLLP server are the HL7 peers in the tests;
# prometheus-client's parser reads the metrics page in the tests.
# cyclonedx-python-lib validates the SBOM against the CycloneDX schema.
# pynetdicom is a DICOM peer of its own, and its console scripts (storescp,
# storescu, echoscu, ...) land before dcmtk's on PATH, as on many hospital
# machines: the tests resolve dcmtk's tools past them (peers::dcmtk).
# pymodbus is the Modbus/TCP server and client of the guard tests.
# fhir.resources validates the report's FHIR R5 Devices; Chromium (above)
# renders, prints and screenshots its HTML.
pip_packages=(hl7 prometheus-client "cyclonedx-python-lib[json-validation]" pynetdicom "pymodbus==3.16.1" "fhir.resources==8.3.0")
if ! python3 -c 'import hl7.mllp, prometheus_client.parser, cyclonedx.validation.json, jsonschema, pynetdicom, pymodbus, fhir.resources.device' 2>/dev/null || ! command -v mllp_send >/dev/null; then
  echo "==> installing the Python packages: ${pip_packages[*]}"
  python3 -m pip install --quiet "${pip_packages[@]}" || python3 -m pip install --quiet --break-system-packages "${pip_packages[@]}"
  command -v pyenv >/dev/null && pyenv rehash || true
else
  echo "==> python packages present: ${pip_packages[*]}"
fi
