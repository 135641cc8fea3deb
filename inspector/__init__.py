"""detrec.inspector: looks inside shards (counts, integrity, labels, pictures) through detrec.core.

One job per module, each importing only the ones above it in this list (and detrec.core):
problem (a defect as data; which errors mean "cannot access"), resolve (PATH arguments -> one
dataset's shard targets), stats (split statistics), check (record checks, shard and labels.txt
cross-checks), contact_sheet (the sample picture), walk (reads shards frame by frame), report
(`inspect_paths()` and the JSON-ready report).
"""
