"""The GPU kit: pack here what a lent GPU machine lacks, run glioseg's GPU checks there (gpu/README.md)."""
