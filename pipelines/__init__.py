"""detrec.pipelines: the runnable jobs (composition root)."""
