"""Where numbers become reports (the papers' own numbers come from bench.papers). Modules, each
importing only those above it in this list:

    tables            cell and Markdown formatting (no pandas frames, no files)
    stats             bootstrap intervals, Kendall's tau, the seed-noise rule
    frames            a study's finished runs as a frame; the axes that vary
    plots             plot.png and the drawing pieces the comparison reuses
    matching          the comparison's records: our settings matched to a paper subtable's
    claims            the paper's claims checked against our means
    compare_markdown  comparison.md;   compare_plot: comparison.png
    compare           the comparison computed and written (comparison.md / .csv / .png)
    report            runs.csv, table.csv, table.md, plot.png, and the comparison when a paper is named
"""
