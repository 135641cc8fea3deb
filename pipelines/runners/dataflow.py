"""Google Cloud Dataflow: workers are Cloud VMs that read and write Cloud Storage only, and get
detrec either as an sdist of setup.py plus the locked requirements, or in a container image
(pipelines/dataflow/README.md). Beam's --dry_run validates a submission without sending it."""

from __future__ import annotations

from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, SetupOptions, WorkerOptions

from detrec.core.errors import UserError
from detrec.pipelines.runners.runner import Paths, Runner


def _check(options: PipelineOptions, paths: Paths) -> None:
    gcp = options.view_as(GoogleCloudOptions)
    if not gcp.project or not gcp.region:
        raise UserError("DataflowRunner needs --project and --region")
    if not gcp.temp_location or not gcp.temp_location.startswith("gs://"):
        raise UserError("DataflowRunner needs --temp_location gs://BUCKET/tmp (a Cloud Storage path)")
    for flag, path in paths.items():
        if path and not path.startswith("gs://"):
            raise UserError(f"DataflowRunner reads and writes Cloud Storage: {flag} must be a gs:// path, got {path!r}")
    setup = options.view_as(SetupOptions)
    if not setup.setup_file and not options.view_as(WorkerOptions).sdk_container_image:
        raise UserError("DataflowRunner workers need detrec: pass --setup_file ./setup.py or "
                        "--sdk_container_image IMAGE (see pipelines/dataflow/README.md)")
    if setup.setup_file and not setup.requirements_file:
        raise UserError("with --setup_file also pass --requirements_file pipelines/dataflow/requirements.txt "
                        "(workers need TensorFlow, an optional extra of detrec)")
    if setup.requirements_file and setup.requirements_cache is None:
        setup.requirements_cache = "skip"  # else the launcher pip-downloads TF wheels for nothing


RUNNER = Runner("DataflowRunner", aliases=("TestDataflowRunner",), check=_check, dry_run=True,
                elsewhere=lambda _options: "Dataflow's workers are Cloud VMs")
