"""GPU benchmarks of fusedbn: the per-op suite (``fusedbn bench``), the compile gate, and what they share with
the scripts of benchmarks/ (cases, providers, the timer, the profiler, the fake GPU)."""
