"""launch/ scripts and bert_jax.aot.

The pod and SLURM launchers are checked through --dry-run (their exact commands; the per-task
environment logic is executed with a fake SLURM); the local launcher really runs 2 processes x 2
CPU devices over jax.distributed; bert_jax.aot compiles the real train step for 8 CPU devices and
its per-device bytes are checked against the shardings.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import finish_processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch")
# Child processes: CPU only, no inherited device count, and LLVM -O0 (compiles these tiny steps ~3x faster).
CHILD_ENV = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS" and not k.startswith("JAX_")},
             "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_backend_optimization_level=0"}
# For the dry runs of cluster launchers: nothing from this machine's jax settings.
PLAIN_ENV = {k: v for k, v in CHILD_ENV.items() if k != "XLA_FLAGS" and not k.startswith("JAX_")}


def bash(script, *args, env=None, check=True):
    proc = subprocess.run(["bash", os.path.join(LAUNCH, script), *args], capture_output=True, text=True,
                          cwd=ROOT, env=env or CHILD_ENV, timeout=60)
    if check and proc.returncode:
        pytest.fail(f"{script} {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


# ------------------------------------------------------------------ slow subprocesses, started early

@pytest.fixture(scope="module")
def background(tmp_path_factory):
    """Starts the 2-process training run and the AOT compile together (they overlap on the CPUs'
    idle time: coordinator start-up, data, checkpoint I/O); yields a function that waits for one."""
    out = tmp_path_factory.mktemp("launch")
    workdir = out / "run"
    local = subprocess.Popen(
        ["bash", os.path.join(LAUNCH, "local_multiprocess.sh"), "--num-processes=2", "--devices-per-process=2",
         "--timeout=240", "--", "--config=configs/pretrain.py:runlocal", f"--workdir={workdir}",
         "--config.total_steps=3", "--config.optim.warmup_steps=1", "--config.log_every=1",
         "--config.eval_every=0", "--config.checkpoint_every=3", "--config.progress_bar=false",
         # smaller than runlocal: a 64-wide model, a 500-token vocab, 8 sequences per step
         "--config.model.hidden_size=64", "--config.model.intermediate_size=128", "--config.data.vocab_size=500",
         "--config.data.global_batch_size=8"],
        cwd=ROOT, env=CHILD_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    aot_json = out / "aot.json"
    aot = subprocess.Popen(
        [sys.executable, "-m", "bert_jax.aot", "--config=configs/pretrain.py:runlocal", "--topology=cpu:8",
         "--config.mesh.ici_parallelism=2,2,2", f"--json_out={aot_json}"],
        cwd=ROOT, env=CHILD_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs = {"local": (local, workdir), "aot": (aot, aot_json)}
    results = {}

    def wait(name):
        if name not in results:
            proc, path = procs[name]
            stdout, stderr = proc.communicate(timeout=300)
            results[name] = (proc.returncode, stdout, stderr or "", path)
        return results[name]
    yield wait
    for proc, _ in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


# ------------------------------------------------------------------------------------ TPU VM pods

POD_RUN = ("WORKER=$(curl -sf -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/"
           "instance/attributes/agent-worker-number) && ENDPOINTS=$(curl -sf -H Metadata-Flavor:Google "
           "http://metadata.google.internal/computeMetadata/v1/instance/attributes/worker-network-endpoints) && "
           "HOSTS=$(echo \"$ENDPOINTS\" | tr , \"\\n\" | wc -l) && export ")
SETUP_INSTALL = ("cd bert_jax && python3 -m pip install --upgrade pip && python3 -m pip install -r requirements.txt "
                 "'\\''jax[tpu]'\\'' gcsfs google-cloud-storage && python3 -m pip install --no-deps -e .'")


def test_tpu_vm_single_slice_dry_run():
    out = bash("tpu_vm.sh", "--name=bert-pod", "--zone=us-east5-a", "--accelerator-type=v5p-128", "--create",
               "--workdir=gs://bucket/base", "--dry-run", "--",
               "--config=configs/pretrain.py:size=base,seq=128", "--config.data.global_batch_size=1024").stdout
    assert out.splitlines() == [
        "gcloud compute tpus tpu-vm create bert-pod --zone=us-east5-a --accelerator-type=v5p-128 "
        "--version=v2-alpha-tpuv5",
        f"(cd {ROOT} && git ls-files -co --exclude-standard | tar -czf /tmp/bert_jax_src.tar.gz -T -)",
        "gcloud compute tpus tpu-vm scp /tmp/bert_jax_src.tar.gz bert-pod:bert_jax_src.tar.gz --zone=us-east5-a "
        "--worker=all",
        "gcloud compute tpus tpu-vm ssh bert-pod --zone=us-east5-a --worker=all '--command=mkdir -p bert_jax && "
        "tar -xzf bert_jax_src.tar.gz -C bert_jax && " + SETUP_INSTALL,
        "gcloud compute tpus tpu-vm ssh bert-pod --zone=us-east5-a --worker=all '--command=" + POD_RUN
        + "JAX_COORDINATOR_ADDRESS=$(echo \"$ENDPOINTS\" | cut -d, -f1 | cut -d: -f3):8476 JAX_NUM_PROCESSES=$HOSTS "
        "JAX_PROCESS_ID=$WORKER && cd bert_jax && python3 -m bert_jax.main --workdir=gs://bucket/base "
        "--config=configs/pretrain.py:size=base,seq=128 --config.data.global_batch_size=1024 2>&1 | "
        "tee -a $HOME/bert_jax_run.log'",
    ]


def test_tpu_vm_multi_slice_dry_run():
    proc = bash("tpu_vm.sh", "--name=bert-ms", "--zone=us-east5-a", "--project=my-proj",
                "--accelerator-type=v5e-256", "--create", "--spot", "--num-slices=2",
                "--repo=https://github.com/org/bert_jax.git", "--branch=v1", "--workdir=gs://bucket/large",
                "--dry-run", "--", "--config=configs/pretrain.py:size=large")
    scope = "--zone=us-east5-a --project=my-proj"
    clone = ("'--command=if [ -d bert_jax/.git ]; then git -C bert_jax fetch --depth=1 origin v1 && git -C bert_jax "
             "checkout -f FETCH_HEAD; else git clone --depth=1 --branch=v1 https://github.com/org/bert_jax.git "
             "bert_jax; fi && ")
    slice_env = ("MEGASCALE_COORDINATOR_ADDRESS='\"$COORDINATOR_IP\"' MEGASCALE_NUM_SLICES=2 MEGASCALE_SLICE_ID={i} "
                 "MEGASCALE_PORT=8080 JAX_COORDINATOR_ADDRESS='\"$COORDINATOR_IP\"':8476 "
                 "JAX_NUM_PROCESSES=$((HOSTS * 2)) JAX_PROCESS_ID=$(({i} * HOSTS + WORKER))")
    main = ("cd bert_jax && python3 -m bert_jax.main --workdir=gs://bucket/large "
            "--config=configs/pretrain.py:size=large "
            "--config.mesh.dcn_parallelism=2,1,1 2>&1 | tee -a $HOME/bert_jax_run.log' &")
    assert proc.stdout.splitlines() == [
        f"gcloud compute tpus queued-resources create bert-ms {scope} --accelerator-type=v5e-256 "
        "--runtime-version=v2-alpha-tpuv5-lite --node-count=2 --node-prefix=bert-ms --spot",
        *[f"gcloud compute tpus tpu-vm ssh bert-ms-{i} {scope} --worker=all {clone}{SETUP_INSTALL}" for i in (0, 1)],
        f"COORDINATOR_IP=$(gcloud compute tpus tpu-vm describe bert-ms-0 {scope} "
        "'--format=value(networkEndpoints[0].ipAddress)')",
        *[f"gcloud compute tpus tpu-vm ssh bert-ms-{i} {scope} --worker=all '--command={POD_RUN}"
          + slice_env.format(i=i) + f" && {main}" for i in (0, 1)],
        "wait",
    ]
    # The printed commands are one valid shell script (quoting included).
    assert subprocess.run(["bash", "-n"], input=proc.stdout, text=True).returncode == 0


def test_tpu_vm_keeps_user_dcn_and_checks_input():
    out = bash("tpu_vm.sh", "--name=ms", "--zone=z", "--num-slices=4", "--skip-setup", "--workdir=gs://b/w",
               "--dry-run", "--", "--config=configs/pretrain.py", "--config.mesh.dcn_parallelism=2,2,1").stdout
    assert out.count("dcn_parallelism") == 4 and "dcn_parallelism=4,1,1" not in out  # one per slice, the user's
    for args, message in [(("--zone=z", "--workdir=gs://b/w"), "--name is required"),
                          (("--name=n", "--zone=z", "--workdir=rel/dir"), "--workdir must be a gs:// path"),
                          (("--name=n", "--zone=z", "--workdir=gs://b", "--create"),
                           "--create needs --accelerator-type"),
                          (("--name=n", "--zone=z", "--workdir=gs://b", "--bogus"), "unknown option '--bogus'")]:
        proc = bash("tpu_vm.sh", *args, "--dry-run", check=False)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)


# ------------------------------------------------------------------------------------ GPU / SLURM

def test_gpu_slurm_dry_run():
    out = bash("gpu_slurm.sh", "--dry-run", "--nodes=2", "--gpus-per-node=2", "--workdir=/shared/runs/base", "--",
               "--config=configs/pretrain.py:size=base,seq=128", env=PLAIN_ENV).stdout
    task = ("export JAX_COORDINATOR_ADDRESS=\"$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n1):29500\" "
            "JAX_NUM_PROCESSES=\"$SLURM_NTASKS\" JAX_PROCESS_ID=\"$SLURM_PROCID\" "
            "JAX_LOCAL_DEVICE_IDS=\"$SLURM_LOCALID\" && exec python3 -m bert_jax.main --workdir=/shared/runs/base "
            "--config=configs/pretrain.py:size=base,seq=128")
    assert out.splitlines() == [
        "# sbatch --nodes=2 --ntasks-per-node=2 --gpus-per-node=2 launch/gpu_slurm.sh ...",
        "export XLA_FLAGS='--xla_gpu_enable_latency_hiding_scheduler=true "
        "--xla_gpu_all_reduce_combine_threshold_bytes=134217728 --xla_gpu_all_gather_combine_threshold_bytes=134217728 "
        "--xla_gpu_reduce_scatter_combine_threshold_bytes=67108864'",
        "export XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 NCCL_DEBUG=WARN",
        f"srun --kill-on-bad-exit=1 --cpu-bind=none bash -c '{task}'",
        "# what each task gets (first node: node0):",
        *[f"node{n} task {2 * n + g}: JAX_COORDINATOR_ADDRESS=node0:29500 JAX_NUM_PROCESSES=4 "
          f"JAX_PROCESS_ID={2 * n + g} JAX_LOCAL_DEVICE_IDS={g}" for n in (0, 1) for g in (0, 1)],
    ]
    per_node = bash("gpu_slurm.sh", "--dry-run", "--per-node", "--workdir=/w", env=PLAIN_ENV).stdout
    assert "JAX_LOCAL_DEVICE_IDS" not in per_node and "--ntasks-per-node=1" in per_node
    outside = bash("gpu_slurm.sh", "--workdir=/w", env={**CHILD_ENV, "SLURM_JOB_ID": ""}, check=False)
    assert outside.returncode == 2 and "not inside a SLURM allocation" in outside.stderr


def test_gpu_slurm_task_environment_under_fake_slurm(tmp_path):
    """Runs the task command srun would run, with SLURM's variables, a fake scontrol and a python
    that prints what bert_jax.main would see."""
    for name, body in [("scontrol", 'echo gpu-node-07; echo gpu-node-08'),
                       ("fakepython", 'env | grep ^JAX_ | sort; echo "ARGS $*"')]:
        path = tmp_path / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    out = bash("gpu_slurm.sh", "--dry-run", "--workdir=/w", f"--python={tmp_path / 'fakepython'}", "--",
               "--config=configs/pretrain.py:size=large").stdout
    task = re.search(r"^srun .* bash -c '(.*)'$", out, re.M).group(1)
    env = {**PLAIN_ENV, "PATH": f"{tmp_path}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "gpu-node-[07-08]",
           "SLURM_NTASKS": "16", "SLURM_PROCID": "11", "SLURM_LOCALID": "3"}
    seen = subprocess.run(["bash", "-c", task], env=env, capture_output=True, text=True, timeout=30).stdout
    assert seen.splitlines() == ["JAX_COORDINATOR_ADDRESS=gpu-node-07:29500", "JAX_LOCAL_DEVICE_IDS=3",
                                 "JAX_NUM_PROCESSES=16", "JAX_PROCESS_ID=11",
                                 "ARGS -m bert_jax.main --workdir=/w --config=configs/pretrain.py:size=large"]


def test_gpu_slurm_xla_flags_exist_in_this_xla():
    """XLA aborts on an unknown flag in XLA_FLAGS: the script's flags parse with this jaxlib."""
    out = bash("gpu_slurm.sh", "--dry-run", "--workdir=/w", env=PLAIN_ENV).stdout
    flags = re.search(r"^export XLA_FLAGS='(.*)'$", out, re.M).group(1)
    proc = subprocess.run([sys.executable, "-c", "import jax.numpy as jnp; print(float(jnp.ones(3).sum()))"],
                          env={**CHILD_ENV, "XLA_FLAGS": flags}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "3.0", proc.stderr[-2000:]
    removed = subprocess.run([sys.executable, "-c", "import jax.numpy as jnp; jnp.ones(1)"], capture_output=True,
                             env={**CHILD_ENV, "XLA_FLAGS": "--xla_gpu_enable_async_all_gather=true"}, timeout=60)
    assert removed.returncode != 0  # the check above can fail: a flag gone from XLA does abort


# ------------------------------------------------------------------------------ local multi-process

def test_local_multiprocess_dry_run_and_input_checks():
    out = bash("local_multiprocess.sh", "--num-processes=3", "--devices-per-process=2", "--port=12345",
               "--python=python3", "--dry-run", "--", "--config=configs/pretrain.py:runlocal",
               "--workdir=/tmp/w").stdout
    lines = out.splitlines()
    assert lines[-1] == "wait" and len(lines) == 4
    for pid, line in enumerate(lines[:3]):
        assert line == ("env JAX_PLATFORMS=cpu JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo "
                        "XLA_FLAGS=--xla_backend_optimization_level=0\\ --xla_force_host_platform_device_count=2 "
                        "JAX_COORDINATOR_ADDRESS=127.0.0.1:12345 JAX_NUM_PROCESSES=3 "
                        f"JAX_PROCESS_ID={pid} python3 -m bert_jax.main --config=configs/pretrain.py:runlocal "
                        f"--workdir=/tmp/w > /tmp/w/logs/process_{pid}.log 2>&1 &")
    for args, message in [(("--num-processes=0",), "--num-processes must be a positive integer"),
                          (("--",), "pass --workdir=DIR after --")]:
        proc = bash("local_multiprocess.sh", *args, check=False)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def _final_metrics(log: str) -> dict:
    match = re.search(r"process \d final metrics: (\{.*\})$", log, re.M)
    assert match, log[-3000:]
    return json.loads(match.group(1))


def test_local_multiprocess_two_processes_finish_with_the_same_loss(background):
    rc, stdout, _, workdir = background("local")
    logs = [(workdir / "logs" / f"process_{i}.log").read_text() for i in range(2)]
    assert rc == 0, stdout + "\n".join(f"--- process {i}:\n{log[-3000:]}" for i, log in enumerate(logs))
    # Both joined one runtime: 2 processes x 2 devices = a 4-device mesh.
    for pid, log in enumerate(logs):
        assert f"jax.distributed: process {pid} of 2, 2 local / 4 global devices" in log
    finals = [_final_metrics(log) for log in logs]
    with open(workdir / "final_metrics.json") as f:
        written = json.load(f)  # process 0's
    assert finals[0]["step"] == finals[1]["step"] == written["step"] == 3
    for key in ("loss", "mlm_loss", "nsp_loss", "grad_norm", "mlm_accuracy", "nsp_accuracy"):
        # The metrics are one global computation over both processes' rows: identical, not close.
        assert finals[0]["train"][key] == finals[1]["train"][key] == written["train"][key], key
    assert 0 < finals[0]["train"]["loss"] < 20
    assert sorted(os.listdir(workdir / "checkpoints")) == ["3"]


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# A tiny 2-process pretraining run (2 CPU devices each) that agrees on a SIGTERM every 2 steps.
PREEMPT_ARGS = ["--config=configs/pretrain.py:runlocal", "--config.total_steps=30", "--config.optim.warmup_steps=1",
                "--config.log_every=1", "--config.eval_every=0", "--config.checkpoint_every=1000",
                "--config.progress_bar=false", "--config.preemption_check_every=2",
                "--config.model.hidden_size=64", "--config.model.intermediate_size=128",
                "--config.data.vocab_size=500", "--config.data.global_batch_size=8"]


def _start_two_processes(workdir, logs_dir, tag):
    """Popen of `bert_jax.main` as processes 0 and 1 of one jax.distributed run (logs in logs_dir)."""
    port = _free_port()
    procs = []
    for pid in range(2):
        env = {**CHILD_ENV, "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
               "XLA_FLAGS": CHILD_ENV["XLA_FLAGS"] + " --xla_force_host_platform_device_count=2",
               "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(pid)}
        log = open(logs_dir / f"{tag}_{pid}.log", "w")
        procs.append((subprocess.Popen([sys.executable, "-m", "bert_jax.main", f"--workdir={workdir}", *PREEMPT_ARGS],
                                       cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    return procs


def test_sigterm_to_one_of_two_processes_stops_both_at_one_step(tmp_path):
    """Only process 1 gets SIGTERM; both save the same step, exit 0, and a rerun resumes from there.
    (Before the processes agreed, process 1 went into the save alone and both hung.)"""
    workdir = tmp_path / "run"
    procs = _start_two_processes(workdir, tmp_path, "preempted")
    metrics = workdir / "metrics.jsonl"  # process 0 logs every step: a line per finished step
    deadline = time.time() + 240
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
        if time.time() > deadline or any(p.poll() is not None for p, _ in procs):
            finish_processes(procs, tmp_path, "preempted", timeout=1)  # fails with both logs
            pytest.fail("the run ended before step 3")
        time.sleep(0.1)
    procs[1][0].send_signal(signal.SIGTERM)
    logs = finish_processes(procs, tmp_path, "preempted")
    assert "SIGTERM received on process 1" in logs[1] and "SIGTERM received" not in logs[0]
    stops = [re.findall(r"all processes stop and save after step (\d+)", log) for log in logs]
    assert len(stops[0]) == len(stops[1]) == 1 and stops[0] == stops[1], stops
    step = int(stops[0][0])
    assert 4 <= step < 30 and step % 2 == 0  # an agreement step (every 2) after the signal, before the end
    assert [_final_metrics(log)["step"] for log in logs] == [step, step]
    with open(workdir / "final_metrics.json") as f:
        assert json.load(f)["preempted"] is True
    assert sorted(os.listdir(workdir / "checkpoints")) == [str(step)]

    logs = finish_processes(_start_two_processes(workdir, tmp_path, "resumed"), tmp_path, "resumed")
    for log in logs:
        assert f"resumed from step {step} in" in log, log[-3000:]
        assert _final_metrics(log)["step"] == 30
    assert str(30) in os.listdir(workdir / "checkpoints")


# --------------------------------------------------------------------------------------------- AOT

def test_parse_topology():
    from bert_jax.aot import parse_topology
    v5p = parse_topology("v5p-128")
    assert (v5p.platform, v5p.num_devices, dict(v5p.topology_kwargs)["topology_name"]) == ("tpu", 64, "v5:4x4x4")
    assert dict(v5p.topology_kwargs)["wrap"] == (True, True, True)
    v5e = parse_topology("v5e-256", num_slices=2)
    assert (v5e.num_devices, dict(v5e.topology_kwargs)["topology_name"], dict(v5e.topology_kwargs)["num_slices"]) \
        == (512, "v5e:16x16", 2)
    v4 = parse_topology("v4-8")
    assert (v4.num_devices, dict(v4.topology_kwargs)["topology_name"], dict(v4.topology_kwargs)["wrap"]) \
        == (4, "v4:2x2x1", (False, False, False))
    gpu = parse_topology("2x8xH100")
    assert (gpu.platform, gpu.num_devices, dict(gpu.topology_kwargs)["topology"], gpu.hbm_gib) \
        == ("cuda", 16, "1x2x8", 80)
    assert parse_topology("cpu:8").num_devices == 8
    for bad, message in [("v5p-100", "known sizes are v5p-{8, 16"), ("v9-8", "is not a topology"),
                         ("cpu:0", "is not a topology")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            parse_topology(bad)


def test_aot_cpu8_reports_per_device_memory(background):
    rc, stdout, stderr, json_path = background("aot")
    assert rc == 0, stderr[-4000:]
    for line in ("target cpu:8: 8 cpu devices", "mesh {'data': 2, 'fsdp': 2, 'tensor': 2}", "per device:",
                 "arguments", "temps", "generated code", "train state (shardings)", "XLA flops per step"):
        assert line in stdout, stdout
    with open(json_path) as f:
        report = json.load(f)
    # XLA's per-device argument bytes are exactly the shards the state and batch shardings imply, and
    # the donated state is aliased by the outputs.
    assert report["argument_size_in_bytes"] == report["state_bytes_per_device"] + report["batch_bytes_per_device"]
    assert report["alias_size_in_bytes"] == report["state_bytes_per_device"]
    assert report["temp_size_in_bytes"] > 0
    # Sharding saves memory: params + adam mu/nu (fp32) replicated would be 3 * 4 bytes per param.
    assert report["state_bytes_per_device"] < 3 * 4 * report["params"] / 2
    # XLA's count of the partitioned step vs the analytic 6N + attention + MLM-head model FLOPs.
    assert 0.8 < report["xla_flops_per_device"] / report["model_flops_per_device"] < 1.5


@pytest.mark.parametrize("topology,missing,devices", [("v5p-128", "needs libtpu", 64),
                                                      ("8xH100", "needs the CUDA PJRT plugin", 8)])
def test_aot_unavailable_target_says_what_is_missing(topology, missing, devices):
    from bert_jax import aot
    if aot.has_libtpu() if topology.startswith("v") else aot.has_cuda_plugin():
        pytest.skip(f"the compiler for {topology} is installed here")
    proc = subprocess.run([sys.executable, "-m", "bert_jax.aot", "--config=configs/pretrain.py:runlocal",
                           f"--topology={topology}", "--fallback=false"],
                          cwd=ROOT, env=CHILD_ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert missing in proc.stderr and f"--fallback to compile for cpu:{devices}" in proc.stderr, proc.stderr


def test_local_multiprocess_timeout_stops_every_process(tmp_path):
    start = time.time()
    proc = bash("local_multiprocess.sh", "--num-processes=2", "--devices-per-process=1", "--timeout=3", "--",
                "--config=configs/pretrain.py:runlocal", f"--workdir={tmp_path}", check=False)
    assert proc.returncode == 124 and "timeout after 3s" in proc.stderr, proc.stderr
    assert time.time() - start < 3 + 25  # SIGTERM, then SIGKILL after 20 s at the latest
    assert sorted(os.listdir(tmp_path / "logs")) == ["process_0.log", "process_1.log"]
