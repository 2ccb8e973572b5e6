"""natkit: NAT traversal infrastructure toolkit.

STUN/TURN serving (`natkit.stun`, `natkit.turn`), NAT diagnosis (`natkit.diag`) and
network-namespace NAT labs for CI (`natkit.lab`), sharing one config layer (`natkit.config`).
"""

# The one place the version lives (pyproject reads it: [tool.setuptools.dynamic]). A literal, not
# importlib.metadata: that import alone took 27 ms of every CLI start.
__version__ = "0.1.0"

__all__ = ["__version__"]
