"""拥堵指数 (congestion index): the traffic performance index of GB/T 33171-2016 per road segment,
district and city, from detector speeds, with its five levels."""
