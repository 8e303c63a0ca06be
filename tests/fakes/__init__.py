"""Local fake servers for the remote vendors: each validates every request against the vendor's spec."""
