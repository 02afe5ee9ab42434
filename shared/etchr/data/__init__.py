"""Corpus builders and benchmark importers: everything writes SPEC §9 manifests."""
