"""Generated gRPC stubs for the imgsearch.v1 API (see protos/; regenerate with `make protos`)."""
