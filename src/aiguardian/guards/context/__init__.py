"""ContextGuard, stateless part: message validation and drift from the conversation's purpose."""
