"""智慧停车 (parking): car parks with tariffs and live availability, reservations, pay-without-stopping
sessions from plate events, and guidance to the car parks predicted to have free spaces on arrival."""
