"""TVM: the Relax build for one target row, its CPU schedules and passes, tuning, CUDA kernels and fp16."""
