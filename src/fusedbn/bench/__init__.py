"""GPU benchmarks of fusedbn against torch eager, torch.compile and the copy bandwidth (``fusedbn bench``)."""
