"""SecretsGuard: credentials found by provider and context rules with calibrated scores."""
