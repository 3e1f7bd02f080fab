"""Experiment configs: each file exposes get_config() -> ml_collections.ConfigDict."""
