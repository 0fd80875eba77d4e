#!/usr/bin/env bash
# Start libvirtd if it is not running (setup-host.sh, and the fault test that restarts it).
#
# With systemd, systemctl. Without it (containers, CI sandboxes), under `tini -s`, a child subreaper:
# libvirt daemonizes every QEMU, so a QEMU's parent is PID 1, and virDomainDestroy returns only once
# the killed QEMU has been reaped (a zombie still answers kill(pid, 0)). An init that reaps orphans
# late makes every destroy that slow: this sandbox's PID 1 reaps once a second, and destroy took
# 1.4-1.8 s instead of 0.21 s. Under tini the orphans are tini's and are reaped at once, as
# systemd does on a real VM host.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if pgrep -x libvirtd >/dev/null; then exit 0; fi
echo "start-libvirtd: starting libvirtd"
if [ -d /run/systemd/system ] && systemctl is-system-running >/dev/null 2>&1; then
  $SUDO systemctl start libvirtd
else
  $SUDO mkdir -p /var/log/libvirt
  # Foreground libvirtd under tini, in its own session so it outlives the caller.
  $SUDO setsid tini -s -- libvirtd </dev/null >>/var/log/libvirt/libvirtd-tini.log 2>&1 &
fi
for _ in $(seq 30); do
  virsh -c qemu:///system version >/dev/null 2>&1 && exit 0
  sleep 1
done
echo "start-libvirtd: libvirtd is not answering" >&2
exit 1
