"""dtn: Domain Transfer Networks (Taigman, Polyak, Wolf, ICLR 2017) as a tool.

Where things live: data/ (datasets, registry), nets.py (f, g, D), losses.py, train.py (Trainer),
pretrain.py (f and the evaluation classifier), metrics/ (one file per metric), config.py (presets).
"""
__version__ = "0.1.0"
