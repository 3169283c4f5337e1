"""Posts: authored content with tags, drafts and full-text search."""
