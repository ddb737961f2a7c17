"""Analysis of run histories and studies: loss noise, metric rankings, model diagnostics, reports
(Markdown and self-contained HTML) and the study dashboard."""
