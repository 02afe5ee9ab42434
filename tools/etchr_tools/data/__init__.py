"""Corpus builders and benchmark importers: everything writes manifests (``etchr.manifest``).

- ``samples``: what a generator returns (``Sample``) and the question vocabulary generators share.
- ``maze``, ``frozenlake``, ``jigsaw``, ``bbox``: one generator each.
- ``build``: ``build_corpus``, the dispatcher over the generators (``etchr data build``).
- ``importers``: public benchmarks turned into manifests (``etchr data import``).
"""
