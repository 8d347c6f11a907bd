"""Environments: Docker images (every container CLI call goes through engine.py), the local
base image, uv venvs and their locks.
"""
