"""Batch commands over many images, in-process or on a Dask cluster (``docs/batch.md``).

``unsamv2 auto | hierarchy | embed | pseudo-label`` accept a folder or a glob as input; each image is
one work unit and gets ``<out>/<image stem><suffix>``, and ``<out>/manifest.json`` records every item
(done / failed / skipped, the reason, the settings, seconds). One module per concept:

    inputs.py     folder / glob -> image paths; per-image output paths; collision checks
    manifest.py   the manifest file: item records, settings fingerprint, what a re-run may skip
    worker.py     per-process state: the loaded-model cache, the worker's device and torch threads
    cluster.py    Dask: a LocalCluster of N processes or a given scheduler, the worker plugin
    items.py      what one work unit runs (a single-image command run; one pseudo-label file)
    runner.py     plan -> skip what is done -> run (in-process or on Dask) -> progress -> manifest
    pseudo_labels.py  pseudo-label a folder or glob on the chosen executor (also finetune's first stage)

The command-line side (``--workers`` / ``--scheduler``, per-image output names, the batch form of
``auto``, ``hierarchy``, ``embed`` and ``pseudo-label``) is :mod:`unsamv2_engine.cli.batch`.

Every module imports the standard library only at import time; numpy, torch and dask are imported
inside the functions, so ``unsamv2 --help`` stays light.
"""
