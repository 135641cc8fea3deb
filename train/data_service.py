"""tf.data service: run the input pipeline (read, decode, augment, batch) on other machines.

When JPEG decoding, not the accelerator, limits a training step, TensorFlow's own tf.data
service moves the pipeline to CPU workers: one dispatcher hands out work, any number of
workers execute the dataset graph, and the trainer only receives finished batches. detrec
adds nothing of its own on top; this module starts the servers and wraps `distribute` so that
the CLI (`detrec data-service ...`) and the trainer (`detrec train --data-service ...`) share
one definition of the address format and the processing mode.

Why "distributed_epoch": the dispatcher splits the dataset's *source* (the shard file names)
among the workers, so one epoch through the service yields every example exactly once, no
matter how many workers there are. ("parallel_epochs" would make each worker produce a full
epoch of its own: N workers, N copies of every example.) The source must therefore be
splittable: a list of files or `Dataset.range`/`from_tensor_slices` followed by map/
interleave/filter/batch, and every step must be a TensorFlow op (no `tf.py_function`), since
the graph is serialised and run by the workers.
"""

from __future__ import annotations

import re

import tensorflow as tf

from detrec.core.errors import UserError

PROTOCOL = "grpc"
PROCESSING_MODE = "distributed_epoch"
DEFAULT_DISPATCHER_PORT = 5050
_ADDRESS_RE = re.compile(r"^(?P<protocol>[a-z]+)://(?P<host>\[[0-9a-fA-F:]+\]|[^:/\s]+):(?P<port>\d{1,5})$")


def parse_address(text: str) -> str:
    """Checks a `grpc://HOST:PORT` dispatcher address and returns it unchanged.

    Raises:
      UserError: naming what is wrong, because a bad address otherwise surfaces as a hang or
        an opaque gRPC status deep inside the first `next()` of the dataset.
    """
    match = _ADDRESS_RE.match(text.strip())
    if not match:
        raise UserError(f"data service address {text!r} is not grpc://HOST:PORT (e.g. grpc://10.0.0.2:5050)")
    if match["protocol"] != PROTOCOL:
        raise UserError(f"data service address {text!r}: protocol {match['protocol']!r} is not supported, use grpc://")
    port = int(match["port"])
    if not 0 < port < 65536:
        raise UserError(f"data service address {text!r}: port {port} outside 1..65535")
    return text.strip()


def host_port(address: str) -> str:
    """`grpc://HOST:PORT` -> `HOST:PORT` (the form WorkerConfig wants for the dispatcher)."""
    return parse_address(address).split("://", 1)[1]


def start_dispatcher(port: int = 0, work_dir: str | None = None) -> tf.data.experimental.service.DispatchServer:
    """Starts a dispatcher in this process (it serves until the process ends or `.stop()`).

    Args:
      port: TCP port to listen on; 0 picks a free one (read it back with `dispatcher_address`).
      work_dir: a directory (local or gs://) for the dispatcher's journal. When given, fault
        tolerant mode is on: a restarted dispatcher recovers its state, so a crash does not
        end the training job's epoch.
    """
    config = tf.data.experimental.service.DispatcherConfig(
        port=port, protocol=PROTOCOL, work_dir=work_dir, fault_tolerant_mode=bool(work_dir)
    )
    return tf.data.experimental.service.DispatchServer(config)


def dispatcher_address(server: tf.data.experimental.service.DispatchServer, host: str = "localhost") -> str:
    """`grpc://HOST:PORT` of a running dispatcher, as clients and workers elsewhere should use it."""
    port = server.target.rsplit(":", 1)[1]
    return f"{PROTOCOL}://{host}:{port}"


def start_worker(
    dispatcher: str, port: int = 0, worker_address: str | None = None
) -> tf.data.experimental.service.WorkerServer:
    """Starts a worker that registers with `dispatcher` (`grpc://HOST:PORT`) and serves data.

    Args:
      dispatcher: the dispatcher's address.
      port: TCP port for the worker; 0 picks a free one.
      worker_address: how trainers reach this worker, `HOST:%port%` (`%port%` is replaced by
        the bound port). TensorFlow's default is `localhost:%port%`, right only when trainer
        and worker share a machine.
    """
    config = tf.data.experimental.service.WorkerConfig(
        dispatcher_address=host_port(dispatcher),
        worker_address=worker_address,
        port=port,
        protocol=PROTOCOL,
    )
    return tf.data.experimental.service.WorkerServer(config)


def distribute(dataset: tf.data.Dataset, service: str, job_name: str | None = None) -> tf.data.Dataset:
    """Runs `dataset` on the tf.data service at `service`; each iteration is one epoch, exactly once.

    Args:
      dataset: the full input pipeline up to and including `batch` (everything in it runs on
        the workers); add `prefetch` on the result, on the trainer's side.
      service: the dispatcher, `grpc://HOST:PORT`.
      job_name: trainers that pass the same name share one job, i.e. split one epoch between
        them (multi-worker training); None gives each iteration its own job (a full epoch).
    """
    return dataset.apply(
        tf.data.experimental.service.distribute(
            processing_mode=PROCESSING_MODE, service=parse_address(service), job_name=job_name
        )
    )
