"""FasterSeg, reproduced: search, training and latency measurement for FasterSeg (Chen et al., ICLR 2020).

Importing this package has no side effects: nothing is read from disk and no global state is set.
"""

__version__ = "0.1.0"
