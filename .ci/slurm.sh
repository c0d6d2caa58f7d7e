#!/usr/bin/env bash
# CI step: the SLURM profile against a real scheduler.
#
#   .ci/slurm.sh                      (as root: it installs packages and starts daemons)
#
# 1. installs SLURM and MUNGE from the distribution's packages (apt-get: slurm-wlm, munge), if missing;
# 2. starts a one-node cluster on this machine: munged (unless one already answers), slurmctld and
#    slurmd, from a generated /etc/slurm/slurm.conf with two partitions, ci-cpu and ci-gpu, on the one
#    node (no accounting database: the jobs stay visible to `scontrol` for MinJobAge = 1 h);
# 3. runs a tiny digits tier (ResNet-20, 1 seed, SOSP-H and magnitude at ratio 0.5, 1 epoch, no latency,
#    no bottleneck study) through `--profile workflow/profiles/slurm`, the partitions set through
#    SOSP_SLURM_CPU_PARTITION / SOSP_SLURM_GPU_PARTITION, and the same tier locally
#    (`--profile workflow/profiles/default --cores 2`), each in its own copy of the workflow under
#    $SOSP_SLURM_CI_DIR (default /tmp/sosp-slurm-ci), so nothing lands in the checkout's results/ or work/;
# 4. checks (.ci/slurm_check.py) that every non-local job ran as a SLURM job, COMPLETED, with the CPUs,
#    memory, time limit and partition its rule asked for (`scontrol show job`), and that the SLURM run's
#    records equal the local run's (accuracy, loss, params, MACs; not timings);
# 5. stops the daemons it started and removes the slurm.conf it wrote (also on failure); the logs, both
#    runs and the job table stay in $SOSP_SLURM_CI_DIR.
# Idempotent: a second call stops what a previous (interrupted) call left running and starts afresh.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
VENV=${VENV:-$REPO/.venv}
BASE=${SOSP_SLURM_CI_DIR:-/tmp/sosp-slurm-ci}
CONF=/etc/slurm/slurm.conf
MARK="# written by sosp-bench .ci/slurm.sh"
MUNGED_MARK=/run/munge/started-by-sosp-slurm-ci # a munged of ours that an interrupted call left
STARTED_MUNGED=0
[[ -f $MUNGED_MARK ]] && STARTED_MUNGED=1
T0=$SECONDS
TPHASE=$SECONDS

say() { printf '[slurm-ci %4ds] %s\n' "$((SECONDS - T0))" "$*"; }
die() {
    say "FAILED: $*" >&2
    exit 1
}
phase_done() {
    say "$1 took $((SECONDS - TPHASE)) s"
    TPHASE=$SECONDS
}

# a daemon of ours, by its pid file (never by name: other slurm/munge daemons are left alone)
stop_pidfile() {
    local file=$1 pid
    [[ -s $file ]] || return 0
    pid=$(cat "$file")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
    fi
    rm -f "$file"
}

conf_is_ours() { [[ $(head -n 1 "$CONF") == "$MARK"* ]]; }

stop_cluster() {
    if [[ -f $CONF ]] && conf_is_ours; then
        if [[ -s $BASE/slurmctld.pid ]] && command -v scancel >/dev/null; then
            timeout 10 scancel --full --quiet --user=root >/dev/null 2>&1 || true # jobs of our cluster
        fi
        rm -f "$CONF"
    fi
    stop_pidfile "$BASE/slurmd.pid"
    stop_pidfile "$BASE/slurmctld.pid"
}

