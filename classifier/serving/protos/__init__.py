"""The gRPC messages of KServe v2 and TF Serving: .proto files (wire-compatible subsets) and their generated Python."""
