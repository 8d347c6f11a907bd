"""The built-in scenarios: each module registers one with ``contract.scenario``.

A new scenario is one module here; the runner, the spec's validation and the
report find it through ``contract.registry()``.
"""
