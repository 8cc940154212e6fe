"""Backbone families; each module registers its sizes with `evalsuite.registry.BACKBONES`."""
