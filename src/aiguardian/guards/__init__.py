"""The guard pipeline: guards that check requests and answers, the policies that pick them, their models."""
