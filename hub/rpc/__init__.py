"""The gRPC front doors: thin adapters from grpc.aio onto the core."""
