"""`mgvr serve`: a long-running process that keeps the model and index warm and serves the web
page and the HTTP JSON API, and the client `mgvr search` uses to find and ask it.

The client side (`client`, `discovery`) imports no torch, so a served search costs milliseconds.
"""
