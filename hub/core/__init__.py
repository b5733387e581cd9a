"""The broadcast core: sessions, rooms, fan-out. Knows nothing of gRPC or sockets."""
