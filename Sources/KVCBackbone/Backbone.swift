public enum KVCBackboneModule {}