cleanup() {
    local rc=$?
    stop_cluster
    if ((STARTED_MUNGED)); then
        stop_pidfile /run/munge/munged.pid
        rm -f "$MUNGED_MARK"
    fi
    if ((rc == 0)); then
        say "SLURM step passed in $((SECONDS - T0)) s (logs, runs and job table in $BASE)"
    else
        say "SLURM step FAILED after $((SECONDS - T0)) s; logs in $BASE/log, runs in $BASE/{slurm,local}-run" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------------
# 1. packages
[[ $BASE == /?*/?* ]] || die "SOSP_SLURM_CI_DIR must be an absolute path two levels deep at least (it is emptied): $BASE"
((EUID == 0)) || die "needs root (apt-get install, munged, slurmctld and slurmd as root); run it as root in CI"
stop_cluster # whatever an interrupted earlier call left running
rm -rf "$BASE"
mkdir -p "$BASE/state" "$BASE/spool" "$BASE/log"
chmod 755 "$BASE"
[[ -x $VENV/bin/snakemake ]] || make install
"$VENV/bin/python" -c 'import snakemake_executor_plugin_slurm' 2>/dev/null ||
    die "snakemake-executor-plugin-slurm missing in $VENV (make install installs the 'slurm' extra)"
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null ||
    ! command -v munged >/dev/null; then
    say "installing slurm-wlm and munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends slurm-wlm munge >"$BASE/apt.log" 2>&1 ||
        { apt-get update -q >>"$BASE/apt.log" 2>&1 &&
            apt-get install -y -q --no-install-recommends slurm-wlm munge >>"$BASE/apt.log" 2>&1; } ||
        die "apt-get install slurm-wlm munge failed: $(tail -n 5 "$BASE/apt.log")"
fi
say "$(slurmctld -V), $(munged -V 2>&1 | awk '{print $1}')"
phase_done "install"

# ---------------------------------------------------------------------------------------------------
# 2. the one-node cluster
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    if [[ ! -s /etc/munge/munge.key ]]; then
        mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null || create-munge-key -f ||
            die "could not create /etc/munge/munge.key"
        chown munge:munge /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
    fi
    install -d -o munge -g munge -m 0755 /run/munge
    runuser -u munge -- /usr/sbin/munged || die "munged did not start (see /var/log/munge/munged.log)"
    STARTED_MUNGED=1
    touch "$MUNGED_MARK"
    for _ in $(seq 25); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.2
    done
    munge -n | unmunge >/dev/null || die "munge does not answer: $(tail -n 3 /var/log/munge/munged.log)"
fi

# Slurm's commands read /etc/slurm/slurm.conf: the job step's `srun` does not see a SLURM_CONF of ours
# (the plugin's job step drops inherited SLURM_* variables), so the file has to be there.
if [[ -f $CONF ]] && ! conf_is_ours; then
    die "$CONF exists and was not written by this script: not overwriting a real cluster's configuration"
fi
NODE=$(hostname -s)
# the node as slurmd sees it (CPUs, sockets, cores, threads, memory), less 1 GiB of memory for the rest
HW=$(slurmd -C | head -n 1)
CPUS=$(sed -E 's/.* CPUs=([0-9]+).*/\1/' <<<"$HW")
TOPOLOGY=$(grep -oE '(Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=[0-9]+' <<<"$HW" | tr '\n' ' ')
MEM=$(($(sed -E 's/.* RealMemory=([0-9]+).*/\1/' <<<"$HW") - 1024))
((MEM >= 4000)) || die "only ${MEM} MB of memory for jobs (slurmd -C: $HW); the tiny tier needs 4000"
mkdir -p /etc/slurm
cat >"$CONF" <<EOF
$MARK: a one-node test cluster, removed again when the step ends
ClusterName=sosp-ci
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$BASE/slurmctld.pid
SlurmdPidFile=$BASE/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
# no cgroups (containers): plain process tracking, no task binding, no resource sampling
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# no accounting database: finished jobs stay in slurmctld (scontrol, squeue) for MinJobAge seconds,
# and every job is also written to the job completion file
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$BASE/log/jobcomp.txt
MinJobAge=3600
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS ${TOPOLOGY}RealMemory=$MEM State=UNKNOWN
PartitionName=ci-cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=ci-gpu Nodes=$NODE MaxTime=INFINITE State=UP
EOF
slurmctld -i || die "slurmctld did not start: $(tail -n 5 "$BASE/log/slurmctld.log" 2>/dev/null)"
slurmd || die "slurmd did not start: $(tail -n 5 "$BASE/log/slurmd.log" 2>/dev/null)"
for _ in $(seq 60); do
    [[ $(sinfo -h -n "$NODE" -o %t 2>/dev/null | head -n 1) == idle ]] && break
    sleep 0.5
done
[[ $(sinfo -h -n "$NODE" -o %t | head -n 1) == idle ]] ||
    die "node $NODE not idle: $(sinfo -N -l 2>&1 | tail -n 2); $(tail -n 5 "$BASE/log/slurmd.log")"
out=$(timeout 60 srun -p ci-cpu -n 1 -t 1 --mem 100 hostname 2>&1) ||
    die "a one-line srun job failed: $out; $(tail -n 5 "$BASE/log/slurmd.log")"
say "cluster up: node $NODE, $CPUS CPUs, $MEM MB, partitions ci-cpu and ci-gpu (test job ran on $out)"
phase_done "cluster start"

# ---------------------------------------------------------------------------------------------------
# 3. the tiny tier, through SLURM and locally, each in its own copy of the workflow
cat >"$BASE/tier.yaml" <<'EOF'
# .ci/slurm.sh: the default digits tier cut down to 7 cluster jobs; each rule asks for different
# resources, so the check can tell them apart
tier: slurm_ci
archs: [resnet20]
seeds: [0]
train: {epochs: 1}
prune: {methods: [sosp_h, magnitude], ratios: [0.5], target: [structures], samples: 128}
finetune: {epochs: 1}
measure: {latency: false, exclusive: false}
bottleneck: {enabled: false}
report: {tables: [summary], figures: [], formats: [png]}
resources:
  data:     {threads: 1, mem_mb: 500, runtime: 5}
  train:    {threads: 2, mem_mb: 1500, runtime: 20}
  prune:    {threads: 1, mem_mb: 1200, runtime: 15}
  finetune: {threads: 1, mem_mb: 1100, runtime: 12}
  measure:  {threads: 1, mem_mb: 1000, runtime: 10}
  report:   {threads: 1, mem_mb: 800, runtime: 5}
EOF
for run in slurm-run local-run; do
    mkdir -p "$BASE/$run"
    cp -r Snakefile workflow config "$BASE/$run/"
done

say "SLURM run: snakemake --profile workflow/profiles/slurm (log $BASE/slurm-run/snakemake.log)"
(
    cd "$BASE/slurm-run"
    SOSP_SLURM_CPU_PARTITION=ci-cpu SOSP_SLURM_GPU_PARTITION=ci-gpu timeout 420 "$VENV/bin/snakemake" \
        --profile workflow/profiles/slurm --configfile "$BASE/tier.yaml" \
        --slurm-status-command squeue --slurm-init-seconds-before-status-checks 5 \
        --slurm-keep-successful-logs --retries 0 >snakemake.log 2>&1
) || die "the SLURM run failed: $(grep -iE 'error|exception|failed' "$BASE/slurm-run/snakemake.log" | tail -n 8)"
phase_done "SLURM run"

say "local run: snakemake --cores 2 --profile workflow/profiles/default (log $BASE/local-run/snakemake.log)"
(
    cd "$BASE/local-run"
    timeout 240 "$VENV/bin/snakemake" --cores 2 --profile workflow/profiles/default \
        --configfile "$BASE/tier.yaml" >snakemake.log 2>&1
) || die "the local run failed: $(grep -iE 'error|exception|failed' "$BASE/local-run/snakemake.log" | tail -n 8)"
phase_done "local run"

# ---------------------------------------------------------------------------------------------------
# 4. the jobs as SLURM saw them, and SLURM's records against the local ones
cp "$BASE/log/jobcomp.txt" "$BASE/jobcomp.txt" 2>/dev/null || true
"$VENV/bin/python" .ci/slurm_check.py --tier "$BASE/tier.yaml" --slurm-run "$BASE/slurm-run" \
    --local-run "$BASE/local-run" --cpu-partition ci-cpu --gpu-partition ci-gpu --node-cpus "$CPUS" |
    tee "$BASE/check.txt"
phase_done "check"
