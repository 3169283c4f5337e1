"""BiasGuard: toxicity, identity attacks and stereotyping, banned topics."""
