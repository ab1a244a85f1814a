public enum KVCTokenizerModule {}
