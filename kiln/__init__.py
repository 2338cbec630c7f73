"""Kiln: build a graph, compile it on the farm, run the artifact."""
