"""TrustGuard: prompt injection, invisible text, grounding, links and refusals."""
