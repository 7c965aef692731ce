"""服务找人 (proactive notices) and 免申即享 (payouts without application)."""
