public enum KVCTensorModule {}
