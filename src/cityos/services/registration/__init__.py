"""Self-registration of citizens and companies (real-name checks, phone code) and password reset."""
