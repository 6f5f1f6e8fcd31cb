"""The 2D energy task (Rezende & Mohamed 2015, section 6.1)."""
