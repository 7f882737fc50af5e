"""GPU benchmarks of fusedbn: the per-op suite against torch eager, FlagGems, torch.compile and the copy
bandwidth (``fusedbn bench``), whole ResNet-50 training steps (:mod:`fusedbn.bench.training_step`) and the
host-time benchmark (:mod:`fusedbn.bench.host_time`, on a fake GPU without one)."""
