"""The ETCHR editor: everything that touches the diffusion model."""
