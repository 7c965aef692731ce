"""The simulated city: districts, roads, rivers, points of interest, devices and their readings.

Everything here is reproducible from one seed, so a demo, a test and a benchmark see the same city.
"""
