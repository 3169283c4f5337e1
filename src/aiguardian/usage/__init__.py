"""TokenGuard: token counts, context windows, prices, the usage ledger and budgets."""
