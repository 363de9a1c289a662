"""Bounding methods: one module per method family. Every module here is imported by
`lipbound.registry.load_methods()` and registers its methods with `register_method`.

The package is also callable: ``lipbound.methods()`` lists the registered methods (see
`lipbound.api.methods`), while ``import lipbound.methods.lower`` still reaches the modules."""

import sys
import types


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from ..api import methods

        return methods(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
