"""`detrec data-service dispatcher|worker`: TensorFlow's tf.data service servers, ready to run.

    detrec data-service dispatcher [--port 5050] [--work-dir DIR]
    detrec data-service worker --dispatcher grpc://HOST:5050 [--port 5051] [--worker-address HOST:%port%]

Each command serves until interrupted (Ctrl-C or SIGTERM, e.g. `docker stop`). Trainers then
use `detrec train --data-service grpc://HOST:5050`. The servers are TensorFlow's own
(train/data_service.py); nothing here is home-made.

Security: both servers listen on every interface with no authentication (TensorFlow offers
no bind address and no secure credentials), and anyone who reaches them can run TensorFlow
ops on the workers. Each prints a one-line warning saying so when it starts; run them only
on a trusted private network with the ports firewalled. `--workers` limits which worker
addresses the dispatcher admits.
"""

from __future__ import annotations

import argparse
import socket

from detrec.core.errors import UserError
from detrec.pipelines import stopping

HELP = "run a tf.data service dispatcher or worker (input pipeline on other machines; trusted networks only)"


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="role", metavar="ROLE", required=True)
    dispatcher = sub.add_parser("dispatcher", help="hands out the dataset's shards to the workers")
    dispatcher.add_argument("--port", type=int, default=5050, help="port to listen on (default 5050; 0: any free port)")
    dispatcher.add_argument("--host", default=socket.gethostname(),
                            help="host name that workers and trainers use to reach this machine; only "
                                 "printed in the ready line (default: this machine's hostname)")
    dispatcher.add_argument("--workers", default="", metavar="HOST[:PORT],...",
                            help="admit only workers advertising one of these addresses (their "
                                 "--worker-address); keeps out strays, not an attacker: the service has "
                                 "no authentication, use it on a trusted network only")
    dispatcher.add_argument("--work-dir", default=None,
                            help="journal directory (local or gs://); turns on fault-tolerant mode so a "
                                 "restarted dispatcher resumes its jobs")
    worker = sub.add_parser("worker", help="runs the input pipeline and serves batches to trainers")
    worker.add_argument("--dispatcher", required=True, metavar="grpc://HOST:PORT", help="the dispatcher's address")
    worker.add_argument("--port", type=int, default=5051, help="port to listen on (default 5051; 0: any free port)")
    worker.add_argument("--worker-address", default=f"{socket.gethostname()}:%port%", metavar="HOST:%port%",
                        help="address trainers use to reach this worker; %%port%% becomes the bound port "
                             "(default: this machine's hostname)")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    stopping.check_port(args.port)
    from detrec.train import data_service  # lazily: TensorFlow loads only when a server starts

    try:
        if args.role == "dispatcher":
            server = data_service.start_dispatcher(port=args.port, work_dir=args.work_dir,
                                                   workers=args.workers.split(","))
            address = data_service.dispatcher_address(server, host=args.host)
            ready = f"dispatcher ready at {address} (trainers: --data-service {address})"
            return stopping.serve_until_stopped(server.stop, ready)
        if "%port%" not in args.worker_address and ":" not in args.worker_address:
            raise UserError(f"--worker-address {args.worker_address!r} must be HOST:%port% or HOST:PORT")
        server = data_service.start_worker(args.dispatcher, port=args.port, worker_address=args.worker_address)
        ready = f"worker ready, serving for dispatcher {args.dispatcher} (advertised as {args.worker_address})"
        return stopping.serve_until_stopped(server.stop, ready)
    except RuntimeError as exc:  # e.g. a port already in use: TF raises with a gRPC status text
        raise UserError(f"data-service {args.role}: {' '.join(str(exc).split())}") from None
