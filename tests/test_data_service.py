"""tf.data service on loopback: one dispatcher and two workers deliver an epoch of the real
input pipeline (train.input.make_dataset over real detrec shards) exactly once, in-process and
through the `detrec data-service` CLI.

Who served what: TensorFlow counts tasks per worker (`_num_tasks`), not elements. With the
workers in separate processes (the CLI test) each element can say which worker made it: the
dataset graph runs on the worker, so an op reading `/proc/self/stat` there reads that
worker's pid. In-process workers share one pid, so those tests can only count tasks.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from detrec.core import dataset_info, schema
from detrec.core.errors import UserError
from detrec.train import data_service
from detrec.train import input as train_input
from tests.conftest import free_ports

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wait_for_workers(dispatcher, count: int, timeout: float = 30.0) -> None:
    """Blocks until `count` workers have registered (a condition, polled; not a fixed sleep).

    Registration is asynchronous; a job created before the second worker registers could be
    served by one worker alone, and then the test would not show that two share an epoch.
    """
    deadline = time.monotonic() + timeout
    while dispatcher._num_workers() < count:  # TF's own service tests use this accessor
        assert time.monotonic() < deadline, f"only {dispatcher._num_workers()} of {count} workers registered"
        time.sleep(0.05)


@pytest.fixture
def service():
    """(dispatcher address, [worker servers], dispatcher) on loopback, stopped afterwards.

    Per test: a worker's stop() can wait out its heartbeat interval when it has been idle, so
    servers that live only as long as their test stop at once."""
    dispatcher = data_service.start_dispatcher(port=0)
    address = data_service.dispatcher_address(dispatcher)
    workers = [data_service.start_worker(address, port=0, worker_address="localhost:%port%") for _ in range(2)]
    wait_for_workers(dispatcher, 2)
    yield address, workers, dispatcher
    for server in (*workers, dispatcher):
        server.stop()


def expected_keys(data_dir: str, split: str) -> collections.Counter:
    """sha256 of every record of a split, read independently of make_dataset."""
    info = dataset_info.load(data_dir)
    keys = collections.Counter()
    for path in dataset_info.shard_files(info, data_dir, split):
        for record in tf.data.TFRecordDataset(path):
            keys[schema.decode(record.numpy()).sha256] += 1
    assert sum(keys.values()) == info.splits[split].num_examples
    return keys


@pytest.mark.parametrize("split, training", [("val", False), ("train", True)])
def test_an_epoch_through_the_service_delivers_every_example_once(service, dataset_dir, split, training):
    address, workers, _ = service
    # batch 8 divides every worker's share (whole shards of 24 / 16 records): training's
    # drop_remainder then drops nothing, so "exactly once" is the service's property alone.
    dataset = train_input.make_dataset(dataset_dir, split, batch_size=8, image_size=32, training=training,
                                       decoder="cpu", with_keys=True, seed=3)
    distributed = data_service.distribute(dataset, address)
    delivered = collections.Counter()
    for images, labels, keys in distributed:
        assert images.shape[1:] == (32, 32, 3) and labels.shape[0] == keys.shape[0]
        delivered.update(train_input.key_strings(keys))
    assert delivered == expected_keys(dataset_dir, split)
    # Both workers took part in the epoch (each got a task of the job).
    assert all(worker._num_tasks() >= 1 for worker in workers)


def test_each_iteration_is_a_new_epoch(service):
    address, _, _ = service
    distributed = data_service.distribute(tf.data.Dataset.range(50).batch(4), address)
    for _ in range(2):
        values = sorted(int(v) for batch in distributed for v in batch.numpy())
        assert values == list(range(50))


@pytest.mark.parametrize("address", ["localhost:5050", "http://localhost:5050", "grpc://localhost",
                                     "grpc://localhost:99999", "grpc://:5050"])
def test_bad_addresses_are_user_errors(address):
    with pytest.raises(UserError, match="data service address"):
        data_service.distribute(tf.data.Dataset.range(3), address)


def start_cli(*args: str) -> subprocess.Popen:
    """Starts `detrec data-service ...` (stdout piped, to read its ready line)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.Popen([sys.executable, "-m", "detrec.pipelines.cli", "data-service", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def ready_line(proc: subprocess.Popen) -> str:
    """Blocks until the server prints that it is ready (reading, not sleeping)."""
    line = proc.stdout.readline()
    assert "ready" in line, f"{proc.args[3:]} exited with {proc.poll()} before it was ready"
    return line


def worker_pid() -> tf.Tensor:
    """The pid of the process running the op: on the tf.data service, the worker's."""
    return tf.strings.to_number(tf.strings.split(tf.io.read_file("/proc/self/stat"))[0], tf.int64)


def one_epoch(address: str, n: int = 200, sharding=None) -> list[tuple[int, int]]:
    """(value, pid of the worker that produced it) for one epoch of range(n) via the service:
    detrec's `distribute`, or TensorFlow's with a static `sharding` policy."""
    tagged = tf.data.Dataset.range(n).map(lambda x: (x, worker_pid())).batch(8)
    if sharding is None:
        distributed = data_service.distribute(tagged, address)
    else:
        distributed = tagged.apply(tf.data.experimental.service.distribute(processing_mode=sharding,
                                                                         service=address))
    return [(int(v), int(p)) for values, pids in distributed for v, p in zip(values.numpy(), pids.numpy())]


@pytest.mark.slow  # ~10 s: three server processes
@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux /proc to tell workers apart")
def test_cli_dispatcher_and_workers_serve_an_epoch_and_stop_cleanly():
    """Elements served per worker, counted by the pid each element carries.

    detrec's mode, "distributed_epoch", hands out splits to whichever worker asks first, so
    one fast worker may serve a whole small epoch: there the test checks that every element
    came once and from one of the two worker processes. A second epoch with TensorFlow's
    static sharding (each worker its fixed half: `ShardingPolicy.DATA`, which needs the
    dispatcher's `--workers` list) shows each worker serving exactly its 200 elements.
    """
    ports = free_ports(2)
    listed = ",".join(f"localhost:{port}" for port in ports)
    dispatcher = start_cli("dispatcher", "--port", "0", "--host", "localhost", "--workers", listed)
    procs = [dispatcher]
    try:
        address = ready_line(dispatcher).split("ready at ", 1)[1].split()[0]
        assert address.startswith("grpc://localhost:")
        workers = [start_cli("worker", "--dispatcher", address, "--port", str(port), "--worker-address",
                             f"localhost:{port}") for port in ports]
        procs += workers
        for worker in workers:
            ready_line(worker)
        pids = {worker.pid for worker in workers}
        served = one_epoch(address, 400)
        assert sorted(v for v, _ in served) == list(range(400))  # every element once
        assert set(pid for _, pid in served) <= pids  # made by the worker processes, nowhere else
        static = one_epoch(address, 400, sharding=tf.data.experimental.service.ShardingPolicy.DATA)
        assert sorted(v for v, _ in static) == list(range(400))
        assert collections.Counter(pid for _, pid in static) == {pid: 200 for pid in pids}
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        outcomes = [(proc.wait(timeout=60), proc.stdout.read()) for proc in procs]
    assert all(rc == 0 and "stopped" in out for rc, out in outcomes), outcomes


def test_cli_rejects_a_bad_dispatcher_address(capsys):
    from detrec.pipelines import cli

    assert cli.main(["data-service", "worker", "--dispatcher", "localhost:5050"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("detrec data-service: error: data service address") and err.count("\n") == 1
