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

Security: trusted private networks only
---------------------------------------
TensorFlow's servers take no bind address: the dispatcher and every worker listen on all
network interfaces, and speak plain gRPC with no authentication or encryption (the only
credentials TensorFlow's open-source build registers for the service are insecure ones).
Any client that reaches the dispatcher can register a dataset graph of its own, and the
workers run it: any TensorFlow op, `tf.io.write_file` included, as the worker's user. So:
run the service only on a trusted private network, firewall the dispatcher and worker ports
from everything but the trainers and workers, and run the workers as a user that can read
the shards and write nothing that matters. Each server prints a one-line warning saying so
when it starts (`SECURITY_WARNING`). The one restriction TensorFlow offers is used where
asked: `start_dispatcher(workers=...)` (`--workers`) makes the dispatcher refuse workers whose
address is not listed (worker addresses are declared by the workers themselves, so this
keeps out strays and mistakes, not an attacker on the network).
"""

from __future__ import annotations

import re
import sys
from typing import Sequence

import tensorflow as tf

from detrec.core.errors import UserError

PROTOCOL = "grpc"
PROCESSING_MODE = "distributed_epoch"
DEFAULT_DISPATCHER_PORT = 5050
SECURITY_WARNING = ("detrec data-service: warning: the tf.data {role} listens on port {port} of every network "
                    "interface with no authentication or encryption (TensorFlow offers neither, nor a bind "
                    "address): anyone who reaches it can run TensorFlow ops, file writes included, on the "
                    "workers; use it only on a trusted private network with its ports firewalled")
_WORKER_RE = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+)(:\d{1,5})?$")
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


def _warn(role: str, target: str) -> None:
    print(SECURITY_WARNING.format(role=role, port=target.rsplit(":", 1)[-1]), file=sys.stderr, flush=True)


def check_workers(workers: Sequence[str]) -> list[str]:
    """`HOST` or `HOST:PORT` entries for `start_dispatcher(workers=...)`, stripped.

    Raises:
      UserError: an entry that is neither.
    """
    entries = [w.strip() for w in workers if w.strip()]
    for entry in entries:
        match = _WORKER_RE.match(entry)
        if not match or (match[2] and not 0 < int(match[2][1:]) < 65536):
            raise UserError(f"worker {entry!r} is not HOST or HOST:PORT (e.g. 10.0.0.3 or 10.0.0.3:5051)")
    return entries


def start_dispatcher(port: int = 0, work_dir: str | None = None,
                     workers: Sequence[str] = ()) -> tf.data.experimental.service.DispatchServer:
    """Starts a dispatcher in this process (it serves until the process ends or `.stop()`).

    Prints `SECURITY_WARNING` on stderr (see the module docstring).

    Args:
      port: TCP port to listen on; 0 picks a free one (read it back with `dispatcher_address`).
      work_dir: a directory (local or gs://) for the dispatcher's journal. When given, fault
        tolerant mode is on: a restarted dispatcher recovers its state, so a crash does not
        end the training job's epoch.
      workers: when given, the only worker addresses (`HOST` or `HOST:PORT`, as each worker
        advertises itself) that may register; any other worker fails to start. TensorFlow's
        `DispatcherConfig.worker_addresses`; a host alone admits one worker on that host.
    """
    config = tf.data.experimental.service.DispatcherConfig(
        port=port, protocol=PROTOCOL, work_dir=work_dir, fault_tolerant_mode=bool(work_dir),
        worker_addresses=check_workers(workers) or None,
    )
    server = tf.data.experimental.service.DispatchServer(config)
    _warn("dispatcher", server.target)
    return server


def dispatcher_address(server: tf.data.experimental.service.DispatchServer, host: str = "localhost") -> str:
    """`grpc://HOST:PORT` of a running dispatcher, as clients and workers elsewhere should use it."""
    port = server.target.rsplit(":", 1)[1]
    return f"{PROTOCOL}://{host}:{port}"


def start_worker(
    dispatcher: str, port: int = 0, worker_address: str | None = None
) -> tf.data.experimental.service.WorkerServer:
    """Starts a worker that registers with `dispatcher` (`grpc://HOST:PORT`) and serves data.

    Prints `SECURITY_WARNING` on stderr (see the module docstring).

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
    server = tf.data.experimental.service.WorkerServer(config)
    # The bound port: only a private accessor has it (the public API has the dispatcher's target).
    _warn("worker", str(getattr(server, "_address", port)))
    return server


def distribute(dataset: tf.data.Dataset, service: str) -> tf.data.Dataset:
    """Runs `dataset` on the tf.data service at `service`; each iteration is one epoch, exactly once.

    Each iteration is its own service job (no job name): trainer workers that shared one job
    could each take batches of the next pass while another still drains this one (see
    train/data.py's `_service_dataset_fn`, which gives every trainer worker its own share).

    Args:
      dataset: the full input pipeline up to and including `batch` (everything in it runs on
        the workers); add `prefetch` on the result, on the trainer's side.
      service: the dispatcher, `grpc://HOST:PORT`.
    """
    return dataset.apply(
        tf.data.experimental.service.distribute(processing_mode=PROCESSING_MODE, service=parse_address(service)))
