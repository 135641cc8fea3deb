"""detrec.pipelines.dataflow: the Dataflow Flex Template entry point and its files (metadata, worker requirements)."""
