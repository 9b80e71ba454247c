"""tokensdk's benchmark suite: ratios measured side by side in one process.

Run ``python -m benchmarks`` (``--quick`` for a smoke run, ``--only ROW`` for one
row). Absolute times on a shared machine are noise; every row therefore measures
its baseline in the same process, interleaved with the candidate, and reports the
median ratio with its spread.
"""
