"""The Beam cache job: each task's finished examples, written in seqio's cache layout.

Modules, in the order a job uses them:
- `layout`: the on-disk contract shared by the writer and the reader (directory and file names,
  `COMPLETED`, `cache_job.json`, cached-task names like `T.in512_tg512`).
- `plan`: the job's configuration, task selection, work units (input ranges) and their seeds.
- `unit_processor`: the work of one input range (read, validate, tokenise, objective, serialise).
- `stats`: per-split statistics (merged across ranges) and the summary lines.
- `beam_graph`: the Beam DoFns and the pipeline graph around `unit_processor`.
- `runners`: Beam runner options (local, Dask, Dataflow) and the progress lines.
- `driver`: plans, runs the pipeline, finishes each split (`run_cache_job`).
- `registry`: registers completed caches as seqio tasks for reading (`register_cached_tasks`).
- `dataflow`: staging of this project's code for Dataflow workers.

`python -m pipelines.cache_tasks` is the command line. Importing this package imports nothing.
"""
