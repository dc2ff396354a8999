#!/usr/bin/env bash
# Bring up a real single-node SLURM cluster (with accounting) on this machine, for
# tests/workflow/test_slurm.py and for trying the slurm profile by hand:
#
#   sudo .ci/slurm-up.sh      # install (apt), configure, start; prints where logs are
#   .venv/bin/snakemake --workflow-profile workflow/profiles/slurm \
#       --default-resources slurm_partition=main slurm_account=circuit-repro ...
#   sudo .ci/slurm-down.sh    # stop what slurm-up.sh started
#
# Debian/Ubuntu only (apt-get), as root. Idempotent: a second call starts only what is
# not running and leaves running daemons alone. It never overwrites a slurm.conf or
# slurmdbd.conf it did not write (those carry the marker line below).
#
# Daemons, in start order: munged (authentication), mariadbd (the accounting
# database), slurmdbd (accounting; snakemake's slurm executor needs `sacct` to see jobs
# finish), slurmctld (controller), slurmd (the one compute node).
#
# Settings (environment): SLURM_CLUSTER (circuitrepro), SLURM_PARTITION (main),
# SLURM_ACCOUNT (circuit-repro).
set -euo pipefail

CLUSTER=${SLURM_CLUSTER:-circuitrepro}
PARTITION=${SLURM_PARTITION:-main}
ACCOUNT=${SLURM_ACCOUNT:-circuit-repro}
MARKER="# written by circuit-repro .ci/slurm-up.sh"
STATE=/run/circuit-repro-slurm # pid files of the daemons this script started
LOGDIR=/var/log/slurm
DB_NAME=slurm_acct_db
DB_USER=slurm
DB_PASS=circuit-repro-ci # local-only database on a throwaway CI machine
HOST=$(hostname -s)

say() { echo "slurm-up: $*"; }
die() {
	echo "slurm-up: error: $*" >&2
	exit 1
}

[[ $(id -u) == 0 ]] || die "must run as root (installs packages and starts daemons)"

# Is the daemon behind a pid file alive?
alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Wait up to $1 seconds for the command in the remaining arguments to succeed.
wait_for() {
	local limit=$1
	shift
	for ((i = 0; i < limit * 4; i++)); do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.25
	done
	return 1
}

# Record that this script started the daemon behind pid file $2 (slurm-down.sh
# stops exactly these).
started() { echo "$2" >"$STATE/$1.pidfile"; }

# --- packages -------------------------------------------------------------------------
packages=(slurm-wlm munge slurmdbd mariadb-server)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	command -v apt-get >/dev/null || die "apt-get not found; install ${missing[*]} yourself"
	say "installing ${missing[*]} (apt-get)"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >/dev/null
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

mkdir -p "$STATE" "$LOGDIR" /var/spool/slurmctld /var/spool/slurmd /etc/slurm

# --- configuration --------------------------------------------------------------------
write_conf() { # path mode: write stdin to path unless someone else's file is there
	local path=$1 mode=$2 tmp
	tmp=$(mktemp)
	cat >"$tmp"
	if [[ -e $path ]] && ! grep -qF "$MARKER" "$path"; then
		rm -f "$tmp"
		die "$path exists and was not written by this script; not touching it"
	fi
	if ! cmp -s "$tmp" "$path"; then
		install -m "$mode" -o root -g root "$tmp" "$path"
		say "wrote $path"
		changed+=("$path")
	fi
	rm -f "$tmp"
}

changed=()
cpus=$(nproc)
# Leave a fifth of the memory to the OS and the daemons.
mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.8}' /proc/meminfo)

write_conf /etc/slurm/slurm.conf 644 <<EOF
$MARKER
# A single-node cluster for testing the snakemake slurm profile.
ClusterName=$CLUSTER
# Addresses given, so that an unresolvable host name does not matter.
SlurmctldHost=$HOST(127.0.0.1)
AuthType=auth/munge
SlurmUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=5
# sacct shows the comment snakemake gives each job (rule_<name>_wildcards_...)
AccountingStoreFlags=job_comment
MinJobAge=600
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF

