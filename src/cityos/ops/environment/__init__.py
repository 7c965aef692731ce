"""Environment indices: China AQI (HJ 633-2012), US EPA AQI, water class (GB 3838-2002), noise (GB 3096-2008)."""
