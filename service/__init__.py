"""tta-serve service: one torch-free inference core behind gRPC and HTTP front ends."""
