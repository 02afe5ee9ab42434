"""The Pass@1 evaluation harness (``etchr eval``): rows through the verifier, scored by the shared matcher."""
