#!/usr/bin/env bash
# A real single-node Slurm for the tests, started as root without systemd, all state in DIR:
# munged (as the munge user, its own key, socket directory of mode 711), slurmctld -c and slurmd
# with a generated slurm.conf (no accounting; a fake `gpu` gres whose File= entries are symlinks
# to /dev/null, so --gres=gpu:1 sets CUDA_VISIBLE_DEVICES as on a real node).
#   tests/slurm/local_cluster.sh start DIR   then: export SLURM_CONF=DIR/slurm.conf
#   tests/slurm/local_cluster.sh stop DIR    (stops the daemons by their pid files)
set -euo pipefail
cmd=${1:?start|stop}
dir=$(realpath -m "${2:?DIR}")
GPUS=${LOCAL_SLURM_GPUS:-2}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

write_conf() {
    local ctld_port slurmd_port
    ctld_port=$(free_port); slurmd_port=$(free_port)
    cat >"$dir/slurm.conf" <<CONF
ClusterName=mnclglftest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
AuthType=auth/munge
AuthInfo=socket=$(realpath "$dir/munge")/munge.sock
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge=3600
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=1000 Gres=gpu:$GPUS State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
    echo "NodeName=localhost Name=gpu File=$dir/gres/gpu[0-$((GPUS - 1))]" >"$dir/gres.conf"
}

start() {
    mkdir -p "$dir"/{spool,state,log,gres}
    # munged runs as the munge user, who may not traverse DIR (pytest's folders are 0700)
    ln -sfn "$(mktemp -d /tmp/mnclglf-munge.XXXXXX)" "$dir/munge"
    for ((i = 0; i < GPUS; i++)); do ln -sfn /dev/null "$dir/gres/gpu$i"; done
    head -c 1024 /dev/urandom >"$dir/munge/munge.key"
    chown -R munge: "$dir/munge/"
    chmod 711 "$dir/munge/"
    chmod 400 "$dir/munge/munge.key"
    local m
    m=$(realpath "$dir/munge")
    runuser -u munge -- munged --key-file="$m/munge.key" --socket="$m/munge.sock" \
        --pid-file="$m/munged.pid" --log-file="$m/munged.log" --seed-file="$m/munged.seed" --force
    write_conf
    export SLURM_CONF=$dir/slurm.conf
    slurmctld -c -f "$SLURM_CONF"
    slurmd -f "$SLURM_CONF" -N localhost
    for _ in $(seq 60); do
        if sinfo -h -o %T 2>/dev/null | grep -qx idle; then
            echo "slurm up: export SLURM_CONF=$SLURM_CONF"
            return
        fi
        sleep 0.5
    done
    echo "slurm did not come up; logs in $dir/log, $dir/munge" >&2
    sinfo >&2 || true
    return 1
}

stop() {
    for pid_file in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
        if [[ -s $pid_file ]]; then kill "$(cat "$pid_file")" 2>/dev/null || true; fi
    done
    if [[ -L $dir/munge ]]; then sleep 0.5; rm -rf "$(realpath "$dir/munge")" "$dir/munge"; fi
}

"$cmd"
