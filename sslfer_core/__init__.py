"""sslfer core library: face operations, shard format, augmentations, models, losses, metrics."""
__version__ = "0.1.0"
