"""Analysis of run histories and studies: loss noise, metric rankings, diagnostics, reports and the dashboard."""
