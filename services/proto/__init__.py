"""Generated gRPC stubs of protos/gls/v1."""
