#!/usr/bin/env bash
# Ward demo, one command, as root on one machine (Debian 12):
#   sudo tests/demo.sh
# Installs what it needs, builds wardctl, checks and compiles the example
# hospital policy, builds a small hospital in network namespaces (a CT scanner
# and an infusion pump behind the edge gateway, a LAN with an NTP server and a
# workstation), loads the edge gateway's ruleset and shows what it allows and
# what it drops, with the per-device counters. Everything is removed at the end.
#
# Stage: the tunnels (wardd) come with the data-path work; until then the
# device-facing listeners have no daemon behind them, and the demo shows the
# enforcement half of Ward.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $EUID -ne 0 ]]; then
  echo "demo: run as root (it creates network namespaces and loads nftables rules)" >&2
  exit 1
fi

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
ok() { printf '    \033[32mPASS\033[0m %s\n' "$*"; }
bad() { printf '    \033[31mFAIL\033[0m %s\n' "$*"; failures=$((failures + 1)); }
failures=0

step "setup: system packages and build"
bash tests/setup.sh
cargo build --locked --quiet -p ward-ctl
wardctl=target/debug/wardctl
policy=policy/examples/hospital.toml

tag=$$
GW=ward-demo-gw-$tag CT=ward-demo-ct-$tag PUMP=ward-demo-pump-$tag LAN=ward-demo-lan-$tag
cleanup() { for n in "$GW" "$CT" "$PUMP" "$LAN"; do ip netns del "$n" 2>/dev/null || true; done; }
trap cleanup EXIT

step "1. check the site policy ($policy)"
"$wardctl" policy check "$policy"

step "2. compile the edge gateway's part"
"$wardctl" policy compile "$policy" --gateway edge-01

step "3. build the hospital in network namespaces"
for n in "$GW" "$CT" "$PUMP" "$LAN"; do ip netns add "$n"; ip -n "$n" link set lo up; done
# CT scanner on dev0, infusion pump on dev1: each device has a port of its own.
ip link add dev0 netns "$GW" type veth peer name eth0 netns "$CT"
ip link add dev1 netns "$GW" type veth peer name eth0 netns "$PUMP"
ip link add lan0 netns "$GW" type veth peer name eth0 netns "$LAN"
ip -n "$CT" link set eth0 address 02:00:00:00:00:02
ip -n "$PUMP" link set eth0 address 02:00:00:00:00:12
ip -n "$GW" addr add 198.51.100.1/28 dev dev0
ip -n "$GW" addr add 198.51.100.17/28 dev dev1
ip -n "$GW" addr add 192.0.2.10/24 dev lan0
ip -n "$CT" addr add 198.51.100.2/28 dev eth0
ip -n "$PUMP" addr add 198.51.100.18/28 dev eth0
ip -n "$LAN" addr add 192.0.2.123/24 dev eth0   # NTP server
ip -n "$LAN" addr add 192.0.2.50/24 dev eth0    # a workstation
for n in "$GW" "$CT" "$PUMP" "$LAN"; do for i in $(ip -n "$n" -o link show | awk -F': ' '{print $2}' | cut -d@ -f1); do ip -n "$n" link set "$i" up; done; done
ip -n "$CT" route add default via 198.51.100.1
ip -n "$PUMP" route add default via 198.51.100.17
ip -n "$LAN" route add 198.51.100.0/24 via 192.0.2.10
ip netns exec "$GW" sysctl -qw net.ipv4.ip_forward=1
echo "    CT 198.51.100.2 --dev0-- [edge-01] --lan0-- 192.0.2.0/24 (NTP .123, workstation .50)"
echo "    pump 198.51.100.18 --dev1--'"

reach() { ip netns exec "$1" ping -c1 -W1 "$2" >/dev/null 2>&1; }

