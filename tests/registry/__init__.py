"""Registry test infrastructure: a real registry fixture, a fault-injecting fake, OCI builders.

- ``tests.registry.real``: ``RealRegistry`` (``docker-registry`` on loopback) and pushing.
- ``tests.registry.fake``: ``FakeRegistry``, an in-memory OCI registry with auth and faults.
- ``tests.registry.faults``: the faults the fake can inject.
- ``tests.registry.layout``: builders for images, indexes, artifacts and OCI layouts.
- ``tests.registry.plugin``: the pytest fixtures (``real_registry``, ``registry_repo``,
  ``fake_registry``).

Nothing here imports ``warmstart``, so these run while the native extension is being rebuilt.
"""
