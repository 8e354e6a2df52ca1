"""`tuneloop demo`: the whole loop on the bundled data, told as a story. A front-end: it calls steps.

story.py    the run: drops, rounds, canaries, the faulty copy rolled back (`run_demo`)
service.py  `tuneloop serve` as a subprocess, and synthetic traffic with feedback
report.py   lines that fit 80 columns and the closing table (pure functions)
"""
