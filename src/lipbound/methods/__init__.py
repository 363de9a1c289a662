"""Bounding methods: one module per method family. Every module here is imported by
`lipbound.registry.load_methods()` and registers its methods with `register_method`."""
