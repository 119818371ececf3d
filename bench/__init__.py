"""mimbench: reproduce masked-image-modeling ablations from declarative specs.

Modules, one idea each: config (schema, defaults, run id), spec (YAML → runs), masking
(strategies), targets (what the decoder predicts), models_mae (the model), pretrain, evals,
data and augment, store (result folders), launch (submitit), report (tables and plots), cli.
"""
__version__ = "0.1.0"
