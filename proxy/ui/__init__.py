"""The operator's web pages (`/ui/`): recent requests and one request's stages."""
