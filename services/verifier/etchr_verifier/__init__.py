"""The ETCHR verifier: Edit-Verify-Reason over any OpenAI-compatible MLLM."""
