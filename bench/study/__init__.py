"""Where a spec becomes runs: the config schema, validation and run id (config.py) and the
expansion of a YAML spec into resolved runs (spec.py)."""
