"""Tests of the benchmark harness (fusedbn.bench), run on the CPU."""
