"""Task families; each module registers its tasks (and heads) with the evalsuite registries."""
