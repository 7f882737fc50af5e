"""GPU benchmarks of fusedbn: the per-op suite against torch eager, FlagGems, torch.compile and the copy
bandwidth (``fusedbn bench``), the compile gate (:mod:`fusedbn.bench.compile_check`), and what they share
with the benchmark scripts of the repository's benchmarks/ folder (ResNet-50 training steps, host time):
cases, providers, the timer, the profiler, the fake GPU and launch recorder."""
