"""Command-line tools run from the checkout root: python -m scripts.seeds, ..."""
