public enum KVCVisionModule {}
