"""evalsuite: benchmark visual backbones on published protocols, with honest, reproducible numbers."""

__version__ = "0.1.0"
