"""`python -m dtn ...` is `dtn ...`; it is also what `torchrun --nproc_per_node=N -m dtn run ...` starts."""
import sys

from .cli import main

sys.exit(main())
