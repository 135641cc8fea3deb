"""detrec: labelled image trees -> sharded TFRecords (Apache Beam) -> streaming TensorFlow training.

The one import name of the distribution. Its subpackages live in the repository's top-level
folders (pyproject.toml maps them with setuptools' package-dir), so nothing but `detrec`
lands in site-packages or on a Dataflow worker:

    detrec.core        core/         the record contract: schema, TFRecord framing, dataset_info, fs
    detrec.preprocess  preprocess/   sources -> records (the Beam job)
    detrec.train       train/        records -> model (tf.data / DALI input, trainer, predict)
    detrec.inspector   inspector/    looks inside shards through detrec.core
    detrec.pipelines   pipelines/    the CLI and benchmarks: the only part that composes the others
"""

__version__ = "0.1.0"
