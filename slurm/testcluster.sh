#!/usr/bin/env bash
# A throwaway one-node Slurm cluster for tests and for trying the Slurm path on a laptop.
#
#   slurm/testcluster.sh start  DIR   # munged + slurmctld + slurmd, all state under DIR
#   slurm/testcluster.sh status DIR   # daemons, node state and queue
#   slurm/testcluster.sh stop   DIR   # cancel jobs, stop daemons (by pid file), kill leftovers
#
# Then point the clients at it:  export SLURM_CONF=DIR/slurm.conf  (sbatch, squeue, scancel,
# scontrol, srun; submitit too). `start` prints that line and writes it to DIR/env.
#
# Needs root and Debian's slurm-wlm + munge (apt-get install slurm-wlm munge). Everything runs
# from DIR: a private munge key and socket (the system munged is not touched), slurm.conf,
# cgroup.conf, plugstack.conf, state, spool and logs. The daemons talk over 127.0.0.1 on two free
# ports, bound to the loopback address (CommunicationParameters=NoInAddrAny,NoCtldInAddrAny with
# the host name resolving to 127.0.0.1); nothing leaves the machine. No cgroups, no accounting
# daemon: sacct does not work, use squeue/scontrol and the jobs' output files.
#
# Environment:
#   TESTCLUSTER_CPUS     CPUs the node advertises (default: nproc). More than nproc is allowed
#                        (SlurmdParameters=config_overrides), e.g. to run 4 light tasks at once.
#   TESTCLUSTER_MEM_MB   RealMemory of the node (default: MemTotal - 512 MB).
#   TESTCLUSTER_OWNER    a pid: a watchdog stops the cluster when that process exits (tests set
#                        it to their own pid, so a killed pytest leaves no daemons behind).
#   TESTCLUSTER_TIMEOUT  seconds to wait for each daemon to come up (default 30).
set -euo pipefail

usage() {
    sed -n '2,8p' "$0" >&2
    exit 2
}

