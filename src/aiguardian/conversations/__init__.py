"""Conversations: stateful chat kept server-side, with memory that fits the model's context window."""
