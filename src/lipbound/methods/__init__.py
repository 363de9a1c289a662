"""Bounding methods: one sub-package per method family (products, sdp, lipopt, jacobian, exact, lower).
Every sub-package is imported by `lipbound.registry.load_methods()`; its ``__init__`` imports the modules
whose `register_method` calls register the family's methods, and its docstring says which file holds
which piece of the mathematics.

The package is also callable: ``lipbound.methods()`` lists the registered methods (see
`lipbound.api.methods`), while ``import lipbound.methods.lower`` still reaches the modules."""

import sys
import types


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from ..api import methods

        return methods(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
