"""Beam's DaskRunner, refused: detrec's job does not survive it (found on Beam 2.77).

Its runner mixes up a step's tagged outputs (an 8-line pipeline with one tagged output read
back with AsDict fails the same way), writes every shard twice, and its results have no
metrics. Dask is not installed with detrec, so its options are named here (a test checks them
against Beam's DaskOptions source).
"""

from detrec.pipelines.runners.runner import Runner

FLAGS = ("dask_client_address", "dask_connection_timeout", "dask_scheduler_file", "dask_client_name",
         "dask_connection_limit", "dask_npartitions", "dask_partition_size")

RUNNER = Runner(
    "DaskRunner", flags=FLAGS,
    refused="detrec does not run on Beam's DaskRunner, which mixes up a step's tagged outputs (a Beam bug), writes "
            "shards twice and reports no metrics; on a cluster use a Job API runner (--runner PortableRunner, "
            "FlinkRunner or SparkRunner: README, 'Scale out'), on one machine the DirectRunner (the default)")
