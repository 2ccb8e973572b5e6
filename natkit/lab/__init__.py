"""NAT labs: RFC 4787 NAT topologies built from network namespaces and nftables."""
