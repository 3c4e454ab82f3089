"""Build stages: each module is a thin Hydra entry point over functions in ``stages.core``."""
