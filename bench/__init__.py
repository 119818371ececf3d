"""mimbench: reproduce masked-image-modeling ablations from declarative specs.

Layers, from the bottom: core (errors, registry shape, atomic files, hashing, patches, cache) ·
data, masking, methods, targets (registries of datasets, mask strategies, methods, targets) ·
study (config schema, run id, specs) · train (the pre-training loop, evals) · launch
(submitit, jobs, the run store) · analysis (tables, statistics, the papers' numbers) ·
benchmarks · cli. A layer imports only layers below it.
"""
__version__ = "0.1.0"
