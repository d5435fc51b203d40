"""The cyclic garbage collector in a long-running process: what it walks, how often.

Python collects its youngest objects each time 700 more have been made than freed, and every
tenth of those passes the next generation too, up to full passes over everything tracked.
A service's requests make and free objects by the thousand, nearly all freed by their
reference counts; at 700 a home timeline replica collected 1,800 times in one benchmark run
(300-500 ms), a dozen of them full passes of 5-7 ms each during which every request on the
replica waited. At 20,000 it collected once.
"""

import gc

THRESHOLDS = (20_000, 20, 20)


def settle() -> None:
    """Call once startup has built what lives as long as the process: that is frozen (left
    out of every later pass), and young objects are collected at `THRESHOLDS`."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
