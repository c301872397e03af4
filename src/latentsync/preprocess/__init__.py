"""The data pipeline: raw talking-head videos -> aligned, synced, quality-checked training clips.

`base.py` is the contract (Item, StepResult, StepContext, Step); one module per step; `runner.py` owns
discovery, resumability (done markers), manifests, parallelism (process pool or Ray) and statistics.
"""
