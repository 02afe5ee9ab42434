"""Tools on top of the services: the ``etchr`` command, ``etchr up``, the data builders, the eval harness."""
