"""Map a workflow's failures: counterexamples, signatures, modes, Expected Failure Mass."""
