"""natkit benchmarks: `python -m bench` (what `make bench` runs) runs every benchmark in turn."""
