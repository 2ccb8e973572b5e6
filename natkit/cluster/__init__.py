"""Many natkit servers as one: the fleet's state on Redis (DESIGN.md: ``natkit/cluster/``).

Quotas per user and in total, exact across nodes, with leases that end a dead node's share
(`natkit.cluster.scripts`); what a member holds and the fail policy (`natkit.cluster.quota`);
heartbeats, load and the shared revocations and credentials (`natkit.cluster.agent`); the
operator's view and commands (`natkit.cluster.admin`). The request path that asks it lives in
`natkit.serve.clustered`. Off unless ``cluster.redis`` is set.
"""

from natkit.cluster.agent import ClusterAgent, Member, Shared
from natkit.cluster.quota import ClusterQuota
from natkit.cluster.scripts import Keys

__all__ = ["ClusterAgent", "ClusterQuota", "Keys", "Member", "Shared"]
