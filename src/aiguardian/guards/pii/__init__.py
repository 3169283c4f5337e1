"""PIIGuard: personal data found by a CRF tagger and validated patterns, redacted with reversible placeholders."""
