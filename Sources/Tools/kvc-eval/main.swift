// Placeholder while the evaluation command is written.
print("kvc-eval: not implemented yet")
