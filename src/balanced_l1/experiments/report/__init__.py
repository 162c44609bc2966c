"""What a comparison reports: tables, figures, the gradient balance, its prediction, and the words after the tables."""
