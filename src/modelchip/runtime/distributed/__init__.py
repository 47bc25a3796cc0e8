"""Running one model over several processes: collectives (communicator.py), how tensor parallelism splits a
checkpoint (tensor_parallel.py), how ranks start and find each other (launch.py) and what ranks > 0 do while
rank 0 schedules (worker.py, executor.py). docs/parallel.md explains the layout."""