write_conf /etc/slurm/slurmdbd.conf 600 <<EOF
$MARKER
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
LogFile=$LOGDIR/slurmdbd.log
PidFile=/run/slurmdbd.pid
EOF

# --- munge ----------------------------------------------------------------------------
MUNGE_PID=/run/munge/munged.pid
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
	[[ -s /etc/munge/munge.key ]] || die "/etc/munge/munge.key is missing (reinstall munge)"
	install -d -o munge -g munge -m 755 /run/munge
	say "starting munged"
	su -s /bin/sh munge -c /usr/sbin/munged
	started munged "$MUNGE_PID"
	wait_for 10 sh -c 'munge -n | unmunge' || die "munged does not answer; see /var/log/munge/munged.log"
fi

# --- mariadb --------------------------------------------------------------------------
DB_PID=/run/mysqld/mysqld.pid
if ! alive "$DB_PID"; then
	install -d -o mysql -g mysql -m 755 /run/mysqld
	say "starting mariadbd"
	setsid /usr/sbin/mariadbd --user=mysql --pid-file="$DB_PID" \
		--log-error=/var/log/mysql/error.log </dev/null >/dev/null 2>&1 &
	started mariadbd "$DB_PID"
	wait_for 30 mariadb -e "SELECT 1" || die "mariadbd does not answer; see /var/log/mysql/error.log"
fi
mariadb <<EOF
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost';
EOF

# --- slurmdbd, then the cluster in the accounting database ----------------------------
if ! alive /run/slurmdbd.pid; then
	say "starting slurmdbd"
	slurmdbd
	started slurmdbd /run/slurmdbd.pid
fi
wait_for 30 sacctmgr -n list cluster || die "slurmdbd does not answer; see $LOGDIR/slurmdbd.log"
sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null

# --- slurmctld, slurmd ----------------------------------------------------------------
if alive /run/slurmctld.pid && [[ " ${changed[*]} " == *" /etc/slurm/slurm.conf "* ]]; then
	say "slurm.conf changed: restarting slurmctld and slurmd"
	for pidfile in /run/slurmd.pid /run/slurmctld.pid; do
		if alive "$pidfile"; then
			pid=$(cat "$pidfile")
			kill -TERM "$pid"
			wait_for 30 sh -c "! kill -0 $pid" || die "pid $pid ($pidfile) does not stop"
		fi
	done
fi
if ! alive /run/slurmctld.pid; then
	say "starting slurmctld"
	slurmctld
	started slurmctld /run/slurmctld.pid
fi
wait_for 30 scontrol ping || die "slurmctld does not answer; see $LOGDIR/slurmctld.log"
if ! alive /run/slurmd.pid; then
	say "starting slurmd"
	slurmd
	started slurmd /run/slurmd.pid
fi
node_ready() { sinfo -h -n "$HOST" -o %t | grep -Eq '^(idle|mix|alloc)'; }
wait_for 30 node_ready || die "node $HOST is not idle ($(sinfo -h -n "$HOST" -o %t)); see $LOGDIR/slurmd.log"

# --- account and user (after slurmctld registered the cluster) ------------------------
sacctmgr -n -P list account format=account | grep -qx "$ACCOUNT" ||
	sacctmgr -i add account "$ACCOUNT" cluster="$CLUSTER" description=circuit-repro organization=ci >/dev/null
sacctmgr -n -P list assoc user=root account="$ACCOUNT" format=user | grep -qx root ||
	sacctmgr -i add user root account="$ACCOUNT" cluster="$CLUSTER" >/dev/null
wait_for 15 sh -c "sacctmgr -n -P list assoc user=root account=$ACCOUNT format=user | grep -qx root" ||
	die "could not add user root to account $ACCOUNT"

say "up: cluster $CLUSTER, partition $PARTITION, account $ACCOUNT, node $HOST ($cpus CPUs, $mem_mb MB)"
say "logs: $LOGDIR/{slurmctld,slurmd,slurmdbd}.log, /var/log/munge/munged.log, /var/log/mysql/error.log"
say "stop with .ci/slurm-down.sh"
