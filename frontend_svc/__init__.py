"""The gRPC frontend: validates graphs, keys jobs, answers cache hits, streams events and artifacts."""
