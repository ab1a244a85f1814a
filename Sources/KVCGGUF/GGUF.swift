public enum KVCGGUFModule {}
