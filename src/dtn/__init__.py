"""dtn: Domain Transfer Networks (Taigman, Polyak, Wolf, ICLR 2017) as a tool.

Where things live: data/ (datasets, registry), nets.py (f, g, D), losses.py, train.py (Trainer),
pretrain.py (f and the evaluation classifier), metrics/ (one file per metric), config.py (presets).
"""
__version__ = "0.1.0"


def __getattr__(name: str):
    """`from dtn import DTN` without importing torch for every `import dtn`."""
    if name == "DTN":
        from .apply import DTN

        return DTN
    raise AttributeError(f"module 'dtn' has no attribute {name!r}")