step "4. without Ward: the legacy CT reaches everything"
reach "$CT" 192.0.2.50 && echo "    CT -> workstation 192.0.2.50: reachable"
reach "$CT" 198.51.100.18 && echo "    CT -> pump 198.51.100.18: reachable (lateral movement possible)"

step "5. load edge-01's ruleset (one nft transaction)"
"$wardctl" policy compile "$policy" --gateway edge-01 --nft | ip netns exec "$GW" nft -j -f -
ip netns exec "$GW" nft list table inet ward | grep -c '^\s*chain ' | xargs printf '    table inet ward loaded: %s chains\n'

step "6. with Ward"
if reach "$CT" 192.0.2.50; then bad "CT -> workstation was allowed"; else ok "CT -> workstation 192.0.2.50 (direct, ICMP): dropped"; fi
if reach "$CT" 198.51.100.18; then bad "CT -> pump was allowed"; else ok "CT -> pump 198.51.100.18 (lateral): dropped"; fi
if ip netns exec "$CT" nc -z -w2 192.0.2.50 445 2>/dev/null; then bad "CT -> SMB allowed"; else ok "CT -> workstation:445 (direct, TCP; the BlueKeep/WannaCry path): dropped"; fi
# The device's own listener is open in the firewall: with no wardd yet the
# gateway answers with a TCP reset at once instead of silence.
start=$(date +%s%N); ip netns exec "$CT" nc -z -w2 198.51.100.1 104 2>/dev/null || true; ms=$(( ($(date +%s%N) - start) / 1000000 ))
if (( ms < 1000 )); then ok "CT -> its PACS listener 198.51.100.1:104: passes the firewall (answered in ${ms} ms)"; else bad "CT -> its own listener timed out"; fi
if ip netns exec "$CT" nc -z -w2 198.51.100.1 22 2>/dev/null; then bad "CT -> gateway ssh allowed"; else ok "CT -> gateway 198.51.100.1:22 (not its flow): dropped"; fi
if ip netns exec "$PUMP" timeout 3 nc -z -w2 198.51.100.1 104 2>/dev/null; then bad "pump used the CT's listener"; else ok "pump -> CT's listener 198.51.100.1:104: dropped (not the pump's flow)"; fi
# NTP is a justified raw exception.
ip netns exec "$LAN" timeout 4 nc -u -l -W 1 192.0.2.123 123 > "/tmp/ward-demo-ntp-$tag" &
sleep 0.5
echo tick | ip netns exec "$CT" nc -u -w1 192.0.2.123 123 || true
wait || true
if grep -q tick "/tmp/ward-demo-ntp-$tag"; then ok "CT -> NTP 192.0.2.123:123/udp (justified exception): allowed"; else bad "NTP exception did not pass"; fi
rm -f "/tmp/ward-demo-ntp-$tag"
# Spoofing: the CT sends NTP, which the exception allows for the pump, with
# the pump's address. Only the MAC-address binding stops it.
ip -n "$CT" addr add 198.51.100.18/32 dev eth0
ip netns exec "$LAN" timeout 4 nc -u -l -W 1 192.0.2.123 123 > "/tmp/ward-demo-ntp-$tag" &
sleep 0.5
echo spoofed | ip netns exec "$CT" nc -u -w1 -s 198.51.100.18 192.0.2.123 123 || true
wait || true
if grep -q spoofed "/tmp/ward-demo-ntp-$tag"; then bad "spoofed NTP passed"; else ok "CT sending as the pump 198.51.100.18 (spoofing), even to NTP: dropped"; fi
rm -f "/tmp/ward-demo-ntp-$tag"

step "7. per-device drop counters (what wardd will export as metrics)"
ip netns exec "$GW" nft list counters table inet ward |
  awk '/counter /{name=$2} /packets/{printf "    %-22s %4s packets dropped\n", name, $2}'

step "done"
if (( failures )); then echo "    $failures check(s) failed"; exit 1; fi
echo "    all checks passed; namespaces removed on exit"
