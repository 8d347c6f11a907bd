"""Results: read artifact directories (manifests, streamed tensors) and results directories."""