[ $# -eq 2 ] || usage
cmd=$1
DIR=$(mkdir -p "$2" && cd "$2" && pwd)
CONF=$DIR/slurm.conf
SELF=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
export SLURM_CONF=$CONF

log() { echo "testcluster: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

pid_of() { # pid_of NAME -> the pid in DIR/run/NAME.pid if that process is alive
    local f=$DIR/run/$1.pid pid
    [ -s "$f" ] || return 1
    pid=$(tr -dc '0-9' <"$f")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for() { # wait_for WHAT CMD...: poll CMD every 0.1 s until it succeeds
    local what=$1 deadline
    shift
    deadline=$((SECONDS + ${TESTCLUSTER_TIMEOUT:-30}))
    until "$@" >/dev/null 2>&1; do
        if [ $SECONDS -ge $deadline ]; then
            log "$what did not come up in ${TESTCLUSTER_TIMEOUT:-30} s; last log lines:"
            tail -n 20 "$DIR"/log/*.log >&2 || true
            stop_cluster
            exit 1
        fi
        sleep 0.1
    done
}

node_idle() { [ "$(sinfo -h -n "$NODE" -o %T 2>/dev/null)" = idle ]; }
ctld_up() { scontrol ping 2>/dev/null | grep -q UP; }

# Processes of this cluster that a daemon kill can orphan: every process started with
# TESTCLUSTER_DIR=DIR (the daemons), slurmstepd and job processes (they carry this cluster's
# SLURM_CONF, jobs also SLURM_JOB_ID). Never this script or its ancestors.
cluster_pids() {
    local keep=" $$ " p=$$ pid env comm
    while [ "$p" -gt 1 ] 2>/dev/null; do
        p=$(awk '{print $4}' "/proc/$p/stat" 2>/dev/null || echo 1)
        keep="$keep$p "
    done
    for env in /proc/[0-9]*/environ; do
        pid=${env#/proc/}
        pid=${pid%/environ}
        case $keep in *" $pid "*) continue ;; esac
        comm=$(cat "/proc/$pid/comm" 2>/dev/null) || continue
        { tr '\0' '\n' <"$env"; } 2>/dev/null | awk -v dir="$DIR" -v conf="$CONF" -v comm="$comm" '
            $0 == "TESTCLUSTER_DIR=" dir { hit = 1 }
            $0 == "SLURM_CONF=" conf { c = 1 }
            /^SLURM_JOB_ID=/ { j = 1 }
            END { exit !(hit || (c && (j || comm == "slurmstepd"))) }' && echo "$pid"
    done
    return 0
}

kill_pids() { # kill_pids PID...: TERM, up to 3 s, then KILL
    [ $# -gt 0 ] || return 0
    kill -TERM "$@" 2>/dev/null || true
    local i
    for i in $(seq 30); do
        local alive=0 p
        for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && return 0
        sleep 0.1
    done
    kill -KILL "$@" 2>/dev/null || true
}

stop_cluster() {
    local pid pids
    # Jobs first, while slurmctld can still signal them (KillWait is 2 s).
    if ctld_up; then
        scancel --quiet --user="$(id -un)" 2>/dev/null || true
        local deadline=$((SECONDS + 6))
        while [ -n "$(squeue -h -o %A 2>/dev/null)" ] && [ $SECONDS -lt $deadline ]; do
            sleep 0.2
        done
    fi
    # The daemons together (each takes ~2 s to exit on SIGTERM). The watchdog itself runs
    # `stop` when its owner exits: it does not kill itself.
    pids=""
    for name in watchdog slurmd slurmctld munged; do
        if pid=$(pid_of $name) && [ "$pid" != $$ ]; then pids="$pids $pid"; fi
    done
    # shellcheck disable=SC2086
    kill_pids $pids
    rm -f "$DIR"/run/*.pid
    # Anything orphaned (slurmstepd, job processes of a killed slurmd).
    pids=$(cluster_pids)
    # shellcheck disable=SC2086
    [ -z "$pids" ] || kill_pids $pids
}

status_cluster() {
    local rc=0 name pid
    for name in munged slurmctld slurmd watchdog; do
        if pid=$(pid_of $name); then
            echo "$name: running (pid $pid)"
        else
            echo "$name: not running"
            [ $name = watchdog ] || rc=1
        fi
    done
    if [ $rc = 0 ]; then
        echo "SLURM_CONF=$CONF"
        sinfo -N -o "%N %T %c %m %P" 2>&1 || rc=1
        squeue 2>&1 || rc=1
    fi
    return $rc
}

start_cluster() {
    [ "$(id -u)" = 0 ] || die "run as root (slurmd runs jobs as their owner, here root)"
    for b in munged mungekey slurmctld slurmd sinfo scontrol; do
        command -v $b >/dev/null || die "$b not found; apt-get install slurm-wlm munge"
    done
    if pid_of slurmctld >/dev/null || pid_of slurmd >/dev/null || pid_of munged >/dev/null; then
        die "a cluster is already running in $DIR; run: $0 stop $DIR"
    fi
    NODE=$(hostname -s)
    local t0=$SECONDS cpus mem ctld_port slurmd_port
    cpus=${TESTCLUSTER_CPUS:-$(nproc)}
    mem=${TESTCLUSTER_MEM_MB:-$(awk '/MemTotal/ {m = int($2 / 1024) - 512; print (m > 1000 ? m : 1000)}' /proc/meminfo)}
    ctld_port=$(free_port)
    slurmd_port=$(free_port)
    while [ "$slurmd_port" = "$ctld_port" ]; do slurmd_port=$(free_port); done

    rm -rf "$DIR/state" "$DIR/spool" "$DIR/run" "$DIR/log" "$DIR/munge"
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/run" "$DIR/log" "$DIR/munge"
    # munged checks that its socket directory (and the path to it) is executable by all.
    chmod 755 "$DIR" "$DIR/munge"

    # A private munge: own key, socket, pid, log; the system's /etc/munge is untouched.
    mungekey --create --keyfile="$DIR/munge/munge.key" --bits=1024 2>/dev/null
    export TESTCLUSTER_DIR=$DIR # marks every daemon (and slurmstepd) of this cluster
    munged --socket="$DIR/munge/munge.sock" --key-file="$DIR/munge/munge.key" \
        --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" \
        --seed-file="$DIR/munge/munged.seed" ||
        die "munged failed: $(tail -n 3 "$DIR/log/munged.log" 2>/dev/null)"

    cat >"$CONF" <<EOF
# One-node test cluster written by slurm/testcluster.sh; all state lives in $DIR.
ClusterName=lrwdtest
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire: also how long a requeued job waits before it may start again (default 120 s).
AuthInfo=socket=$DIR/munge/munge.sock,cred_expire=5
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$DIR/plugstack.conf
MailProg=/bin/true
# No cgroups, no accounting: processes are tracked by parentage, nothing is constrained.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SlurmdParameters=config_overrides
# Fast turnaround for tests.
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1,sched_min_interval=0,batch_sched_delay=0
KillWait=2
OverTimeLimit=0
InactiveLimit=0
MinJobAge=600
MessageTimeout=10
SlurmctldTimeout=30
SlurmdTimeout=300
ReturnToService=2
JobRequeue=1
MaxArraySize=10001
MaxJobCount=100000
NodeName=$NODE NodeHostname=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    cat >"$DIR/cgroup.conf" <<EOF
# Unused (proctrack/linuxproc, task/none); here so no system cgroup.conf is read.
CgroupAutomount=no
ConstrainCores=no
ConstrainRAMSpace=no
EOF
    : >"$DIR/plugstack.conf" # no SPANK plugins (the system plugstack.conf is not read)
    echo "export SLURM_CONF=$CONF" >"$DIR/env"

    slurmctld -f "$CONF" -c -i || die "slurmctld failed: $(tail -n 5 "$DIR/log/slurmctld.log" 2>/dev/null)"
    wait_for slurmctld ctld_up
    slurmd -f "$CONF" -N "$NODE" || die "slurmd failed: $(tail -n 5 "$DIR/log/slurmd.log" 2>/dev/null)"
    wait_for "node $NODE (idle)" node_idle

    if [ -n "${TESTCLUSTER_OWNER:-}" ]; then
        # The watchdog runs without TESTCLUSTER_DIR, so `stop` does not count it as a leftover.
        (
            unset TESTCLUSTER_DIR
            exec setsid bash -c 'while kill -0 "$1" 2>/dev/null && [ -f "$2/run/slurmctld.pid" ]; do
                    sleep 1; done
                [ -f "$2/run/slurmctld.pid" ] && exec "$3" stop "$2"' \
                watchdog "$TESTCLUSTER_OWNER" "$DIR" "$SELF" </dev/null >>"$DIR/log/watchdog.log" 2>&1
        ) &
        echo $! >"$DIR/run/watchdog.pid"
    fi
    log "up in $((SECONDS - t0)) s: node $NODE ($cpus CPUs, $mem MB), partition debug, ports $ctld_port/$slurmd_port"
    echo "export SLURM_CONF=$CONF"
}

case $cmd in
start) start_cluster ;;
stop) stop_cluster ;;
status) status_cluster ;;
*) usage ;;
esac
