"""`mgvr index --ray`: the index run's probe, decode and encode stages on a Ray cluster (Ray
Data), while the process that runs `mgvr index` plans, writes and commits as a local run does.

Ray is optional (`pip install "mgvr[ray]"`): nothing here is imported by a local run.
"""
