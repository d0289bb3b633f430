"""ShopSearch: visual product search over a catalogue (library)."""
__version__ = "0.1.0"
