"""The ETCHR reward service: batched judge and guidance queries for the RL trainer."""
