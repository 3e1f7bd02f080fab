"""Benchmarks run from the checkout root: python -m bench.bench, python -m bench.conv_layers."""
