"""The sweep: plan (variants, grids, studies), queue (claims, leases), worker (the training
loop around the queue), launch (local processes, Slurm), report (results, summary, figures),
cli (``python -m harness.sweep``)."""
