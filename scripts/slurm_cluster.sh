#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, for the test suite and for trying the Slurm backend:
#   bash scripts/slurm_cluster.sh install   # Debian's slurm-wlm and munge (needs root or sudo)
#   bash scripts/slurm_cluster.sh start     # munged, slurmctld and slurmd; waits for an idle node
#   bash scripts/slurm_cluster.sh stop
# It runs as root without systemd or cgroups (proctrack/linuxproc, task/none), without accounting: job
# states come from squeue, which keeps finished jobs for MinJobAge. It overwrites /etc/slurm/slurm.conf. The
# daemons talk over 127.0.0.1, so the machine's name need not resolve.
set -euo pipefail

if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
CONF=/etc/slurm/slurm.conf
HOST=$(hostname -s)
# The node offers at least 4 CPUs (config_overrides lets it say more than it has), so a test's small runs
# time-share a 2-core machine a few at a time.
CPUS=$(( $(nproc) > 4 ? $(nproc) : 4 ))
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))

install() {
  if command -v slurmctld >/dev/null && command -v munged >/dev/null; then return; fi
  $SUDO apt-get install -y -q slurm-wlm munge >/dev/null 2>&1 || { $SUDO apt-get update -q && $SUDO apt-get install -y -q slurm-wlm munge; }
}

write_conf() {
  $SUDO mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
  $SUDO tee "$CONF" >/dev/null <<CONF
ClusterName=cvae-test
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MailProg=/bin/true
MpiDefault=none
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=3600
KillWait=30
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
}

start() {
  install
  write_conf
  if [ ! -s /etc/munge/munge.key ]; then
    $SUDO mungekey --create --keyfile /etc/munge/munge.key 2>/dev/null || $SUDO /usr/sbin/create-munge-key -f
  fi
  $SUDO chown munge:munge /etc/munge/munge.key && $SUDO chmod 0400 /etc/munge/munge.key
  $SUDO mkdir -p /run/munge /var/lib/munge /var/log/munge
  $SUDO chown munge:munge /run/munge /var/lib/munge /var/log/munge
  if [ -z "$SUDO" ]; then AS_MUNGE="runuser -u munge --"; else AS_MUNGE="sudo -u munge"; fi
  pgrep -x munged >/dev/null || $AS_MUNGE /usr/sbin/munged
  pgrep -x slurmctld >/dev/null || $SUDO slurmctld
  pgrep -x slurmd >/dev/null || $SUDO slurmd
  # A node drained by an earlier configuration (state is kept in StateSaveLocation) comes back.
  timeout 10 $SUDO scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
  for _ in $(seq 1 60); do
    if timeout 5 sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
      echo "slurm: node $HOST up with $CPUS CPUs"
      return 0
    fi
    sleep 1
  done
  echo "slurm: the node did not come up; see /var/log/slurm/" >&2
  return 1
}

stop() {
  for daemon in slurmd slurmctld munged; do
    $SUDO pkill -x "$daemon" || true
  done
  # Until they are gone: a start right after must not mistake an exiting daemon for a running one.
  for _ in $(seq 1 30); do
    pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null || pgrep -x munged >/dev/null || return 0
    sleep 1
  done
  for daemon in slurmd slurmctld munged; do
    $SUDO pkill -9 -x "$daemon" || true
  done
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac
