"""独居老人关爱: device readings → alert rules → an escalation chain per person."""
