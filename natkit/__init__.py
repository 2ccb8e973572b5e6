"""natkit: NAT traversal infrastructure toolkit.

STUN/TURN serving (`natkit.stun`, `natkit.turn`), NAT diagnosis (`natkit.diag`) and
network-namespace NAT labs for CI (`natkit.lab`), sharing one config layer (`natkit.config`).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("natkit")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
