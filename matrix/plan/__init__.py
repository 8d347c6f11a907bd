"""Planning: read a spec, expand it into cells, know the stacks (pure, no I/O but files)."""
