"""Profile workers: run profiler executables on a real device, one candidate per process."""
