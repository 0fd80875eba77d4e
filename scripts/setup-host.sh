#!/usr/bin/env bash
# Idempotent host preparation for vcl-worker: Debian packages, MariaDB, Redis, virtlogd and libvirtd.
# Every step checks first, so running it on a prepared machine changes nothing.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need_pkgs=()
# e2fsprogs..openssh-client build the test guest image offline (mmdebstrap: the Debian 12 one);
# dnsmasq-base serves libvirt DHCP; tini reaps libvirt's QEMU processes where there is no systemd.
for pkg in qemu-utils qemu-system-x86 libvirt-daemon-system libvirt-clients libvirt-dev pkg-config \
           libxml2-utils python3-venv \
           e2fsprogs fdisk grub-pc-bin grub-common openssh-client mmdebstrap dnsmasq-base tini; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_pkgs+=("$pkg")
done
command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || need_pkgs+=(mariadb-server)
command -v redis-server >/dev/null 2>&1 || need_pkgs+=(redis-server)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  echo "setup-host: installing ${need_pkgs[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
elif ! ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1; then
  # The test guest image is built from Debian packages (apt-get download): it needs package lists.
  $SUDO apt-get update -qq
fi

has_systemd() { [ -d /run/systemd/system ] && systemctl is-system-running >/dev/null 2>&1; }

wait_for() {  # wait_for <seconds> <command...>
  local n=$1; shift
  for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  return 1
}

if ! pgrep -x mariadbd >/dev/null && ! pgrep -x mysqld >/dev/null; then
  echo "setup-host: starting MariaDB"
  if has_systemd; then $SUDO systemctl start mariadb; else
    $SUDO mkdir -p /run/mysqld && $SUDO chown mysql:mysql /run/mysqld 2>/dev/null || true
    $SUDO start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
  fi
  wait_for 30 mariadb-admin -uroot ping || { echo "setup-host: MariaDB did not start" >&2; exit 1; }
fi

if ! pgrep -x redis-server >/dev/null; then
  echo "setup-host: starting Redis"
  if has_systemd; then $SUDO systemctl start redis-server; else
    $SUDO mkdir -p /var/lib/redis /var/log/redis
    $SUDO redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/vcl-worker.log
  fi
  wait_for 15 redis-cli -h 127.0.0.1 ping || { echo "setup-host: Redis did not start" >&2; exit 1; }
fi

if ! pgrep -x virtlogd >/dev/null; then
  echo "setup-host: starting virtlogd"
  if has_systemd; then $SUDO systemctl start virtlogd; else $SUDO virtlogd -d; fi
fi
# Without systemd libvirtd runs under tini (a subreaper): see start-libvirtd.sh for why.
"$(dirname "$0")/start-libvirtd.sh"

# /dev/kvm is optional: without it domains run under TCG (type='qemu').
if [ -e /dev/kvm ]; then echo "setup-host: /dev/kvm present (KVM)"; else echo "setup-host: no /dev/kvm (TCG)"; fi
