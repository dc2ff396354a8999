#!/usr/bin/env bash
# Stop the daemons that .ci/slurm-up.sh started (and only those), by the pid files it
# recorded in /run/circuit-repro-slurm: first the SLURM daemons, then the database and
# munge they use. It also removes the slurm.conf that slurm-up.sh wrote: with a
# slurm.conf but no slurmctld, every SLURM command, and so every snakemake start (the
# slurm plugin asks `scontrol` for the configuration as it loads), waits ~10 s for the
# controller. Packages stay, so a later slurm-up.sh starts again in a few seconds.
# Idempotent.
set -euo pipefail

STATE=/run/circuit-repro-slurm
MARKER="# written by circuit-repro .ci/slurm-up.sh"

say() { echo "slurm-down: $*"; }

[[ -d $STATE ]] || {
	say "nothing to stop"
	exit 0
}

# Send SIGTERM to the named daemons at once, then wait up to 30 s for each to exit.
stop() {
	local name record pidfile pid
	local -A pids=()
	for name in "$@"; do
		record="$STATE/$name.pidfile"
		[[ -f $record ]] || continue
		pidfile=$(cat "$record")
		if [[ -s $pidfile ]] && pid=$(cat "$pidfile") && kill -0 "$pid" 2>/dev/null; then
			say "stopping $name (pid $pid)"
			kill -TERM "$pid"
			pids[$name]=$pid
		fi
		rm -f "$record"
	done
	for name in "${!pids[@]}"; do
		pid=${pids[$name]}
		for ((i = 0; i < 120; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.25
		done
		if kill -0 "$pid" 2>/dev/null; then
			say "$name (pid $pid) ignored SIGTERM for 30 s; sending SIGKILL"
			kill -KILL "$pid" 2>/dev/null || true
		fi
	done
}

stopped_controller=false
[[ -f $STATE/slurmctld.pidfile ]] && stopped_controller=true
stop slurmd slurmctld slurmdbd
if $stopped_controller && grep -qF "$MARKER" /etc/slurm/slurm.conf 2>/dev/null; then
	rm -f /etc/slurm/slurm.conf
	say "removed /etc/slurm/slurm.conf (slurm-up.sh writes it again)"
fi
stop mariadbd munged
rmdir "$STATE" 2>/dev/null || true
say "stopped"
