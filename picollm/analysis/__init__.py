"""Analysis of run histories: loss noise, metric rankings, model diagnostics, reports."""
