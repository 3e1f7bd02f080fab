"""The docs generator runs from the checkout root: python -m docs.make_docs."""
