"""Local fakes of Azure endpoints that speak the real wire protocols, for the real SDK clients to talk to."""
