"""ot-gateway: the application (model kernel, config, pipeline, runtime, store, API, CLI)."""

__version__ = "0.1.0"
